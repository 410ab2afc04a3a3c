"""SIP transports (RFC 3261 section 18): UDP, TCP and TLS over IPv4/IPv6.

The layer parses what arrives and hands each message with its `Source` to one callback; it never raises
into the event loop. Stream connections are reused in both directions (keyed by remote address), and a
response goes back on the connection its request came on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from bridge.sip.errors import SipTransportError
from bridge.sip.message import Request, Response, SipParseError, StreamFramer, parse_message
from bridge.sip.settings import ListenAddress, SipSettings
from bridge.sip.stream_server import Admission, StreamServer
from bridge.sip.trust import TrustPolicy

logger = logging.getLogger(__name__)

Address = tuple[str, int]
RELIABLE = frozenset({"tcp", "tls"})
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
MAX_RESOLVED_NAMES = 256  # DNS answers kept (names come from config and local users, but cap it anyway)
RESOLVED_TTL = 300.0  # seconds a DNS answer is reused


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from: enough to answer it the way RFC 3261 18.2.2 / RFC 3581 want."""

    transport: str
    addr: Address
    connection: StreamConnection | None = None


MessageHandler = Callable[[Request | Response, Source], None]
ErrorHandler = Callable[[SipParseError, Source], None]
MessageObserver = Callable[[str, str | int], None]
"""(direction "in"/"out", request method or response status; "malformed" for an unparsable message in)."""


def _first_line_kind(data: bytes) -> str | int | None:
    """The method or status of a serialized message, from its first line only (CRLF keepalives: None)."""
    if data.startswith(b"SIP/2.0 "):
        code = data[8:11]
        return int(code) if code.isdigit() else None
    space = data.find(b" ", 0, 32)
    return data[:space].decode("ascii", "replace") if space > 0 else None


def is_ipv6(host: str) -> bool:
    return ":" in host


def strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def format_host(host: str) -> str:
    """Host as written in a Via/URI (IPv6 in brackets)."""
    return f"[{host}]" if is_ipv6(host) and not host.startswith("[") else host


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(strip_brackets(host))
    except ValueError:
        return False
    return True


