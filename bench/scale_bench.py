"""Media at scale: per-call CPU, memory, threads and audio of the bridge (and of Janus) as calls are added.

    .venv/bin/python bench/scale_bench.py                                    # 0,5,10,20,40 calls, both modes + Janus
    .venv/bin/python bench/scale_bench.py --calls 5,10,20 --modes passthrough --seconds 10 --repeat 2
    .venv/bin/python bench/scale_bench.py --calls 1 --seconds 3 --modes passthrough --no-janus   # smoke run

The bridge's side runs on 127.0.0.1, as a deployment would: a real Synapse; the bridge as its own process
(`python -m bridge -c config.yaml`); a sipp trunk (bench/scenarios/soak_trunk.xml) whose SDP points every call's
audio at an echo process (one UDP socket sending each datagram back where it came from, like a phone in an echo
test); and one Element-like aiortc caller per call (tests/harness/matrix_client.py: m.call.invite / candidates /
answer / select_answer through Synapse). The callers send 20 ms packets that are encoded once up front (PCMU, or
Opus for `transcode`) and count what comes back without decoding it, so the load client stays cheap.

Modes: `passthrough`: Element's offer (Opus, PCMU, PCMA), the trunk answers PCMU: the bridge relays G.711 as is.
`transcode`: the caller offers only Opus: the bridge transcodes Opus <-> PCMU. `--compare-janus` (default on for
passthrough; `--no-janus` to skip) runs the Janus SIP plugin (Debian `janus`, configured in a temp dir with only the
SIP plugin and the HTTP transport), run in a network namespace the bench creates (Janus never gathers ICE on a
loopback interface: it gets a veth pair with private addresses, 10.213.x.1 <-> 10.213.x.2, and its callers, trunk
and echo use the root end; torn down at exit; needs root), driven by the same callers through its JSON API (create,
attach janus.plugin.sip, register type guest, call sip:<n>@trunk with the same offer) against a trunk and echo like
the bridge's.

Calls are added step by step (N from --calls) and stay up; at each N, after the new calls connected: the callers
send for --seconds (counted from 1 s after they start), then stop; then the counters are read. The bridge
(passthrough) and Janus are grown and measured side by side: at each N one system's window follows the other's
while the other's callers are silent, so a change in the machine's load between phases stays out of the ratio.
Per N:
  CPU     CPU time (utime+stime from /proc/<pid>/stat, all threads) of the bridge process plus its media worker
          processes (--workers, default auto), or of the Janus process, over the window,
          as % of one core; with --repeat R the window is repeated and the median taken (the machine may be shared:
          CPU time, unlike wall-clock load, is not inflated by other processes, but cache and frequency effects are).
  RSS, threads of the process(es) (from /proc/<pid>/status, summed like CPU) with the calls up.
  audio   Matrix->SIP: packets the echo got / packets the callers sent; SIP->Matrix: packets the callers got back /
          packets the echo sent; both must be >= 99.5 % for N to count towards capacity.
Slopes are least-squares fits over N (0 = the idle process; points with < 99.5 % audio left out: a saturated process
under-reports its cost); "capacity" is the largest N measured with >= 99.5 % audio both ways, and "projected" is how
many calls a fully used core would carry at the fitted slope.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import fractions
import json
import multiprocessing
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from av import Packet  # noqa: E402

from bench.soak_bench import BridgeProcess  # noqa: E402
from bridge.media.inline_codec import OpusPacketEncoder  # noqa: E402
from tests.harness.bridge_stack import SERVER_NAME, StackPlan, free_rtp_range, free_udp_port  # noqa: E402
from tests.harness.matrix_client import MatrixTestClient, OutgoingCall, loopback_ice  # noqa: E402
from tests.harness.sipp import SippProcess  # noqa: E402
from tests.harness.synapse import SynapseServer, free_port, register_user, start_synapse, stop_synapse  # noqa: E402
from tests.media.rtp_peer import tone_payloads  # noqa: E402

TRUNK_SCENARIO = ROOT / "bench" / "scenarios" / "soak_trunk.xml"
JANUS = "/usr/bin/janus"
JANUS_LIBS = Path("/usr/lib/x86_64-linux-gnu/janus")
USER = "scale"
USER_ID = f"@{USER}:{SERVER_NAME}"
AUDIO_OK = 99.5  # % of packets, both ways
CLK_TCK = os.sysconf("SC_CLK_TCK")
AUDIO_PTS = (0, 8, 9, 96, 111)  # PCMU, PCMA, G722, aiortc's Opus, Chrome's Opus


def number(n: int) -> str:
    return f"1555123{n:04d}"  # the trunk hangs up itself only on 1555777...: these wait for our BYE


def ghost(num: str) -> str:
    return f"@sip_{num}:{SERVER_NAME}"


class JanusNetns:
    """A network namespace for Janus, joined to the root namespace by a veth pair with private addresses.

    Janus never gathers ICE candidates on a loopback interface (its ice.c skips IFF_LOOPBACK), and the bench must not
    send to this host's public addresses: so Janus runs in a namespace of its own whose only non-loopback interface
    is the namespace end of a veth pair (``ns_ip``); Janus's callers, its trunk and its echo bind the root end
    (``host_ip``). Traffic stays on the veth pair. Torn down by ``close()`` (idempotent; also registered with
    atexit, so an error or Ctrl-C leaves nothing behind)."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.name = f"scalebench{tag}"
        self.host_dev, self.ns_dev = f"sbh{tag}", f"sbn{tag}"
        third = os.getpid() % 250  # one /30 per concurrent bench run
        self.host_ip, self.ns_ip = f"10.213.{third}.1", f"10.213.{third}.2"
        self._up = False

    @staticmethod
    def _ip(*args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()} (the Janus phase needs root for a netns)")

    def open(self) -> None:
        atexit.register(self.close)
        self._up = True
        self._ip("netns", "add", self.name)
        self._ip("link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev)
        self._ip("link", "set", self.ns_dev, "netns", self.name)
        self._ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_dev)
        self._ip("link", "set", self.host_dev, "up")
        self._ip("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_dev)
        self._ip("-n", self.name, "link", "set", self.ns_dev, "up")
        self._ip("-n", self.name, "link", "set", "lo", "up")

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]  # ip execs the command: the child's pid is Janus's

    def close(self) -> None:
        if not self._up:
            return
        self._up = False
        for args in (["link", "del", self.host_dev], ["netns", "del", self.name]):  # deleting one end drops both
            subprocess.run(["ip", *args], capture_output=True, check=False)


