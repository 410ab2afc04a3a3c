"""Call transfer asked for by the phone: a REFER (RFC 3515) inside a bridged, answered call.

The REFER is only obeyed inside an answered dialog, from a trusted trunk address, and the new target passes
exactly the checks of a number the Matrix user dials (their permission, call/dialplan.py check_dial, and the
call limits of call/limits.py); anything else is refused (403, or 603 outside an answered call) and nothing
is dialled. Blind transfer (Refer-To sip:number@...) and attended transfer (Refer-To ...?Replaces=...) both
become one new INVITE through the trunk to the new number; for an attended transfer it carries the Replaces
header so the target swaps its consultation call for ours (RFC 3891).

Towards Matrix the user's call goes on: the same call_id and WebRTC leg, its audio now relayed to the new far
end (the RTP leg re-targets and latches again), and the ghost tells the client who it is talking to now with
MSC3086's asserted identity (org.matrix.call.asserted_identity, which matrix-js-sdk and Element display) plus
a notice in the room. No new ringing, nothing to answer: this works with every client, also with ones that
know nothing of m.call.replaces.

The referrer gets NOTIFY (Event: refer) with message/sipfrag "SIP/2.0 100 Trying", then the new call's final
status line; after a success the old dialog is ended with BYE. A failed transfer leaves the call as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..call.dialplan import check_dial, normalize_number
from ..call.inbound import InState
from ..call.limits import CallLimiter
from ..call.outbound import OutState
from ..call.policy import TrustedSources
from ..config import DialplanConfig
from ..sip.dialog import Dialog
from ..sip.errors import SipTimeout, SipTransportError
from ..sip.refer import ReferError, notify_refer, parse_refer_to
from ..sip.server import ServerInvite, ServerRequest
from ..sip.ua import ClientInvite, UserAgent
from .inbound import InboundSession
from .outbound import OutboundSession, TrunkTarget
from .ports import MatrixPort

NEW_CALL_TIMEOUT_S = 90.0  # a referred call that neither answers nor fails by then is given up
ASSERTED_IDENTITY = "org.matrix.call.asserted_identity"  # MSC3086, the unstable name matrix-js-sdk reads

Session = OutboundSession | InboundSession


@dataclass
class TransferPolicy:
    """Everything that decides whether a referred number may be dialled (the same checks as a dialled one)."""

    trusted: TrustedSources
    dialplan: DialplanConfig
    can_dial: Callable[[str], bool]
    limits: CallLimiter
    # per-user SIP accounts and dial rules (calls/user_policy.py), looked up when a transfer happens; None: the
    # shared trunk, dialplan.allowed/blocked and bridge.limits for everyone
    trunk_for: Callable[[str], TrunkTarget | str] | None = None
    dial_problem: Callable[[str, str], str | None] | None = None
    concurrent_for: Callable[[str], int | None] | None = None

    def problem(self, user: str, number: str | None, key: str) -> str | None:
        """None when ``user`` may call ``number`` now (and the call then counts against the limits as ``key``)."""
        if not self.can_dial(user):
            return f"{user} may not place calls"
        if not number:
            return "the Refer-To target is not a phone number"
        blocked = self.dial_problem(user, number) if self.dial_problem else check_dial(number, self.dialplan)
        if blocked:
            return f"dial plan: {blocked}"
        if self.trunk_for is not None and isinstance(refusal := self.trunk_for(user), str):
            return refusal
        over = self.limits.admit(user, key, self.concurrent_for(user) if self.concurrent_for else None)
        return f"limit: {over.problem}" if over is not None else None

    def trunk(self, user: str, shared: TrunkTarget) -> TrunkTarget:
        """The trunk ``user``'s transferred call goes through (``problem`` already refused users without one)."""
        target = self.trunk_for(user) if self.trunk_for is not None else shared
        return target if isinstance(target, TrunkTarget) else shared


def matrix_user(session: Session) -> str:
    return session.sender if isinstance(session, OutboundSession) else session.callee


def answered(session: Session) -> bool:
    if isinstance(session, OutboundSession):
        return session.machine.state is OutState.ANSWERED
    return session.machine.state is InState.CONNECTED


def dialog_handler(session: Session) -> Callable[[ServerRequest | ServerInvite], Awaitable[None]]:
    """The in-dialog request handler for a session's new dialog (as the session sets for its first one)."""
    return session.in_dialog


