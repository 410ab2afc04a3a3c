"""Call transfer asked for by the Matrix user: m.call.replaces (MSC2747, Element's "Transfer") -> SIP REFER.

Element's transfer sends m.call.replaces naming ``target_user`` (for a phone number: its ghost) and
``create_call``, then ends the call locally without a hangup. The bridge asks the phone to call the target
itself: REFER inside the call's dialog with Refer-To the target number at the trunk domain (RFC 3515). When the
user transfers one bridged call to another of their bridged calls (transferToCall: create_call in this call,
await_call in the other), the Refer-To carries ?Replaces= naming the other call's dialog, so the phone's new
call replaces ours at the target (an attended transfer, RFC 3891) and the target hangs our dialog up.

The target passes the checks of a number the user dials (permission, dial plan, call limits): a REFER makes
the phone system place a call, so it must not reach what the user could not dial. The referrer's NOTIFYs
(message/sipfrag) report the outcome; on "SIP/2.0 2xx" the bridge ends its dialog (BYE) and the Matrix call
(m.call.hangup). When the trunk refuses REFER (405/501/403/...) or the referred call fails, the call is ended
the same way with a notice saying the transfer failed: Element has already left the call at that point.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..call.replaces import CallReplaces
from ..media.errors import MediaError
from ..media.ports import PortAllocator
from ..media.rtp_bridge import RtpBridge
from ..media.settings import MediaSettings
from ..sip.dialog import Dialog
from ..sip.errors import SipTimeout, SipTransportError
from ..sip.refer import Replaces, is_refer_event, parse_sipfrag, send_refer
from ..sip.sdp import Codec, SdpError
from ..sip.server import ServerRequest
from ..sip.ua import UserAgent
from .outbound import OutboundSession, TrunkTarget
from .ports import MatrixPort
from .sip_bridge import SipToSipCall
from .transfer import Session, TransferPolicy, answered, matrix_user

NOTIFY_TIMEOUT_S = 90.0  # how long the referred call may take to report its outcome
REFER_REFUSED = frozenset({403, 405, 420, 501})  # the trunk does not do transfers: the bridge connects the call
_STATIC_CODECS = {0: ("PCMU", 8000), 8: ("PCMA", 8000), 9: ("G722", 8000)}


def _codec_in_use(session: Session) -> Codec | None:
    """The codec of the phone's RTP stream (static payload types only: that is what the bridge negotiates)."""
    pt = session.media.rtp_leg.payload_type
    known = _STATIC_CODECS.get(pt) if pt is not None else None
    return Codec(pt, *known) if pt is not None and known else None


def matrix_party(session: Session) -> str | None:
    """The Matrix device in this call (the caller's party, or the selected answer's)."""
    if isinstance(session, OutboundSession):
        return session.invite.party_id
    return session.machine.selected_party


def phone_number(session: Session) -> str | None:
    return session.number if isinstance(session, OutboundSession) else session.caller_number