# ------------------------------------------------------------------------------------------------ /proc
def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # fields from 3 (state) on


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the bridge's media worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime (fields 14, 15; all threads) summed over the processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = _stat(pid)
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def proc_status(pids: list[int]) -> tuple[int, int]:
    """(RSS KiB, threads) summed over the processes."""
    rss = threads = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads += int(line.split()[1])
    return rss, threads


# ------------------------------------------------------------------------------------------------ echo (child)
def echo_main(conn: Connection, host: str) -> None:
    """One UDP socket; every datagram goes back to its source. Counters on request over the pipe."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, 0))
    sock.setblocking(False)
    conn.send(sock.getsockname()[1])
    received = sent = 0
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(conn, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sock:
                for _ in range(256):
                    try:
                        data, addr = sock.recvfrom(2048)
                    except BlockingIOError:
                        break
                    received += 1
                    with contextlib.suppress(OSError):
                        sock.sendto(data, addr)
                        sent += 1
            else:
                try:
                    msg = conn.recv()
                except EOFError:
                    return
                if msg == "stop":
                    return
                conn.send((received, sent))


class Echo:
    def __init__(self, host: str = "127.0.0.1") -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=echo_main, args=(child, host), daemon=True)
        self.proc.start()
        self.port: int = self.conn.recv()

    def counts(self) -> tuple[int, int]:
        self.conn.send("counts")
        received, sent = self.conn.recv()
        return int(received), int(sent)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send("stop")
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()


# ------------------------------------------------------------------------------------------------ the callers
class Gate:
    def __init__(self) -> None:
        self.open = asyncio.Event()


class PreEncodedTrack(MediaStreamTrack):
    """20 ms packets encoded once up front, paced in real time while the gate is open; counts what it sent."""

    kind = "audio"

    def __init__(self, payloads: list[bytes], clock: int, gate: Gate) -> None:
        super().__init__()
        self.payloads = payloads
        self.step = clock // 50
        self.time_base = fractions.Fraction(1, clock)
        self.gate = gate
        self.n = 0
        self.sent = 0
        self._next: float | None = None

    async def recv(self) -> Packet:
        loop = asyncio.get_running_loop()
        while True:  # a packet leaves only while the gate is open (so `sent` counts exactly what was sent)
            if not self.gate.open.is_set():
                self._next = None
                await self.gate.open.wait()
            if self._next is None:
                self._next = loop.time()
            self._next += 0.02
            await asyncio.sleep(max(0.0, self._next - 0.02 - loop.time()))
            if self.gate.open.is_set():
                break
        packet = Packet(self.payloads[self.n % len(self.payloads)])
        packet.pts = self.n * self.step
        packet.time_base = self.time_base
        self.n += 1
        self.sent += 1
        return packet


def opus_payloads() -> list[bytes]:
    """One second of a 440 Hz tone as 20 ms Opus packets."""
    import array
    import math

    from av import AudioFrame

    encoder = OpusPacketEncoder()
    out: list[bytes] = []
    n = 0
    while len(out) < 50:
        frame = AudioFrame(format="s16", layout="mono", samples=160)
        samples = array.array("h", (int(8000 * math.sin(2 * math.pi * 440 * (n + i) / 8000)) for i in range(160)))
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = 8000
        frame.pts = n
        frame.time_base = fractions.Fraction(1, 8000)
        n += 160
        out += [payload for payload, _ in encoder.encode(frame)]
    return out[:50]


class Caller:
    """One caller's media: the pre-encoded track and a counter of audio packets coming back (never decoded)."""

    def __init__(self, pc: RTCPeerConnection, track: PreEncodedTrack) -> None:
        self.pc = pc
        self.track = track
        self.received = 0
        transceiver = pc.getTransceivers()[0]
        transceiver.sender.replaceTrack(track)
        transport = transceiver.receiver.transport

        async def counting(data: bytes, arrival_time_ms: int) -> None:
            if len(data) > 1 and (data[1] & 0x7F) in AUDIO_PTS:
                self.received += 1
            # not handed to aiortc: no jitter buffer, no decoding (the load client stays cheap)

        transport._handle_rtp_data = counting  # type: ignore[method-assign]

    @property
    def connected(self) -> bool:
        return self.pc.connectionState == "connected"