class Transfers:
    def __init__(self, *, policy: TransferPolicy, ua_ref: Callable[[], UserAgent], trunk: TrunkTarget,
                 matrix: MatrixPort) -> None:
        self.policy = policy
        self._ua = ua_ref
        self.trunk = trunk
        self.matrix = matrix
        self._active: set[int] = set()  # id() of sessions with a transfer under way

    async def on_refer(self, session: Session, req: ServerRequest) -> None:
        log = session.clog
        host = req.source.addr[0]
        dialog = session.dialog
        if not self.policy.trusted.allows(host):
            log.warning("REFER from untrusted %s -> 403, nothing dialled", host)
            await req.respond(403, "Forbidden")
            return
        if dialog is None or req.dialog is not dialog or not answered(session):
            log.info("REFER outside an answered call -> 603, nothing dialled")
            await req.respond(603, "Decline")
            return
        if id(session) in self._active:
            log.info("REFER while a transfer is under way -> 403")
            await req.respond(403, "Forbidden")
            return
        try:
            target = parse_refer_to(req.request.headers.get("Refer-To"))
        except ReferError as exc:
            log.info("unusable REFER (%s) -> 400", exc)
            await req.respond(400, "Bad Refer-To")
            return
        number = normalize_number(target.user, self.policy.dialplan)
        user = matrix_user(session)
        key = f"{session.call_id}~transfer"
        problem = self.policy.problem(user, number, key)
        if problem is not None or number is None:
            log.warning("REFER to %s refused for %s: %s -> 403, nothing dialled", target.uri, user, problem)
            await req.respond(403, "Forbidden")
            return
        if not session.media.far_end_replaceable:
            log.warning("REFER refused -> 501: media.backend rtpengine cannot move the call to a new far end")
            self.policy.limits.release(key)  # admitted by problem() just above
            await req.respond(501, "Not Implemented")
            return
        self._active.add(id(session))
        # From now on the referrer may hang up at any moment (many phones BYE right after the 202): that no
        # longer ends the Matrix call, a failed transfer does (see _transfer).
        old_ended: list[str] = []
        dialog.on_terminated = old_ended.append
        await req.respond(202, "Accepted")
        kind = "attended" if target.replaces else "blind"
        log.info("%s transfer by the phone to %s accepted (202)", kind, number)
        referred_by = req.request.headers.get("Referred-By")
        session.spawn(self._transfer(session, dialog, old_ended, number, key, target.replaces.header()
                                     if target.replaces else None, referred_by), "sip-transfer")

    async def _transfer(self, session: Session, old: Dialog, old_ended: list[str], number: str, key: str,
                        replaces: str | None, referred_by: str | None) -> None:
        log = session.clog
        keep_key = False
        done = False
        invite = None
        try:
            await self._notify(session, old, 100, "Trying", final=False)
            headers = [("Replaces", replaces)] if replaces else []
            if referred_by:
                headers.append(("Referred-By", referred_by))
            trunk = self.policy.trunk(matrix_user(session), self.trunk)
            invite = self._ua().invite(
                trunk.request_uri(number), from_uri=trunk.from_uri, from_display=trunk.from_display,
                to_uri=trunk.request_uri(number), sdp=session.media.sip_offer(), credentials=trunk.credentials,
                outbound_proxy=trunk.proxy, headers=headers,
            )
            log.info("transfer: INVITE %s sent to %s", invite.call_id, number)
            try:
                async with asyncio.timeout(NEW_CALL_TIMEOUT_S):
                    final = await invite.wait_final()
            except TimeoutError:
                await invite.cancel()
                await self._notify(session, old, 408, "Request Timeout", final=True)
                return
            except (SipTimeout, SipTransportError) as exc:
                log.info("transfer: the new call got no answer: %s", exc)
                await self._notify(session, old, 408, "Request Timeout", final=True)
                return
            new = invite.dialog
            if not 200 <= final.status < 300 or new is None:
                log.info("transfer to %s failed: %d %s; the call stays as it was", number, final.status,
                         final.reason)
                await self._notify(session, old, final.status, final.reason, final=True)
                return
            try:
                session.media.rtp_leg.leave_far_end()
                session.media.apply_sip_answer(final.body)
            except Exception as exc:
                log.warning("transfer: unusable SDP from %s (%s); hanging the new call up", number, exc)
                await new.bye()
                await self._notify(session, old, 488, "Not Acceptable Here", final=True)
                return
            # The session now lives on the new dialog.
            done = True
            session.dialog = new
            new.on_terminated = session._dialog_terminated
            new.on_request = dialog_handler(session)
            log.set_ids(sip_call_id=invite.call_id)
            keep_key = isinstance(session, InboundSession)  # an outbound call already counts once
            await session.state.save()
            await self._notify(session, old, final.status, final.reason, final=True)
            await old.bye()
            log.info("transfer to %s done: media moved to the new call, old dialog ended", number)
            await self._tell_matrix(session, number)
        except asyncio.CancelledError:
            # The call ended while the new call was being set up: do not leave that one behind.
            if invite is not None and not done:
                self._ua().transactions.spawn(self._abandon(invite), "abandon transfer")
            raise
        finally:
            self._active.discard(id(session))
            if not done:
                if old_ended:  # the referrer hung up and the transfer failed: the call is over
                    session.post(session.machine.sip_bye)
                else:
                    old.on_terminated = session._dialog_terminated
            if not keep_key:
                self.policy.limits.release(key)
            else:
                session.spawn(self._release_at_end(session, key), "transfer-limit")

    @staticmethod
    async def _abandon(invite: ClientInvite) -> None:
        await invite.cancel()
        if invite.dialog is not None:
            await invite.dialog.bye()

    async def _release_at_end(self, session: Session, key: str) -> None:
        try:
            await session.finished.wait()
        finally:
            self.policy.limits.release(key)

    @staticmethod
    async def _notify(session: Session, dialog: Dialog, status: int, reason: str, *, final: bool) -> None:
        if dialog.state == "terminated":
            return  # the referrer already hung up: nobody to report to
        try:
            resp = await notify_refer(dialog, status, reason, final=final)
            if resp.status >= 300:
                session.clog.info("NOTIFY (%d %s) answered %d", status, reason, resp.status)
        except (SipTimeout, SipTransportError) as exc:
            session.clog.info("NOTIFY (%d %s) got no answer: %s", status, reason, exc)

    async def _tell_matrix(self, session: Session, number: str) -> None:
        portal = session.portal
        if portal is None:
            return
        shown = self.matrix.format_number(number)
        try:
            await self.matrix.send_call_event(portal, ASSERTED_IDENTITY, session.out.asserted_identity(shown))
            await self.matrix.send_notice(portal, f"The call was transferred to {shown}.")
        except Exception as exc:
            session.clog.warning("could not tell Matrix about the transfer: %r", exc)