class MatrixTransfers:
    def __init__(self, *, policy: TransferPolicy, trunk: TrunkTarget, matrix: MatrixPort,
                 ua_ref: Callable[[], UserAgent], media: MediaSettings, ports: PortAllocator) -> None:
        self.policy = policy
        self.trunk = trunk
        self.matrix = matrix
        self._ua = ua_ref
        self.media_settings = media
        self.ports = ports
        self._outcome: dict[int, asyncio.Future[tuple[int, str]]] = {}  # id(session) -> referred call's final
        self.phone_calls: set[SipToSipCall] = set()  # phones the bridge connected itself (REFER refused)

    def on_replaces(self, session: Session, sender: str, value: CallReplaces, others: list[Session]) -> None:
        log = session.clog
        if sender != matrix_user(session) or not answered(session) or session.dialog is None:
            log.info("ignoring m.call.replaces from %s: not the user of an answered call", sender)
            return
        party = matrix_party(session)
        if party is not None and value.party_id not in (None, party):
            log.info("ignoring m.call.replaces from party %s (the call's party is %s)", value.party_id, party)
            return
        if value.create_call is None:
            # await_call: this call's far end is the target of a transfer made in another call, whose REFER
            # replaces this dialog; the target ends it with a BYE.
            log.info("m.call.replaces (await_call %s): waiting for the target to take the call over",
                     value.await_call)
            return
        if id(session) in self._outcome:
            log.info("ignoring m.call.replaces: a transfer is already under way")
            return
        number = self.matrix.number_for_ghost(value.target_user) if value.target_user else None
        key = f"{session.call_id}~refer"
        problem = self.policy.problem(sender, number, key)
        if problem is not None or number is None:
            log.warning("m.call.replaces to %s refused: %s; ending the call", value.target_user, problem)
            self._end(session, ok=False, notice=f"The call could not be transferred: {problem}.")
            return
        consultation = None
        for other in others:  # an attended transfer: the user's other call with the target
            if other is not session and matrix_user(other) == sender and answered(other) \
                    and phone_number(other) == number and other.dialog is not None:
                consultation = other
                break
        self._outcome[id(session)] = asyncio.get_running_loop().create_future()
        session.spawn(self._refer(session, number, key, consultation), "sip-refer")

    async def _refer(self, session: Session, number: str, key: str, consultation: Session | None) -> None:
        log = session.clog
        dialog = session.dialog
        assert dialog is not None
        trunk = self.policy.trunk(matrix_user(session), self.trunk)
        target = trunk.request_uri(number)
        if consultation is not None and consultation.dialog is not None:
            d = consultation.dialog  # the target matches it as if our INVITE came to it (RFC 3891 3)
            target += f"?Replaces={Replaces(d.call_id, to_tag=d.remote_tag, from_tag=d.local_tag).uri_header()}"
        shown = self.matrix.format_number(number)
        ok = False
        try:
            try:
                resp = await send_refer(dialog, target, referred_by=trunk.from_uri)
            except (SipTimeout, SipTransportError) as exc:
                log.info("REFER to %s got no answer: %s", number, exc)
                self._end(session, ok=False, notice=f"The call could not be transferred to {shown}: no answer.")
                return
            if resp.status in REFER_REFUSED:
                log.info("the phone side refused REFER (%d %s): connecting %s ourselves", resp.status, resp.reason,
                         number)
                problem = await self._connect_itself(session, number, key, consultation)
                if problem is None:
                    ok = True
                    key = ""  # held by the phone-to-phone call until it ends
                    self._end(session, ok=True, bye=False, notice=f"The call was transferred to {shown}.")
                    if consultation is not None:
                        consultation.post(lambda: consultation.machine.transfer_ended(ok=True, bye=False))
                else:
                    self._end(session, ok=False, notice=f"The call could not be transferred to {shown}: the "
                              f"phone system refused ({resp.status} {resp.reason}) and {problem}.")
                return
            if not 200 <= resp.status < 300:
                log.info("the phone side refused REFER to %s: %d %s", number, resp.status, resp.reason)
                self._end(session, ok=False, notice=f"The call could not be transferred to {shown}: the phone "
                          f"system refused ({resp.status} {resp.reason}).")
                return
            log.info("REFER to %s accepted (%d); waiting for the outcome", number, resp.status)
            try:
                async with asyncio.timeout(NOTIFY_TIMEOUT_S):
                    status, reason = await self._outcome[id(session)]
            except TimeoutError:
                status, reason = 408, "Request Timeout"
            if 200 <= status < 300:
                log.info("transfer to %s done (%d %s)", number, status, reason)
                ok = True  # an attended transfer's consultation call is ended by the target (Replaces)
                self._end(session, ok=True, notice=f"The call was transferred to {shown}.")
            else:
                log.info("transfer to %s failed: %d %s", number, status, reason)
                self._end(session, ok=False, notice=f"The call could not be transferred to {shown}: {status} "
                          f"{reason}.")
        finally:
            self._outcome.pop(id(session), None)
            if key:
                self.policy.limits.release(key)
            if not ok and consultation is not None:  # the client left that call too (transferToCall)
                consultation.post(lambda: consultation.machine.transfer_ended(ok=False))

    async def _connect_itself(self, session: Session, number: str, key: str,
                              consultation: Session | None) -> str | None:
        """Call ``number`` through the trunk (or take the user's consultation call with it), move the phone's
        audio onto a new RTP port by re-INVITE and relay the two (sip_bridge.py). None when connected, else
        what went wrong."""
        log = session.clog
        phone = session.dialog
        codec = _codec_in_use(session)
        if phone is None or codec is None:
            return "the call's codec cannot be relayed"
        if self.media_settings.srtp == "required" or session.media.srtp_suite is not None:
            return "the phone-to-phone relay has no SRTP, and this call's media must stay encrypted"
        media = RtpBridge(self.media_settings, self.ports, codec, log=log)
        target: Dialog | None = None
        try:
            await media.open()
            if consultation is not None and consultation.dialog is not None:
                sid, version = consultation.media.next_sip_origin()
                taken = await consultation.dialog.reinvite(media.offer(1, session_id=sid, version=version))
                if not 200 <= taken.status < 300:
                    raise SdpError(f"the target refused the re-INVITE: {taken.status} {taken.reason}")
                target = consultation.dialog
                media.apply_answer(1, taken.body)
            else:
                trunk = self.policy.trunk(matrix_user(session), self.trunk)
                invite = self._ua().invite(
                    trunk.request_uri(number), from_uri=trunk.from_uri, from_display=trunk.from_display,
                    to_uri=trunk.request_uri(number), sdp=media.offer(1), credentials=trunk.credentials,
                    outbound_proxy=trunk.proxy)
                try:
                    async with asyncio.timeout(NOTIFY_TIMEOUT_S):
                        final = await invite.wait_final()
                except TimeoutError:
                    await invite.cancel()
                    raise SipTimeout("no final response") from None
                target = invite.dialog
                if not 200 <= final.status < 300 or target is None:
                    await media.close()
                    return f"{number} answered {final.status} {final.reason}"
                media.apply_answer(1, final.body)
            session_id, version = session.media.next_sip_origin()
            moved = await phone.reinvite(media.offer(0, session_id=session_id, version=version))
            if not 200 <= moved.status < 300:
                raise SdpError(f"the phone refused the re-INVITE: {moved.status} {moved.reason}")
            media.apply_answer(0, moved.body)
        except (SipTimeout, SipTransportError, SdpError, MediaError) as exc:
            log.info("connecting the phone to %s failed: %s", number, exc)
            if target is not None:
                await target.bye()
            await media.close()
            return "the bridge could not connect it either"
        except asyncio.CancelledError:
            if target is not None:
                self._ua().transactions.spawn(target.bye(), "bye target")
            self._ua().transactions.spawn(media.close(), "close phone-to-phone media")
            raise

        def finished(call: SipToSipCall) -> None:
            self.phone_calls.discard(call)
            self.policy.limits.release(key)

        call = SipToSipCall(media, log, finished)
        self.phone_calls.add(call)
        call.attach(phone, target)
        return None

    def _end(self, session: Session, *, ok: bool, notice: str, bye: bool = True) -> None:
        session.post(lambda: session.machine.transfer_ended(ok=ok, bye=bye))
        portal = session.portal
        if portal is not None:
            session.spawn(self._notice(session, notice), "transfer-notice")

    async def _notice(self, session: Session, text: str) -> None:
        assert session.portal is not None
        try:
            await self.matrix.send_notice(session.portal, text)
        except Exception as exc:
            session.clog.warning("could not post the transfer notice: %r", exc)

    async def on_notify(self, session: Session, req: ServerRequest) -> None:
        """A NOTIFY of our REFER's implicit subscription: sipfrag progress, the final one settles the transfer."""
        request = req.request
        if not is_refer_event(request.headers.get("Event")):
            await req.respond(489, "Bad Event")
            return
        await req.respond(200)
        outcome = self._outcome.get(id(session))
        frag = parse_sipfrag(request.body)
        session.clog.info("NOTIFY for our REFER: %s", f"{frag[0]} {frag[1]}" if frag else "no status line")
        if outcome is None or outcome.done():
            return
        state = (request.headers.get("Subscription-State") or "").split(";", 1)[0].strip().lower()
        if frag is not None and frag[0] >= 200:
            outcome.set_result(frag)
        elif state == "terminated":
            outcome.set_result((frag[0] if frag else 500, "subscription ended without a final status"))

