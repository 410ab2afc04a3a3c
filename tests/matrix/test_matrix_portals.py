"""Ghost invites, portal creation for inbound calls, membership waiting, sending as the ghost (real Synapse)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from bridge.call.dial_permissions import dial_permissions_for
from bridge.config import parse_config
from tests.harness.matrix_client import MatrixHttpError, MatrixTestClient
from tests.matrix.matrix_env import SERVER, MatrixEnv, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def member_state(client: MatrixTestClient, room_id: str, mxid: str) -> dict[str, Any] | None:
    try:
        return await client.request("GET", f"/rooms/{room_id}/state/m.room.member/{mxid}")
    except MatrixHttpError:
        return None


async def membership_is(client: MatrixTestClient, room_id: str, mxid: str, membership: str) -> dict[str, Any] | None:
    state = await member_state(client, room_id, mxid)
    return state if state and state.get("membership") == membership else None


async def test_permitted_user_inviting_a_ghost_gets_it_joined_and_a_portal(env: MatrixEnv) -> None:
    number = "15551230001"
    room = await env.alice.create_dm(env.ghost(number))
    await eventually(lambda: membership_is(env.alice, room, env.ghost(number), "join"), what="ghost join")
    portal = await eventually(lambda: env.side.portals.get(room), what="portal")
    assert (portal.mxid, portal.number) == (f"@alice:{SERVER}", number)


async def test_non_permitted_user_invite_is_declined_with_a_reason(env: MatrixEnv) -> None:
    number = "15551230002"
    room = await env.mallory.create_dm(env.ghost(number))
    state = await eventually(lambda: membership_is(env.mallory, room, env.ghost(number), "leave"),
                             what="ghost declines")
    assert state["reason"] == "You are not allowed to use this bridge"
    assert await env.side.portals.get(room) is None


async def test_invite_to_a_blocked_number_is_declined_with_the_dial_plan_reason(env: MatrixEnv) -> None:
    room = await env.alice.create_dm(env.ghost("19005550100"))
    state = await eventually(lambda: membership_is(env.alice, room, env.ghost("19005550100"), "leave"),
                             what="ghost declines")
    assert "blocked" in state["reason"]
    assert await env.side.portals.get(room) is None


async def test_invite_refused_by_the_inviters_own_dial_permissions_is_declined(env: MatrixEnv) -> None:
    data = copy.deepcopy(env.config_data)
    data["bridge"]["dial_permissions"] = {f"@alice:{SERVER}": {"blocked": ["^1555999"]}}
    portals = env.side.portals
    saved, portals.dial_rules = portals.dial_rules, dial_permissions_for(parse_config(data))
    try:
        ghost = env.ghost("15559990001")
        room = await env.alice.create_dm(ghost)
        state = await eventually(lambda: membership_is(env.alice, room, ghost, "leave"), what="ghost declines")
        assert state["reason"] == "+15559990001 is blocked by your dial permissions"
        assert await portals.get(room) is None
    finally:
        portals.dial_rules = saved


async def test_ghost_leaves_a_group_room_that_is_not_a_direct_chat(env: MatrixEnv) -> None:
    number = "15551230003"
    data = await env.alice.request("POST", "/createRoom", {"preset": "private_chat",
                                                            "invite": [f"@mallory:{SERVER}"]})
    room = data["room_id"]
    await env.mallory.join(room)
    await env.alice.request("POST", f"/rooms/{room}/invite", {"user_id": env.ghost(number)})
    state = await eventually(lambda: membership_is(env.alice, room, env.ghost(number), "leave"), what="ghost leaves")
    assert "direct chats" in state["reason"]
    assert await env.side.portals.get(room) is None


async def test_inviting_the_ghost_again_in_a_new_dm_moves_the_portal(env: MatrixEnv) -> None:
    number = "15551230004"
    first = await env.alice.create_dm(env.ghost(number))
    await eventually(lambda: env.side.portals.get(first), what="first portal")
    second = await env.alice.create_dm(env.ghost(number))
    await eventually(lambda: env.side.portals.get(second), what="second portal")
    assert await env.side.portals.get(first) is None
    assert (await env.side.portals.get_by_pair(f"@alice:{SERVER}", number)).room_id == second  # type: ignore[union-attr]


async def test_user_leaving_a_portal_reaches_on_member_change(env: MatrixEnv) -> None:
    number = "15551230005"
    room = await env.alice.create_dm(env.ghost(number))
    await eventually(lambda: env.side.portals.get(room), what="portal")
    await env.alice.leave(room)
    await eventually(lambda: (room, f"@alice:{SERVER}", "leave") in env.recorder.members, what="leave reported")


async def test_inbound_portal_is_created_reused_and_waited_for(env: MatrixEnv) -> None:
    number = "15557654321"
    alice = f"@alice:{SERVER}"
    portal = await env.side.portals.get_or_create_portal(alice, number, caller_name="Bob")
    assert (portal.mxid, portal.number) == (alice, number)
    await eventually(lambda: portal.room_id in env.alice.invited_rooms, what="alice invited")
    # Invited but not joined: the same portal is reused (no second room for a second call).
    assert (await env.side.portals.get_or_create_portal(alice, number)).room_id == portal.room_id
    assert await env.side.portals.is_joined(portal.room_id, alice) is False
    assert await env.side.portals.wait_joined(portal.room_id, alice, timeout=0.5) is False
    waiter = asyncio.ensure_future(env.side.portals.wait_joined(portal.room_id, alice, timeout=60))
    await env.alice.join(portal.room_id)
    assert await waiter is True
    assert await env.side.portals.is_joined(portal.room_id, alice) is True
    assert await env.side.portals.wait_joined(portal.room_id, alice, timeout=5) is True  # already joined
    # The ghost marked the room as a DM with alice in its m.direct account data.
    ghost_intent = await env.side.ghosts.intent_for(number)
    direct = await ghost_intent.get_account_data("m.direct")
    assert portal.room_id in direct[alice]
    # Sending as the ghost: alice sees the call event and the notice from the ghost.
    event_id = await env.side.portals.send_call_event(portal.room_id, number, "m.call.invite", {
        "call_id": "in1", "party_id": "bridge", "version": "1", "lifetime": 60000,
        "offer": {"type": "offer", "sdp": "v=0\r\n"}}).result
    await env.side.portals.send_notice(portal.room_id, number, "Missed call").result
    seen = await env.alice.wait_for(
        lambda: [e for e in env.alice.events if e.get("room_id") == portal.room_id
                 and e.get("sender") == env.ghost(number) and e["type"] in ("m.call.invite", "m.room.message")],
        timeout=30, what="ghost events")
    await env.alice.wait_for(lambda: len([e for e in env.alice.events if e.get("room_id") == portal.room_id
                                          and e.get("sender") == env.ghost(number)
                                          and e["type"] in ("m.call.invite", "m.room.message")]) >= 2,
                             timeout=30, what="both ghost events")
    assert seen[0]["event_id"] == event_id
    # After the user leaves, the next inbound call gets a fresh room.
    await env.alice.leave(portal.room_id)
    await eventually(lambda: (portal.room_id, alice, "leave") in env.recorder.members, what="leave seen")
    fresh = await env.side.portals.get_or_create_portal(alice, number)
    assert fresh.room_id != portal.room_id


async def test_wait_joined_is_false_when_the_user_rejects_the_invite(env: MatrixEnv) -> None:
    alice = f"@alice:{SERVER}"
    portal = await env.side.portals.get_or_create_portal(alice, "15557650000")
    waiter = asyncio.ensure_future(env.side.portals.wait_joined(portal.room_id, alice, timeout=60))
    await eventually(lambda: portal.room_id in env.alice.invited_rooms, what="alice invited")
    await env.alice.leave(portal.room_id)  # rejecting an invite is a leave
    assert await waiter is False


async def test_withheld_caller_id_uses_the_unknown_ghost(env: MatrixEnv) -> None:
    alice = f"@alice:{SERVER}"
    portal = await env.side.portals.get_or_create_portal(alice, None)
    assert portal.number == "unknown"
    profile = await env.alice.request("GET", f"/profile/@sip_unknown:{SERVER}")
    assert profile["displayname"] == "Unknown caller"
    # Nobody can invite the unknown ghost to call it.
    room = await env.alice.create_dm(f"@sip_unknown:{SERVER}")
    state = await eventually(lambda: membership_is(env.alice, room, f"@sip_unknown:{SERVER}", "leave"),
                             what="unknown ghost declines")
    assert "withheld" in state["reason"]


async def test_concurrent_portal_requests_for_one_pair_create_one_room(env: MatrixEnv) -> None:
    alice = f"@alice:{SERVER}"
    results = await asyncio.gather(*(env.side.portals.ensure_portal(alice, "15557651111") for _ in range(3)))
    assert len({portal.room_id for portal, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
