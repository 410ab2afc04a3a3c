"""Matrix -> SIP call: the I/O half of call/outbound.py's state machine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..call import events as ev
from ..call.actions import (
    Action,
    Finish,
    Renegotiate,
    SendMatrixAnswer,
    SendMatrixEnding,
    SendSipBye,
    SendSipCancel,
    StartMedia,
)
from ..call.outbound import OutboundCall
from ..logs import CallLogger
from ..media.call_media import CallMedia
from ..sip.dialog import Dialog
from ..sip.digest import Credentials
from ..sip.errors import SipTimeout, SipTransportError
from ..sip.message import Response
from ..sip.server import ServerInvite, ServerRequest
from ..sip.ua import ClientInvite, UserAgent
from .call_state import CallStateWriter, NoCallState, outbound_record
from .caller_id import CallerIdAnnouncer, CallerIdContext
from .early_media import EarlyMedia
from .in_dialog import OnTransferRequest, serve_in_dialog
from .phone_hold import PhoneHold
from .ports import CallLogPort, CallObserver, CallStatePort, MatrixPort, NullObserver, PortalInfo
from .renegotiation import Renegotiator
from .session import CallSession, new_party_id


@dataclass(frozen=True)
class TrunkTarget:
    """Where and how outbound INVITEs go (built from sip.trunk config)."""

    proxy: str  # outbound proxy URI, e.g. sip:127.0.0.1:5080
    domain: str  # Request-URI host for dialled numbers
    from_uri: str
    from_display: str | None
    credentials: Credentials | None
    scheme: str = "sip"  # "sips" when the proxy is a sips: URI: TLS on every hop (RFC 3261 26.2.1)

    def request_uri(self, number: str) -> str:
        return f"{self.scheme}:{number}@{self.domain}"


class OutboundSession(CallSession):
    def __init__(
        self, *, invite: ev.Invite, sender: str, portal: PortalInfo, number: str, ua: UserAgent, trunk: TrunkTarget,
        media: CallMedia, matrix: MatrixPort, call_log: CallLogPort, failure_notices: bool,
        on_finished: Callable[[CallSession], None], log: CallLogger, call_state: CallStatePort | None = None,
        identity_headers: list[tuple[str, str]] | None = None, caller_id: CallerIdContext | None = None,
        early_media: str = "off",
        observer: CallObserver | None = None,
    ) -> None:
        self.invite = invite
        self.sender = sender
        self.portal = portal
        self.number = number
        self.party_id = new_party_id()
        self.out = ev.OutgoingContent(invite.call_id, self.party_id)
        self.machine = OutboundCall(version=invite.version, caller_party=invite.party_id)
        self.ua = ua
        self.trunk = trunk
        self.media = media
        self.matrix = matrix
        self.call_log = call_log
        self.observer: CallObserver = observer or NullObserver()
        self.state = CallStateWriter(call_state or NoCallState(), lambda: self.call_id, lambda: outbound_record(self))
        self.rtp_port: int | None = None
        self.failure_notices = failure_notices
        self.client_invite: ClientInvite | None = None
        self.dialog: Dialog | None = None
        self.answer_response: Response | None = None
        self.webrtc_ready: asyncio.Task[None] | None = None
        self._answered_ok = False
        self.clog = log  # shared with the media plane: both sides of one call log the same IDs
        self.renegotiator = Renegotiator(media, log)
        self.identity_headers = identity_headers or []  # PAI/PPI/Privacy for the trunk (bridge.caller_ids)
        self.caller_id = None if caller_id is None else CallerIdAnnouncer(
            caller_id, call_id=invite.call_id, party_id=self.party_id, format_number=matrix.format_number,
            send=lambda etype, content: matrix.send_call_event(portal, etype, content), log=log)
        self.phone_hold = PhoneHold(media, log, send_offer=self._send_negotiate_offer, spawn=self.spawn, polite=True,
                                    enabled=invite.version != 0)
        self.early = EarlyMedia(early_media, media, log, self._connect_early)
        self._answer_lock = asyncio.Lock()  # one m.call.answer: from a 183 (early_media: connect) or the 200
        self.on_transfer_request: OnTransferRequest | None = None  # REFER/NOTIFY (calls/transfer.py)
        super().__init__(self.clog, on_finished)

    @property
    def call_id(self) -> str:
        return self.invite.call_id

    @property
    def sip_call_id(self) -> str | None:
        return self.client_invite.call_id if self.client_invite else None

    async def begin(self, buffered: list[ev.Candidate]) -> bool:
        """Claim the call-log row, send the SIP INVITE at once, then build the WebRTC leg in parallel with the
        SIP side ringing. False (nothing opened, nothing sent) when the call_id is already in the call log: an
        earlier call or a replay is never dialled again, and every INVITE sent has its row."""
        sip_call_id = self.ua.new_call_id()
        if not await self.call_log.call_started(
            call_id=self.call_id, party_id=self.party_id, sip_call_id=sip_call_id,
            room_id=self.portal.room_id, direction="outbound", number=self.number, mxid=self.sender,
        ):
            return False
        await self.media.prepare_sip_offer(self.invite.offer_sdp)  # rtpengine: the SIP offer is written from it
        host, port = await self.media.open_rtp()
        self.rtp_port = port
        self.client_invite = self.ua.invite(
            self.trunk.request_uri(self.number), from_uri=self.trunk.from_uri, from_display=self.trunk.from_display,
            to_uri=self.trunk.request_uri(self.number), sdp=self.media.sip_offer(),
            credentials=self.trunk.credentials, outbound_proxy=self.trunk.proxy, call_id=sip_call_id,
            headers=self.identity_headers,
        )
        self.clog.set_ids(sip_call_id=self.client_invite.call_id)
        self.log.info("outbound call from %s to %s: INVITE sent (rtp %s:%d)", self.sender, self.number, host, port)
        self.client_invite.on_provisional = self._on_provisional
        self.spawn(self._wait_final(self.client_invite), "sip-final")
        self.spawn(self._lifetime(), "invite-lifetime")
        # Only now: a hangup, glare or shutdown posted while the media was opening waited in the queue, so it
        # finds the INVITE to CANCEL (an earlier worker ended the call first and the INVITE went out after it,
        # ringing the phone with nobody left to cancel it).
        self.start_worker()
        self.media.on_failure = lambda _reason: self.post(
            lambda: self.machine.media_failed(media_seen=self._media_seen()))
        self.webrtc_ready = self.spawn(self._prepare_webrtc(buffered), "webrtc-offer")
        await self.state.save()
        return True

    def _on_provisional(self, resp: Response) -> None:
        if resp.status > 100:  # 100 Trying is hop-by-hop: post-dial delay runs to the far end's 180/183
            self.observer.sip_progress(self.call_id)
        self.post(lambda: self.machine.sip_provisional(resp.status))
        if self.early.mode != "off" and resp.body:
            self.spawn(self._early_progress(resp), "early-media")
        # the INVITE as it stands now (after any digest retry) is what a CANCEL must name
        self.spawn(self.state.save(), "save-call-state")

    @property
    def matrix_answered(self) -> bool:
        return self._answered_ok

    async def _prepare_webrtc(self, buffered: list[ev.Candidate]) -> None:
        await self.media.set_webrtc_offer(self.invite.offer_sdp)
        if buffered:
            await self.media.add_webrtc_candidates([c.as_dict() for c in buffered])

    async def _wait_final(self, invite: ClientInvite) -> None:
        try:
            resp = await invite.wait_final()
        except SipTimeout:
            self.post(lambda: self.machine.sip_no_response(timeout=True))
            return
        except SipTransportError as exc:
            self.log.warning("SIP transport failure: %s", exc)
            self.post(lambda: self.machine.sip_no_response(timeout=False))
            return
        if 200 <= resp.status < 300:
            self.answer_response = resp
            self.observer.sip_answered(self.call_id)
            self.dialog = invite.dialog
            if self.dialog is not None:
                self.dialog.on_terminated = self._dialog_terminated
                self.dialog.on_request = self.in_dialog
            self.post(self.machine.sip_answered)
            await self.state.save()
        else:
            self.post(lambda: self.machine.sip_failed(resp.status, resp.reason))

    def _dialog_terminated(self, reason: str) -> None:
        if reason == "bye_received":
            self.post(self.machine.sip_bye)
        elif reason != "bye_sent":
            self.post(self.machine.sip_dialog_lost)

    def _media_seen(self) -> bool:
        """Did audio ever arrive from the Matrix side? Decides ice_timeout (it did) vs ice_failed (never)."""
        return self.media.stats().webrtc_frames_in > 0

    async def _lifetime(self) -> None:
        await asyncio.sleep(self.invite.lifetime_ms / 1000)
        self.post(self.machine.lifetime_expired)

    # --- Matrix events for this call ---
    def on_candidates(self, cands: ev.Candidates) -> None:
        if self.invite.party_id is not None and cands.party_id not in (None, self.invite.party_id):
            return
        real = [c.as_dict() for c in cands.candidates if not c.is_end]
        if real:
            self.spawn(self._add_candidates(real), "webrtc-candidates")

    def on_negotiate_answer(self, party_id: str | None, sdp: str) -> None:
        """Answer to the bridge's own m.call.negotiate offer (phone hold / resume): only the caller's counts."""
        if self.invite.party_id is None or party_id in (None, self.invite.party_id):
            self.phone_hold.matrix_answer(sdp)

    async def _add_candidates(self, cands: list[dict[str, Any]]) -> None:
        if self.webrtc_ready is not None:
            await asyncio.shield(self.webrtc_ready)
        await self.media.add_webrtc_candidates(cands)

    # --- actions ---
    async def execute(self, action: Action) -> None:
        if isinstance(action, SendMatrixAnswer):
            await self._send_answer()
        elif isinstance(action, StartMedia):
            if self._answered_ok:
                self.media.start()
        elif isinstance(action, SendSipCancel):
            if self.client_invite is not None:
                await self.client_invite.cancel()
        elif isinstance(action, SendSipBye):
            if self.dialog is not None:
                await self.dialog.bye()
        elif isinstance(action, SendMatrixEnding):
            await self._send_ending(action)
        elif isinstance(action, Renegotiate):
            await self._renegotiate(action.offer_sdp)
        elif isinstance(action, Finish):
            self.log.info("outbound call ended: %s", action.reason)
            await self.call_log.call_ended(self.call_id, action.reason)
            await self.state.delete()

    async def _early_progress(self, resp: Response) -> None:
        async with self._answer_lock:
            if self.machine.state.value not in ("dialing", "ringing"):
                return
            self._note_signalling_peer(resp)
            await self.early.provisional(resp)

    def _note_signalling_peer(self, resp: Response) -> None:
        """The trunk's media may come from the IP its signalling came from (NAT): see media.rtp_source."""
        if resp.source is not None:
            self.media.set_signalling_peer(resp.source[0])

    async def _connect_early(self, sdp: bytes) -> None:
        """early_media: connect. Answer the Matrix call from the 183's SDP; no SIP 200 exists or is sent."""
        if await self._answer_matrix(sdp):
            self.media.start()

    async def _send_answer(self) -> None:
        assert self.answer_response is not None
        self._note_signalling_peer(self.answer_response)
        async with self._answer_lock:
            self.early.sip_answered()
            if self._answered_ok:  # already answered on a 183: only the SIP media may have changed
                try:
                    self.media.apply_sip_answer(self.answer_response.body)
                except Exception as exc:
                    self.log.warning("200 after early media with unusable SDP: %s", exc)
                    self.post(lambda: self.machine.media_failed(media_seen=self._media_seen()))
                    return
                await self.call_log.call_answered(self.call_id)
                await self.state.save()
                self.log.info("SIP answered after early media (Matrix answered on the 183)")
                return
            if await self._answer_matrix(self.answer_response.body):
                await self.call_log.call_answered(self.call_id)
                await self.state.save()
                self.log.info("SIP answered; m.call.answer sent")

    async def _answer_matrix(self, sip_sdp: bytes) -> bool:
        try:
            self.media.apply_sip_answer(sip_sdp)
            if self.webrtc_ready is not None:
                await self.webrtc_ready
            sdp = await self.media.create_webrtc_answer()
        except Exception as exc:
            # A 200 whose SDP we cannot use, or a Matrix offer aiortc refuses: end both sides.
            self.log.warning("cannot connect media: %s", exc)
            self.post(lambda: self.machine.media_failed(media_seen=False))
            return False
        self._answered_ok = True
        await self.matrix.send_call_event(self.portal, "m.call.answer", self.out.answer(sdp))
        await self.matrix.send_call_event(self.portal, "m.call.candidates", self.out.end_of_candidates())
        if self.caller_id is not None and self.answer_response is not None:
            # who actually answered, if the trusted trunk says (MSC3086)
            self.spawn(self.caller_id.from_response(self.answer_response), "asserted-identity")
        return True

    async def in_dialog(self, req: ServerRequest | ServerInvite) -> None:
        await serve_in_dialog(self, req)

    async def _send_negotiate_offer(self, sdp: str) -> None:
        await self.matrix.send_call_event(self.portal, "m.call.negotiate", self.out.negotiate("offer", sdp))

    async def _renegotiate(self, offer_sdp: str) -> None:
        if not self.phone_hold.matrix_offer_arrived():
            return

        async def send_answer(sdp: str) -> None:
            await self.matrix.send_call_event(self.portal, "m.call.negotiate", self.out.negotiate("answer", sdp))

        direction = await self.renegotiator.matrix_offer(offer_sdp, send_answer)
        if direction is not None:
            self.spawn(self.renegotiator.reinvite(self.dialog, direction), "sip-reinvite")

    async def _send_ending(self, action: SendMatrixEnding) -> None:
        ending = action.ending
        async with self._answer_lock:  # an early (183) answer in flight decides between reject and hangup
            answered = self._answered_ok
        if ending.kind == "reject" and not answered:
            content = self.out.reject(ending.reason)
            await self.matrix.send_call_event(self.portal, "m.call.reject", content)
        else:
            content = self.out.hangup(ending.reason or "user_hangup")
            await self.matrix.send_call_event(self.portal, "m.call.hangup", content)
        if self.failure_notices and ending.notice:
            status = f"{action.sip_status} {action.sip_reason}" if action.sip_status else ""
            text = ending.notice.format(number=self.matrix.format_number(self.number), status=status)
            await self.matrix.send_notice(self.portal, text)
        if action.sip_status and action.sip_status >= 400:
            await self.early.announcement(lambda data, ms: self._post_announcement(data, ms, action))

    async def _post_announcement(self, data: bytes, duration_ms: int, action: SendMatrixEnding) -> None:
        number = self.matrix.format_number(self.number)
        await self.matrix.send_audio(
            self.portal, data, filename=f"announcement-{self.number}.wav", mimetype="audio/wav",
            duration_ms=duration_ms, body=f"Announcement from {number} ({action.sip_status} {action.sip_reason})",
        )

    async def release(self) -> None:
        await self.media.close()
