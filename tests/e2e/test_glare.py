"""Glare, end to end: the Matrix user calls a number at the same moment that number calls them, in the same
portal. The phone's INVITE (sipp) and the user's m.call.invite (aiortc client) leave within a few ms of each
other; whichever reaches the bridge first, the call with the lesser call_id wins (the spec's rule), the other is
ended on both sides, and the winner has audio."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bridge.app import Bridge
from tests.e2e.conftest import E2E, SCENARIOS, assert_released, eventually
from tests.harness.matrix_client import MatrixTestClient, OutgoingCall
from tests.harness.rtp_peer import RtpPeer
from tests.harness.sipp import SippProcess

pytestmark = pytest.mark.e2e

DIALLED = "18005550100"
PHONE = "15557654321"  # calls alice and is called by her: one portal
PHONE_GHOST = f"@sip_{PHONE}:bridge.test"
ALICE = "@alice:bridge.test"
LESSER = "0000glare"  # sorts before any call_id the bridge makes (they start with a millisecond timestamp)
GREATER = "zzzzglare"  # sorts after


def route_to_alice(data: dict[str, Any]) -> None:
    data["sip"]["inbound"]["routes"] = [{"number": DIALLED, "users": [ALICE]}]


async def start_sipp(e2e: E2E, sipp: SippProcess) -> SippProcess:
    await e2e.own(sipp).start()
    return sipp


def phone(e2e: E2E, scenario: str, *args: str, replace: dict[str, str] | None = None) -> SippProcess:
    path = SCENARIOS / scenario
    if replace:
        text = path.read_text()
        for old, new in replace.items():
            text = text.replace(old, new)
        path = e2e.tmp / f"glare-{scenario}"
        path.write_text(text)
    return SippProcess(path, remote=("127.0.0.1", e2e.plan.sip_port), service=DIALLED, timeout=60,
                       extra_args=["-key", "caller", PHONE, "-key", "caller_name", "Bob Phone", *args],
                       workdir=e2e.tmp / "sipp-phone")


def trunk(e2e: E2E, scenario: str, *args: str) -> SippProcess:
    return SippProcess(SCENARIOS / scenario, local_port=e2e.plan.trunk_port, extra_args=list(args), timeout=60,
                       workdir=e2e.tmp / "sipp-trunk")


async def alice_in_portal(e2e: E2E) -> tuple[MatrixTestClient, str]:
    alice = await e2e.client("alice")
    await alice.start_sync(auto_join=True)
    room = await alice.create_dm(PHONE_GHOST)
    await alice.wait_for_membership(room, PHONE_GHOST, "join", timeout=30)
    return alice, room


def ghost_invites(alice: MatrixTestClient, room: str) -> list[str]:
    return [ev["content"]["call_id"] for ev in alice.events if ev.get("room_id") == room
            and ev.get("type") == "m.call.invite" and ev.get("sender") == PHONE_GHOST]


async def both_calls(bridge: Bridge, the_phone: SippProcess, place: Awaitable[OutgoingCall],
                     phone_first: bool) -> OutgoingCall:
    """Both sides at once (the phone's INVITE and alice's m.call.invite within a few ms), or, to pin down the
    other arrival order, the phone's call registered by the bridge before alice's invite is sent."""
    if phone_first:
        await the_phone.start()
        await eventually(lambda: bool(bridge.calls.inbound), 20, "the phone's call at the bridge")
        return await place
    _, call = await asyncio.gather(the_phone.start(), place)
    return call


def hangup_of(call_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda ev: ev.get("type") == "m.call.hangup" and ev["content"].get("call_id") == call_id


@pytest.mark.parametrize("phone_first", [False, True], ids=["together", "phone_first"])
async def test_glare_matrix_call_with_lesser_call_id_wins_and_phone_invite_gets_486(
    e2e: E2E, rtp_peer: RtpPeer, phone_first: bool
) -> None:
    bridge = await e2e.bridge(route_to_alice)
    alice, room = await alice_in_portal(e2e)
    rtp_peer.start_sending(seconds=40)
    the_trunk = await start_sipp(e2e, trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port)))
    the_phone = phone(e2e, "caller_expect_final.xml", replace={
        "STATUS": "486", "BODY": GOOD_SDP})
    # Both sides at once: the phone's INVITE and alice's m.call.invite within a few ms.
    e2e.own(the_phone)
    call = await both_calls(bridge, the_phone, alice.place_call(room, PHONE_GHOST, call_id=LESSER), phone_first)
    assert await the_phone.wait() == 0, the_phone.report()  # the phone's INVITE lost: 486, ACKed
    assert "SIP/2.0 486 Busy Here" in the_phone.messages
    await call.wait_answer(timeout=30)
    await call.wait_for_tone(1000.0, timeout=30, min_frames=50)  # the winner has audio both ways
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP packets at the trunk")
    # If the bridge had already invited alice for the phone's call, that invite was hung up.
    for lost in ghost_invites(alice, room):
        await alice.wait_for_event(room, hangup_of(lost), timeout=10)
    await call.hangup()
    assert await the_trunk.wait() == 0, the_trunk.report()
    await assert_released(bridge)
    row = await bridge.matrix.call_log.get(LESSER)
    assert row is not None and row.end_reason == "matrix_user_hangup"


def slow_first_media(bridge: Bridge, delay: float) -> asyncio.Event:
    """The next call's media takes ``delay`` s longer to open its RTP port (a busy media worker or rtpengine);
    the event is set when that opening starts."""
    manager: Any = bridge.calls
    factory = manager.media_factory
    opening = asyncio.Event()

    class SlowOnce:
        def new(self, *args: Any, **kwargs: Any) -> Any:
            media = factory.new(*args, **kwargs)
            if opening.is_set():
                return media
            open_rtp = media.open_rtp

            async def slow_open_rtp() -> Any:
                opening.set()
                await asyncio.sleep(delay)
                return await open_rtp()

            media.open_rtp = slow_open_rtp
            return media

        def __getattr__(self, name: str) -> Any:
            return getattr(factory, name)

    manager.media_factory = SlowOnce()
    return opening


@pytest.mark.parametrize("order", ["together", "phone_first", "phone_during_setup"])
async def test_glare_phone_call_with_lesser_call_id_wins_and_trunk_invite_is_cancelled(
    e2e: E2E, rtp_peer: RtpPeer, order: str
) -> None:
    bridge = await e2e.bridge(route_to_alice)
    alice, room = await alice_in_portal(e2e)
    rtp_peer.start_sending(seconds=40)
    the_trunk = await start_sipp(e2e, trunk(e2e, "trunk_ring_until_cancel.xml"))
    the_phone = phone(e2e, "caller_talk.xml", "-key", "rtp_port", str(rtp_peer.port), "-d", "3000")
    e2e.own(the_phone)
    place = alice.place_call(room, PHONE_GHOST, call_id=GREATER)
    if order == "phone_during_setup":
        # The phone's INVITE arrives while alice's call is still opening its media, before its INVITE went out:
        # the call that loses must still CANCEL that INVITE once it is sent, not leave the trunk ringing.
        opening = slow_first_media(bridge, 1.5)
        placing = asyncio.ensure_future(place)
        await asyncio.wait_for(opening.wait(), 20)
        await the_phone.start()
        call = await placing
    else:
        call = await both_calls(bridge, the_phone, place, order == "phone_first")
    # alice's call lost: refused in Matrix, and its INVITE to the trunk (if one went out) cancelled.
    end = await call.wait_hangup_or_reject(timeout=30)
    assert end["type"] == "m.call.reject" and end["content"]["reason"] == "replaced"
    incoming = await alice.wait_incoming_call(room, timeout=30)
    assert incoming.invite["sender"] == PHONE_GHOST and incoming.call_id < GREATER
    await incoming.answer()
    await incoming.wait_for_tone(1000.0, timeout=30, min_frames=50)
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP packets at the phone")
    await incoming.wait_hangup(timeout=30)  # the phone hangs up after its 3 s
    assert await the_phone.wait() == 0, the_phone.report()
    await assert_released(bridge)
    row = await bridge.matrix.call_log.get(GREATER)
    if row is not None:  # alice's invite reached the bridge first and was dialled: its INVITE was cancelled
        assert row.end_reason == "glare_lost"
        assert await the_trunk.wait() == 0, the_trunk.report()  # 200 CANCEL + 487, no mismatch
        assert "CANCEL_MISMATCH" not in the_trunk.logs
    else:  # the phone's INVITE came first: alice's invite was refused before any SIP went out
        assert order != "phone_during_setup"
        assert "INVITE sip:" not in the_trunk.messages


GOOD_SDP = ("v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
