"""A bounded SIP fuzzer aimed at a real UserAgent on loopback (the engine of bench/sip_fuzz.py and of the CI
test). Every packet goes to 127.0.0.0/8, and the UA under test is sandboxed: its look-ups are refused and
counted, and any packet it tries to send outside 127.0.0.0/8 is dropped and counted.

Phases: a normal call; UNTRUSTED traffic from 127.0.0.2-5 (every packet the UA sends must go back to one of
those senders); TRUSTED traffic from 127.0.0.1 (the trunk: its Contacts may point elsewhere, by policy); a
normal call again. The UA answers INVITEs like the bridge: 403 to untrusted sources, 180 + 200 or 486 to
the trusted one (answered calls are hung up after a moment).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bridge.sip.errors import SipTransportError
from bridge.sip.server import ServerInvite
from bridge.sip.settings import ListenAddress, SipSettings
from bridge.sip.transport import Address, StreamConnection
from bridge.sip.ua import UserAgent

TRUSTED = "127.0.0.1"
UNTRUSTED = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
VICTIM = "127.0.0.9"  # named in Contacts/Record-Routes/Vias; listened on, must hear nothing from untrusted phases
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
SDP = ("v=0\r\no=- 1 1 IN IP4 {src}\r\ns=-\r\nc=IN IP4 {src}\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")

VIA = "Via: SIP/2.0/{T} {src}:{sport};branch={branch};rport\r\n"
OUR_VIA = "Via: SIP/2.0/{T} {host}:{port};branch={branch};rport\r\n"
SEEDS = {
    "INVITE": ("INVITE sip:+15551234567@{host}:{port} SIP/2.0\r\n" + VIA +
               "Max-Forwards: 70\r\nFrom: \"Caller\" <sip:+15550001111@{src}>;tag={tag}\r\n"
               "To: <sip:+15551234567@{host}>\r\nCall-ID: {callid}\r\nCSeq: {cseq} INVITE\r\n"
               "Contact: <sip:caller@{contact}>\r\nRecord-Route: <sip:{rr};lr>\r\n"
               "Allow: INVITE, ACK, BYE, CANCEL\r\nContent-Type: application/sdp\r\n"
               "Content-Length: {clen}\r\n\r\n{sdp}"),
    "BYE": ("BYE sip:bridge@{host}:{port} SIP/2.0\r\n" + VIA +
            "Max-Forwards: 70\r\nFrom: <sip:+15550001111@{src}>;tag={tag}\r\nTo: <sip:bridge@{host}>;tag={totag}\r\n"
            "Call-ID: {callid}\r\nCSeq: {cseq} BYE\r\nContent-Length: 0\r\n\r\n"),
    "ACK": ("ACK sip:bridge@{host}:{port} SIP/2.0\r\n" + VIA +
            "Max-Forwards: 70\r\nFrom: <sip:a@{src}>;tag={tag}\r\nTo: <sip:b@{host}>;tag={totag}\r\n"
            "Call-ID: {callid}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n"),
    "CANCEL": ("CANCEL sip:+15551234567@{host}:{port} SIP/2.0\r\n" + VIA +
               "Max-Forwards: 70\r\nFrom: <sip:a@{src}>;tag={tag}\r\nTo: <sip:+15551234567@{host}>\r\n"
               "Call-ID: {callid}\r\nCSeq: {cseq} CANCEL\r\nContent-Length: 0\r\n\r\n"),
    "OPTIONS": ("OPTIONS sip:{host}:{port} SIP/2.0\r\n" + VIA +
                "Max-Forwards: 70\r\nFrom: <sip:ping@{src}>;tag={tag}\r\nTo: <sip:{host}>\r\nCall-ID: {callid}\r\n"
                "CSeq: {cseq} OPTIONS\r\nContact: <sip:ping@{contact}>\r\nContent-Length: 0\r\n\r\n"),
    "REGISTER": ("REGISTER sip:{host} SIP/2.0\r\n" + VIA +
                 "Max-Forwards: 70\r\nFrom: <sip:u@{host}>;tag={tag}\r\nTo: <sip:u@{host}>\r\n"
                 "Call-ID: {callid}\r\nCSeq: {cseq} REGISTER\r\n"
                 "Contact: <sip:u@{contact}>;expires=3600\r\nContent-Length: 0\r\n\r\n"),
    "200-INVITE": ("SIP/2.0 200 OK\r\n" + OUR_VIA +
                   "From: <sip:alice@{host}>;tag={tag}\r\nTo: <sip:bob@{src}>;tag={totag}\r\nCall-ID: {callid}\r\n"
                   "CSeq: {cseq} INVITE\r\nContact: <sip:bob@{contact}>\r\nRecord-Route: <sip:{rr};lr>\r\n"
                   "Content-Type: application/sdp\r\nContent-Length: {clen}\r\n\r\n{sdp}"),
    "180": ("SIP/2.0 180 Ringing\r\n" + OUR_VIA +
            "From: <sip:a@{host}>;tag={tag}\r\nTo: <sip:b@{src}>;tag={totag}\r\nCall-ID: {callid}\r\n"
            "CSeq: {cseq} INVITE\r\nContact: <sip:b@{contact}>\r\nContent-Length: 0\r\n\r\n"),
    "487": ("SIP/2.0 487 Request Terminated\r\n" + OUR_VIA +
            "From: <sip:a@{host}>;tag={tag}\r\nTo: <sip:b@{src}>;tag={totag}\r\nCall-ID: {callid}\r\n"
            "CSeq: {cseq} INVITE\r\nContent-Length: 0\r\n\r\n"),
    "200-BYE": ("SIP/2.0 200 OK\r\n" + OUR_VIA +
                "From: <sip:a@{host}>;tag={tag}\r\nTo: <sip:b@{src}>;tag={totag}\r\nCall-ID: {callid}\r\n"
                "CSeq: {cseq} BYE\r\nContent-Length: 0\r\n\r\n"),
}
WEIRD = ["%s", "%d", "%(x)s", "%", "\r\n", "\n", "\x00", "\x1b[31m", "\u2028", "é", "'", '"', "<", ">", ";", ",",
         "\\", "sip:", "@", ":", "[", "]", "=", " ", "\t", "z9hG4bK", "tag=", "0" * 40, "-1", "99999999999"]
WEIRD_HOSTS = [VICTIM, "reflect.example.invalid", "localhost", "[::1]", "[fe80::1%eth0]", "0.0.0.0",
               "255.255.255.255", "8.8.8.8", "a" * 300, "127.0.0.9:0", "%s.example.invalid"]


@dataclass
class FuzzReport:
    datagrams: int = 0
    segments: int = 0
    udp_delivered: int = 0  # datagrams the UA's socket read
    udp_lost: int = 0  # sent but never read (kernel buffer overflow)
    udp_too_big: int = 0  # mutations over the 65,507-byte datagram limit (not sent)
    crashes: int = 0  # exceptions that reached the event loop's exception handler
    tracebacks: int = 0  # ERROR (or worse) records with exc_info
    logging_errors: int = 0  # records logging could not format ("--- Logging error ---")
    log_records: int = 0
    ua_sent: int = 0
    untrusted_sent_to_non_sender: int = 0  # MUST be 0
    victim_received_untrusted_phase: int = 0  # MUST be 0
    trusted_sent_elsewhere: int = 0  # allowed by policy: a trusted peer's Contact/Record-Route
    lookups_untrusted_phase: int = 0  # MUST be 0 (look-ups are refused in the sandbox anyway)
    lookups_trusted_phase: int = 0
    blocked_non_loopback: int = 0
    unsolicited_dropped: int = 0
    transactions_dropped_over_limit: int = 0
    calls_before_ok: bool = False
    calls_after_ok: bool = False
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    seconds: float = 0.0
    state_after: dict[str, int] = field(default_factory=dict)  # what the UA still holds at the end
    mutations: dict[str, int] = field(default_factory=dict)
    traceback_samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _Counter(logging.Handler):
    def __init__(self, report: FuzzReport) -> None:
        super().__init__(logging.DEBUG)
        self.report = report

    def emit(self, record: logging.LogRecord) -> None:
        self.report.log_records += 1
        try:
            self.format(record)  # formats like a real handler would: a bad format string shows up here
        except Exception:
            self.report.logging_errors += 1
        if record.levelno >= logging.ERROR and record.exc_info:
            self.report.tracebacks += 1
            if len(self.report.traceback_samples) < 5:
                self.report.traceback_samples.append(self.format(record)[-3000:])

    def handleError(self, record: logging.LogRecord) -> None:
        self.report.logging_errors += 1


class Mutator:
    def __init__(self, rng: random.Random, extra_hosts: tuple[str, ...] = ()) -> None:
        self.rng = rng
        self.used: dict[str, int] = {}
        self.hosts = [*WEIRD_HOSTS, *extra_hosts]

    def fill(self, kind: str, *, host: str, port: int, src: str, sport: int, transport: str,
             weird_hosts: bool) -> str:
        r = self.rng
        contact = f"{src}:{sport}"
        rr = src
        if weird_hosts and r.random() < 0.5:
            contact = r.choice(self.hosts) + r.choice(["", ":5060", ";transport=tcp", ":1;transport=tls"])
            rr = r.choice(self.hosts)
        sdp = SDP.format(src=src)
        return SEEDS[kind].format(
            host=host, port=port, src=src, sport=sport, T=transport.upper(), branch=f"z9hG4bK{r.getrandbits(48):x}",
            tag=f"{r.getrandbits(32):x}", totag=f"{r.getrandbits(32):x}", callid=f"{r.getrandbits(64):x}@fuzz",
            cseq=r.randint(1, 1000), contact=contact, rr=rr, sdp=sdp, clen=len(sdp))

    def mutate(self, text: str) -> bytes:
        r = self.rng
        op = r.choice(["none", "bitflip", "truncate", "dup_header", "huge_header", "content_length", "weird",
                       "drop_header", "swap_lines", "many_vias", "garbage", "crlf", "method", "callid"])
        self.used[op] = self.used.get(op, 0) + 1
        lines = text.split("\r\n")
        head_end = lines.index("") if "" in lines else len(lines)
        if op == "dup_header" and head_end > 1:
            i = r.randrange(1, head_end)
            lines[i:i] = [lines[i]] * r.randint(1, 60)
        elif op == "huge_header":
            lines.insert(1, f"X-{r.choice(['Huge', 'Via', 'Call-ID'])}: " + "A" * r.choice([900, 9000, 70000]))
        elif op == "content_length":
            value = r.choice(["-1", "99999999", "abc", "", "0", "5", " 1e9", "18446744073709551616", "12, 13"])
            lines = [ln for ln in lines if not ln.lower().startswith(("content-length", "l:"))]
            lines.insert(r.randrange(1, max(2, head_end)), f"Content-Length: {value}")
        elif op == "weird" and head_end > 1:
            i = r.randrange(0, head_end)
            pos = r.randrange(0, len(lines[i]) + 1)
            lines[i] = lines[i][:pos] + r.choice(WEIRD) + lines[i][pos:]
        elif op == "drop_header" and head_end > 1:
            del lines[r.randrange(1, head_end)]
        elif op == "swap_lines" and head_end > 2:
            i, j = r.randrange(0, head_end), r.randrange(0, head_end)
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "many_vias":
            lines.insert(1, "Via: " + ", ".join(f"SIP/2.0/UDP {r.choice(WEIRD_HOSTS)};branch=z9hG4bK{k}"
                                                 for k in range(r.randint(2, 80))))
        elif op == "crlf":
            lines.insert(r.randrange(1, max(2, head_end)), r.choice(["", " folded continuation", "\t", "::", "X"]))
        elif op == "method":
            parts = lines[0].split(" ", 1)
            method = r.choice(["INFO", "UPDATE", "PRACK", "NOTIFY", "SUBSCRIBE", "MESSAGE", "REFER", "PUBLISH",
                               "FOO", "invite", "A" * 200, "", "SIP/2.0"])
            lines[0] = method + " " + (parts[1] if len(parts) > 1 else "")
        elif op == "callid":
            lines = [ln if not ln.startswith("Call-ID:") else "Call-ID: abc%s%d%(x)s%" + r.choice(WEIRD)
                     for ln in lines]
        data = "\r\n".join(lines).encode("utf-8", "surrogateescape")
        if op == "bitflip":
            buf = bytearray(data)
            for _ in range(r.randint(1, 8)):
                i = r.randrange(len(buf))
                buf[i] ^= 1 << r.randrange(8)
            data = bytes(buf)
        elif op == "truncate":
            data = data[:r.randrange(0, len(data))]
        elif op == "garbage":
            data = bytes(r.getrandbits(8) for _ in range(r.randint(1, 300)))
        return data


async def run_fuzz(count: int = 3000, *, seed: int = 1, tcp_share: float = 0.1, trusted_share: float = 0.2,
                   time_limit: float = 600.0, settle: float = 0.0, target: UserAgent | None = None,
                   normal_call: Callable[[str, Address], Awaitable[bool]] | None = None) -> FuzzReport:
    """`settle`: seconds to wait after the last call before measuring what the UA still holds (64*T1 = 6.4 s
    lets every transaction and tombstone of the run expire).

    `target`: a running UserAgent to fuzz instead of our own (e.g. the bridge's, with its real CallManager;
    it must trust 127.0.0.1 and is left running), with `normal_call(tag, udp_address)` proving it still
    serves calls."""
    report = FuzzReport()
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    start = time.monotonic()

    def on_loop_error(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        report.crashes += 1
        logging.getLogger("sip_fuzz").error("event loop error: %s", context.get("message"),
                                            exc_info=context.get("exception"))

    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(on_loop_error)
    counter = _Counter(report)
    counter.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(counter)
    root.setLevel(logging.INFO)
    for name in ("bridge.sip.transaction", "bridge.sip.ua", "bridge.sip.transport", "bridge.sip.dialog",
                 "bridge.sip.server", "bridge.sip.server_transaction", "bridge.sip.client"):
        logging.getLogger(name).propagate = True

    phase = {"name": "setup"}
    senders_by_phase: dict[str, set[str]] = {"untrusted": set(UNTRUSTED), "trusted": {TRUSTED}}

    async def on_invite(si: ServerInvite) -> None:
        src = si.source.addr[0]
        if src != TRUSTED:
            await si.respond(403, "Forbidden")
            return
        if "normal" not in si.request.uri and rng.random() < 0.4:
            await si.respond(486, "Busy Here")
            return
        await si.respond(180)
        dialog = await si.respond(200, body=SDP.format(src=TRUSTED).encode())
        if dialog is None:
            return
        await si.wait_ack(2)
        if "normal" not in si.request.uri:
            await asyncio.sleep(0.2)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(dialog.bye(), 3)

    if target is None:
        settings = SipSettings(listen=[ListenAddress("udp", "127.0.0.1", 0), ListenAddress("tcp", "127.0.0.1", 0)],
                               t1=0.1, t2=0.8, t4=1.0, tcp_idle_timeout=2.0, trusted_hosts=(TRUSTED,))
        ua = UserAgent(settings, on_invite=on_invite)
        await ua.start()
    else:
        ua = target
    layer = ua.transport
    udp_target = ua.bound_address("udp")
    if layer.has_transport("tcp"):
        tcp_target = ua.bound_address("tcp")
    else:
        tcp_target, tcp_share = udp_target, 0.0

    # ---- sandbox + accounting of everything the UA sends
    orig_send_udp = layer.send_udp
    orig_stream_send = StreamConnection.send

    def account(dest_ip: str) -> bool:
        report.ua_sent += 1
        name = phase["name"]
        if name in senders_by_phase and dest_ip not in senders_by_phase[name]:
            if name == "untrusted":
                report.untrusted_sent_to_non_sender += 1
            else:
                report.trusted_sent_elsewhere += 1
        try:
            inside = ipaddress.ip_address(dest_ip) in LOOPBACK
        except ValueError:
            inside = False
        if not inside:
            report.blocked_non_loopback += 1
        return inside

    def send_udp(data: bytes, addr: Address) -> None:
        if account(addr[0]):
            orig_send_udp(data, addr)

    def stream_send(self: StreamConnection, data: bytes) -> None:
        if self._layer is layer:
            account(self.remote[0])
        orig_stream_send(self, data)

    async def resolve(host: str) -> str:
        if phase["name"] == "untrusted":
            report.lookups_untrusted_phase += 1
        else:
            report.lookups_trusted_phase += 1
        raise SipTransportError(f"sandbox: no look-ups ({host!r})")

    orig_get_connection = layer._get_connection

    async def get_connection(transport: str, addr: Address) -> StreamConnection:
        if not account(addr[0]):
            raise SipTransportError("sandbox: outside loopback")
        report.ua_sent -= 1  # the connect itself is not a packet; the send after it is counted
        return await orig_get_connection(transport, addr)

    layer.send_udp = send_udp  # type: ignore[method-assign]
    layer.resolve = resolve  # type: ignore[method-assign]
    layer._get_connection = get_connection  # type: ignore[method-assign]
    StreamConnection.send = stream_send  # type: ignore[method-assign]
    udp_proto = next(lst.udp for lst in layer._listeners if lst.udp is not None)
    orig_dgram = udp_proto.datagram_received

    caught_up = asyncio.Event()
    want = {"delivered": 0}

    def datagram_received(data: bytes, addr: tuple[str | int, ...]) -> None:
        report.udp_delivered += 1
        if report.udp_delivered >= want["delivered"]:
            caught_up.set()
        orig_dgram(data, addr)

    udp_proto.datagram_received = datagram_received  # type: ignore[method-assign]

    # ---- the fuzzer's sockets
    socks: dict[str, socket.socket] = {}
    for ip in (TRUSTED, *UNTRUSTED, VICTIM):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, 0))
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        socks[ip] = s
    victim_heard = 0
    vport = socks[VICTIM].getsockname()[1]
    mut = Mutator(rng, (f"{VICTIM}:{vport}", f"{VICTIM}:{vport};transport=udp"))

    def drain() -> int:
        heard = 0
        for ip, s in socks.items():
            while True:
                try:
                    s.recvfrom(70000)
                except (BlockingIOError, OSError):
                    break
                if ip == VICTIM:
                    heard += 1
        return heard

    streams: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = {}

    async def tcp_send(src: str, data: bytes) -> None:
        pair = streams.get(src)
        if pair is None or pair[1].is_closing() or pair[0].at_eof():
            if pair is not None:
                pair[1].close()
            try:
                pair = await asyncio.wait_for(asyncio.open_connection(*tcp_target, local_addr=(src, 0)), 2)
            except (OSError, TimeoutError):
                streams[src] = None
                return
            streams[src] = pair
        reader, writer = pair
        cut = sorted(rng.sample(range(len(data) + 1), min(2, len(data) + 1))) if rng.random() < 0.3 else []
        pieces = [data[i:j] for i, j in zip([0, *cut], [*cut, len(data)], strict=True) if data[i:j]]
        for piece in pieces:
            writer.write(piece)
            report.segments += 1
            with contextlib.suppress(OSError, ConnectionError):
                await writer.drain()
        with contextlib.suppress(Exception):
            while reader._buffer:  # type: ignore[attr-defined]  # discard what the UA answered
                reader._buffer.clear()  # type: ignore[attr-defined]

    async def our_normal_call(tag: str, addr: Address) -> bool:
        caller = UserAgent(SipSettings(listen=[ListenAddress("udp", TRUSTED, 0)], t1=0.1, t2=0.8))
        await caller.start()
        try:
            call = caller.invite(f"sip:normal-{tag}@{addr[0]}:{addr[1]}",
                                 from_uri="sip:alice@bridge.test", sdp=SDP.format(src=TRUSTED).encode())
            final = await asyncio.wait_for(call.wait_final(), 10)
            if final.status != 200 or call.dialog is None:
                return False
            bye = await asyncio.wait_for(call.dialog.bye(), 10)
            return bye is not None and bye.status == 200
        except (TimeoutError, SipTransportError):
            return False
        finally:
            await caller.stop()

    call_check = normal_call or our_normal_call

    async def run_phase(name: str, sources: tuple[str, ...], n: int) -> None:
        nonlocal victim_heard
        phase["name"] = name
        sent_udp = 0
        baseline = report.udp_delivered
        for i in range(n):
            if time.monotonic() - start > time_limit:
                break
            src = rng.choice(sources)
            use_tcp = rng.random() < tcp_share
            kind = rng.choice(list(SEEDS))
            sock = socks[src]
            text = mut.fill(kind, host=udp_target[0], port=(tcp_target if use_tcp else udp_target)[1], src=src,
                            sport=sock.getsockname()[1], transport="tcp" if use_tcp else "udp",
                            weird_hosts=True)
            data = mut.mutate(text)
            if use_tcp:
                await tcp_send(src, data)
                continue
            try:
                sock.sendto(data, udp_target)
            except OSError:
                report.udp_too_big += 1
                continue
            report.datagrams += 1
            sent_udp += 1
            if i % 32 == 31:  # let the UA read what we sent before the socket buffer could overflow
                want["delivered"] = baseline + sent_udp
                caught_up.clear()
                if report.udp_delivered < want["delivered"]:
                    try:
                        await asyncio.wait_for(caught_up.wait(), 1.0)
                    except TimeoutError:  # the kernel dropped some: count from here on
                        report.udp_lost += want["delivered"] - report.udp_delivered
                        baseline, sent_udp = report.udp_delivered, 0
                heard = drain()
                if name == "untrusted":
                    victim_heard += heard
        await asyncio.sleep(1.5)  # retransmissions and hang-ups of this phase land in its accounting
        heard = drain()
        if name == "untrusted":
            victim_heard += heard

    try:
        report.rss_before_kb = rss_kb()
        phase["name"] = "calls"
        report.calls_before_ok = await call_check("before", udp_target)
        untrusted_n = int(count * (1 - trusted_share))
        await run_phase("untrusted", UNTRUSTED, untrusted_n)
        await run_phase("trusted", (TRUSTED,), count - untrusted_n)
        phase["name"] = "calls"
        report.calls_after_ok = await call_check("after", udp_target)
        report.victim_received_untrusted_phase = victim_heard
        await asyncio.sleep(settle)
        report.unsolicited_dropped = ua.unsolicited_responses
        report.transactions_dropped_over_limit = ua.transactions.dropped_over_limit
        report.rss_after_kb = rss_kb()
        tl = ua.transactions
        report.state_after = {
            "dialogs": len(ua.dialogs), "server_transactions": len(tl._servers),
            "client_transactions": len(tl._clients),
            "tombstones": len(tl._absorbed), "tasks": len(tl._tasks), "connections": layer.connection_count,
            "sent_invites": len(ua._sent_invites), "ended_dialogs": len(ua._ended), "dns_cache": len(layer._resolved)}
    finally:
        for pair in streams.values():
            if pair is not None:
                pair[1].close()
        for s in socks.values():
            s.close()
        StreamConnection.send = orig_stream_send  # type: ignore[method-assign]
        for name in ("send_udp", "resolve", "_get_connection"):
            delattr(layer, name)
        del udp_proto.datagram_received
        if target is None:
            await ua.stop()
        root.removeHandler(counter)
        root.setLevel(old_level)
        loop.set_exception_handler(old_handler)
    report.mutations = dict(sorted(mut.used.items()))
    report.seconds = round(time.monotonic() - start, 1)
    return report
