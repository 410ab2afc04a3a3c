"""A MatrixRTC (Element Call) call started in a portal room is declined by the ghost (MSC4310) and explained with
one notice per call start, instead of ringing into silence."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.conftest import E2E, GHOST
from tests.harness.matrix_client import MatrixTestClient

pytestmark = pytest.mark.e2e

MEMBER = "org.matrix.msc3401.call.member"
ALICE = "@alice:bridge.test"


def member_content(device: str) -> dict[str, Any]:
    return {"application": "m.call", "call_id": "", "scope": "m.room", "device_id": device,
            "expires": 7200000, "focus_active": {"type": "livekit", "focus_selection": "oldest_membership"},
            "foci_preferred": [{"type": "livekit", "livekit_service_url": "https://livekit.invalid"}]}


async def set_member(alice: MatrixTestClient, room: str, device: str, content: dict[str, Any]) -> None:
    key = quote(f"_{ALICE}_{device}")
    await alice.request("PUT", f"/rooms/{quote(room)}/state/{MEMBER}/{key}", content)


def notices(alice: MatrixTestClient, room: str) -> list[dict[str, Any]]:
    return [ev for ev in alice.events if ev["room_id"] == room and ev.get("type") == "m.room.message"
            and ev["sender"] == GHOST and ev["content"].get("msgtype") == "m.notice"]


async def test_matrixrtc_ring_in_a_portal_is_declined_with_one_notice_per_call(e2e: E2E) -> None:
    await e2e.bridge()
    alice = await e2e.client("alice")
    room = await alice.create_dm(GHOST)
    await alice.wait_for_membership(room, GHOST, "join", timeout=30)
    # Element Call starts a call: the caller's device joins the RTC session, then rings the other member.
    await set_member(alice, room, "DEVA", member_content("DEVA"))
    ring = await alice.send_event(room, "org.matrix.msc4075.rtc.notification", {
        "m.mentions": {"user_ids": [GHOST], "room": False}, "notification_type": "ring",
        "sender_ts": int(time.time() * 1000), "lifetime": 30000,
    })
    decline = await alice.wait_for_event(room, lambda ev: ev.get("type") == "org.matrix.msc4310.rtc.decline",
                                         timeout=15)
    assert decline["sender"] == GHOST
    assert decline["content"]["m.relates_to"] == {"rel_type": "m.reference", "event_id": ring}
    await alice.wait_for(lambda: notices(alice, room), 15, "the notice")
    assert "legacy voice call" in notices(alice, room)[0]["content"]["body"]
    # another device joins the same call (no new notice); then the call ends (every member state emptied) and a
    # new one starts: exactly one more notice. Events are handled in room order, so a notice for the second
    # device would be in the timeline before the new call's.
    await set_member(alice, room, "DEVB", member_content("DEVB"))
    await set_member(alice, room, "DEVA", {})
    await set_member(alice, room, "DEVB", {})
    await set_member(alice, room, "DEVA", member_content("DEVA"))
    await alice.wait_for(lambda: len(notices(alice, room)) >= 2, 15, "the second call's notice")
    assert len(notices(alice, room)) == 2
