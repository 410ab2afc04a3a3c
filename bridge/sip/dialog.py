"""SIP dialogs (RFC 3261 section 12): state, route set, remote target, CSeq, in-dialog requests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from bridge.sip.errors import SipTimeout, SipTransportError
from bridge.sip.ids import new_branch
from bridge.sip.logs import call_log
from bridge.sip.message import Headers, NameAddr, Request, Response
from bridge.sip.transport import RELIABLE, Address, StreamConnection, is_ip_literal, strip_brackets
from bridge.sip.uri import SipUri

if TYPE_CHECKING:
    from bridge.sip.server import ServerInvite, ServerRequest
    from bridge.sip.session_refresher import SessionRefresher
    from bridge.sip.ua import UserAgent

logger = logging.getLogger(__name__)

DialogId = tuple[str, str, str]  # (Call-ID, local tag, remote tag)


def route_uri(route: str) -> SipUri:
    return NameAddr.parse(route).uri


def usable_routes(values: list[str]) -> list[str]:
    """Record-Route entries that parse (a response's broken one must not make every later request raise)."""
    usable = []
    for value in values:
        try:
            NameAddr.parse(value)
        except ValueError:
            logger.info("ignoring unparsable Record-Route %r", value[:200])
            continue
        usable.append(value)
    return usable


class Dialog:
    """One dialog. `on_request` gets in-dialog requests (BYE after the core has answered it 200);
    `on_terminated(reason)` is called once when the dialog ends."""

    def __init__(self, ua: UserAgent, *, call_id: str, local_tag: str, remote_tag: str, local_header: str,
                 remote_header: str, remote_target: SipUri, route_set: list[str], local_cseq: int,
                 remote_cseq: int | None, transport: str, connection: StreamConnection | None,
                 state: str = "early", is_uac: bool, peer: tuple[str, Address] | None = None,
                 peer_trusted: bool = True) -> None:
        self._ua = ua
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_header = local_header  # From (UAC) / To (UAS) as we send it, with our tag
        self.remote_header = remote_header  # the peer's name-addr, with its tag
        self.local_uri = NameAddr.parse(local_header).uri
        self.remote_uri = NameAddr.parse(remote_header).uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_cseq = local_cseq
        self.remote_cseq = remote_cseq
        self.transport = transport
        self.connection = connection
        self.state = state
        self.is_uac = is_uac
        # Where the peer's messages came from, and whether it may name hosts for us to contact. An untrusted
        # peer's Contact/Record-Route decide the Request-URI and Route headers only: packets go to `peer`.
        self.peer = peer
        self.peer_trusted = peer_trusted
        # in-dialog requests; a re-INVITE arrives as a ServerInvite (respond, then wait_ack)
        self.on_request: Callable[[ServerRequest | ServerInvite], Awaitable[None]] | None = None
        self.on_terminated: Callable[[str], None] | None = None
        self.log = call_log(logger, call_id)
        self._bye_task: asyncio.Future[Response | None] | None = None
        # ACKs we sent for 2xx, by CSeq number: re-sent for each retransmitted 2xx (13.2.2.4)
        self._acks: dict[int, tuple[bytes, str, Address]] = {}
        # UAS side: 2xx retransmitters waiting for their ACK, by CSeq number
        self._pending_ok: dict[int, Any] = {}
        # UAS side: the initial INVITE not yet answered finally (a BYE in the early dialog 487s it)
        self._pending_invite: Any = None
        # RFC 4028 timer (session_refresher.py), and our last SDP in this dialog: a re-INVITE refresh repeats it
        self.session_timer: SessionRefresher | None = None
        self.local_sdp = b""
        self._invites_out = 0  # our INVITEs (initial or re-) without a final response: 14.2 glare
        self._reinvites_in: set[int] = set()  # CSeqs of the peer's re-INVITEs we have not answered finally

    @property
    def invite_out_pending(self) -> bool:
        return self._invites_out > 0

    @property
    def invite_in_pending(self) -> bool:
        """An INVITE of the peer's (initial or re-) is not answered finally yet."""
        return bool(self._reinvites_in) or self._pending_invite is not None

    @property
    def id(self) -> DialogId:
        return (self.call_id, self.local_tag, self.remote_tag)

    def __repr__(self) -> str:
        return f"<Dialog {self.call_id} {self.state} local={self.local_tag} remote={self.remote_tag}>"

    # ----------------------------------------------------------------- state
    def confirm(self) -> None:
        if self.state == "early":
            self.state = "confirmed"

    def terminate(self, reason: str) -> None:
        if self.state == "terminated":
            return
        self.state = "terminated"
        if self.session_timer is not None:
            self.session_timer.stop()
        for pending in list(self._pending_ok.values()):
            pending.stop()
        self._pending_ok.clear()
        self._ua._forget_dialog(self)
        self.log.info("dialog terminated: %s", reason)
        if self.on_terminated is not None:
            try:
                self.on_terminated(reason)
            except Exception:
                self.log.exception("on_terminated callback failed")

    # ----------------------------------------------------------------- destination
    def destination(self) -> tuple[str, Address]:
        """Loose routing (12.2.1.1): first Route if any, else the remote target."""
        uri = route_uri(self.route_set[0]) if self.route_set else self.remote_target
        if uri.scheme == "sips":
            transport = "tls"
        elif uri.params.get("transport"):
            transport = str(uri.params["transport"]).lower()
        else:
            transport = self.transport
        host, port = uri.host_port()
        if uri.port is None and transport == "tls":
            port = 5061
        if not self.peer_trusted and self.peer is not None:
            peer_transport, peer_addr = self.peer
            if not (is_ip_literal(host) and strip_brackets(host) == peer_addr[0] and transport == peer_transport):
                return peer_transport, peer_addr  # never resolve or contact a host an untrusted packet named
        return transport, (host, port)

    # ----------------------------------------------------------------- building
    def build_request(self, method: str, *, cseq: int | None = None, body: bytes = b"",
                      headers: Sequence[tuple[str, str]] = (), content_type: str | None = None,
                      branch: str | None = None) -> tuple[Request, str, Address]:
        transport, addr = self.destination()
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        hdrs = Headers()
        hdrs.add("Via", self._ua.via(transport, addr[0], branch or new_branch()))
        hdrs.add("Max-Forwards", "70")
        hdrs.add("From", self.local_header)
        hdrs.add("To", self.remote_header)
        hdrs.add("Call-ID", self.call_id)
        hdrs.add("CSeq", f"{cseq} {method}")
        for route in self.route_set:
            hdrs.add("Route", route)
        if method in ("INVITE", "UPDATE", "SUBSCRIBE", "REFER", "NOTIFY"):
            hdrs.add("Contact", self._ua.contact(transport, addr[0], secure=self.remote_target.scheme == "sips"))
        hdrs.add("User-Agent", self._ua.settings.user_agent)
        for name, value in headers:
            hdrs.add(name, value)
        if body and "Content-Type" not in hdrs:
            hdrs.add("Content-Type", content_type or "application/sdp")
        return Request(method, str(self.remote_target), hdrs, body), transport, addr

    # ----------------------------------------------------------------- ACK for 2xx (13.2.2.4)
    def send_ack(self, cseq: int, body: bytes = b"", content_type: str | None = None) -> None:
        """A new transaction-less request to the remote target through the route set."""
        request, transport, addr = self.build_request("ACK", cseq=cseq, body=body, content_type=content_type)
        data = request.serialize()
        self._acks[cseq] = (data, transport, addr)
        self._send_raw(data, transport, addr)

    def resend_ack(self, cseq: int) -> bool:
        entry = self._acks.get(cseq)
        if entry is None:
            return False
        self._send_raw(*entry)
        return True

    def _send_raw(self, data: bytes, transport: str, addr: Address) -> None:
        conn = self.connection if transport in RELIABLE else None
        try:
            if not self._ua.transport.try_send_now(data, transport, addr, conn):
                self._ua.transactions.spawn(self._send_raw_async(data, transport, addr), "send ACK")
        except (SipTransportError, OSError) as exc:
            self.log.warning("cannot send ACK: %s", exc)

    async def _send_raw_async(self, data: bytes, transport: str, addr: Address) -> None:
        try:
            await self._ua.transport.send(data, transport, addr)
        except (SipTransportError, OSError) as exc:
            self.log.warning("cannot send ACK: %s", exc)

    # ----------------------------------------------------------------- outgoing requests
    async def request(self, method: str, *, body: bytes = b"", headers: Sequence[tuple[str, str]] = (),
                      content_type: str | None = None) -> Response:
        """Send an in-dialog request and return its final response (raises SipTimeout/SipTransportError).
        A 481/408 final ends the dialog (12.2.1.2)."""
        method = method.upper()
        if self.state == "terminated" and method != "BYE":
            raise SipTransportError("dialog is terminated")
        timer = self.session_timer
        if timer is not None and method in ("INVITE", "UPDATE"):
            headers = [*headers, *timer.request_headers()]
        request, transport, addr = self.build_request(method, body=body, headers=headers,
                                                      content_type=content_type)
        if method == "INVITE":
            response = await self._reinvite(request, transport, addr)
            self._offer_answered(request, response)
            return response
        try:
            response = await self._ua.transactions.request(request, transport, addr, connection=self._conn_for(
                transport))
        except SipTimeout:
            if method != "BYE":
                self.terminate("timeout")
            raise
        if response.status in (408, 481) and method != "BYE":
            self.terminate(f"{method.lower()}_{response.status}")
        elif 200 <= response.status < 300 and method == "UPDATE":
            self._refresh_target(response)
            self._offer_answered(request, response)
        return response

    def _offer_answered(self, request: Request, response: Response) -> None:
        """A 2xx to our re-INVITE / UPDATE: a session refresh, and maybe our new SDP."""
        if not 200 <= response.status < 300:
            return
        if request.body:
            self.local_sdp = request.body
        if self.session_timer is not None:
            self.session_timer.our_request_answered(response)

    def _conn_for(self, transport: str) -> StreamConnection | None:
        conn = self.connection
        return conn if transport in RELIABLE and conn is not None and not conn.closed else None

    async def _reinvite(self, request: Request, transport: str, addr: Address) -> Response:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] = loop.create_future()
        cseq = request.cseq[0]

        def on_response(resp: Response) -> None:
            if resp.status < 200:
                return
            if resp.status < 300:
                if resp.to.tag == self.remote_tag:
                    if not self.resend_ack(cseq):
                        self._refresh_target(resp)
                        self.send_ack(cseq)
            if not fut.done():
                fut.set_result(resp)

        def on_error(exc: Exception) -> None:
            if not fut.done():
                fut.set_exception(exc)

        self._ua.transactions.send_request(request, transport, addr, on_response, on_error,
                                           connection=self._conn_for(transport))
        self._invites_out += 1
        try:
            response = await fut
        finally:
            self._invites_out -= 1
        if response.status in (408, 481):
            self.terminate(f"reinvite_{response.status}")
        return response

    async def reinvite(self, sdp: bytes) -> Response:
        """Send a re-INVITE with a new offer; a 2xx is ACKed, 491 (glare) is simply returned."""
        return await self.request("INVITE", body=sdp, content_type="application/sdp")

    async def bye(self) -> Response | None:
        """Hang up: BYE through the route set, then terminated. Idempotent (later calls share the result)."""
        if self._bye_task is None:
            if self.state == "terminated":
                return None
            self._bye_task = self._ua.transactions.spawn(self._send_bye(), "bye")
        return await asyncio.shield(self._bye_task)

    async def _send_bye(self) -> Response | None:
        request, transport, addr = self.build_request("BYE")
        self.terminate("bye_sent")
        try:
            return await self._ua.transactions.request(request, transport, addr,
                                                       connection=self._conn_for(transport))
        except (SipTimeout, SipTransportError) as exc:
            self.log.info("BYE got no final response: %s", exc)
            return None

    def _refresh_target(self, message: Request | Response) -> None:
        contact = message.headers.get("Contact")
        if contact:
            try:
                self.remote_target = NameAddr.parse(contact).uri
            except ValueError:
                self.log.info("ignoring unparsable Contact %r", contact)
