"""The transaction layer (RFC 3261 section 17): matches messages to the four machines (17.1.3, 17.2.3),
creates server transactions for new requests and absorbs retransmissions of finished ones.

The machines live in client_transaction.py and server_transaction.py. Timers are `loop.call_later`
handles (cheap; no task per transaction); on reliable transports the retransmission timers (A, E, G) never
start and the wait timers D, I, J, K are zero. A 2xx ends an INVITE client transaction at once (retransmitted
or forked 2xx reach the UA as stray responses); a server INVITE answered 2xx and a completed non-INVITE
server transaction leave only a small tombstone that absorbs retransmissions for 64*T1 (timers L, J).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from bridge.sip.client_transaction import (
    ClientTransaction,
    InviteClientTransaction,
    NonInviteClientTransaction,
)
from bridge.sip.errors import SipTransportError
from bridge.sip.ids import MAGIC_COOKIE, new_branch, new_tag
from bridge.sip.logs import LogBudget, RateLimitedLog, printable
from bridge.sip.message import Request, Response, SipParseError, Via
from bridge.sip.server_transaction import (
    InviteServerTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    make_response,
)
from bridge.sip.settings import SipSettings
from bridge.sip.transport import Address, Source, StreamConnection, TransportLayer

__all__ = [
    "MAGIC_COOKIE",
    "ClientTransaction",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "ServerTransaction",
    "TransactionLayer",
    "make_response",
    "new_branch",
    "new_tag",
]

logger = logging.getLogger(__name__)

MAX_ABSORBED = 65536  # tombstones of finished server transactions; beyond it the oldest go first


RequestHandler = Callable[[Request, Source, "ServerTransaction | None"], None]
ResponseHandler = Callable[[Response, Source], None]


class TransactionLayer:
    """Matches messages to transactions (17.1.3, 17.2.3) and creates server transactions for new requests.

    `on_request(request, source, tx)` gets every new request; `tx` is None only for an ACK that matched no
    INVITE server transaction (the ACK for a 2xx, handled by the dialog layer). `on_stray_response` gets
    responses that matched no client transaction (e.g. a 2xx retransmitted after timer M).
    """

    def __init__(self, settings: SipSettings, transport: TransportLayer, on_request: RequestHandler,
                 on_stray_response: ResponseHandler | None = None) -> None:
        self.settings = settings
        self.transport = transport
        self._on_request = on_request
        self._on_stray_response = on_stray_response
        self._clients: dict[tuple[str, str], ClientTransaction] = {}
        self._servers: dict[tuple[str, ...], ServerTransaction] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # finished server transactions still absorbing retransmissions (timers J, L): key -> (answer to
        # repeat or None, transport, addr, connection). Plain tuples expiring in one sweep keep tens of
        # thousands of recent calls cheap for the garbage collector.
        self._absorbed: dict[tuple[str, ...], tuple[bytes | None, str, Address, StreamConnection | None]] = {}
        self._absorb_expiry: deque[tuple[float, tuple[str, ...]]] = deque()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._per_source: dict[str, int] = {}  # live server transactions per source IP
        self._log_overload = RateLimitedLog(logger, 10.0)
        self._bad_packets = LogBudget(logger)
        self.dropped_over_limit = 0

    # ----------------------------------------------------------------- task ownership
    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("SIP task %s failed", task.get_name(), exc_info=task.exception())

    def _absorb(self, key: tuple[str, ...], data: bytes | None, transport: str, addr: Address,
                connection: StreamConnection | None, lifetime: float) -> None:
        loop = asyncio.get_running_loop()
        while len(self._absorbed) >= MAX_ABSORBED and self._absorb_expiry:
            # a flood of requests must not grow this for 64*T1: a retransmission without its tombstone just
            # starts a new transaction
            self._absorbed.pop(self._absorb_expiry.popleft()[1], None)
        self._absorbed[key] = (data, transport, addr, connection)
        self._absorb_expiry.append((loop.time() + lifetime, key))
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(min(1.0, lifetime), self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        expiry = self._absorb_expiry
        while expiry and expiry[0][0] <= now:
            self._absorbed.pop(expiry.popleft()[1], None)
        self._sweep_handle = loop.call_later(min(1.0, expiry[0][0] - now), self._sweep) if expiry else None

    async def stop(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        self._absorbed.clear()
        self._absorb_expiry.clear()
        for tx in list(self._clients.values()):
            tx.cancel_timers()
        for stx in list(self._servers.values()):
            stx.cancel_timers()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ----------------------------------------------------------------- client side
    def send_request(self, request: Request, transport: str, addr: Address,
                     on_response: Callable[[Response], None], on_error: Callable[[Exception], None],
                     connection: StreamConnection | None = None) -> ClientTransaction:
        cls = InviteClientTransaction if request.method == "INVITE" else NonInviteClientTransaction
        tx = cls(self, request, transport, addr, on_response, on_error)
        tx.connection = connection
        tx.start()
        return tx

    async def request(self, request: Request, transport: str, addr: Address,
                      on_provisional: Callable[[Response], None] | None = None,
                      connection: StreamConnection | None = None) -> Response:
        """Run a non-INVITE client transaction to its final response (raises SipTimeout/SipTransportError)."""
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

        def on_response(resp: Response) -> None:
            if resp.status < 200:
                if on_provisional is not None:
                    on_provisional(resp)
            elif not fut.done():
                fut.set_result(resp)

        def on_error(exc: Exception) -> None:
            if not fut.done():
                fut.set_exception(exc)

        tx = self.send_request(request, transport, addr, on_response, on_error, connection)
        try:
            return await fut
        finally:
            if not fut.done():
                tx.cancel_timers()

    def _add_client(self, tx: ClientTransaction) -> None:
        self._clients[tx.key] = tx

    def _remove_client(self, tx: ClientTransaction) -> None:
        if self._clients.get(tx.key) is tx:
            del self._clients[tx.key]

    # ----------------------------------------------------------------- server side
    def _add_server(self, tx: ServerTransaction) -> None:
        self._servers[tx.key] = tx
        ip = tx.source.addr[0]
        self._per_source[ip] = self._per_source.get(ip, 0) + 1

    def _remove_server(self, tx: ServerTransaction) -> None:
        if self._servers.get(tx.key) is tx:
            del self._servers[tx.key]
            ip = tx.source.addr[0]
            count = self._per_source.get(ip, 0) - 1
            if count > 0:
                self._per_source[ip] = count
            else:
                self._per_source.pop(ip, None)

    def connections(self) -> set[StreamConnection]:
        """Stream connections live transactions are bound to."""
        found = {tx.connection for tx in self._servers.values() if tx.connection is not None}
        found.update(tx.connection for tx in self._clients.values() if tx.connection is not None)
        return found

    @staticmethod
    def server_key(request: Request, method: str | None = None) -> tuple[str, ...]:
        via = request.top_via
        method = method or ("INVITE" if request.method == "ACK" else request.method)
        branch = via.branch or ""
        sent_by = f"{via.host}:{via.port or ''}"
        if branch.startswith(MAGIC_COOKIE):
            return (branch, sent_by, method)
        # RFC 2543 peer: no usable branch, fall back to dialog-ish identifiers (17.2.3 last paragraph)
        from_tag = request.from_.tag or ""
        return ("2543", request.call_id, str(request.cseq[0]), from_tag, sent_by, method, request.uri)

    def find_invite_for_cancel(self, cancel: Request) -> InviteServerTransaction | None:
        tx = self._servers.get(self.server_key(cancel, "INVITE"))
        return tx if isinstance(tx, InviteServerTransaction) else None

    # ----------------------------------------------------------------- dispatch
    def handle_message(self, msg: Request | Response, source: Source) -> None:
        if isinstance(msg, Response):
            self._handle_response(msg, source)
        else:
            self._handle_request(msg, source)

    def _handle_response(self, resp: Response, source: Source) -> None:
        try:
            branch = resp.branch or ""
            method = resp.cseq[1]
        except (SipParseError, ValueError, AttributeError, IndexError) as exc:
            self._bad_packets.log(logging.INFO, "dropping response without usable Via/CSeq from %s: %s",
                                  source.addr, exc)
            return
        tx = self._clients.get((branch, method))
        if tx is not None:
            resp.source = source.addr  # media follows signalling: the call driver hands this IP to media/
            tx.receive(resp)
        elif self._on_stray_response is not None:
            self._on_stray_response(resp, source)

    def _handle_request(self, req: Request, source: Source) -> None:
        _stamp_via(req, source)
        key = self.server_key(req)
        tx = self._servers.get(key)
        if req.method == "ACK":
            if isinstance(tx, InviteServerTransaction) and tx.state in ("completed", "confirmed"):
                tx.receive_ack(req)
                return
            self._on_request(req, source, None)  # ACK for a 2xx: the dialog's business
            return
        if tx is not None:
            if isinstance(tx, InviteServerTransaction | NonInviteServerTransaction):
                tx.receive_retransmission(req)
            return
        absorbed = self._absorbed.get(key)
        if absorbed is not None:
            data, transport, addr, connection = absorbed
            if data is not None:
                try:
                    if not self.transport.try_send_now(data, transport, addr, connection):
                        self.spawn(self.transport.send(data, transport, addr), "repeat response")
                except (SipTransportError, OSError) as exc:
                    logger.info("cannot repeat response to %s: %s", addr, exc)
            return
        if (self._per_source.get(source.addr[0], 0) >= self.settings.max_server_transactions_per_source
                and not self.transport.trust.is_trusted(source.addr[0])):  # the trunk may be busier
            # one source cannot pin unbounded transaction state (each lives up to 64*T1); dropped unanswered
            self.dropped_over_limit += 1
            self._log_overload("dropping %s from %s: %d live transactions from that source", printable(req.method, 20),
                               source.addr, self.settings.max_server_transactions_per_source)
            return
        new_tx: ServerTransaction
        if req.method == "INVITE":
            new_tx = InviteServerTransaction(self, req, source, key)
        else:
            new_tx = NonInviteServerTransaction(self, req, source, key)
        self._add_server(new_tx)
        self._on_request(req, source, new_tx)

    def respond_stateless(self, request: Request, source: Source, status: int, reason: str | None = None) -> None:
        """Answer without a transaction (400 to garbage, 481 to stray ACK-less requests...)."""
        resp = make_response(request, status, reason, to_tag=new_tag(), user_agent=self.settings.user_agent)
        data = resp.serialize()
        try:
            if not self.transport.try_send_now(data, source.transport, source.addr, source.connection):
                self.spawn(self.transport.send(data, source.transport, source.addr), "send stateless response")
        except (SipTransportError, OSError) as exc:
            logger.info("cannot send %d to %s: %s", status, source.addr, exc)


def _stamp_via(req: Request, source: Source) -> None:
    """18.2.1 + RFC 3581: add received (and rport's value) to the top Via of what we received."""
    vias = req.headers.get_all("Via")
    if not vias:
        return
    via = Via.parse(vias[0])
    changed = False
    src_host = source.addr[0]
    if via.host.strip("[]") != src_host:
        via.params["received"] = src_host
        changed = True
    if "rport" in via.params:
        via.params["rport"] = str(source.addr[1])
        if "received" not in via.params:
            via.params["received"] = src_host
        changed = True
    if changed:
        # one comma-joined Via line keeps the header's position and the order of the hops
        req.headers.set("Via", ", ".join([str(via), *vias[1:]]))
