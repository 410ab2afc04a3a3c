"""SIP -> Matrix call: the I/O half of call/inbound.py's state machine.

The bridge is the Matrix caller: its ghost sends m.call.invite with an aiortc offer holding all
candidates, the first device to answer is selected, and only then does SIP get its 200.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..call import events as ev
from ..call.actions import (
    Action,
    Finish,
    Renegotiate,
    SendMatrixEnding,
    SendMatrixInvite,
    SendSelectAnswer,
    SendSipBye,
    SendSipResponse,
    StartMedia,
)
from ..call.candidates import CandidateBuffer
from ..call.inbound import InboundCall
from ..call.reasons import aggregate_fork_finals
from ..logs import CallLogger
from ..media.call_media import CallMedia
from ..sip.dialog import Dialog
from ..sip.server import ServerRequest
from ..sip.ua import ServerInvite
from .call_state import CallStateWriter, NoCallState, inbound_record
from .caller_id import CallerIdAnnouncer, CallerIdContext
from .in_dialog import OnTransferRequest, serve_in_dialog
from .phone_hold import PhoneHold
from .ports import CallLogPort, CallObserver, CallStatePort, MatrixPort, MatrixUnavailable, NullObserver, PortalInfo
from .renegotiation import Renegotiator
from .session import CallSession, new_call_id, new_party_id


class InboundFork:
    """One inbound INVITE ringing one or more Matrix users (one branch each).

    The SIP caller sees one 180, then either the 200 of the first branch whose user answered (the other
    branches are told to stop ringing) or, once every branch has failed, one aggregated final response.
    """

    def __init__(self, sip: ServerInvite) -> None:
        self.sip = sip
        self.branches: list[InboundSession] = []
        self.winner: InboundSession | None = None
        self._ringing_sent = False
        self._finals: dict[int, int] = {}  # id(branch) -> its final status
        self._retry_after: int | None = None  # the longest Retry-After a failed branch asked for

    async def respond(self, branch: InboundSession, status: int, reason: str, *,
                      retry_after_s: int | None = None) -> Dialog | None:
        if status < 200:
            if not self._ringing_sent and self.winner is None:
                self._ringing_sent = True
                await self.sip.respond(status, reason)
            return None
        if status < 300:
            if self.winner is not None or self.sip.cancelled.is_set():
                return None
            self.winner = branch
            for other in self.branches:
                if other is not branch:
                    other.post(other.machine.answered_elsewhere)
            return await self.sip.respond(status, reason, body=branch.local_sip_sdp,
                                          headers=[("Content-Type", "application/sdp")])
        self._finals[id(branch)] = status
        if retry_after_s is not None:
            self._retry_after = max(retry_after_s, self._retry_after or 0)
        if self.winner is None and len(self._finals) == len(self.branches):
            final, phrase = aggregate_fork_finals(list(self._finals.values()))
            headers = [("Retry-After", str(self._retry_after))] if final == 503 and self._retry_after else []
            await self.sip.respond(final, phrase, headers=headers)
        return None


class InboundSession(CallSession):
    def __init__(
        self, *, server_invite: ServerInvite, callee: str, caller_number: str | None, caller_name: str | None,
        media: CallMedia, matrix: MatrixPort, call_log: CallLogPort, lifetime_ms: int, ring_timeout_s: float,
        on_finished: Callable[[CallSession], None], log: CallLogger, fork: InboundFork,
        call_state: CallStatePort | None = None, caller_id: CallerIdContext | None = None,
        homeserver_timeout_s: float = 10.0,
        observer: CallObserver | None = None,
    ) -> None:
        self.sip = server_invite
        self.fork = fork
        self.callee = callee
        self.caller_number = caller_number
        self.caller_name = caller_name
        self.call_id = new_call_id()
        self.party_id = new_party_id()
        self.out = ev.OutgoingContent(self.call_id, self.party_id)
        self.machine = InboundCall(callee=callee)
        self.media = media
        self.matrix = matrix
        self.call_log = call_log
        self.observer: CallObserver = observer or NullObserver()
        self.state = CallStateWriter(call_state or NoCallState(), lambda: self.call_id, lambda: inbound_record(self))
        self.rtp_port: int | None = None
        self.lifetime_ms = lifetime_ms
        self.ring_timeout_s = ring_timeout_s
        self.homeserver_timeout_s = homeserver_timeout_s
        self._homeserver_down = False  # the 503 is queued: no 180 for an invite that never reached Matrix
        self.portal: PortalInfo | None = None
        self.dialog: Dialog | None = None
        self.offerless = not server_invite.request.body
        self.answers: dict[str, str] = {}  # party_id -> answer SDP, as they arrive
        self.candidates = CandidateBuffer(max_calls=4)
        self._media_ok = False
        self._select_sent: asyncio.Task[str] | None = None
        self.local_sip_sdp = b""
        self.clog = log  # shared with the media plane: both sides of one call log the same IDs
        self.clog.set_ids(call_id=self.call_id, sip_call_id=server_invite.call_id)
        self.renegotiator = Renegotiator(media, log)
        self.caller_id = None if caller_id is None else CallerIdAnnouncer(
            caller_id, call_id=self.call_id, party_id=self.party_id, format_number=matrix.format_number,
            send=self._send_matrix, log=log)
        self.phone_hold = PhoneHold(media, log, send_offer=self._send_negotiate_offer, spawn=self.spawn, polite=False)
        self.on_transfer_request: OnTransferRequest | None = None  # REFER/NOTIFY (calls/transfer.py)
        super().__init__(self.clog, on_finished)

    @property
    def sip_call_id(self) -> str:
        return self.sip.call_id

    @property
    def room_id(self) -> str | None:
        return self.portal.room_id if self.portal else None

    async def prepare(self) -> None:
        """Prepare media: our answer to the SIP offer, or our offer for an offerless INVITE.

        Raises SdpError for an SDP we cannot accept (the caller answers 488).
        """
        _host, self.rtp_port = await self.media.open_rtp()
        self.media.set_signalling_peer(self.sip.source.addr[0])  # a NATed phone may send RTP from there
        if self.offerless:
            self.local_sip_sdp = self.media.sip_offer_for_offerless()
        else:
            self.local_sip_sdp = self.media.answer_sip_offer(self.sip.request.body)

    def ring(self) -> None:
        """Start the call: find or create the portal, wait for the user, then send the Matrix invite."""
        self.start_worker()
        self.spawn(self.state.save(), "save-call-state")
        self.spawn(self._ring(), "inbound-ring")
        self.spawn(self._watch_cancel(), "sip-cancel-watch")
        self.media.on_failure = lambda reason: self.post(
            lambda: self.machine.media_failed(media_seen=self.media.stats().webrtc_frames_in > 0))

    async def _ring(self) -> None:
        # Each homeserver step has a deadline: with the homeserver down, the caller gets a prompt 503 and
        # everything held for the call (RTP port, WebRTC peer, tasks) is released, instead of ringing forever.
        try:
            async with asyncio.timeout(self.homeserver_timeout_s):
                self.portal = await self.matrix.portal_for_inbound(self.callee, self.caller_number,
                                                                   self.caller_name)
        except Exception as exc:
            self._homeserver_failed("creating the portal room", exc)
            return
        self.clog.info("inbound call from %s for %s in %s", self.caller_number or "anonymous", self.callee,
                       self.portal.room_id)
        await self.call_log.call_started(
            call_id=self.call_id, party_id=self.party_id, sip_call_id=self.sip.call_id, room_id=self.portal.room_id,
            direction="inbound", number=self.caller_number, mxid=self.callee,
        )
        try:
            async with asyncio.timeout(self.homeserver_timeout_s):
                joined = await self.matrix.is_joined(self.portal.room_id, self.callee)
        except Exception as exc:
            self._homeserver_failed("checking membership", exc)
            return
        if not joined:
            self.clog.info("waiting up to %.0fs for %s to join %s", self.ring_timeout_s, self.callee,
                           self.portal.room_id)
            try:
                # Bounded by ring_timeout_s (its look-up included); a homeserver error still ends in 503.
                joined = await self.matrix.wait_joined(self.portal.room_id, self.callee, self.ring_timeout_s)
            except Exception as exc:
                self._homeserver_failed("waiting for the user to join", exc)
                return
        self.post(self.machine.user_joined if joined else self.machine.lifetime_expired)

    def _homeserver_failed(self, step: str, exc: BaseException) -> None:
        self._homeserver_down = True
        detail = f"no answer within {self.homeserver_timeout_s:g}s" if isinstance(exc, TimeoutError) else str(exc)
        self.clog.warning("homeserver unreachable while %s for %s: %s: %s", step, self.callee,
                          type(exc).__name__, detail)
        self.post(self.machine.homeserver_unreachable)

    async def _send_invite(self) -> None:
        assert self.portal is not None
        offer = await self.media.create_webrtc_offer()
        content = self.out.invite(offer, lifetime_ms=self.lifetime_ms, invitee=self.callee, dtmf=True)
        await self.state.save()  # now with the room: recovery can hang the Matrix side up
        try:
            # Delivered or withdrawn: a late invite would ring a user whose caller already got 503.
            await self.matrix.send_call_event(self.portal, "m.call.invite", content,
                                              deliver_within=self.homeserver_timeout_s)
        except MatrixUnavailable as exc:
            self._homeserver_failed("sending the m.call.invite", exc)
            return
        await self.matrix.send_call_event(self.portal, "m.call.candidates", self.out.end_of_candidates())
        self.spawn(self._lifetime(), "invite-lifetime")

    async def _watch_cancel(self) -> None:
        await self.sip.cancelled.wait()
        self.post(self.machine.sip_cancelled)

    async def _lifetime(self) -> None:
        await asyncio.sleep(self.lifetime_ms / 1000)
        self.post(self.machine.lifetime_expired)

    # --- Matrix events for this call ---
    def on_answer(self, sender: str, answer: ev.Answer) -> None:
        self.observer.matrix_answered(self.call_id)
        if answer.party_id is not None and answer.party_id not in self.answers:
            self.answers[answer.party_id] = answer.answer_sdp
        self.post(lambda: self.machine.matrix_answer(sender, answer.party_id))

    def on_candidates(self, sender: str, cands: ev.Candidates) -> None:
        if sender != self.callee:
            return
        selected = self.machine.selected_party
        if selected is not None:
            if cands.party_id == selected:
                real = [c.as_dict() for c in cands.candidates if not c.is_end]
                if real:
                    self.spawn(self.media.add_webrtc_candidates(real), "webrtc-candidates")
            return
        self.candidates.add(self.call_id, cands.party_id, cands.candidates)

    def on_negotiate_answer(self, sender: str, party_id: str | None, sdp: str) -> None:
        """Answer to the bridge's own m.call.negotiate offer (phone hold / resume): only the selected device's."""
        if sender == self.callee and party_id in (None, self.machine.selected_party):
            self.phone_hold.matrix_answer(sdp)

    # --- actions ---
    async def execute(self, action: Action) -> None:
        if isinstance(action, SendMatrixInvite):
            await self._send_invite()
        elif isinstance(action, SendSelectAnswer):
            await self._select(action.party_id)
        elif isinstance(action, SendSipResponse):
            await self._respond(action.status, action.reason, action.retry_after_s)
        elif isinstance(action, StartMedia):
            if self._media_ok and not self.offerless:  # offerless: media starts once the ACK brings the answer
                self.media.start()
        elif isinstance(action, SendSipBye):
            if self.dialog is not None:
                await self.dialog.bye()
        elif isinstance(action, SendMatrixEnding):
            if self.portal is not None:
                await self._send_matrix("m.call.hangup", self.out.hangup(action.ending.reason or "user_hangup"))
        elif isinstance(action, Renegotiate):
            await self._renegotiate(action.offer_sdp)
        elif isinstance(action, Finish):
            self.clog.info("inbound call ended: %s", action.reason)
            await self.call_log.call_ended(self.call_id, action.reason)
            await self.state.delete()

    async def _select(self, party_id: str) -> None:
        """Take this party's answer and tell Matrix which one won.

        The select_answer send is a Synapse round trip (~50 ms); the phone's 200 must not wait for it, so it
        runs as an owned task and later Matrix events of this call wait for it (see _send_matrix).
        """
        assert self.portal is not None
        portal = self.portal
        self._select_sent = self.spawn(
            self.matrix.send_call_event(portal, "m.call.select_answer", self.out.select_answer(party_id)),
            "select-answer")
        if self.caller_id is not None:  # the trusted INVITE's P-Asserted-Identity, after the select (MSC3086)
            self.spawn(self.caller_id.announce(self.caller_id.ctx.initial), "asserted-identity")
        try:
            await self.media.set_webrtc_answer(self.answers[party_id])
            final_sdp = self.media.final_sip_sdp()  # rtpengine: the 200's SDP exists only now
            if final_sdp is not None:
                self.local_sip_sdp = final_sdp
            cands, _ended = self.candidates.take(self.call_id, party_id)
            if cands:
                await self.media.add_webrtc_candidates([c.as_dict() for c in cands])
            self._media_ok = True
        except Exception as exc:
            self.clog.warning("cannot apply the Matrix answer: %s", exc)
            self.post(lambda: self.machine.media_failed(media_seen=False))

    async def _send_negotiate_offer(self, sdp: str) -> None:
        await self._send_matrix("m.call.negotiate", self.out.negotiate("offer", sdp))

    async def _renegotiate(self, offer_sdp: str) -> None:
        if not self.phone_hold.matrix_offer_arrived():
            return

        async def send_answer(sdp: str) -> None:
            await self._send_matrix("m.call.negotiate", self.out.negotiate("answer", sdp))

        direction = await self.renegotiator.matrix_offer(offer_sdp, send_answer)
        if direction is not None:
            self.spawn(self.renegotiator.reinvite(self.dialog, direction), "sip-reinvite")

    async def _send_matrix(self, event_type: str, content: dict[str, Any]) -> None:
        """Send a call event after any select_answer still in flight, so the room sees them in order."""
        assert self.portal is not None
        if self._select_sent is not None and not self._select_sent.done():
            await asyncio.wait([self._select_sent])
        await self.matrix.send_call_event(self.portal, event_type, content)

    async def _respond(self, status: int, reason: str, retry_after_s: int | None = None) -> None:
        if status == 200:
            if not self._media_ok:
                return  # media_failed is queued and will answer SIP
            self.dialog = await self.fork.respond(self, 200, reason)
            if self.dialog is not None:
                self.dialog.on_terminated = self._dialog_terminated
                self.dialog.on_request = self.in_dialog
                await self.state.save()
            await self.call_log.call_answered(self.call_id)
            if self.offerless:
                self.spawn(self._take_ack_answer(), "sip-ack-answer")
        elif status >= 200 or not self._homeserver_down:
            await self.fork.respond(self, status, reason, retry_after_s=retry_after_s)

    async def in_dialog(self, req: ServerRequest | ServerInvite) -> None:
        await serve_in_dialog(self, req)

    async def _take_ack_answer(self) -> None:
        ack = await self.sip.wait_ack(timeout=40)
        if ack is None or not ack.body:
            self.clog.warning("offerless INVITE: ACK carried no SDP answer")
            self.post(lambda: self.machine.media_failed(media_seen=False))
            return
        try:
            self.media.apply_sip_answer(ack.body)
            self.media.start()
        except Exception as exc:
            self.clog.warning("offerless INVITE: bad SDP in ACK: %s", exc)
            self.post(lambda: self.machine.media_failed(media_seen=False))

    def _dialog_terminated(self, reason: str) -> None:
        if reason == "bye_received":
            self.post(self.machine.sip_bye)
        elif reason != "bye_sent":
            self.post(self.machine.sip_dialog_lost)

    async def release(self) -> None:
        await self.media.close()
