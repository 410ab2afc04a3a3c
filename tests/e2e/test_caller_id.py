"""Caller ID end to end: P-Asserted-Identity from a trusted hop -> MSC3086 asserted identity events in Matrix
(inbound with the call and on a mid-call UPDATE; outbound from the trunk's 200), Privacy: id and untrusted
sources honoured, and the Matrix user's admin-configured number asserted on outbound INVITEs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import E2E, GHOST, SCENARIOS, assert_released
from tests.e2e.test_inbound_calls import CALLER_GHOST, GOOD_SDP, alice_client, auth_only, phone, routes
from tests.harness.matrix_client import MatrixTestClient
from tests.harness.rtp_peer import RtpPeer
from tests.harness.sipp import SippProcess

pytestmark = pytest.mark.e2e

ASSERTED = ("m.call.asserted_identity", "org.matrix.call.asserted_identity")
DESK_GHOST = "@sip_15553334444:bridge.test"
SALES_GHOST = "@sip_15556667777:bridge.test"
UNKNOWN_GHOST = "@sip_unknown:bridge.test"
PAI_LINE = 'P-Asserted-Identity: "Front Desk" <sip:+15553334444@127.0.0.1>\n'


def identities(client: MatrixTestClient, room_id: str, call_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(ev["type"], ev["content"]) for ev in client.events
            if ev["room_id"] == room_id and ev.get("type") in ASSERTED and ev["content"].get("call_id") == call_id]


def with_header(line: str) -> dict[str, str]:
    """sipp scenario edit: add a header line to the INVITE(s) (just before their Content-Type)."""
    return {"Max-Forwards: 70\nContent-Type": f"Max-Forwards: 70\n{line}Content-Type"}


async def test_trusted_pai_is_announced_with_the_call_and_again_when_an_update_changes_it(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    rtp_peer.start_sending(seconds=30)
    sipp = await phone(e2e, "caller_update_identity.xml", "-key", "rtp_port", str(rtp_peer.port))
    call = await alice.wait_incoming_call(timeout=40)
    assert call.invite["sender"] == DESK_GHOST  # the asserted number, not From's, rings
    await call.answer()
    await call.wait_select_answer(timeout=15)
    first = await alice.wait_for_event(call.room_id, lambda ev: ev.get("type") == "m.call.asserted_identity"
                                       and ev["content"].get("call_id") == call.call_id, timeout=15)
    content = first["content"]
    assert first["sender"] == DESK_GHOST
    assert content["version"] == "1" and content["party_id"] == call.invite["content"]["party_id"]
    assert content["asserted_identity"] == {"id": DESK_GHOST, "display_name": "Front Desk", "avatar_url": None}
    # the mid-call UPDATE asserts someone else (a transfer): announced once more, in both event types
    await alice.wait_for(lambda: len(identities(alice, call.room_id, call.call_id)) >= 4, 20, "second identity")
    seen = identities(alice, call.room_id, call.call_id)
    assert sorted(t for t, _ in seen) == sorted(ASSERTED * 2)
    latest = [c["asserted_identity"] for t, c in seen if t == "m.call.asserted_identity"][-1]
    assert latest == {"id": SALES_GHOST, "display_name": "Sales", "avatar_url": None}
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


async def test_privacy_id_withholds_the_asserted_identity(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    rtp_peer.start_sending(seconds=30)
    sipp = await phone(e2e, "caller_wait_bye.xml", "-key", "rtp_port", str(rtp_peer.port),
                       replace=with_header(PAI_LINE + "Privacy: id\n"))
    call = await alice.wait_incoming_call(timeout=40)
    assert call.invite["sender"] == UNKNOWN_GHOST
    await call.answer()
    await call.wait_select_answer(timeout=15)
    await call.wait_for_frames(25, timeout=20)  # well after the select: an announcement would be here by now
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)
    assert identities(alice, call.room_id, call.call_id) == []


async def test_pai_from_an_untrusted_digest_authenticated_source_is_ignored(e2e: E2E) -> None:
    bridge = await e2e.bridge(auth_only)
    alice = await alice_client(e2e)
    sipp = await phone(e2e, "caller_auth.xml", "-au", "pbx", "-ap", "s3cret",
                       replace={"STATUS": "603", "BODY": GOOD_SDP, **with_header(PAI_LINE)})
    call = await alice.wait_incoming_call(timeout=40)
    assert call.invite["sender"] == CALLER_GHOST  # From, not the asserted number
    await call.reject()
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


def caller_ids(mode: str, entry: Any) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        data["sip"]["trunk"]["identity_header"] = mode
        data["bridge"]["caller_ids"] = {"@alice:bridge.test": entry, "@bob:bridge.test": "+15550002222"}

    return apply


async def trunk_with(e2e: E2E, scenario: str, replace: dict[str, str], *args: str) -> SippProcess:
    text = (SCENARIOS / scenario).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    path = e2e.tmp / f"edited_{scenario}"
    path.write_text(text)
    sipp = SippProcess(path, local_port=e2e.plan.trunk_port, extra_args=list(args), timeout=60,
                       workdir=e2e.tmp / "sipp")
    await e2e.own(sipp).start()
    return sipp


async def test_outbound_invite_asserts_the_users_number_and_the_trunks_pai_is_announced(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge(caller_ids("pai", "+15550001111"))
    rtp_peer.start_sending(seconds=30)
    answered_by = 'P-Asserted-Identity: "Switchboard" <sip:+15551234000@127.0.0.1>\nContent-Type: application/sdp'
    sipp = await trunk_with(e2e, "trunk_answer.xml", {"Content-Type: application/sdp": answered_by},
                            "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await alice.create_dm(GHOST)
    await alice.wait_for_membership(room, GHOST, "join", timeout=30)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    ident = await alice.wait_for_event(room, lambda ev: ev.get("type") == "m.call.asserted_identity", timeout=15)
    assert ident["content"]["call_id"] == call.call_id
    assert ident["content"]["asserted_identity"]["display_name"] == "Switchboard"
    assert ident["content"]["asserted_identity"]["id"] == "@sip_15551234000:bridge.test"
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    invite = sipp.messages.split("INVITE sip:", 1)[1].split("\n\n", 1)[0]
    assert "P-Asserted-Identity: <sip:+15550001111@127.0.0.1;user=phone>" in invite, invite
    assert "Privacy:" not in invite and "P-Preferred-Identity" not in invite
    await assert_released(bridge)


async def test_outbound_invite_can_prefer_an_identity_and_withhold_it(e2e: E2E) -> None:
    bridge = await e2e.bridge(caller_ids("ppi", {"number": "+15550001111", "withhold": True}))
    text = (SCENARIOS / "trunk_reject.xml").read_text().replace("STATUS PHRASE", "486 Busy Here")
    path = e2e.tmp / "trunk_reject_486.xml"
    path.write_text(text)
    sipp = e2e.own(SippProcess(path, local_port=e2e.plan.trunk_port, timeout=60, workdir=e2e.tmp / "sipp"))
    await sipp.start()
    alice = await e2e.client("alice")
    room = await alice.create_dm(GHOST)
    await alice.wait_for_membership(room, GHOST, "join", timeout=30)
    call = await alice.place_call(room, GHOST)
    await call.wait_hangup_or_reject(timeout=30)
    assert await sipp.wait() == 0, sipp.report()
    invite = sipp.messages.split("INVITE sip:", 1)[1].split("\n\n", 1)[0]
    assert "P-Preferred-Identity: <sip:+15550001111@127.0.0.1;user=phone>" in invite, invite
    assert "Privacy: id" in invite and "P-Asserted-Identity" not in invite
    await assert_released(bridge)