def answer_codec(sdp: str) -> str:
    """First codec of the first audio m-line of an SDP."""
    pt = None
    for line in sdp.splitlines():
        if line.startswith("m=audio") and pt is None:
            pt = line.split()[3]
        elif pt is not None and line.startswith(f"a=rtpmap:{pt} "):
            return line.split()[1].split("/")[0]
    return "?"


# ------------------------------------------------------------------------------------------------ systems
@dataclass
class Point:
    calls: int
    cpu_pct: float  # of one core, median over repeats
    cpu_runs: list[float]
    rss_kib: int
    threads: int
    to_sip_pct: float
    to_matrix_pct: float
    sent: int
    connected: int

    @property
    def audio_ok(self) -> bool:
        return self.to_sip_pct >= AUDIO_OK and self.to_matrix_pct >= AUDIO_OK


@dataclass
class Result:
    name: str
    points: list[Point] = field(default_factory=list)
    note: str = ""

    def slope(self, attr: str) -> tuple[float, float]:
        """Least squares over the points with good audio (a saturated process under-reports its cost)."""
        points = [p for p in self.points if p.calls == 0 or p.audio_ok]
        xs = [p.calls for p in points]
        ys = [float(getattr(p, attr)) for p in points]
        if len(xs) < 2 or len(set(xs)) < 2:
            return float("nan"), float("nan")
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        return b, my - b * mx

    @property
    def capacity(self) -> int:
        ok = [p.calls for p in self.points if p.audio_ok and p.connected == p.calls]
        return max(ok, default=0)


class System:
    """What a measured system must provide: its pid, and adding one call to it."""

    name = ""
    pid = 0

    async def add_call(self, index: int, track: PreEncodedTrack) -> Caller:
        raise NotImplementedError

    async def hangup_all(self) -> None:
        raise NotImplementedError


class BridgeSystem(System):
    def __init__(self, client: MatrixTestClient, bridge: BridgeProcess, rooms: dict[str, str], codecs: list[str] | None,
                 name: str) -> None:
        self.client = client
        self.bridge = bridge
        self.rooms = rooms
        self.codecs = codecs
        self.name = name
        self.calls: list[OutgoingCall] = []

    @property
    def pid(self) -> int:  # type: ignore[override]
        return self.bridge.pid

    async def add_call(self, index: int, track: PreEncodedTrack) -> Caller:
        num = number(index)
        call = await self.client.place_call(self.rooms[num], ghost(num), tone_hz=440.0, codecs=self.codecs,
                                            dtmf=False)
        self.calls.append(call)
        assert call.pc is not None
        caller = Caller(call.pc, track)
        await call.wait_answer(timeout=60)
        return caller

    async def hangup_all(self) -> None:
        for call in self.calls:
            with contextlib.suppress(Exception):
                await call.hangup()
        for call in self.calls:
            with contextlib.suppress(Exception):
                await call.close()
        self.calls.clear()