class StreamConnection(asyncio.Protocol):
    """One TCP/TLS connection (either direction), framed by Content-Length."""

    def __init__(self, layer: TransportLayer, transport_name: str, *, outgoing: bool,
                 admitted: str | None = None) -> None:
        self._layer = layer
        self.transport_name = transport_name
        self.outgoing = outgoing
        self._framer = StreamFramer(layer.settings.max_message_size)
        self._transport: asyncio.Transport | None = None
        self.remote: Address = ("", 0)
        self.closed = False
        self.last_activity = asyncio.get_running_loop().time()
        self._admitted = admitted  # source IP counted by the listener's Admission until we close

    def release(self) -> None:
        """Give back the listener's admission slot (once)."""
        if self._admitted is not None:
            self._layer._admission.release(self._admitted)
            self._admitted = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        self._layer._register_connection(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.release()
        self._layer._unregister_connection(self)
        logger.debug("%s connection %s closed (%s)", self.transport_name, self.remote, exc)

    def data_received(self, data: bytes) -> None:
        self.last_activity = asyncio.get_running_loop().time()
        try:
            items = self._framer.feed(data)
        except Exception:  # a framer bug must not kill the loop; the stream is unusable now
            logger.exception("framing failed on %s connection from %s; closing", self.transport_name, self.remote)
            self.close()
            return
        source = Source(self.transport_name, self.remote, self)
        for item in items:
            if isinstance(item, SipParseError):
                self._layer._deliver_error(item, source)
            else:
                self._layer._deliver(item, source)
        if self._framer.broken():
            # oversize or unreadable Content-Length: the stream cannot be resynchronised
            logger.warning("framing failure on %s connection from %s; closing it", self.transport_name, self.remote)
            self.close()

    def send(self, data: bytes) -> None:
        if self._transport is None or self.closed or self._transport.is_closing():
            raise SipTransportError(f"{self.transport_name} connection to {self.remote} is closed")
        self.last_activity = asyncio.get_running_loop().time()
        self._transport.write(data)
        self._layer._observe_out(data)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping unsent data (an idle or refused connection has none worth keeping)."""
        if self._transport is not None:
            self._transport.abort()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, layer: TransportLayer) -> None:
        self._layer = layer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # _SelectorDatagramTransport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not data.strip(b"\r\n "):  # keep-alive (RFC 5626 CRLF) or empty
            return
        source = Source("udp", (str(addr[0]), int(addr[1])))
        try:
            msg = parse_message(data, max_size=self._layer.settings.max_message_size)
        except SipParseError as err:
            self._layer._deliver_error(err, source)
            return
        except Exception:  # parser bug: log once, keep serving everybody else
            logger.exception("unexpected parser failure on datagram from %s", source.addr)
            return
        self._layer._deliver(msg, source)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable etc.; transactions time out on their own
        logger.debug("UDP error: %s", exc)


def _grow_receive_buffer(sock: socket.socket | None, size: int) -> None:
    """Bursts of requests (many calls set up at once) must not overflow the kernel's default ~200 kB
    buffer while the loop is busy: a lost ACK or BYE costs a 32 s retransmission tail."""
    if sock is None or size <= 0:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)  # capped by net.core.rmem_max
    except OSError as exc:
        logger.debug("cannot set SO_RCVBUF: %s", exc)


@dataclass
class _Listener:
    config: ListenAddress
    bound: Address
    udp: _UdpProtocol | None = None
    server: StreamServer | None = None


class TransportLayer:
    """Owns every socket of the user agent."""

    def __init__(self, settings: SipSettings, on_message: MessageHandler, on_error: ErrorHandler) -> None:
        self.settings = settings
        self._on_message = on_message
        self._on_error = on_error
        self._listeners: list[_Listener] = []
        self._connections: dict[tuple[str, Address], StreamConnection] = {}
        self._all_connections: set[StreamConnection] = set()
        self._connecting: dict[tuple[str, Address], asyncio.Future[StreamConnection]] = {}
        self._resolved: OrderedDict[str, tuple[str, float]] = OrderedDict()  # name -> (address, expiry)
        self._server_ssl: ssl.SSLContext | None = None
        self._client_ssl: ssl.SSLContext | None = None
        self._tls_names: dict[Address, str] = {}  # RFC 3263 target address -> the domain its certificate names
        self.trust = TrustPolicy(settings.trusted_hosts)
        self._admission = Admission(settings.max_connections, settings.max_connections_per_source,
                                    exempt=self.trust.is_trusted)
        self._accepting: set[asyncio.Task[None]] = set()  # TLS handshakes of accepted sockets
        self._idle_handle: asyncio.TimerHandle | None = None
        # connections a dialog or transaction still needs: never closed for idleness (set by the UA)
        self.connections_in_use: Callable[[], set[StreamConnection]] = set
        self.on_observed: MessageObserver | None = None
        """Told about every message sent and received (counters; must be cheap and must not raise)."""

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for cfg in self.settings.listen:
            host = strip_brackets(cfg.host)
            if cfg.transport == "udp":
                udp_transport, proto = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(host, cfg.port))
                sockname = udp_transport.get_extra_info("sockname")
                _grow_receive_buffer(udp_transport.get_extra_info("socket"), self.settings.udp_receive_buffer)
                self._listeners.append(_Listener(cfg, (host, int(sockname[1])), udp=proto))
            else:
                ctx = self._server_ssl_context() if cfg.transport == "tls" else None
                name = cfg.transport
                server = StreamServer.listen(host, cfg.port, self._admission,
                                             functools.partial(self._serve_accepted, name=name, ctx=ctx))
                sockname = server.sock.getsockname()
                self._listeners.append(_Listener(cfg, (host, int(sockname[1])), server=server))
            logger.info("SIP listening on %s %s:%d", cfg.transport, host, self._listeners[-1].bound[1])
        if self.settings.tcp_idle_timeout > 0:
            self._idle_handle = loop.call_later(self._idle_interval(), self._close_idle)
        for name in self.trust.names:  # learn the trusted names' addresses before their first message
            task = loop.create_task(self._resolve_quietly(name))
            self._accepting.add(task)
            task.add_done_callback(self._accepting.discard)

    async def _resolve_quietly(self, name: str) -> None:
        with contextlib.suppress(SipTransportError):
            await self.resolve(name)

    def _serve_accepted(self, sock: socket.socket, peer: Address, *, name: str,
                        ctx: ssl.SSLContext | None) -> None:
        conn = StreamConnection(self, name, outgoing=False, admitted=peer[0])
        task = asyncio.get_running_loop().create_task(self._wrap_accepted(sock, conn, ctx))
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)

    async def _wrap_accepted(self, sock: socket.socket, conn: StreamConnection, ctx: ssl.SSLContext | None) -> None:
        """Give an accepted socket its asyncio transport (for TLS: after the handshake, under a deadline)."""
        timeout = (self.settings.tcp_idle_timeout or self.settings.connect_timeout) if ctx else None
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: conn, sock, ssl=ctx, ssl_handshake_timeout=timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            logger.debug("cannot set up accepted connection from %s: %s", conn._admitted, exc)
            conn.release()
            sock.close()
        except asyncio.CancelledError:
            conn.release()
            sock.close()
            raise

    def _idle_interval(self) -> float:
        return max(0.05, min(5.0, self.settings.tcp_idle_timeout / 4))

    def _close_idle(self) -> None:
        """Close TCP/TLS connections silent in both directions for tcp_idle_timeout (none a dialog or
        transaction still holds): a connection that never sends a byte cannot hold a descriptor for long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.settings.tcp_idle_timeout
        idle = [conn for conn in self._all_connections if conn.last_activity <= deadline and not conn.closed]
        if idle:
            in_use = self.connections_in_use()
            for conn in idle:
                if conn not in in_use:
                    logger.debug("closing idle %s connection %s", conn.transport_name, conn.remote)
                    conn.abort()
        self._idle_handle = loop.call_later(self._idle_interval(), self._close_idle)

    @property
    def connection_count(self) -> int:
        return len(self._all_connections)

    async def stop(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        for task in list(self._accepting):
            task.cancel()
        for lst in self._listeners:
            if lst.udp is not None and lst.udp.transport is not None:
                lst.udp.transport.close()
            if lst.server is not None:
                lst.server.close()
        for conn in list(self._all_connections):
            conn.close()
        if self._accepting:
            await asyncio.gather(*self._accepting, return_exceptions=True)
        self._listeners.clear()
        self._connections.clear()
        self._all_connections.clear()

    # ----------------------------------------------------------------- addresses
    def bound_address(self, transport: str = "udp", family: int | None = None) -> Address:
        lst = self._listener(transport.lower(), family)
        return lst.bound

    def sent_by(self, transport: str, dest_host: str | None = None) -> Address:
        """Host/port to put in Via and Contact for a message sent over `transport` (advertised if set)."""
        family = socket.AF_INET6 if dest_host and is_ipv6(dest_host) else None
        lst = self._listener(transport, family)
        host = self.settings.advertised_host or lst.bound[0]
        port = self.settings.advertised_port or lst.bound[1]
        return host, port

    def can_send_udp(self, host: str) -> bool:
        """A UDP listener of `host`'s address family exists (an IPv6 target needs an IPv6 socket)."""
        want6 = is_ipv6(host)
        return any(lst.udp is not None and is_ipv6(lst.bound[0]) == want6 for lst in self._listeners)

    def has_transport(self, transport: str) -> bool:
        return any(lst.config.transport == transport for lst in self._listeners)

    def _listener(self, transport: str, family: int | None) -> _Listener:
        candidates = [lst for lst in self._listeners if lst.config.transport == transport]
        if not candidates:
            raise SipTransportError(f"no {transport} listener configured")
        if family is not None:
            want6 = family == socket.AF_INET6
            for lst in candidates:
                if is_ipv6(lst.bound[0]) == want6:
                    return lst
        return candidates[0]

    # ----------------------------------------------------------------- resolution
    async def resolve(self, host: str) -> str:
        """A/AAAA lookup (no NAPTR/SRV): enough for IP literals, /etc/hosts and plain DNS names."""
        host = strip_brackets(host)
        if is_ip_literal(host):
            return host
        loop = asyncio.get_running_loop()
        cached = self._resolved.get(host)
        if cached is not None and cached[1] > loop.time():
            return cached[0]
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise SipTransportError(f"cannot resolve {host}: {exc}") from exc
        if not infos:
            raise SipTransportError(f"cannot resolve {host}")
        families = {lst.bound[0] and (socket.AF_INET6 if is_ipv6(lst.bound[0]) else socket.AF_INET)
                    for lst in self._listeners}
        infos.sort(key=lambda info: info[0] not in families)
        addr = str(infos[0][4][0])
        self._resolved[host] = (addr, loop.time() + RESOLVED_TTL)
        self._resolved.move_to_end(host)
        while len(self._resolved) > MAX_RESOLVED_NAMES:
            self._resolved.popitem(last=False)
        self.trust.note_resolved(host, addr)
        return addr

    def cached_address(self, host: str) -> str | None:
        """What `host` resolved to recently (an IP literal is its own address); never looks anything up."""
        host = strip_brackets(host)
        if is_ip_literal(host):
            return host
        cached = self._resolved.get(host)
        return cached[0] if cached is not None else None

    # ----------------------------------------------------------------- sending
    async def send(self, data: bytes, transport: str, addr: Address,
                   connection: StreamConnection | None = None) -> StreamConnection | None:
        """Send one serialized message; returns the stream connection used (None for UDP)."""
        host = strip_brackets(addr[0])
        if transport == "udp":
            if not is_ip_literal(host):
                host = await self.resolve(host)
            self.send_udp(data, (host, addr[1]))
            return None
        if connection is not None and not connection.closed:
            connection.send(data)
            return connection
        conn = await self._get_connection(transport, (host, addr[1]))
        conn.send(data)
        return conn

    def send_udp(self, data: bytes, addr: Address) -> None:
        family = socket.AF_INET6 if is_ipv6(addr[0]) else socket.AF_INET
        lst = self._listener("udp", family)
        if lst.udp is None or lst.udp.transport is None or lst.udp.transport.is_closing():
            raise SipTransportError("UDP transport is closed")
        lst.udp.transport.sendto(data, addr)
        self._observe_out(data)

    @property
    def listening(self) -> bool:
        """Every configured listener is bound and open."""
        if len(self._listeners) != len(self.settings.listen):
            return False
        for lst in self._listeners:
            if lst.udp is not None and (lst.udp.transport is None or lst.udp.transport.is_closing()):
                return False
            if lst.server is not None and not lst.server.is_serving():
                return False
        return True

    def _observe_out(self, data: bytes) -> None:
        if self.on_observed is not None:
            kind = _first_line_kind(data)
            if kind is not None:
                self.on_observed("out", kind)

    def try_send_now(self, data: bytes, transport: str, addr: Address,
                     connection: StreamConnection | None = None) -> bool:
        """Synchronous send when no connect/resolve is needed (retransmissions, hot path)."""
        if transport == "udp" and is_ip_literal(addr[0]):
            self.send_udp(data, (strip_brackets(addr[0]), addr[1]))
            return True
        if connection is not None and not connection.closed:
            connection.send(data)
            return True
        conn = self._connections.get((transport, (strip_brackets(addr[0]), addr[1])))
        if conn is not None and not conn.closed:
            conn.send(data)
            return True
        return False

    def expect_tls_name(self, addr: Address, name: str) -> None:
        """A TLS connection to ``addr`` (an RFC 3263 target found for domain ``name``) must present a
        certificate for ``name`` (RFC 5922 4.1), not for the address. Bounded: only config names get here."""
        if len(self._tls_names) >= 1024:
            self._tls_names.clear()
        self._tls_names[(strip_brackets(addr[0]), addr[1])] = name

    async def _get_connection(self, transport: str, addr: Address) -> StreamConnection:
        # what a TLS certificate must name (RFC 5922: the URI's host, not its address)
        server_name = self._tls_names.get((strip_brackets(addr[0]), addr[1]), addr[0])
        if not is_ip_literal(addr[0]):
            addr = (await self.resolve(addr[0]), addr[1])
        key = (transport, addr)
        conn = self._connections.get(key)
        if conn is not None and not conn.closed:
            return conn
        pending = self._connecting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[StreamConnection] = loop.create_future()
        self._connecting[key] = fut
        try:
            ctx = self._client_ssl_context() if transport == "tls" else None
            try:
                _, conn = await asyncio.wait_for(loop.create_connection(
                    lambda: StreamConnection(self, transport, outgoing=True), addr[0], addr[1], ssl=ctx,
                    server_hostname=server_name if ctx else None), self.settings.connect_timeout)
            except ssl.SSLCertVerificationError as exc:
                logger.warning("TLS: certificate of %s (%s:%d) refused: %s", server_name, addr[0], addr[1],
                               exc.verify_message)
                raise SipTransportError(f"TLS certificate of {server_name} refused: {exc.verify_message}") from exc
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                raise SipTransportError(f"cannot connect {transport} to {addr}: {exc}") from exc
            assert isinstance(conn, StreamConnection)
            fut.set_result(conn)
            return conn
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else SipTransportError("cancelled"))
                fut.exception()  # mark retrieved: waiters get it via shield, nobody else must log it
            raise
        finally:
            self._connecting.pop(key, None)

    # ----------------------------------------------------------------- bookkeeping
    def _register_connection(self, conn: StreamConnection) -> None:
        self._all_connections.add(conn)
        self._connections[(conn.transport_name, conn.remote)] = conn

    def _unregister_connection(self, conn: StreamConnection) -> None:
        self._all_connections.discard(conn)
        key = (conn.transport_name, conn.remote)
        if self._connections.get(key) is conn:
            del self._connections[key]

    def _deliver(self, msg: Request | Response, source: Source) -> None:
        if self.on_observed is not None:
            self.on_observed("in", msg.method if isinstance(msg, Request) else msg.status)
        try:
            self._on_message(msg, source)
        except Exception:  # one bad message never stops other calls
            logger.exception("error handling SIP message from %s/%s", source.transport, source.addr)

    def _deliver_error(self, err: SipParseError, source: Source) -> None:
        if self.on_observed is not None:
            self.on_observed("in", "malformed")
        try:
            self._on_error(err, source)
        except Exception:
            logger.exception("error handling malformed SIP message from %s/%s", source.transport, source.addr)

    # ----------------------------------------------------------------- TLS
    def _server_ssl_context(self) -> ssl.SSLContext:
        if self._server_ssl is None:
            if not self.settings.tls_certfile:
                raise SipTransportError("a tls listener needs tls_certfile (and tls_keyfile)")
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.settings.tls_certfile, self.settings.tls_keyfile)
            self._server_ssl = ctx
        return self._server_ssl

    def _client_ssl_context(self) -> ssl.SSLContext:
        if self._client_ssl is None:
            # verification and host name check on by default; tls_cafile replaces the system store
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.settings.tls_cafile)
            if self.settings.tls_certfile:  # the bridge's one TLS identity, also shown to servers that ask
                ctx.load_cert_chain(self.settings.tls_certfile, self.settings.tls_keyfile)
            if not self.settings.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._client_ssl = ctx
        return self._client_ssl
