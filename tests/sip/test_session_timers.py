"""RFC 4028 session timers between two real UserAgents on loopback, with intervals of a few seconds (the
RFC minimum of 90 s is a config rule, not a SipSettings one): refreshes keep a call up (UPDATE, and re-INVITE
with the same SDP when UPDATE is refused), a silent far end is hung up (BYE + the owner told), 422 is retried,
and a 491 to a refresh is retried after the RFC 3261 14.1 delay."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.sip.dialog import Dialog
from bridge.sip.server import ServerInvite, ServerRequest
from bridge.sip.session_timer import SessionTimerSettings
from tests.harness.sip_ua import SDP_ANSWER, SDP_OFFER, fast_settings, running_ua, uri_of, wait_for


def timers(expires: int, min_se: int = 1) -> Any:
    return fast_settings(session_timer=SessionTimerSettings(enabled=True, expires=expires, min_se=min_se))


class Callee:
    """Answers the INVITE 200 and in-dialog requests as `reply` says (default: 200, SDP for INVITE)."""

    def __init__(self, reply: Any = None) -> None:
        self.dialog: Dialog | None = None
        self.seen: list[tuple[str, bytes]] = []
        self.ended: list[str] = []
        self.reply = reply

    async def on_invite(self, si: ServerInvite) -> None:
        dialog = await si.respond(200, body=SDP_ANSWER)
        assert dialog is not None
        dialog.on_request = self.in_dialog
        dialog.on_terminated = self.ended.append
        self.dialog = dialog

    async def in_dialog(self, req: ServerRequest | ServerInvite) -> None:
        self.seen.append((req.method, req.request.body))
        status = self.reply(req) if self.reply else 200
        if status is not None and not req.responded:
            await req.respond(status, body=SDP_ANSWER if req.method == "INVITE" and status == 200 else b"")


async def answer_200(req: ServerRequest | ServerInvite) -> None:
    if not req.responded:
        await req.respond(200, body=SDP_ANSWER if req.method == "INVITE" else b"")


async def test_updates_from_the_refresher_keep_the_call_up_past_its_interval() -> None:
    callee = Callee()
    async with running_ua(timers(2), on_invite=callee.on_invite) as b, running_ua(timers(2)) as a:
        call = a.invite(uri_of(b), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        ok = await asyncio.wait_for(call.wait_final(), 10)
        assert ok.status == 200 and ok.headers.get("Session-Expires") == "2;refresher=uas"
        assert ok.headers.get("Require") == "timer"
        assert call.dialog is not None and call.dialog.session_timer is not None
        call.dialog.on_request = answer_200
        ended: list[str] = []
        call.dialog.on_terminated = ended.append
        await asyncio.sleep(4.5)  # more than twice the interval
        assert callee.dialog is not None and callee.dialog.session_timer is not None
        assert callee.dialog.session_timer.refreshes >= 3
        assert call.dialog.state == "confirmed" and ended == [] and callee.ended == []
        await call.dialog.bye()


async def test_refresh_falls_back_to_reinvite_with_the_same_sdp_when_update_is_refused() -> None:
    callee = Callee(reply=lambda req: 501 if req.method == "UPDATE" else 200)
    # the callee does not do session timers: the caller refreshes for its own sake (RFC 4028 7.2)
    async with running_ua(fast_settings(), on_invite=callee.on_invite) as b, running_ua(timers(2)) as a:
        call = a.invite(uri_of(b), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        ok = await asyncio.wait_for(call.wait_final(), 10)
        assert ok.status == 200 and "Session-Expires" not in ok.headers
        assert call.dialog is not None
        timer = call.dialog.session_timer
        assert timer is not None and timer.negotiated.we_refresh
        await wait_for(lambda: timer.refreshes >= 2, 8)
        methods = [m for m, _ in callee.seen]
        assert methods[0] == "UPDATE" and methods.count("INVITE") >= 2 and methods.count("UPDATE") == 1
        assert all(body == SDP_OFFER for m, body in callee.seen if m == "INVITE")  # same o= version
        assert call.dialog.state == "confirmed"
        await call.dialog.bye()


async def test_far_end_that_stops_refreshing_is_hung_up_with_bye() -> None:
    callee = Callee()
    async with running_ua(timers(3), on_invite=callee.on_invite) as b, running_ua(timers(3)) as a:
        call = a.invite(uri_of(b), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
        assert call.dialog is not None and callee.dialog is not None
        ended: list[str] = []
        call.dialog.on_terminated = ended.append
        call.dialog.on_request = answer_200
        assert callee.dialog.session_timer is not None
        callee.dialog.session_timer.stop()  # the refresher goes silent (its dialog still answers a BYE)
        started = asyncio.get_running_loop().time()
        await wait_for(lambda: ended == ["session_expired"], 6)
        # the non-refresher ends min(32, 3/3) = 1 s before the 3 s expiry
        assert 1.5 < asyncio.get_running_loop().time() - started < 3.5
        await wait_for(lambda: callee.ended == ["bye_received"], 5)


async def test_refresher_whose_far_end_died_ends_the_call() -> None:
    callee = Callee()
    async with running_ua(timers(2), on_invite=callee.on_invite) as b:
        async with running_ua(timers(2)) as a:
            call = a.invite(uri_of(b), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
            assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
        # the caller's UA is gone without a BYE; the callee refreshes into the void
        assert callee.dialog is not None
        await wait_for(lambda: bool(callee.ended), 8)
        assert callee.ended[0] in ("session_expired", "session_refresh_failed")
        # the owner is told first; the BYE that terminates the dialog runs as a task right after
        dialog = callee.dialog
        await wait_for(lambda: dialog.state == "terminated", 5)


async def test_422_is_retried_with_the_peers_min_se() -> None:
    callee = Callee()
    async with running_ua(timers(4, min_se=3), on_invite=callee.on_invite) as b, running_ua(timers(2)) as a:
        seen: list[str] = []
        a.on_message_observed = lambda direction, what: seen.append(f"{direction} {what}")
        call = a.invite(uri_of(b), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        ok = await asyncio.wait_for(call.wait_final(), 10)
        assert ok.status == 200
        assert "in 422" in seen
        assert call.request.headers.get("Session-Expires") == "3"
        assert call.dialog is not None and call.dialog.session_timer is not None
        assert call.dialog.session_timer.negotiated.interval == 3
        await call.dialog.bye()


async def test_short_interval_from_a_timer_aware_caller_gets_422_with_our_min_se() -> None:
    reached: list[ServerInvite] = []

    async def on_invite(si: ServerInvite) -> None:
        reached.append(si)
        await si.respond(486)

    async with running_ua(timers(200, min_se=100), on_invite=on_invite) as b, running_ua(fast_settings()) as a:
        sent: list[str] = []
        b.on_message_observed = lambda direction, what: sent.append(f"{direction} {what}")
        call = a.invite(uri_of(b), from_uri="sip:alice@example.test", sdp=SDP_OFFER,
                        headers=[("Supported", "timer"), ("Session-Expires", "50")])
        final = await asyncio.wait_for(call.wait_final(), 10)
        assert "out 422" in sent
        # only the retry with our Min-SE as its interval reached the application
        assert [si.request.headers.get("Session-Expires") for si in reached] == ["100"]
        assert final.status == 486


async def test_491_to_a_refresh_is_retried_after_the_glare_delay() -> None:
    answers = iter([491, 200, 200, 200, 200])
    callee = Callee(reply=lambda req: next(answers))
    async with running_ua(fast_settings(), on_invite=callee.on_invite) as b, running_ua(timers(30)) as a:
        call = a.invite(uri_of(b), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
        assert call.dialog is not None and call.dialog.session_timer is not None
        timer = call.dialog.session_timer
        loop = asyncio.get_running_loop()
        timer._refresh_due()  # the refresh now, not in 15 s
        await wait_for(lambda: len(callee.seen) >= 1, 5)
        first = loop.time()
        await wait_for(lambda: timer.refreshes >= 1, 8)
        # the caller owns the Call-ID: 2.1-4 s between the 491 and the retry (RFC 3261 14.1)
        assert 2.0 <= loop.time() - first <= 5.0
        assert [m for m, _ in callee.seen][:2] == ["UPDATE", "UPDATE"]
        await call.dialog.bye()


async def test_callee_whose_caller_was_to_refresh_but_never_does_hangs_up_with_bye() -> None:
    callee = Callee()
    # the caller asks to be the refresher (refresher=uac) and then never refreshes
    async with running_ua(timers(30), on_invite=callee.on_invite) as b, running_ua(fast_settings()) as a:
        call = a.invite(uri_of(b), from_uri="sip:alice@example.test", sdp=SDP_OFFER,
                        headers=[("Supported", "timer"), ("Session-Expires", "3;refresher=uac")])
        ok = await asyncio.wait_for(call.wait_final(), 10)
        assert ok.headers.get("Session-Expires") == "3;refresher=uac"
        assert call.dialog is not None
        caller_ended: list[str] = []
        call.dialog.on_terminated = caller_ended.append
        assert callee.dialog is not None and callee.dialog.session_timer is not None
        assert not callee.dialog.session_timer.negotiated.we_refresh
        await wait_for(lambda: callee.ended == ["session_expired"], 6)
        await wait_for(lambda: caller_ended == ["bye_received"], 5)