JANUS_CFG = """general: {{
    configs_folder = "{dir}"
    plugins_folder = "{dir}/plugins"
    transports_folder = "{dir}/transports"
    events_folder = "{dir}/events"
    loggers_folder = "{dir}/loggers"
    log_to_stdout = true
    debug_level = {debug}
    session_timeout = 0
    hide_dependencies = true
}}
media: {{
    ipv6 = false
    rtp_port_range = "{rtp_lo}-{rtp_hi}"
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "{ice_ip}"
    ice_ignore_list = ""
}}
plugins: {{
}}
transports: {{
}}
events: {{
    broadcast = false
}}
"""
JANUS_HTTP = """general: {{
    json = "compact"
    base_path = "/janus"
    http = true
    port = {port}
    ip = "{ip}"
    https = false
}}
admin: {{
    admin_http = false
}}
"""
JANUS_SIP = """general: {{
    local_ip = "{ip}"
    sdp_ip = "{ip}"
    keepalive_interval = 0
    behind_nat = false
    register_ttl = 3600
    rtp_port_range = "{rtp_lo}-{rtp_hi}"
    events = false
}}
"""


class JanusSystem(System):
    """Janus with only the SIP plugin and the HTTP transport, one session, one plugin handle per call."""

    name = "janus"

    def __init__(self, workdir: Path, trunk_port: int, netns: JanusNetns) -> None:
        self.dir = workdir
        self.netns = netns
        self.ice_ip = netns.host_ip  # the callers' side of the veth pair
        self.trunk_port = trunk_port
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None
        self.session: int | None = None
        self.handles: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self.calls: list[tuple[int, RTCPeerConnection]] = []
        self._poll: asyncio.Task[None] | None = None
        self._gathering = asyncio.Lock()
        self.log_path = workdir / "janus.log"

    @property
    def pid(self) -> int:  # type: ignore[override]
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        for sub, lib in (("plugins", "plugins/libjanus_sip.so"), ("transports", "transports/libjanus_http.so")):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
            (self.dir / sub / Path(lib).name).symlink_to(JANUS_LIBS / lib)
        for sub in ("events", "loggers"):
            (self.dir / sub).mkdir(exist_ok=True)
        lo, hi = free_rtp_range(200)
        debug = os.environ.get("JANUS_DEBUG", "3")
        (self.dir / "janus.jcfg").write_text(JANUS_CFG.format(dir=self.dir, rtp_lo=lo, rtp_hi=lo + 99, debug=debug,
                                                              ice_ip=self.netns.ns_ip))
        (self.dir / "janus.transport.http.jcfg").write_text(JANUS_HTTP.format(port=self.port, ip=self.netns.ns_ip))
        (self.dir / "janus.plugin.sip.jcfg").write_text(JANUS_SIP.format(rtp_lo=lo + 100, rtp_hi=hi,
                                                                          ip=self.netns.ns_ip))
        with self.log_path.open("wb") as out:
            command = [*self.netns.exec_prefix(), JANUS, "-C", str(self.dir / "janus.jcfg"), "-F", str(self.dir), "-o"]
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,  # noqa: ASYNC220 (no wait)
                                         stdin=subprocess.DEVNULL)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"janus exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                reply = await self._post("", {"janus": "create"})
                self.session = int(reply["data"]["id"])
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"janus HTTP API not up within 30 s:\n{self.log_tail()}")
            await asyncio.sleep(0.3)
        self._poll = asyncio.create_task(self._long_poll())

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "<no janus log>"

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        body = {**body, "transaction": os.urandom(6).hex()}
        async with self.http.post(f"http://{self.netns.ns_ip}:{self.port}/janus{path}", json=body,
                                  timeout=aiohttp.ClientTimeout(total=30)) as resp:
            data: dict[str, Any] = await resp.json(content_type=None)
        if data.get("janus") == "error":
            raise RuntimeError(f"janus error: {data.get('error')}")
        return data

    async def _long_poll(self) -> None:
        assert self.http is not None
        url = f"http://{self.netns.ns_ip}:{self.port}/janus/{self.session}?maxev=50"
        while True:
            try:
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=70)) as resp:
                    events = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.2)
                continue
            for event in events if isinstance(events, list) else [events]:
                queue = self.handles.get(int(event.get("sender", 0) or 0))
                if queue is not None:
                    queue.put_nowait(event)

    async def _event(self, handle: int, want: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        queue = self.handles[handle]
        async with asyncio.timeout(timeout):
            while True:
                event = await queue.get()
                if event.get("janus") == "hangup" or (event.get("plugindata", {}).get("data", {}).get("error")):
                    raise RuntimeError(f"janus call failed: {event}")
                if event.get("janus") == "trickle":
                    continue  # candidates come in the answer SDP (aiortc gathered before offering)
                if want(event):
                    return event

    async def add_call(self, index: int, track: PreEncodedTrack) -> Caller:
        reply = await self._post(f"/{self.session}", {"janus": "attach", "plugin": "janus.plugin.sip"})
        handle = int(reply["data"]["id"])
        self.handles[handle] = asyncio.Queue()

        def result(name: str) -> Callable[[dict[str, Any]], bool]:
            return lambda e: e.get("plugindata", {}).get("data", {}).get("result", {}).get("event") == name

        await self._post(f"/{self.session}/{handle}", {"janus": "message", "body": {
            "request": "register", "type": "guest", "username": f"sip:bench{index}@{self.netns.ns_ip}"}})
        await self._event(handle, result("registered"), 30)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(track, direction="sendrecv")
        caller = Caller(pc, track)
        # Janus gathers on its namespace's veth address (never on loopback: ice.c skips IFF_LOOPBACK), so its
        # callers gather on the root end of the veth pair. Only while this offer gathers: the bridge's callers
        # stay on 127.0.0.1.
        async with self._gathering:
            loopback = aioice.ice.get_host_addresses
            aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [self.ice_ip]
            try:
                await pc.setLocalDescription(await pc.createOffer())
            finally:
                aioice.ice.get_host_addresses = loopback
        self.calls.append((handle, pc))
        await self._post(f"/{self.session}/{handle}", {
            "janus": "message",
            "body": {"request": "call", "uri": f"sip:{number(index)}@{self.ice_ip}:{self.trunk_port}"},
            "jsep": {"type": "offer", "sdp": pc.localDescription.sdp}})
        event = await self._event(handle, lambda e: "jsep" in e and result("accepted")(e), 60)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=event["jsep"]["sdp"], type="answer"))
        return caller

    async def hangup_all(self) -> None:
        for handle, pc in self.calls:
            with contextlib.suppress(Exception):
                await self._post(f"/{self.session}/{handle}", {"janus": "message", "body": {"request": "hangup"}})
            with contextlib.suppress(Exception):
                await pc.close()
        self.calls.clear()

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        if self.http is not None:
            await self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class Run:
    """One system being measured: its callers, their gate, what they send and the codec they must end up with."""

    system: System
    clock: int
    payloads: list[bytes]
    expect_codec: str
    echo: Echo
    gate: Gate = field(default_factory=Gate)
    callers: list[Caller] = field(default_factory=list)
    result: Result = field(init=False)

    def __post_init__(self) -> None:
        self.result = Result(self.system.name)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.dir = workdir
        self.t0 = time.monotonic()
        self.plan = StackPlan(workdir / "stack", rtp_range=free_rtp_range(4 * max(args.calls) + 40))
        self.plan.tmp.mkdir(parents=True, exist_ok=True)
        # --bridge-root: another checkout's bridge (before/after comparisons); this bench and its harness stay
        self.bridge = BridgeProcess(self.plan.tmp, self.plan.rtp_range, Path(args.bridge_root or ROOT).resolve())
        self.synapse: SynapseServer | None = None
        self.client: MatrixTestClient | None = None
        self.echo: Echo | None = None
        self.sipps: list[SippProcess] = []
        self.janus: JanusSystem | None = None
        self.netns: JanusNetns | None = None
        self.janus_echo: Echo | None = None
        self.rooms: dict[str, str] = {}
        self.results: list[Result] = []
        self.pcmu = tone_payloads(440.0, 50)
        self.opus = opus_payloads()

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    async def start(self) -> None:
        self.echo = Echo()
        registration = self.plan.write_registration()
        self.say("starting Synapse ...")
        self.synapse = await start_synapse(self.dir / "synapse", server_name=SERVER_NAME,
                                           appservice_registrations=[registration])
        self.plan.homeserver_url = self.synapse.url
        (self.plan.tmp / "config.yaml").write_text(yaml.safe_dump(self.plan.config_dict(self._config),
                                                                  sort_keys=False))
        await register_user(self.synapse, USER, "scale password")
        await self.bridge.start()
        self.say(f"bridge running as pid {self.bridge.pid} (log {self.bridge.log_path})")
        self.client = await MatrixTestClient.login(self.synapse.url, USER_ID, "scale password")
        await self.client.start_sync(auto_join=True)

    def _config(self, data: dict[str, Any]) -> None:
        data["media"]["ice_host_addresses"] = ["127.0.0.1"]
        data["media"]["workers"] = "auto" if self.args.workers == "auto" else int(self.args.workers)
        data["logging"]["level"] = "INFO"  # BridgeProcess waits for the "bridge running" line
        data["bridge"]["limits"] = {"attempts_per_minute": 10000, "concurrent_calls": 1000,
                                    "total_concurrent_calls": 1000}

    async def trunk(self, calls: int, echo: Echo, host: str = "127.0.0.1") -> SippProcess:
        """A trunk on ``host`` whose SDP (c= is sipp's [media_ip], i.e. ``host``) sends the audio to ``echo``."""
        port = self.plan.trunk_port if not self.sipps else free_udp_port(host=host)
        sipp = SippProcess(TRUNK_SCENARIO, local_port=port, host=host,
                           calls=calls, timeout=3600, trace=False, workdir=self.dir / f"sipp-{len(self.sipps)}",
                           extra_args=["-key", "rtp_port", str(echo.port)])
        self.sipps.append(sipp)
        await sipp.start()
        return sipp

    async def open_rooms(self, count: int) -> None:
        assert self.client is not None
        client = self.client
        gate = asyncio.Semaphore(4)

        async def one(i: int) -> None:
            num = number(i)
            async with gate:
                room = await client.create_dm(ghost(num))
                await client.wait_for_membership(room, ghost(num), "join", timeout=60)
                self.rooms[num] = room

        self.say(f"opening {count} portal rooms ...")
        await asyncio.gather(*(one(i) for i in range(count)))

    async def measure(self, run: Run, n: int) -> Point:
        system, callers, gate, echo = run.system, run.callers, run.gate, run.echo
        runs: list[float] = []
        sent = to_sip = to_matrix = echo_sent_total = 0
        for _ in range(self.args.repeat):
            sent0 = sum(c.track.sent for c in callers)
            recv0 = sum(c.received for c in callers)
            echo_r0, echo_s0 = echo.counts()
            pids = process_tree(system.pid)  # the bridge and its media workers
            gate.open.set()
            await asyncio.sleep(1.0)  # streams running: measure in steady state
            cpu0, wall0 = cpu_seconds(pids), time.monotonic()
            await asyncio.sleep(self.args.seconds)
            cpu1, wall1 = cpu_seconds(pids), time.monotonic()
            rss, threads = proc_status(pids)
            gate.open.clear()
            await asyncio.sleep(1.5)  # what is in flight arrives
            echo_r1, echo_s1 = echo.counts()
            sent += sum(c.track.sent for c in callers) - sent0
            to_matrix += sum(c.received for c in callers) - recv0
            to_sip += echo_r1 - echo_r0
            echo_sent_total += echo_s1 - echo_s0
            runs.append(100 * (cpu1 - cpu0) / (wall1 - wall0))
        if n == 0:
            rss, threads = proc_status(process_tree(system.pid))
        point = Point(
            calls=n, cpu_pct=statistics.median(runs), cpu_runs=runs, rss_kib=rss, threads=threads,
            # N=0: nothing is sent (stray echoes of the previous phase's last packets are not audio of this one)
            to_sip_pct=100.0 if n == 0 else 100.0 * to_sip / sent if sent else 0.0,
            to_matrix_pct=100.0 if n == 0 else 100.0 * to_matrix / echo_sent_total if echo_sent_total else 0.0,
            sent=sent, connected=sum(c.connected for c in callers))
        self.say(f"{system.name:>12} N={n:>3}: CPU {point.cpu_pct:6.2f} % of a core "
                 f"(runs {', '.join(f'{r:.2f}' for r in runs)}), RSS {rss / 1024:6.1f} MiB, threads {threads:>3}, "
                 f"audio Matrix->SIP {point.to_sip_pct:6.2f} %, SIP->Matrix {point.to_matrix_pct:6.2f} % "
                 f"({point.connected}/{n} connected)")
        return point

    async def grow(self, run: Run, n: int) -> bool:
        """Add calls to ``run.system`` until it has ``n``; False (and a note) when a set-up failed."""
        setup = asyncio.Semaphore(self.args.setup_concurrency)

        async def add(i: int) -> Caller:
            async with setup:
                return await run.system.add_call(i, PreEncodedTrack(run.payloads, run.clock, run.gate))

        started = time.monotonic()
        new = await asyncio.gather(*(add(i) for i in range(len(run.callers), n)), return_exceptions=True)
        failures = [c for c in new if isinstance(c, BaseException)]
        run.callers += [c for c in new if isinstance(c, Caller)]
        if failures:
            run.result.note = f"{len(failures)} call set-ups failed, first: {failures[0]!r}"[:400]
            self.say(f"{run.system.name}: {run.result.note}")
            return False
        deadline = time.monotonic() + 30
        while not all(c.connected for c in run.callers) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        codecs = {answer_codec(c.pc.remoteDescription.sdp) for c in run.callers if c.pc.remoteDescription}
        if codecs != {run.expect_codec}:
            run.result.note = f"negotiated {codecs}, expected {run.expect_codec}"
        self.say(f"{run.system.name}: {n} calls up in {time.monotonic() - started:.1f} s (codec {codecs})")
        return True

    async def run_systems(self, runs: list[Run]) -> None:
        """Grow and measure the systems side by side: at each N every system is measured, one after the other, so
        a change in the machine's load between the phases does not end up in the ratio."""
        for run in runs:
            self.results.append(run.result)
            run.result.points.append(await self.measure(run, 0))
        try:
            active = list(runs)
            for n in self.args.calls:
                active = [run for run in active if await self.grow(run, n)]
                if not active:
                    break
                await asyncio.sleep(2.0)  # ICE/DTLS of the last ones done, set-up work over
                for run in active:
                    run.result.points.append(await self.measure(run, n))
        finally:
            for run in runs:
                self.say(f"{run.system.name}: hanging up {len(run.callers)} calls ...")
                await run.system.hangup_all()
                for caller in run.callers:
                    with contextlib.suppress(Exception):
                        await caller.pc.close()
            await asyncio.sleep(3)

    async def run(self) -> None:
        await self.start()
        top = max(self.args.calls)
        await self.open_rooms(top)
        assert self.client is not None
        modes = self.args.modes
        assert self.echo is not None
        await self.trunk(top * len(modes) + 1, self.echo)
        # one warm-up call: the bridge's first call loads codecs and fills caches (that is not per-call cost)
        warm = BridgeSystem(self.client, self.bridge, self.rooms, None, "warm-up")
        warm_gate = Gate()
        warm_gate.open.set()
        caller = await warm.add_call(0, PreEncodedTrack(self.pcmu, 8000, warm_gate))
        await asyncio.sleep(2)
        await warm.hangup_all()
        await caller.pc.close()
        await asyncio.sleep(3)
        passthrough: list[Run] = []
        if "passthrough" in modes and self.args.bridge:
            passthrough.append(Run(BridgeSystem(self.client, self.bridge, self.rooms, None, "bridge passthrough"),
                                   8000, self.pcmu, "PCMU", self.echo))
        if self.args.janus and "passthrough" in modes:
            # Janus in a namespace of ours (see JanusNetns); its trunk and echo on the root end of the veth pair
            self.netns = JanusNetns()
            self.netns.open()
            self.say(f"netns {self.netns.name}: Janus on {self.netns.ns_ip}, its callers/trunk/echo on "
                     f"{self.netns.host_ip}")
            self.janus_echo = Echo(self.netns.host_ip)
            sipp = await self.trunk(top, self.janus_echo, self.netns.host_ip)
            self.janus = JanusSystem(self.dir / "janus", sipp.port, self.netns)
            await self.janus.start()
            self.say(f"janus running as pid {self.janus.pid} (log {self.janus.log_path})")
            passthrough.append(Run(self.janus, 8000, self.pcmu, "PCMU", self.janus_echo))
        if passthrough:
            await self.run_systems(passthrough)
        if "transcode" in modes and self.args.bridge:
            system = BridgeSystem(self.client, self.bridge, self.rooms, ["opus"], "bridge transcode")
            await self.run_systems([Run(system, 48000, self.opus, "opus", self.echo)])

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self.janus is not None:
            await self.janus.stop()
        for sipp in self.sipps:
            await sipp.aclose()
        await self.bridge.stop()
        if self.synapse is not None:
            await stop_synapse(self.synapse)
        if self.echo is not None:
            self.echo.stop()
        if self.janus_echo is not None:
            self.janus_echo.stop()
        if self.netns is not None:
            self.netns.close()


