"""Server transactions (RFC 3261 17.2): the INVITE machine (100 Trying, timers G, H, I, RFC 6026
Accepted) and the non-INVITE one (timer J), plus building responses (8.2.6)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.sip.errors import SipTransportError
from bridge.sip.logs import call_log
from bridge.sip.message import Headers, Request, Response, reason_phrase
from bridge.sip.timers import Timers
from bridge.sip.transport import RELIABLE, Address, Source, StreamConnection

if TYPE_CHECKING:
    from bridge.sip.transaction import TransactionLayer

logger = logging.getLogger(__name__)


def response_destination(request: Request, source: Source) -> tuple[str, Address, StreamConnection | None]:
    """18.2.2 + RFC 3581: answer on the request's connection, or to the source address and port."""
    return source.transport, source.addr, source.connection


class ServerTransaction:
    is_invite = False

    def __init__(self, layer: TransactionLayer, request: Request, source: Source, key: tuple[str, ...]) -> None:
        self.layer = layer
        self.request = request
        self.source = source
        self.key = key
        self.transport, self.addr, self.connection = response_destination(request, source)
        self.reliable = self.transport in RELIABLE
        self.last_response: Response | None = None
        self._last_data: bytes | None = None
        self._timers = Timers()
        self.state = "trying"

    @property
    def t1(self) -> float:
        return self.layer.settings.t1

    def _send(self, data: bytes) -> None:
        try:
            if self.layer.transport.try_send_now(data, self.transport, self.addr, self.connection):
                return
        except (SipTransportError, OSError) as exc:
            # the request's connection died: 18.2.2 says open a new one to the sent-by address
            call_log(logger, self.request.call_id).info("response send failed (%s), retrying on a new connection",
                                                         exc)
        self.layer.spawn(self._send_async(data), "send response")

    async def _send_async(self, data: bytes) -> None:
        addr = self.addr
        if self.reliable:
            # 18.2.2: a new connection to the Via's port, but always at the source IP (received): the Via
            # host is the sender's text and is never resolved
            via = self.request.top_via
            port = int(via.params.get("rport") or 0) or via.port or (5061 if self.transport == "tls" else 5060)
            addr = (self.source.addr[0], port)
        try:
            await self.layer.transport.send(data, self.transport, addr)
        except (SipTransportError, OSError) as exc:
            call_log(logger, self.request.call_id).warning("cannot send response to %s: %s", addr, exc)

    def send_response(self, response: Response) -> None:
        self.last_response = response
        self._last_data = response.serialize()
        self._send(self._last_data)

    def retransmit_last(self) -> None:
        if self._last_data is not None:
            self._send(self._last_data)

    def _terminate(self) -> None:
        self.state = "terminated"
        self._timers.stop_all()
        self.layer._remove_server(self)

    def cancel_timers(self) -> None:
        self._terminate()


class NonInviteServerTransaction(ServerTransaction):
    """17.2.2: Trying -> Proceeding -> Completed (timer J) -> Terminated."""

    def receive_retransmission(self, request: Request) -> None:
        if self.state in ("proceeding", "completed"):
            self.retransmit_last()

    def respond(self, response: Response) -> None:
        if self.state not in ("trying", "proceeding"):
            return
        self.send_response(response)
        if response.status < 200:
            self.state = "proceeding"
            return
        self.state = "completed"
        if self.reliable:
            self._terminate()
        else:
            # timer J: only the answer is needed to absorb retransmissions; keep just that
            self._terminate()
            self.layer._absorb(self.key, self._last_data, self.transport, self.addr, self.connection,
                               64 * self.t1)


