"""Client transactions (RFC 3261 17.1): the INVITE machine (timers A, B, D) and the non-INVITE one
(timers E, F, K). On reliable transports A and E never start and D and K are zero."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.sip.errors import SipTimeout, SipTransportError
from bridge.sip.logs import call_log
from bridge.sip.message import Headers, Request, Response
from bridge.sip.timers import Timers
from bridge.sip.transport import RELIABLE, Address, StreamConnection

if TYPE_CHECKING:
    from bridge.sip.transaction import TransactionLayer

logger = logging.getLogger(__name__)


def _ignore_response(response: Response) -> None:
    return None


def _ignore_error(exc: Exception) -> None:
    return None


class ClientTransaction:
    """Common part of the two client machines. The TU gets responses through `on_response` and a
    timeout / transport failure through `on_error`."""

    is_invite = False

    def __init__(self, layer: TransactionLayer, request: Request, transport: str, addr: Address,
                 on_response: Callable[[Response], None], on_error: Callable[[Exception], None]) -> None:
        self.layer = layer
        self.request = request
        self.transport = transport
        self.addr = addr
        self.connection: StreamConnection | None = None
        self.branch = request.branch or ""
        self.method = request.method
        self.key = (self.branch, self.method)
        self.reliable = transport in RELIABLE
        self._on_response = on_response
        self._on_error = on_error
        self._timers = Timers()
        self._data = request.serialize()
        self.state = "init"
        self._interval = layer.settings.t1

    @property
    def t1(self) -> float:
        return self.layer.settings.t1

    def start(self) -> None:
        """Register and send; the first send may need a connection, so it runs as a task."""
        self.layer._add_client(self)
        self._start_timers()
        if not self._send_now():
            self.layer.spawn(self._send_async(), f"send {self.method}")

    def _send_now(self) -> bool:
        try:
            return self.layer.transport.try_send_now(self._data, self.transport, self.addr, self.connection)
        except SipTransportError as exc:
            self._fail(exc)
            return True
        except OSError as exc:
            self._fail(SipTransportError(str(exc)))
            return True

    async def _send_async(self) -> None:
        try:
            self.connection = await self.layer.transport.send(self._data, self.transport, self.addr,
                                                              self.connection)
        except SipTransportError as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(SipTransportError(str(exc)))

    def _retransmit(self) -> None:
        if self.state in ("calling", "trying", "proceeding"):
            self._send_now()

    def _fail(self, exc: Exception) -> None:
        if self.state == "terminated":
            return
        self._terminate()
        self._deliver_error(exc)
        self._unlink()

    def _deliver(self, response: Response) -> None:
        try:
            self._on_response(response)
        except Exception:
            call_log(logger, self.request.call_id).exception("TU failed handling %s response", self.method)

    def _deliver_error(self, exc: Exception) -> None:
        try:
            self._on_error(exc)
        except Exception:
            call_log(logger, self.request.call_id).exception("TU failed handling %s error", self.method)

    def _terminate(self) -> None:
        self.state = "terminated"
        self._timers.stop_all()
        self.layer._remove_client(self)

    def _unlink(self) -> None:
        # the TU's callbacks reference the TU, which references us: drop them once nothing can arrive,
        # so reference counting alone frees both
        self._on_response = _ignore_response
        self._on_error = _ignore_error

    def _end(self) -> None:
        self._terminate()
        self._unlink()

    def _start_timers(self) -> None:
        raise NotImplementedError

    def receive(self, response: Response) -> None:
        raise NotImplementedError

    def cancel_timers(self) -> None:
        """Used at shutdown: silently drop the transaction."""
        self._terminate()


class NonInviteClientTransaction(ClientTransaction):
    """17.1.2: Trying -> Proceeding -> Completed -> Terminated with timers E, F, K."""

    def _start_timers(self) -> None:
        self.state = "trying"
        if not self.reliable:
            self._timers.start("E", self._interval, self._timer_e)
        self._timers.start("F", 64 * self.t1, self._timer_f)

    def _timer_e(self) -> None:
        if self.state not in ("trying", "proceeding"):
            return
        self._retransmit()
        # in Trying the interval doubles up to T2; in Proceeding it is T2
        self._interval = self.layer.settings.t2 if self.state == "proceeding" else min(
            2 * self._interval, self.layer.settings.t2)
        self._timers.start("E", self._interval, self._timer_e)

    def _timer_f(self) -> None:
        if self.state in ("trying", "proceeding"):
            self._fail(SipTimeout(f"{self.method} timed out (timer F)"))

    def receive(self, response: Response) -> None:
        if self.state in ("trying", "proceeding"):
            if response.status < 200:
                self.state = "proceeding"
                self._deliver(response)
                return
            self.state = "completed"
            self._timers.stop("E")
            self._timers.stop("F")
            self._deliver(response)
            if self.reliable:
                self._end()
            else:
                self._timers.start("K", self.layer.settings.t4, self._end)
        # Completed: retransmitted finals are absorbed


class InviteClientTransaction(ClientTransaction):
    """17.1.1 (+ RFC 6026 Accepted): Calling -> Proceeding -> Completed/Accepted -> Terminated, timers A B D M."""

    is_invite = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ack_data: bytes | None = None

    def _start_timers(self) -> None:
        self.state = "calling"
        if not self.reliable:
            self._timers.start("A", self._interval, self._timer_a)
        self._timers.start("B", 64 * self.t1, self._timer_b)

    def adopt(self) -> None:
        """Take over an INVITE a previous process sent (crash recovery): registered in Proceeding and never
        (re)sent; its final response is handled as usual (a non-2xx is ACKed), timer B ends the wait."""
        self.layer._add_client(self)
        self.state = "proceeding"
        self._timers.start("B", 64 * self.t1, self._timer_b)

    def _timer_a(self) -> None:
        if self.state != "calling":
            return
        self._retransmit()
        self._interval *= 2  # no T2 cap for INVITE (17.1.1.2)
        self._timers.start("A", self._interval, self._timer_a)

    def _timer_b(self) -> None:
        if self.state in ("calling", "proceeding"):
            self._fail(SipTimeout("INVITE timed out (timer B)"))

    def receive(self, response: Response) -> None:
        status = response.status
        if self.state in ("calling", "proceeding"):
            if status < 200:
                self.state = "proceeding"
                self._timers.stop("A")
                self._deliver(response)
            elif status < 300:
                # RFC 3261 17.1.1.2: a 2xx ends the transaction at once. Retransmitted or forked 2xx then
                # reach the UA as stray responses, which it matches to dialogs by Call-ID and tags (re-ACK,
                # or ACK + BYE an unwanted fork): no per-call state has to live on for RFC 6026's timer M.
                self._terminate()
                self._deliver(response)
                self._unlink()
            else:
                self.state = "completed"
                self._timers.stop_all()
                self._send_ack(response)
                self._deliver(response)
                self._timers.start("D", 0 if self.reliable else max(32.0, 64 * self.t1), self._end)
        elif self.state == "completed":
            if status >= 300 and self._ack_data is not None:
                self._send_ack_data()

    def _send_ack(self, response: Response) -> None:
        """17.1.1.3: ACK for a non-2xx final, same branch, To with the response's tag, Route copied."""
        req = self.request
        headers = Headers()
        headers.add("Via", str(req.top_via))
        for name in ("From",):
            value = req.headers.get(name)
            if value is not None:
                headers.add(name, value)
        to_value = response.headers.get("To")
        if to_value is not None:
            headers.add("To", to_value)
        headers.add("Call-ID", req.call_id)
        headers.add("CSeq", f"{req.cseq[0]} ACK")
        for route in req.headers.get_all("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        ack = Request("ACK", req.uri, headers, b"")
        self._ack_data = ack.serialize()
        self._send_ack_data()

    def _send_ack_data(self) -> None:
        assert self._ack_data is not None
        try:
            if not self.layer.transport.try_send_now(self._ack_data, self.transport, self.addr, self.connection):
                self.layer.spawn(self.layer.transport.send(self._ack_data, self.transport, self.addr),
                                 "send ACK")
        except (SipTransportError, OSError) as exc:
            call_log(logger, self.request.call_id).warning("cannot send ACK: %s", exc)