def report(bench: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {"args": {k: v for k, v in vars(bench.args).items()}, "systems": {}}
    print(f"\n== results (CPU: CPU time of the process over {bench.args.seconds:g} s windows, median of "
          f"{bench.args.repeat}; % of one core)")
    print(f"{'system':<22} {'N':>4} {'CPU %':>7} {'RSS MiB':>8} {'thr':>4} {'->SIP %':>8} {'->Matrix %':>10}")
    for r in bench.results:
        for p in r.points:
            print(f"{r.name:<22} {p.calls:>4} {p.cpu_pct:7.2f} {p.rss_kib / 1024:8.1f} {p.threads:>4} "
                  f"{p.to_sip_pct:8.2f} {p.to_matrix_pct:10.2f}{'' if p.audio_ok or p.calls == 0 else '  < 99.5'}")
    print("\n== per call (least-squares slope over N, points with >= 99.5 % audio)")
    for r in bench.results:
        cpu, idle = r.slope("cpu_pct")
        rss, _ = r.slope("rss_kib")
        threads, _ = r.slope("threads")
        projected = 100 / cpu if cpu > 0 else float("inf")
        print(f"{r.name:<22} CPU {cpu:5.2f} % of a core per call (idle {idle:.2f} %), RSS {rss:6.0f} KiB per call, "
              f"threads {threads:5.2f} per call; capacity (largest N measured with >= {AUDIO_OK} % audio): "
              f"{r.capacity}; projected {projected:.0f} calls per core{'; NOTE ' + r.note if r.note else ''}")
        out["systems"][r.name] = {"cpu_pct_per_call": cpu, "idle_cpu_pct": idle, "rss_kib_per_call": rss,
                                  "threads_per_call": threads, "capacity": r.capacity, "note": r.note,
                                  "points": [vars(p) | {"audio_ok": p.audio_ok} for p in r.points]}
    by_name = {r.name: r for r in bench.results}
    if "janus" in by_name and "bridge passthrough" in by_name:
        bridge, _ = by_name["bridge passthrough"].slope("cpu_pct")
        janus, _ = by_name["janus"].slope("cpu_pct")
        ratio = bridge / janus if janus > 0 else float("nan")
        print(f"\nbridge passthrough / Janus SIP plugin, CPU per call: {bridge:.2f} / {janus:.2f} = {ratio:.2f}x")
        out["ratio_bridge_to_janus"] = ratio
    if "janus" in by_name and "bridge transcode" in by_name:
        tc, _ = by_name["bridge transcode"].slope("cpu_pct")
        janus, _ = by_name["janus"].slope("cpu_pct")
        print(f"bridge transcode (Opus <-> PCMU) / Janus passthrough: {tc:.2f} / {janus:.2f} = "
              f"{tc / janus if janus > 0 else float('nan'):.2f}x")
    return out


async def main_async(args: argparse.Namespace, workdir: Path) -> int:
    bench = Bench(args, workdir)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    code = 1
    try:
        async with asyncio.timeout(args.budget):
            await bench.run()
        data = report(bench)
        if args.output:
            Path(args.output).write_text(json.dumps(data, indent=2))  # noqa: ASYNC240 (once, at the end)
            print(f"JSON written to {args.output}")
        code = 0 if all(r.points and not r.note for r in bench.results) else 1
    except (asyncio.CancelledError, TimeoutError):
        print("\nINTERRUPTED (Ctrl-C or --budget)", flush=True)
        if bench.results:
            report(bench)
        code = 130
    except Exception as exc:
        print(f"\nERROR: {type(exc).__name__}: {exc}\nlast lines of the bridge log:\n{bench.bridge.log_tail()}",
              flush=True)
        if bench.janus is not None:
            print(f"last lines of the janus log:\n{bench.janus.log_tail()}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        bench.say("stopping callers, Janus, sipp, the bridge, Synapse and the echo ...")
        await bench.close()
    return code


def call_counts(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of call counts >= 1")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=call_counts, default=[5, 10, 20, 40], help="call counts (default 5,10,20,40)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring window per N (default 15)")
    parser.add_argument("--repeat", type=int, default=1, help="windows per N, median taken (default 1)")
    parser.add_argument("--modes", type=lambda s: [m for m in s.split(",") if m], default=["passthrough", "transcode"],
                        help="passthrough,transcode (default both)")
    parser.add_argument("--compare-janus", dest="janus", action="store_true", default=True,
                        help="also measure the Janus SIP plugin (default)")
    parser.add_argument("--no-janus", dest="janus", action="store_false")
    parser.add_argument("--workers", default="auto",
                        help='media.workers of the bridge: "auto" (default, one per core) or a count (0: media in '
                             "the bridge process); CPU is summed over the bridge and its workers either way")
    parser.add_argument("--bridge-root", metavar="DIR",
                        help="run the bridge from another checkout, e.g. `git archive <rev> | tar -x -C DIR`")
    parser.add_argument("--no-bridge", dest="bridge", action="store_false", help="measure Janus only (debugging)")
    parser.add_argument("--setup-concurrency", type=int, default=4, help="calls set up at once (default 4)")
    parser.add_argument("--budget", type=float, default=900.0, help="hard limit for the whole run, s (default 900)")
    parser.add_argument("--output", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    args = parser.parse_args()
    if not set(args.modes) <= {"passthrough", "transcode"}:
        parser.error("--modes: passthrough and/or transcode")
    if args.janus and not Path(JANUS).exists():
        parser.error(f"{JANUS} not found (Debian package janus); use --no-janus")
    workdir = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    try:
        with loopback_ice():
            return asyncio.run(main_async(args, workdir))
    finally:
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
