"""The SIP user agent: owns transports, transactions and dialogs, and routes requests to the application.

Usage::

    ua = UserAgent(SipSettings(listen=[ListenAddress("udp", "127.0.0.1", 5060)]), on_invite=handle_invite)
    await ua.start()
    call = ua.invite("sip:bob@example.org", from_uri="sip:alice@bridge.example", sdp=offer)
    call.on_provisional = lambda resp: ...
    final = await call.wait_final()        # 2xx already ACKed; call.dialog is the confirmed dialog
    await call.dialog.bye()
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

from bridge.sip.client import ClientInvite
from bridge.sip.dialog import Dialog, DialogId
from bridge.sip.digest import Credentials, build_authorization, parse_challenge
from bridge.sip.errors import SipTimeout, SipTransportError
from bridge.sip.extensions import invite_headers, screen
from bridge.sip.ids import new_branch, new_call_id, new_tag
from bridge.sip.logs import LogBudget, RateLimitedLog, call_log, printable
from bridge.sip.message import Headers, NameAddr, Request, Response, SipParseError
from bridge.sip.server import ALLOW, ServerInvite, ServerRequest
from bridge.sip.server_transaction import InviteServerTransaction, NonInviteServerTransaction, ServerTransaction
from bridge.sip.settings import SipSettings
from bridge.sip.targets import FAILOVER_STATUS, Target, TargetLocator, next_hop_uri
from bridge.sip.transaction import TransactionLayer
from bridge.sip.transport import (
    Address,
    MessageObserver,
    Source,
    StreamConnection,
    TransportLayer,
    format_host,
    strip_brackets,
)
from bridge.sip.uri import SipUri

logger = logging.getLogger(__name__)

__all__ = ["ClientInvite", "Dialog", "ServerInvite", "ServerRequest", "UserAgent"]

ENDED_DIALOG_MEMORY = 4096
MAX_ACKS_PER_DIALOG = 16  # 2xx with new CSeqs for one dialog: a spoofer must not grow its ACK table
KNOWN_METHODS = frozenset({"REGISTER", "SUBSCRIBE", "NOTIFY", "MESSAGE", "INFO", "UPDATE", "PRACK", "REFER",
                           "PUBLISH", "BYE"})


def _quote_display(display: str) -> str:
    return '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'


class UserAgent:
    def __init__(self, settings: SipSettings, *,
                 on_invite: Callable[[ServerInvite], Awaitable[None]] | None = None,
                 on_request: Callable[[ServerRequest], Awaitable[None]] | None = None) -> None:
        self.settings = settings
        self.on_invite = on_invite
        self.on_request = on_request
        self.transport = TransportLayer(settings, self._on_message, self._on_parse_error)
        self.transactions = TransactionLayer(settings, self.transport, self._on_request,
                                             self._on_stray_response)
        self._dialogs: dict[DialogId, Dialog] = {}
        self._client_invites: set[ClientInvite] = set()
        # recently ended UAC dialogs: a late 2xx retransmission for one is ACKed, not answered with a BYE
        self._ended: OrderedDict[DialogId, None] = OrderedDict()
        # (Call-ID, local tag) of INVITEs this UA sent, recently, with where each went (transport, next hop):
        # only a 2xx matching one is ACKed, and its ACK/BYE go there unless it came from there
        self._sent_invites: OrderedDict[tuple[str, str], tuple[str, Address] | None] = OrderedDict()
        self._log_unsolicited = RateLimitedLog(logger, 10.0)
        self._bad_packets = LogBudget(logger)
        self.unsolicited_responses = 0  # dropped: matched no transaction, dialog or INVITE of ours
        self.transport.connections_in_use = self._connections_in_use
        # dialogs a previous process left and crash recovery hung up: the peer's own BYE still gets 200
        self._reaped: OrderedDict[DialogId, None] = OrderedDict()
        self._running = False
        # RFC 3263 (targets.py): set by the application for a trunk named by domain; None = A/AAAA only
        self.locator: TargetLocator | None = None

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await self.transport.start()
        self._running = True

    async def stop(self) -> None:
        """Close sockets and cancel every task and timer; sends no BYE/CANCEL by itself."""
        self._running = False
        await self.transactions.stop()
        await self.transport.stop()
        self._dialogs.clear()
        self._client_invites.clear()

    async def __aenter__(self) -> UserAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def bound_address(self, transport: str = "udp") -> Address:
        return self.transport.bound_address(transport)

    @property
    def listening(self) -> bool:
        """Started, and every configured SIP listener is bound."""
        return self._running and self.transport.listening

    @property
    def on_message_observed(self) -> MessageObserver | None:
        """Called with (direction "in"/"out", method or status) for every SIP message (retransmissions too)."""
        return self.transport.on_observed

    @on_message_observed.setter
    def on_message_observed(self, observer: MessageObserver | None) -> None:
        self.transport.on_observed = observer

    @property
    def dialogs(self) -> list[Dialog]:
        return list(self._dialogs.values())

    # ----------------------------------------------------------------- header helpers
    def _sent_by(self, transport: str, dest_host: str | None) -> Address:
        try:
            return self.transport.sent_by(transport, dest_host)
        except SipTransportError:
            return self.transport.sent_by("udp", dest_host)  # outgoing-only TCP/TLS: advertise what we have

    def via(self, transport: str, dest_host: str | None, branch: str) -> str:
        host, port = self._sent_by(transport, dest_host)
        return f"SIP/2.0/{transport.upper()} {format_host(host)}:{port};branch={branch};rport"

    def contact(self, transport: str, dest_host: str | None = None, user: str | None = None, *,
                secure: bool = False) -> str:
        """Our Contact; `secure` (a sips: Request-URI or route, 8.1.1.8) gives a sips: URI."""
        host, port = self._sent_by(transport, dest_host)
        userpart = f"{user}@" if user else ""
        if secure:
            return f"<sips:{userpart}{format_host(host)}:{port}>"
        tparam = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{userpart}{format_host(host)}:{port}{tparam}>"

    def build_request(self, method: str, request_uri: str, *, from_header: str, to_header: str, call_id: str,
                      cseq: int, outbound_proxy: str | None = None, headers: Sequence[tuple[str, str]] = (),
                      body: bytes = b"", content_type: str | None = None,
                      contact_user: str | None = None, with_contact: bool = True) -> tuple[Request, str, Address]:
        """An out-of-dialog request plus where to send it (the outbound proxy, else the Request-URI)."""
        target = SipUri.parse(request_uri)
        next_hop = SipUri.parse(outbound_proxy) if outbound_proxy else target
        transport = next_hop.transport
        host, port = next_hop.host_port()
        hdrs = Headers()
        hdrs.add("Via", self.via(transport, host, new_branch()))
        hdrs.add("Max-Forwards", "70")
        hdrs.add("From", from_header)
        hdrs.add("To", to_header)
        hdrs.add("Call-ID", call_id)
        hdrs.add("CSeq", f"{cseq} {method}")
        if outbound_proxy:
            proxy = next_hop.copy()
            proxy.params["lr"] = None
            hdrs.add("Route", f"<{proxy}>")
        if with_contact:
            hdrs.add("Contact", self.contact(transport, host, contact_user,
                                             secure=target.scheme == "sips" or next_hop.scheme == "sips"))
        hdrs.add("User-Agent", self.settings.user_agent)
        if method == "INVITE":
            hdrs.add("Allow", ALLOW)
        for name, value in headers:
            hdrs.add(name, value)
        if body and "Content-Type" not in hdrs:
            hdrs.add("Content-Type", content_type or "application/sdp")
        return Request(method, str(target), hdrs, body), transport, (host, port)

    @staticmethod
    def new_call_id() -> str:
        return new_call_id()

    @staticmethod
    def name_addr(uri: str, display: str | None = None, tag: str | None = None) -> str:
        text = f"<{uri}>" if display is None else f"{_quote_display(display)} <{uri}>"
        return f"{text};tag={tag}" if tag else text

    # ----------------------------------------------------------------- UAC
    def invite(self, request_uri: str, *, from_uri: str, to_uri: str | None = None,
               from_display: str | None = None, sdp: bytes | None = None, credentials: Credentials | None = None,
               outbound_proxy: str | None = None, headers: Sequence[tuple[str, str]] = (),
               call_id: str | None = None) -> ClientInvite:
        """Start an outgoing call at once; see ClientInvite."""
        request, transport, addr = self.build_request(
            "INVITE", request_uri, from_header=self.name_addr(from_uri, from_display, new_tag()),
            to_header=self.name_addr(to_uri or request_uri), call_id=call_id or self.new_call_id(),
            cseq=secrets.randbelow(1 << 16) + 1, outbound_proxy=outbound_proxy,
            headers=[*invite_headers(self.settings), *headers],
            body=sdp or b"", content_type="application/sdp")
        ci = ClientInvite(self, request, transport, addr, credentials)
        ci.start()
        return ci

    async def send_request(self, request: Request, transport: str, addr: Address,
                           credentials: Credentials | None = None) -> tuple[Response, Request]:
        """Run a non-INVITE client transaction, answering 401/407 once per challenge.

        Returns the final response and the request as last sent (its CSeq is the one to continue from).
        A next hop named by domain is located by RFC 3263: timeouts, transport errors and 503 move on to
        the next target.
        """
        targets = await self.locate(request) if self.needs_location(request) else []
        if not targets:
            return await self._send_request_to(request, transport, addr, credentials)
        for index, target in enumerate(targets):
            request = self.retarget(request, target)
            last = index == len(targets) - 1
            try:
                response, request = await self._send_request_to(request, target.transport,
                                                                (target.host, target.port), credentials)
            except (SipTimeout, SipTransportError) as exc:
                if self.locator is not None:
                    self.locator.note_failure(target.transport, target.host, target.port)
                if last:
                    raise
                logger.info("%s to %s:%s:%d failed (%s): trying the next target", request.method,
                            target.transport, target.host, target.port, exc)
                continue
            if response.status != FAILOVER_STATUS or last:
                return response, request
            if self.locator is not None:
                self.locator.note_failure(target.transport, target.host, target.port)
            logger.info("%s to %s:%s:%d answered 503: trying the next target", request.method,
                        target.transport, target.host, target.port)
            request = self._next_cseq(request)
        raise AssertionError("unreachable")

    def needs_location(self, request: Request) -> bool:
        """The request's next hop is a domain without a port, to be located by RFC 3263 (locate())."""
        if self.locator is None:
            return False
        return self.locator.applies(next_hop_uri(request.uri, request.headers.get_all("Route")))

    async def locate(self, request: Request) -> list[Target]:
        """RFC 3263 targets of an out-of-dialog request's next hop; empty when no look-up applies."""
        if self.locator is None or not self.needs_location(request):
            return []
        uri = next_hop_uri(request.uri, request.headers.get_all("Route"))
        targets = await self.locator.locate(uri)
        for target in targets:  # the trunk's other servers are the trunk too (trust.py)
            self.transport.trust.note_resolved(uri.host, target.host)
            if target.transport == "tls":  # RFC 5922 4.1: its certificate must name the domain we looked up
                self.transport.expect_tls_name((target.host, target.port), uri.host)
        return [t for t in targets if t.transport != "udp" or self.transport.can_send_udp(t.host)]

    def retarget(self, request: Request, target: Target, *, contact: bool = False) -> Request:
        """The request for another target: a new Via (transport, branch), so a new transaction (4.3).
        `contact`: also rebuild our plain Contact (an INVITE's, build_request's) for the target's transport."""
        headers = request.headers.copy()
        headers.set("Via", self.via(target.transport, target.host, new_branch()))
        old_contact = request.headers.get("Contact") if contact else None
        if old_contact is not None:  # NAPTR may have picked another transport than the URI's: say ours for it
            try:
                ours = NameAddr.parse(old_contact).uri
            except ValueError:
                ours = None
            if ours is not None:
                headers.set("Contact", self.contact(target.transport, target.host, ours.user,
                                                    secure=ours.scheme == "sips"))
        return Request(request.method, request.uri, headers, request.body)

    @staticmethod
    def _next_cseq(request: Request) -> Request:
        headers = request.headers.copy()
        headers.set("CSeq", f"{request.cseq[0] + 1} {request.method}")
        return Request(request.method, request.uri, headers, request.body)

    async def _send_request_to(self, request: Request, transport: str, addr: Address,
                               credentials: Credentials | None) -> tuple[Response, Request]:
        used_nonces: set[str] = set()
        answered: set[int] = set()  # 401 / 407 already answered with credentials
        while True:
            response = await self.transactions.request(request, transport, addr)
            if response.status not in (401, 407) or credentials is None:
                return response, request
            header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
            values = response.headers.get_all(header)
            if not values:
                return response, request
            try:
                challenge = parse_challenge(values[0])
            except ValueError as exc:
                logger.info("unusable %s in %d to %s: %s", header, response.status, request.method, exc)
                return response, request
            if challenge.nonce in used_nonces or (response.status in answered and not challenge.stale) \
                    or len(used_nonces) >= 4:
                # rejected again (a registrar may send a fresh nonce each time): wrong credentials, never loop
                return response, request
            used_nonces.add(challenge.nonce)
            answered.add(response.status)
            headers = request.headers.copy()
            headers.set("Via", self.via(transport, addr[0], new_branch()))
            headers.set("CSeq", f"{request.cseq[0] + 1} {request.method}")
            auth_name = "Authorization" if response.status == 401 else "Proxy-Authorization"
            headers.remove("Authorization")
            headers.remove("Proxy-Authorization")
            headers.add(auth_name, build_authorization(challenge, method=request.method, uri=request.uri,
                                                       credentials=credentials, body=request.body))
            request = Request(request.method, request.uri, headers, request.body)

    def _add_client_invite(self, ci: ClientInvite) -> None:
        self._client_invites.add(ci)
        self.remember_sent_invite(ci.call_id, ci.local_tag, destination=(ci._transport, ci._addr))

    def remember_sent_invite(self, call_id: str, local_tag: str,
                             destination: tuple[str, Address] | None = None) -> None:
        """Record an INVITE as ours (also one restored after a restart), so its late 2xx is ACKed and hung up.
        `destination` (transport, next hop) is where that INVITE went: the late 2xx's ACK/BYE go there too
        unless the 2xx came from there (see _on_stray_response)."""
        self._sent_invites[(call_id, local_tag)] = destination
        self._sent_invites.move_to_end((call_id, local_tag))
        if len(self._sent_invites) > ENDED_DIALOG_MEMORY:
            self._sent_invites.popitem(last=False)

    def _remove_client_invite(self, ci: ClientInvite) -> None:
        self._client_invites.discard(ci)

    # ----------------------------------------------------------------- dialogs
    def _add_dialog(self, dialog: Dialog) -> None:
        self._dialogs[dialog.id] = dialog

    def _forget_dialog(self, dialog: Dialog) -> None:
        if self._dialogs.get(dialog.id) is dialog:
            del self._dialogs[dialog.id]
        if dialog.is_uac:
            self._remember_ended(dialog.id)

    def remember_reaped_dialog(self, dialog_id: DialogId) -> None:
        """A restored dialog we hang up: a BYE from the peer crossing ours is answered 200, not 481."""
        self._reaped[dialog_id] = None
        if len(self._reaped) > ENDED_DIALOG_MEMORY:
            self._reaped.popitem(last=False)

    def find_dialog(self, call_id: str, local_tag: str, remote_tag: str) -> Dialog | None:
        return self._dialogs.get((call_id, local_tag, remote_tag))

    # ----------------------------------------------------------------- incoming
    def _on_message(self, msg: Request | Response, source: Source) -> None:
        try:
            self.transactions.handle_message(msg, source)
        except SipParseError as exc:
            # a header the parser accepted lazily turned out malformed (e.g. a bad Via on use)
            self._bad_packets.log(logging.INFO, "dropping malformed %s from %s/%s: %s", _describe(msg),
                                  source.transport, source.addr, exc)

    def _on_parse_error(self, err: SipParseError, source: Source) -> None:
        partial = err.partial
        if partial is not None and partial.method != "ACK":
            self._bad_packets.log(logging.INFO, "malformed %s from %s/%s: %s; answering 400", partial.method,
                                  source.transport, source.addr, err)
            try:
                self.transactions.respond_stateless(partial, source, 400, printable(f"Bad Request ({err})", 100))
            except (SipParseError, ValueError) as exc:
                self._bad_packets.log(logging.INFO, "cannot even answer the malformed request: %s", exc)
            return
        self._bad_packets.log(logging.INFO, "dropping malformed message from %s/%s: %s", source.transport,
                              source.addr, err)

    def _on_stray_response(self, resp: Response, source: Source) -> None:
        """A response that matched no client transaction. Nothing unsolicited is answered:

        - a 2xx for a live dialog of ours (a retransmission) gets that dialog's ACK again;
        - a 2xx matching an INVITE we sent (Call-ID + our From-tag, `_sent_invites`) but no dialog (a late
          fork, or an answer after we gave up) gets one ACK and one BYE transaction (13.2.2.4), once per
          dialog: later copies are dropped;
        - anything else is dropped, counted, and logged at most once per 10 s.

        Where the late 2xx's ACK/BYE go: RFC 3261 sends them to its Contact through its Record-Route. Only
        a party that saw our INVITE can match our Call-ID and tag, and legitimately that 2xx arrives from the
        next hop we sent the INVITE to (responses follow the Via path). So the Contact/Record-Route are
        followed (and a name in them resolved) only when the 2xx came from that next hop or a trusted
        source; from any other address the ACK/BYE go to the INVITE's next hop, and nothing a packet names
        is resolved or contacted.
        """
        if not (200 <= resp.status < 300 and resp.cseq[1] == "INVITE"):
            self._unsolicited(resp, source)
            return
        cseq = resp.cseq[0]
        local_tag = resp.from_.tag or ""
        dialog = self._dialogs.get((resp.call_id, local_tag, resp.to.tag or ""))
        if dialog is not None:
            if not dialog.resend_ack(cseq) and cseq <= dialog.local_cseq and len(dialog._acks) < MAX_ACKS_PER_DIALOG:
                dialog.send_ack(cseq)
            return
        key = (resp.call_id, local_tag)
        if key not in self._sent_invites:
            self._unsolicited(resp, source)
            return
        dialog_id = (resp.call_id, local_tag, resp.to.tag or "")
        if dialog_id in self._ended:
            return  # one ACK + one BYE per dialog: its retransmissions (or replays) get nothing more
        self._remember_ended(dialog_id)
        try:
            orphan = self._orphan_dialog(resp, source, self._sent_invites[key])
            destination = orphan.destination()
        except ValueError as exc:
            call_log(logger, resp.call_id).info("late 2xx with unusable headers from %s: %s", source.addr,
                                                printable(exc))
            return
        call_log(logger, resp.call_id).info("late 2xx from To-tag %s (from %s): ACK + BYE towards %s",
                                            printable(resp.to.tag), source.addr, destination[1])
        orphan.send_ack(cseq)
        self.transactions.spawn(orphan.bye(), "bye unwanted 2xx")

    def _unsolicited(self, resp: Response, source: Source) -> None:
        self.unsolicited_responses += 1
        self._log_unsolicited("dropping unsolicited %d response from %s/%s (Call-ID %s)", resp.status,
                              source.transport, source.addr, printable(resp.call_id, 80))

    def _remember_ended(self, dialog_id: DialogId) -> None:
        self._ended[dialog_id] = None
        if len(self._ended) > ENDED_DIALOG_MEMORY:
            self._ended.popitem(last=False)

    def _orphan_dialog(self, resp: Response, source: Source, sent_to: tuple[str, Address] | None) -> Dialog:
        """A throw-away dialog built from a late 2xx (its From is ours, its To is the peer's), aimed as
        _on_stray_response explains."""
        contact = resp.headers.get("Contact")
        target = NameAddr.parse(contact).uri if contact else resp.to.uri
        trusted = self.transport.trust.is_trusted(source.addr[0])
        peer: tuple[str, Address] = (source.transport, source.addr)
        if sent_to is not None:
            hop = strip_brackets(sent_to[1][0])
            trusted = trusted or source.addr[0] in (hop, self.transport.cached_address(hop))
            peer = sent_to
        same_hop = trusted or peer == (source.transport, source.addr)
        return Dialog(self, call_id=resp.call_id, local_tag=resp.from_.tag or "", remote_tag=resp.to.tag or "",
                      local_header=resp.headers.get("From") or "", remote_header=resp.headers.get("To") or "",
                      remote_target=target, route_set=list(reversed(resp.headers.get_all("Record-Route"))),
                      local_cseq=resp.cseq[0], remote_cseq=None, transport=source.transport,
                      connection=source.connection if same_hop else None, state="confirmed", is_uac=True, peer=peer,
                      peer_trusted=trusted)

    def _connections_in_use(self) -> set[StreamConnection]:
        """Stream connections a dialog or transaction still needs (kept open however idle)."""
        in_use = {d.connection for d in self._dialogs.values() if d.connection is not None}
        in_use.update(self.transactions.connections())
        return in_use

    def _on_request(self, req: Request, source: Source, tx: ServerTransaction | None) -> None:
        method = req.method
        if req.cseq[1] != method:
            if tx is not None:
                self._reply(tx, req, source, 400, "CSeq method does not match")
            return
        to_tag = req.to.tag
        if tx is None:  # ACK for a 2xx
            if to_tag:
                dialog = self._dialogs.get((req.call_id, to_tag, req.from_.tag or ""))
                if dialog is not None:
                    pending = dialog._pending_ok.pop(req.cseq[0], None)
                    if pending is not None:
                        pending.ack(req)
            return
        if method == "CANCEL":
            self._on_cancel(req, source, tx)
            return
        # 420 for options we lack, 422 for a too short session interval, 491/500 for overlapping re-INVITEs
        refusal = screen(self.settings, req, self._dialogs.get((req.call_id, to_tag, req.from_.tag or ""))
                         if to_tag else None)
        if refusal is not None:
            self._reply(tx, req, source, refusal[0], refusal[1], headers=refusal[2])
            return
        if to_tag:
            dialog_id = (req.call_id, to_tag, req.from_.tag or "")
            dialog = self._dialogs.get(dialog_id)
            if dialog is None:
                self._reply(tx, req, source, 200 if method == "BYE" and dialog_id in self._reaped else 481)
                return
            self._in_dialog(dialog, req, source, tx)
            return
        if method == "INVITE":
            assert isinstance(tx, InviteServerTransaction)
            problem = _unusable_dialog_headers(req)
            if problem:  # 8.2 / 12.1.1: the dialog would be built from them, so refuse before the application
                self._reply(tx, req, source, 400, f"Bad {problem}")
                return
            si = ServerInvite(self, req, source, tx)
            if self.on_invite is None:
                si.respond_now(480)
                return
            self._spawn_handler(self.on_invite(si), si, "on_invite")
            return
        if method == "OPTIONS":
            self._reply(tx, req, source, 200, headers=(("Allow", ALLOW), ("Accept", "application/sdp")))
            return
        if method == "BYE":
            self._reply(tx, req, source, 481)
            return
        if self.on_request is not None:
            sr = ServerRequest(self, req, source, tx)
            self._spawn_handler(self.on_request(sr), sr, "on_request")
            return
        self._reply(tx, req, source, 405 if method in KNOWN_METHODS else 501)

    def _on_cancel(self, req: Request, source: Source, tx: ServerTransaction) -> None:
        ist = self.transactions.find_invite_for_cancel(req)
        if ist is None:
            self._reply(tx, req, source, 481)
            return
        self._reply(tx, req, source, 200)
        si = getattr(ist, "server_invite", None)
        if isinstance(si, ServerInvite):
            si._cancel()

    def _in_dialog(self, dialog: Dialog, req: Request, source: Source, tx: ServerTransaction) -> None:
        method = req.method
        cseq = req.cseq[0]
        if dialog.remote_cseq is not None and cseq <= dialog.remote_cseq:
            self._reply(tx, req, source, 500, "Out of Order CSeq")
            return
        dialog.remote_cseq = cseq
        if method == "BYE":
            # the core always answers BYE itself, then tells the application
            self._reply(tx, req, source, 200)
            pending = dialog._pending_invite
            if isinstance(pending, ServerInvite):
                pending._end_early()
            dialog.terminate("bye_received")
            if dialog.on_request is not None:
                sr = ServerRequest(self, req, source, None, dialog)
                sr.responded = True
                self._spawn_handler(dialog.on_request(sr), sr, "dialog BYE")
            return
        if method == "PRACK":  # RFC 3262: acknowledges our reliable 18x to the INVITE still ringing
            pending = dialog._pending_invite
            self._reply(tx, req, source, pending.prack(req) if isinstance(pending, ServerInvite) else 481)
            return
        if method == "INVITE":
            assert isinstance(tx, InviteServerTransaction)
            si = ServerInvite(self, req, source, tx, dialog)
            if dialog.on_request is None:
                si.respond_now(501)
                return
            self._spawn_handler(dialog.on_request(si), si, "re-INVITE")
            return
        if method == "ACK":
            return
        sr = ServerRequest(self, req, source, tx, dialog)
        if dialog.on_request is not None:
            if method == "UPDATE":
                dialog._refresh_target(req)
            self._spawn_handler(dialog.on_request(sr), sr, f"dialog {method}")
            return
        sr.respond_now(200 if method == "OPTIONS" else 501)

    def _reply(self, tx: ServerTransaction, req: Request, source: Source, status: int, reason: str | None = None,
               headers: Sequence[tuple[str, str]] = ()) -> None:
        if isinstance(tx, NonInviteServerTransaction):
            ServerRequest(self, req, source, tx).respond_now(status, reason, headers=headers)
        elif isinstance(tx, InviteServerTransaction):
            ServerInvite(self, req, source, tx).respond_now(status, reason, headers=headers)

    def _spawn_handler(self, coro: Awaitable[None], obj: ServerInvite | ServerRequest,
                       what: str) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                call_log(logger, obj.call_id).exception("%s handler failed", what)
                if not obj.responded:
                    obj.respond_now(500)

        self.transactions.spawn(run(), what)


def _unusable_dialog_headers(msg: Request | Response) -> str | None:
    """The name of a dialog-forming header (Contact, Record-Route) that does not parse, if any."""
    for name in ("Contact", "Record-Route"):
        values = msg.headers.get_all(name)
        try:
            for value in values[:1] if name == "Contact" else values:
                NameAddr.parse(value)
        except ValueError:
            return name
    return None


def _describe(msg: Request | Response) -> str:
    return msg.method if isinstance(msg, Request) else f"{msg.status} response"
