"""Routes events to calls: Matrix m.call.* and membership events, and inbound SIP INVITEs.

Outbound calls are keyed by the caller's Matrix call_id, inbound calls by the call_id of the bridge's own
m.call.invite (one per rung user). Events for unknown calls get one log line and are dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..call import events as ev
from ..call.candidates import CandidateBuffer
from ..call.dialplan import check_dial, normalize_number, route_users
from ..call.glare import GLARE_REASON
from ..call.identity import Identity
from ..call.invite_checks import Ignore, Refuse, check_invite, invite_age
from ..call.limits import CallLimiter, CallLimits, RefusalThrottle
from ..call.policy import RateLimiter, TrustedSources
from ..call.replaces import parse_call_replaces
from ..config import DialplanConfig, InboundRoute
from ..logs import CallLogger, call_logger
from ..media.call_media import CallMedia
from ..media.ports import PortAllocator
from ..media.settings import MediaSettings
from ..sip import digest
from ..sip.message import NameAddr, SipParseError
from ..sip.sdp import SdpError
from ..sip.ua import ServerInvite, ServerRequest, UserAgent
from ..sip.uri import SipUri
from . import glare
from .caller_id import CallerIdContext, CallerIdSettings, asserted_identity
from .inbound import InboundFork, InboundSession
from .matrix_transfer import MatrixTransfers
from .outbound import OutboundSession, TrunkTarget
from .ports import CallLogPort, CallObserver, CallStatePort, MatrixPort, NullObserver, PortalInfo
from .session import CallSession
from .transfer import TransferPolicy, Transfers

log = logging.getLogger(__name__)

ANONYMOUS_USERS = frozenset({"anonymous", "unknown", "unavailable", "restricted", "private", "withheld"})


@dataclass
class InboundSettings:
    trusted_sources: Sequence[str] = ("127.0.0.1/32",)
    accounts: dict[str, str] = field(default_factory=dict)  # digest username -> password
    realm: str = "matrix-sip-bridge"
    routes: Sequence[InboundRoute] = ()
    default_route: Sequence[str] = ()
    rate_per_second: float = 5.0
    rate_burst: int = 10
    lifetime_ms: int = 60000
    ring_timeout_s: float = 60.0
    homeserver_timeout_s: float = 10.0  # each homeserver step of ringing a Matrix user; then 503


@dataclass
class CallSettings:
    trunk: TrunkTarget
    inbound: InboundSettings
    media: MediaSettings
    dialplan: DialplanConfig
    failure_notices: bool = True
    early_media: str = "announce"  # off | announce | connect
    limits: CallLimits = field(default_factory=CallLimits)
    caller_id: CallerIdSettings = field(default_factory=CallerIdSettings)


class CallEventLike(Protocol):
    """matrix.handler.CallEvent, structurally (the driver does not import the Matrix side)."""

    @property
    def room_id(self) -> str: ...
    @property
    def event_id(self) -> str: ...
    @property
    def sender(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def content(self) -> dict[str, Any]: ...
    @property
    def ts(self) -> int: ...  # origin_server_ts (ms), 0 if unknown
    @property
    def age(self) -> int | None: ...  # unsigned.age (ms) as pushed by the homeserver


class _NonceStore:
    """Nonces we issued for inbound digest auth, bounded, valid for five minutes."""

    def __init__(self, ttl: float = 300.0, size: int = 4096) -> None:
        self._ttl = ttl
        self._size = size
        self._nonces: OrderedDict[str, float] = OrderedDict()

    def add(self, nonce: str) -> None:
        self._nonces[nonce] = time.monotonic()
        while len(self._nonces) > self._size:
            self._nonces.popitem(last=False)

    def valid(self, nonce: str) -> bool:
        issued = self._nonces.get(nonce)
        return issued is not None and time.monotonic() - issued < self._ttl


class CallManager:
    def __init__(self, *, settings: CallSettings, ua_ref: Callable[[], UserAgent], matrix: MatrixPort,
                 call_log: CallLogPort, call_state: CallStatePort | None = None,
                 observer: CallObserver | None = None,
                 media_factory: Callable[[CallLogger], CallMedia] | None = None) -> None:
        self.settings = settings
        self._media_factory = media_factory  # another media backend (bridge/app.py); None: embedded CallMedia
        self._ua = ua_ref
        self.matrix = matrix
        self.call_log = call_log
        self.call_state = call_state
        self.observer: CallObserver = observer or NullObserver()
        self.ports = PortAllocator(settings.media.rtp_host, settings.media.port_start, settings.media.port_end)
        self.outbound: dict[str, OutboundSession] = {}
        self.inbound: dict[str, InboundSession] = {}
        self.candidates = CandidateBuffer()
        self.trusted = TrustedSources(settings.inbound.trusted_sources)
        self.limiter = RateLimiter(per_second=settings.inbound.rate_per_second, burst=settings.inbound.rate_burst)
        self.call_limits = CallLimiter(settings.limits, time.monotonic)  # calls Matrix users place
        self.refusals = RefusalThrottle(time.monotonic)
        self.nonces = _NonceStore()
        self._pending: set[asyncio.Task[None]] = set()
        transfer_policy = TransferPolicy(self.trusted, settings.dialplan, matrix.can_dial, self.call_limits)
        self.transfers = Transfers(policy=transfer_policy, ua_ref=ua_ref, trunk=settings.trunk, matrix=matrix)
        self.matrix_transfers = MatrixTransfers(policy=transfer_policy, trunk=settings.trunk, matrix=matrix,
                                                ua_ref=ua_ref, media=settings.media, ports=self.ports)

    def sessions(self) -> list[CallSession]:
        return [*self.outbound.values(), *self.inbound.values()]

    def _new_media(self, log: CallLogger) -> CallMedia:
        if self._media_factory is not None:
            return self._media_factory(log)
        return CallMedia(self.settings.media, self.ports, log=log)

    def _finished(self, session: CallSession) -> None:
        if isinstance(session, OutboundSession):
            if self.outbound.get(session.call_id) is session:
                del self.outbound[session.call_id]
            self.call_limits.release(session.call_id)
        elif isinstance(session, InboundSession):
            self.inbound.pop(session.call_id, None)
        self.candidates.drop(getattr(session, "call_id", ""))
        media = getattr(session, "media", None)
        if media is not None:
            self.observer.media_closed(media.stats())

    # ---------------------------------------------------------------- Matrix side
    async def on_call_event(self, evt: CallEventLike) -> None:
        """An m.call.* event from a real user in a portal room, in room order (matrix.handler.CallHandler)."""
        room_id, sender, event_type, content, event_id = evt.room_id, evt.sender, evt.type, evt.content, evt.event_id
        if event_type == "m.call.replaces":
            self._call_replaces(evt)
            return
        try:
            value = ev.parse_call_event(event_type, content)
        except ev.InvalidCallEvent as exc:
            log.warning("ignoring invalid %s %s from %s in %s: %s", event_type, event_id, sender, room_id, exc)
            return
        if isinstance(value, ev.Invite):
            await self._matrix_invite(evt, value)
            return
        out = self.outbound.get(value.call_id)
        if out is not None:
            if sender != out.sender:
                return
            self._to_outbound(out, value)
            return
        inc = self.inbound.get(value.call_id)
        if inc is not None:
            self._to_inbound(inc, sender, value)
            return
        if isinstance(value, ev.Candidates):
            # Candidates may arrive before their invite: keep them (bounded) for a short while.
            self.candidates.add(value.call_id, value.party_id, value.candidates)
            return
        log.info("ignoring %s for unknown call %s in %s", event_type, value.call_id, room_id)

    async def _transfer_request(self, session: OutboundSession | InboundSession, req: ServerRequest) -> None:
        """REFER (the phone transfers: calls/transfer.py) or NOTIFY (progress of our REFER: matrix_transfer.py)."""
        if req.request.method == "REFER":
            await self.transfers.on_refer(session, req)
        else:
            await self.matrix_transfers.on_notify(session, req)

    def _call_replaces(self, evt: CallEventLike) -> None:
        """m.call.replaces: the Matrix user transfers the call (calls/matrix_transfer.py)."""
        try:
            value = parse_call_replaces(evt.content)
        except ev.InvalidCallEvent as exc:
            log.warning("ignoring invalid m.call.replaces %s from %s: %s", evt.event_id, evt.sender, exc)
            return
        session: OutboundSession | InboundSession | None = self.outbound.get(value.call_id) or self.inbound.get(
            value.call_id)
        if session is None:
            log.info("ignoring m.call.replaces for unknown call %s in %s", value.call_id, evt.room_id)
            return
        others: list[OutboundSession | InboundSession] = [*self.outbound.values(), *self.inbound.values()]
        self.matrix_transfers.on_replaces(session, evt.sender, value, others)

    def _to_outbound(self, out: OutboundSession, value: ev.CallEventValue) -> None:
        m = out.machine
        if isinstance(value, ev.Candidates):
            out.on_candidates(value)
        elif isinstance(value, ev.Hangup):
            out.post(lambda: m.matrix_hangup(value.party_id, value.reason))
        elif isinstance(value, ev.Reject):
            out.post(lambda: m.matrix_hangup(value.party_id, "user_hangup"))
        elif isinstance(value, ev.SelectAnswer):
            out.post(lambda: m.matrix_select_answer(value.party_id, value.selected_party_id, out.party_id))
        elif isinstance(value, ev.Negotiate) and value.sdp_type == "answer":
            out.on_negotiate_answer(value.party_id, value.sdp)
        elif isinstance(value, ev.Negotiate):
            out.post(lambda: m.matrix_negotiate(value.party_id, value.sdp_type, value.sdp))

    def _to_inbound(self, inc: InboundSession, sender: str, value: ev.CallEventValue) -> None:
        m = inc.machine
        if isinstance(value, ev.Answer):
            inc.on_answer(sender, value)
        elif isinstance(value, ev.Candidates):
            inc.on_candidates(sender, value)
        elif isinstance(value, ev.Reject):
            inc.post(lambda: m.matrix_reject(sender))
        elif isinstance(value, ev.Hangup):
            inc.post(lambda: m.matrix_hangup(sender, value.party_id, value.reason))
        elif isinstance(value, ev.Negotiate) and value.sdp_type == "answer":
            inc.on_negotiate_answer(sender, value.party_id, value.sdp)
        elif isinstance(value, ev.Negotiate):
            inc.post(lambda: m.matrix_negotiate(sender, value.party_id, value.sdp_type, value.sdp))

    async def _matrix_invite(self, evt: CallEventLike, invite: ev.Invite) -> None:
        """The one place where Matrix invites are dialled. Every check runs before any SIP INVITE, RTP port or
        WebRTC peer exists, and refusals are sent by tasks: a flood of invites in one transaction is handled
        in milliseconds each, never one homeserver round trip per invite inside the room queue."""
        room_id, sender, call_id = evt.room_id, evt.sender, invite.call_id
        clog = call_logger(__name__, call_id)
        if call_id in self.outbound:
            # A replay, or a second invite reusing a live call's ID: not dialled, and not rejected either (a reject
            # with this call_id would end the live call in the caller's client).
            clog.info("ignoring m.call.invite %s from %s: this call_id is in progress", evt.event_id, sender)
            return
        portal = await self.matrix.portal_for_room(room_id)
        if portal is None:
            clog.info("ignoring m.call.invite in %s: not a portal room", room_id)
            return
        age = invite_age(evt.age, evt.ts, int(time.time() * 1000))
        verdict = check_invite(invite, age)
        if isinstance(verdict, Ignore):
            clog.info("not dialling m.call.invite %s from %s: %s", evt.event_id, sender, verdict.problem)
            self.candidates.drop(call_id)
            return
        if isinstance(verdict, Refuse):
            self._refuse(portal, invite, sender, verdict.reason, verdict.problem, verdict.notice)
            return
        if not self.matrix.can_dial(sender):
            self._refuse(portal, invite, sender, "unknown_error", "not permitted",
                         "You are not allowed to place calls through this bridge.")
            return
        if sender != portal.mxid:
            self._refuse(portal, invite, sender, "unknown_error", "not the portal's user",
                         f"Only {portal.mxid} can place calls from this chat.")
            return
        number = portal.number
        problem = "this chat has no phone number" if not number else check_dial(number, self.settings.dialplan)
        if problem or not number:
            self._refuse(portal, invite, sender, "unknown_error", f"dial plan: {problem}",
                         f"Cannot call {self.matrix.format_number(number)}: {problem}")
            return
        rival = glare.ringing_inbound(self.inbound.values(), sender, number, room_id)
        if rival is not None and not glare.new_outbound_wins(rival, call_id):
            self._refuse(portal, invite, sender, GLARE_REASON, f"glare: inbound call {rival.call_id} wins", None)
            return
        over = self.call_limits.admit(sender, call_id)
        if over is not None:
            self.observer.call_refused(over.limit)
            self._refuse(portal, invite, sender, over.reason, f"limit: {over.problem}", over.notice)
            return
        if verdict.remaining_ms < invite.lifetime_ms:
            invite = dataclasses.replace(invite, lifetime_ms=verdict.remaining_ms)
            if age.ms is not None and age.ms >= 1000:  # delivered late (an outage): worth a line
                clog.info("invite is %d ms old (%s): ringing for the %d ms left of its lifetime", age.ms,
                          age.source, verdict.remaining_ms)
        buffered, _ = self.candidates.take(call_id, invite.party_id)
        clog = call_logger("bridge.calls.outbound", call_id)
        session = OutboundSession(
            invite=invite, sender=sender, portal=portal, number=number, ua=self._ua(), trunk=self.settings.trunk,
            media=self._new_media(clog), log=clog, matrix=self.matrix, call_log=self.call_log,
            failure_notices=self.settings.failure_notices, on_finished=self._finished, call_state=self.call_state,
            identity_headers=self.settings.caller_id.outbound_headers(sender), caller_id=self._caller_id_context(),
            early_media=self.settings.early_media,
            observer=self.observer,
        )
        session.on_transfer_request = functools.partial(self._transfer_request, session)
        self.outbound[call_id] = session
        try:
            started = await session.begin(buffered)
        except Exception as exc:
            clog.exception("could not start the outbound call")
            self._drop_unstarted(session)
            await session.abort()
            await self.call_log.call_ended(call_id, "not_started")
            self._refuse(portal, invite, sender, "unknown_error", "could not start",
                         f"The call to {self.matrix.format_number(number)} could not be started: {exc}")
            return
        if not started:
            self._drop_unstarted(session)
            await session.abort()
            # A call_id already in the log: an earlier call (ended) or a replay. Never dialled twice.
            self._refuse(portal, invite, sender, "unknown_error", "call_id already in the call log", None)

    def _drop_unstarted(self, session: OutboundSession) -> None:
        if self.outbound.get(session.call_id) is session:
            del self.outbound[session.call_id]
        self.call_limits.release(session.call_id)

    def _refuse(self, portal: PortalInfo, invite: ev.Invite, sender: str, reason: str, problem: str,
                notice: str | None) -> None:
        """Refuse an invite visibly: m.call.reject (m.call.hangup for version 0, which has no reject) and a
        notice. Sent by a task, within the sender's refusal budget (RefusalThrottle); always logged."""
        self.candidates.drop(invite.call_id)
        plan = self.refusals.plan(sender, wants_notice=notice is not None)
        clog = call_logger(__name__, invite.call_id)
        clog.info("refusing m.call.invite from %s in %s: %s (reason %s%s)", sender, portal.room_id, problem,
                  reason, "" if plan.send_event else "; refusal budget spent, nothing sent")
        if not plan.send_event and not plan.send_notice:
            return
        out = ev.OutgoingContent(invite.call_id, "bridgerefusal")
        kind, content = ("m.call.reject", out.reject(reason)) if invite.version != 0 else (
            "m.call.hangup", out.hangup(reason))

        async def send() -> None:
            try:
                if plan.send_event:
                    await self.matrix.send_call_event(portal, kind, content)
                if plan.send_notice and notice is not None:
                    await self.matrix.send_notice(portal, notice)
            except Exception as exc:
                clog.warning("could not send the refusal to %s: %r", portal.room_id, exc)

        task = asyncio.create_task(send(), name=f"refuse-{invite.call_id}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def on_member_change(self, room_id: str, user_id: str, membership: str) -> None:
        if membership in ("join", "invite"):
            return
        for out in list(self.outbound.values()):
            if out.portal.room_id == room_id and out.sender == user_id:
                out.post(out.machine.caller_left)
        for inc in list(self.inbound.values()):
            if inc.room_id == room_id and inc.callee == user_id:
                inc.post(inc.machine.user_left)

    # ---------------------------------------------------------------- SIP side
    async def on_invite(self, inv: ServerInvite) -> None:
        host = inv.source.addr[0]
        if not self.limiter.allow(host):
            log.warning("rate limit: refusing INVITE %s from %s", inv.call_id, host)
            self.observer.call_refused("sip_source_rate")
            await inv.respond(503, "Service Unavailable", headers=[("Retry-After", "5")])
            return
        if not await self._authorised(inv):
            return
        req = inv.request
        try:
            dialled = self._dialled_number(req.uri, req.to)
            trusted = self.trusted.allows(host)  # identity headers count only from trusted sources
            caller_number, caller_name = self._caller(inv, trusted=trusted)
            asserted = asserted_identity(req.headers, self.settings.dialplan) if trusted else None
        except (SipParseError, ValueError) as exc:
            await inv.respond(400, "Bad Request")
            log.info("INVITE %s from %s: unreadable identity: %s", inv.call_id, host, exc)
            return
        default = tuple(self.settings.inbound.default_route)
        users = route_users(dialled, self.settings.inbound.routes, default) if dialled else default
        if not users:
            log.info("INVITE %s from %s for %s: no route -> 404", inv.call_id, host, dialled)
            await inv.respond(404, "Not Found")
            return
        fork = InboundFork(inv)
        try:
            for callee in dict.fromkeys(users):  # each routed user rings in their own portal room
                clog = call_logger("bridge.calls.inbound", "-", inv.call_id)
                session = InboundSession(
                    server_invite=inv, callee=callee, caller_number=caller_number, caller_name=caller_name,
                    media=self._new_media(clog), matrix=self.matrix, call_log=self.call_log,
                    lifetime_ms=self.settings.inbound.lifetime_ms, ring_timeout_s=self.settings.inbound.ring_timeout_s,
                    homeserver_timeout_s=self.settings.inbound.homeserver_timeout_s,
                    on_finished=self._finished, log=clog, fork=fork, call_state=self.call_state,
                    caller_id=self._caller_id_context(asserted),
                    observer=self.observer,
                )
                session.on_transfer_request = functools.partial(self._transfer_request, session)
                fork.branches.append(session)
                await session.prepare()
        except SdpError as exc:
            log.info("INVITE %s from %s: unacceptable SDP (%s) -> 488", inv.call_id, host, exc)
            await self._abort_fork(fork)
            await inv.respond(488, "Not Acceptable Here")
            return
        except Exception:
            log.exception("INVITE %s: could not start the call", inv.call_id)
            await self._abort_fork(fork)
            await inv.respond(500, "Server Internal Error")
            return
        # Glare check and registration in one synchronous step (see calls/glare.py).
        losers = []
        for session in fork.branches:
            rival = glare.ringing_outbound(self.outbound.values(), session.callee, caller_number)
            if rival is not None and not glare.new_inbound_wins(rival, session):
                losers.append(session)
        fork.branches = [s for s in fork.branches if s not in losers]
        for session in fork.branches:
            self.inbound[session.call_id] = session
            session.ring()
        for session in losers:
            await session.abort()
        if not fork.branches:
            log.info("INVITE %s from %s: lost glare with the callee's own call -> 486", inv.call_id, host)
            await inv.respond(486, "Busy Here")

    def _caller_id_context(self, initial: Identity | None = None) -> CallerIdContext:
        return CallerIdContext(self.settings.caller_id, self.settings.dialplan, self.trusted.allows, initial)

    @staticmethod
    async def _abort_fork(fork: InboundFork) -> None:
        for session in fork.branches:
            await session.abort()

    async def _authorised(self, inv: ServerInvite) -> bool:
        host = inv.source.addr[0]
        if self.trusted.allows(host):
            return True
        accounts = self.settings.inbound.accounts
        auth = inv.request.headers.get("Authorization")
        if accounts and auth:
            user = digest.verify_authorization(
                auth, method="INVITE", password_for=lambda u, _realm: accounts.get(u), nonce_ok=self.nonces.valid,
            )
            if user is not None:
                return True
            log.warning("INVITE %s from %s: digest authentication failed -> 403", inv.call_id, host)
        elif accounts:
            header, nonce = digest.make_challenge(self.settings.inbound.realm)
            self.nonces.add(nonce)
            await inv.respond(401, "Unauthorized", headers=[("WWW-Authenticate", header)])
            return False
        else:
            log.warning("INVITE %s from untrusted source %s -> 403", inv.call_id, host)
        await inv.respond(403, "Forbidden")
        return False

    def _dialled_number(self, request_uri: str, to: NameAddr) -> str | None:
        for candidate in (SipUri.parse(request_uri).user, to.uri.user):
            if candidate:
                number = normalize_number(candidate, self.settings.dialplan)
                if number:
                    return number
        return None

    def _caller(self, inv: ServerInvite, *, trusted: bool) -> tuple[str | None, str | None]:
        """Caller number and display name: P-Asserted-Identity from a trusted source, else From.

        A withheld identity (anonymous user or Privacy: id) gives (None, None): the "Unknown caller"
        ghost, never a number the bridge invented.
        """
        req = inv.request
        privacy = (req.headers.get("Privacy") or "").lower()
        identity = req.from_
        pai = req.headers.get("P-Asserted-Identity")
        if trusted and pai:
            try:
                identity = NameAddr.parse(pai.split(",")[0])
            except (SipParseError, ValueError):
                pass
        user = identity.uri.user or ""
        if "id" in [p.strip() for p in privacy.split(";")] or user.lower() in ANONYMOUS_USERS:
            return None, None
        number = normalize_number(user, self.settings.dialplan)
        name = identity.display.strip('"') if identity.display else None
        return number, name or None

    # ---------------------------------------------------------------- lifecycle
    async def stop(self, timeout: float = 5.0) -> None:
        sessions = self.sessions()
        for s in sessions:
            machine = getattr(s, "machine", None)
            if machine is not None:
                s.post(machine.shutdown)
        for s in sessions:
            if not await s.wait_finished(timeout):
                await s.abort()
        for phones in list(self.matrix_transfers.phone_calls):  # phones the bridge connected to each other
            await phones.stop()
        # Refusals still being sent get a moment to reach the homeserver, then are cancelled.
        pending = list(self._pending)
        if pending:
            _, late = await asyncio.wait(pending, timeout=2.0)
            for task in late:
                task.cancel()
