"""RFC 3262 PRACK (both roles) and RFC 3261 14.2 overlapping re-INVITEs (491 / 500), between real
UserAgents on loopback and against a raw UDP peer that never PRACKs."""

from __future__ import annotations

import asyncio
import itertools

from bridge.sip.dialog import Dialog
from bridge.sip.message import Response, parse_message
from bridge.sip.server import ServerInvite, ServerRequest
from tests.harness.sip_ua import (
    SDP_ANSWER,
    SDP_OFFER,
    RawUdpPeer,
    fast_settings,
    raw_request,
    running_ua,
    uri_of,
    wait_for,
)


async def test_reliable_180_is_pracked_once_and_the_call_then_answered() -> None:
    async def on_invite(si: ServerInvite) -> None:
        await si.respond(180)
        await asyncio.sleep(0.3)
        await si.respond(200, body=SDP_ANSWER)

    async with running_ua(fast_settings(prack="supported"), on_invite=on_invite) as b, \
            running_ua(fast_settings(prack="required")) as a:
        seen_b: list[str] = []
        b.on_message_observed = lambda direction, what: seen_b.append(f"{direction} {what}")
        call = a.invite(uri_of(b), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        provisional: list[Response] = []
        call.on_provisional = provisional.append
        assert call.request.headers.get("Require") == "100rel"
        final = await asyncio.wait_for(call.wait_final(), 10)
        assert final.status == 200
        assert [r.status for r in provisional] == [180]
        assert provisional[0].headers.get("Require") == "100rel" and provisional[0].headers.get("RSeq")
        assert seen_b.count("in PRACK") == 1
        # the 180 was not retransmitted after its PRACK (the 0.3 s hold is 6 * T1)
        assert seen_b.count("out 180") == 1
        assert call.dialog is not None
        await call.dialog.bye()


async def test_2xx_waits_for_the_prack_of_a_reliable_183_with_sdp() -> None:
    async def on_invite(si: ServerInvite) -> None:
        await si.respond(183, body=SDP_ANSWER)
        await si.respond(200, body=SDP_ANSWER)  # held back until the 183's PRACK

    async with running_ua(fast_settings(prack="supported"), on_invite=on_invite) as b, \
            running_ua(fast_settings(prack="required")) as a:
        seen_b: list[str] = []
        b.on_message_observed = lambda direction, what: seen_b.append(f"{direction} {what}")
        call = a.invite(uri_of(b), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        early: list[Response] = []
        call.on_provisional = early.append
        assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
        assert [r.status for r in early] == [183] and early[0].body == SDP_ANSWER
        assert seen_b.index("in PRACK") < seen_b.index("out 200")
        assert call.dialog is not None
        await call.dialog.bye()


async def test_reliable_180_without_prack_is_retransmitted_doubling_then_504() -> None:
    invites: list[ServerInvite] = []

    async def on_invite(si: ServerInvite) -> None:
        invites.append(si)
        await si.respond(180)

    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings(prack="supported"), on_invite=on_invite) as b:
            target = b.bound_address("udp")
            peer.send(raw_request("INVITE", target, via_port=peer.port, body=SDP_OFFER.decode(),
                                  extra="Require: 100rel\r\n"), target)
            await peer.wait_for_message("SIP/2.0 504", timeout=10)
            ringing = peer.messages("SIP/2.0 180")
            assert len(ringing) >= 5
            gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(ringing)]
            assert all(b > a * 1.5 for a, b in itertools.pairwise(gaps))  # T1, 2T1, 4T1 ...
            first = parse_message(ringing[0][1])
            assert isinstance(first, Response) and first.headers.get("RSeq")
            assert first.headers.get("Require") == "100rel"
            assert invites[0].cancelled.is_set()  # the application sees the given-up INVITE end
    finally:
        peer.close()


async def test_require_100rel_is_refused_with_420_when_prack_is_off() -> None:
    async with running_ua(fast_settings(prack="off")) as b, running_ua(fast_settings(prack="required")) as a:
        call = a.invite(uri_of(b), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        final = await asyncio.wait_for(call.wait_final(), 10)
        assert final.status == 420 and final.headers.get("Unsupported") == "100rel"


class SlowCallee:
    """Holds its answer to re-INVITEs for `hold` seconds."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.dialog: Dialog | None = None

    async def on_invite(self, si: ServerInvite) -> None:
        self.dialog = await si.respond(200, body=SDP_ANSWER)
        assert self.dialog is not None
        self.dialog.on_request = self.in_dialog

    async def in_dialog(self, req: ServerRequest | ServerInvite) -> None:
        if req.method == "INVITE":
            await asyncio.sleep(self.hold)
        await req.respond(200, body=SDP_ANSWER if req.method == "INVITE" else b"")


async def test_reinvite_crossing_ours_gets_491_and_a_second_overlapping_one_500() -> None:
    callee = SlowCallee(hold=0.6)

    async def answer(req: ServerRequest | ServerInvite) -> None:
        await req.respond(200, body=SDP_ANSWER if req.method == "INVITE" else b"")

    async with running_ua(fast_settings(), on_invite=callee.on_invite) as b, running_ua(fast_settings()) as a:
        call = a.invite(uri_of(b), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
        assert call.dialog is not None and callee.dialog is not None
        call.dialog.on_request = answer
        ours = asyncio.create_task(call.dialog.reinvite(SDP_OFFER))  # the callee holds it 0.6 s
        await wait_for(lambda: callee.dialog is not None and callee.dialog.invite_in_pending, 5)
        # the callee's own re-INVITE meets the caller's pending one: 491 (14.2)
        crossing = await asyncio.wait_for(callee.dialog.reinvite(SDP_ANSWER), 5)
        assert crossing.status == 491
        # a second re-INVITE from the caller while the callee still works on the first: 500 + Retry-After
        second = await asyncio.wait_for(call.dialog.reinvite(SDP_OFFER), 5)
        assert second.status == 500 and second.headers.get("Retry-After") is not None
        assert (await asyncio.wait_for(ours, 5)).status == 200
        await call.dialog.bye()
