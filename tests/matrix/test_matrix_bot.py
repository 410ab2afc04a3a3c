"""The bridge bot in a real Synapse: joins permitted users' DMs, refuses others, answers help and dial."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.matrix_client import MatrixHttpError, MatrixTestClient
from tests.matrix.matrix_env import SERVER, MatrixEnv, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")
BOT = f"@sipbot:{SERVER}"


def notices(client: MatrixTestClient, room_id: str) -> list[str]:
    return [e["content"].get("body", "") for e in client.events
            if e.get("room_id") == room_id and e.get("sender") == BOT and e["type"] == "m.room.message"
            and e["content"].get("msgtype") == "m.notice"]


async def wait_notice(client: MatrixTestClient, room_id: str, count: int) -> list[str]:
    await client.wait_for(lambda: len(notices(client, room_id)) >= count, timeout=30, what=f"{count} notices")
    return notices(client, room_id)


async def bot_dm(env: MatrixEnv) -> str:
    room = await env.alice.create_dm(BOT)
    await wait_notice(env.alice, room, 1)  # the greeting once joined
    return room


async def test_bot_joins_a_permitted_users_dm_and_greets(env: MatrixEnv) -> None:
    room = await bot_dm(env)
    assert "help" in notices(env.alice, room)[0]


async def test_bot_refuses_a_non_permitted_user(env: MatrixEnv) -> None:
    room = await env.mallory.create_dm(BOT)

    async def declined() -> dict[str, Any] | None:
        try:
            state = await env.mallory.request("GET", f"/rooms/{room}/state/m.room.member/{BOT}")
        except MatrixHttpError:
            return None
        return state if state.get("membership") == "leave" else None

    state = await eventually(declined, what="bot declines")
    assert state["reason"] == "You are not allowed to use this bridge"


async def test_help_lists_the_commands(env: MatrixEnv) -> None:
    room = await bot_dm(env)
    await env.alice.send_text(room, "help")
    text = (await wait_notice(env.alice, room, 2))[-1]
    assert "help" in text and "dial <number>" in text


async def test_unknown_command_gets_a_hint(env: MatrixEnv) -> None:
    room = await bot_dm(env)
    await env.alice.send_text(room, "what can you do")
    assert "help" in (await wait_notice(env.alice, room, 2))[-1]


async def test_dial_creates_the_dm_with_the_ghost_and_invites_the_user(env: MatrixEnv) -> None:
    room = await bot_dm(env)
    await env.alice.send_text(room, "dial +1 (555) 123-4567")
    reply = (await wait_notice(env.alice, room, 2))[-1]
    assert "+1 555 123 4567" in reply and "invited you" in reply
    portal = await env.side.portals.get_by_pair(f"@alice:{SERVER}", "15551234567")
    assert portal is not None and portal.room_id in reply
    await env.alice.wait_for(lambda: portal.room_id in env.alice.invited_rooms, timeout=30, what="invite")
    invite_state = env.alice.invited_rooms[portal.room_id]
    assert any(e["type"] == "m.room.member" and e.get("sender") == f"@sip_15551234567:{SERVER}"
               for e in invite_state)
    await env.alice.join(portal.room_id)
    # Dialling again reuses the chat.
    await env.alice.send_text(room, "dial 15551234567")
    assert "already have a direct chat" in (await wait_notice(env.alice, room, 3))[-1]


@pytest.mark.parametrize(("command", "expected"), [
    ("dial", "Usage: dial <number>"),
    ("dial call-me-maybe", "is not a phone number"),
    ("dial +1 900 555 0100", "blocked"),
])
async def test_dial_refuses_bad_or_blocked_numbers(env: MatrixEnv, command: str, expected: str) -> None:
    room = await bot_dm(env)
    await env.alice.send_text(room, command)
    assert expected in (await wait_notice(env.alice, room, 2))[-1]


async def test_call_event_in_a_non_portal_room_does_not_reach_the_handler(env: MatrixEnv) -> None:
    room = await bot_dm(env)
    await env.alice.send_event(room, "m.call.invite", {"call_id": "np", "party_id": "A", "version": "1",
                                                       "lifetime": 60000, "offer": {"type": "offer", "sdp": ""}})
    await env.alice.send_text(room, "help")  # same room, handled in order after the call event
    await wait_notice(env.alice, room, 2)
    assert env.recorder.calls_in(room) == []