class InviteServerTransaction(ServerTransaction):
    """17.2.1 (+ RFC 6026 Accepted): Proceeding -> Completed (G, H) -> Confirmed (I) -> Terminated.

    2xx retransmission until the ACK belongs to the UAS core (13.3.1.4); the UA does it, while this
    machine absorbs retransmitted INVITEs for 64*T1 (timer L).
    """

    is_invite = True

    def __init__(self, layer: TransactionLayer, request: Request, source: Source, key: tuple[str, ...]) -> None:
        super().__init__(layer, request, source, key)
        self.state = "proceeding"
        self.on_ack_timeout: Callable[[], None] | None = None
        self.on_ack: Callable[[Request], None] | None = None
        self.server_invite: Any = None  # the UA's ServerInvite (for CANCEL)
        self._interval = self.t1
        if layer.settings.trying_delay >= 0:
            self._timers.start("trying", layer.settings.trying_delay, self._send_trying)

    def _send_trying(self) -> None:
        if self.state == "proceeding" and self.last_response is None:
            self.send_response(make_response(self.request, 100, to_tag=None,
                                             user_agent=self.layer.settings.user_agent))

    def receive_retransmission(self, request: Request) -> None:
        if self.state in ("proceeding", "completed"):
            self.retransmit_last()

    def respond(self, response: Response) -> None:
        if self.state != "proceeding":
            return
        self._timers.stop("trying")
        self.send_response(response)
        status = response.status
        if status < 200:
            return
        if status < 300:
            # RFC 6026 Accepted (timer L): retransmitted INVITEs are absorbed silently (the UAS core
            # re-sends the 2xx); a tombstone does that without keeping the whole transaction alive
            self.state = "accepted"
            self._timers.stop_all()
            self.layer._remove_server(self)
            self._unlink()
            self.layer._absorb(self.key, None, self.transport, self.addr, self.connection, 64 * self.t1)
            return
        self.state = "completed"
        if not self.reliable:
            self._timers.start("G", self._interval, self._timer_g)
        self._timers.start("H", 64 * self.t1, self._timer_h)

    def _terminate(self) -> None:
        super()._terminate()
        self._unlink()

    def _unlink(self) -> None:
        # break the transaction <-> ServerInvite cycle so plain reference counting frees both
        self.server_invite = None
        self.on_ack = None
        self.on_ack_timeout = None

    def _timer_g(self) -> None:
        if self.state != "completed":
            return
        self.retransmit_last()
        self._interval = min(2 * self._interval, self.layer.settings.t2)
        self._timers.start("G", self._interval, self._timer_g)

    def _timer_h(self) -> None:
        if self.state != "completed":
            return
        call_log(logger, self.request.call_id).info(
            "no ACK for final response %s (timer H)", self.last_response and self.last_response.status)
        callback = self.on_ack_timeout
        self._terminate()
        if callback is not None:
            callback()

    def receive_ack(self, ack: Request) -> None:
        if self.state != "completed":
            return
        self.state = "confirmed"
        self._timers.stop("G")
        self._timers.stop("H")
        if self.on_ack is not None:
            self.on_ack(ack)
        if self.reliable:
            self._terminate()
        else:
            self._timers.start("I", self.layer.settings.t4, self._terminate)


def make_response(request: Request, status: int, reason: str | None = None, *, to_tag: str | None,
                  user_agent: str | None = None, body: bytes = b"") -> Response:
    """8.2.6: copy Via, From, To (+tag), Call-ID, CSeq (and Record-Route for dialog-creating answers)."""
    headers = Headers()
    for via in request.headers.get_all("Via"):
        headers.add("Via", via)
    from_value = request.headers.get("From")
    if from_value is not None:
        headers.add("From", from_value)
    to_value = request.headers.get("To") or ""
    if to_tag is not None and status > 100 and ";tag=" not in to_value.replace(" ", "").lower():
        to_value = f"{to_value};tag={to_tag}"
    headers.add("To", to_value)
    call_id = request.headers.get("Call-ID")
    if call_id is not None:
        headers.add("Call-ID", call_id)
    cseq = request.headers.get("CSeq")
    if cseq is not None:
        headers.add("CSeq", cseq)
    if 100 < status < 300 and request.method in ("INVITE", "SUBSCRIBE"):
        for rr in request.headers.get_all("Record-Route"):
            headers.add("Record-Route", rr)
    if user_agent:
        headers.add("Server", user_agent)
    return Response(status, reason or reason_phrase(status), headers, body)
