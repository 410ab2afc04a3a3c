"""Soak benchmark: N long calls held for M minutes while K short calls come and go; does the bridge leak?

    .venv/bin/python bench/soak_bench.py                                   # 10 long calls, 5 min, 100 short
    .venv/bin/python bench/soak_bench.py --calls 3 --minutes 1 --short-calls 10 --output soak.json

Stack, all on 127.0.0.1: a real Synapse; the bridge as its OWN process (`python -m bridge -c config.yaml`, as an
admin runs it), so the memory and descriptors measured are the bridge's alone; sipp as the SIP side (one trunk
for every Matrix -> SIP call, one caller per SIP -> Matrix call); two plain-RTP "phones" that answer every RTP
stream with a PCMU tone; and one Element-like aiortc Matrix client (tests/harness) that answers with its own tone.

Plan:
  1. warm-up: 4 short calls (both directions, each side hanging up once), then wait until the bridge is idle and
     take the BASELINE (the first calls load codecs, caches and DB pages; that is not a leak);
  2. N long calls (alternately Matrix -> SIP and SIP -> Matrix), answered, with audio both ways, held M minutes;
  3. meanwhile K short calls, spread evenly over the hold: set up, ~0.2 s+ of audio heard on Matrix, hung up;
     directions alternate, and so does who hangs up (Matrix / the phone);
  4. at the end of the hold, audio is checked on every long call at both ends (packets in the last seconds and
     the far end's tone detected), then Matrix hangs them all up;
  5. wait (bounded) for the bridge to go idle and compare with the baseline.

Measured, before, every minute and after: the bridge's RSS, threads and open descriptors (from /proc/<pid>),
its UDP sockets bound in media.port_start..port_end (kernel view: socket inodes of /proc/<pid>/fd matched in
/proc/<pid>/net/udp), and what only the bridge knows, read from the one line it logs on SIGUSR1 (bridge/stats.py):
call sessions, SIP dialogs and transactions, asyncio tasks and RTP ports held by its allocator.

Verdict: FLAT if RSS grows by at most RSS_PER_CALL_LIMIT_KIB per short call while the long calls are up (a leaked
call would hold ~300 KiB: see media_bench); 0 LEAKED if call sessions, dialogs, transactions, RTP ports (both
views), asyncio tasks, threads and descriptors are back at the baseline once every call has ended.
Exit status 0 only if both hold and every call worked. Every process started here is stopped at the end, on
error and on Ctrl-C; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import ctypes
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.media.rtp_packet import RtpParseError, build_rtp, parse_rtp  # noqa: E402
from tests.harness.bridge_stack import SERVER_NAME, StackPlan, free_rtp_range  # noqa: E402
from tests.harness.matrix_client import IncomingCall, MatrixTestClient, OutgoingCall, loopback_ice  # noqa: E402
from tests.harness.sipp import SippProcess  # noqa: E402
from tests.harness.synapse import SynapseServer, register_user, start_synapse, stop_synapse  # noqa: E402
from tests.harness.tone import tone_ratio  # noqa: E402
from tests.media.rtp_peer import tone_payloads  # noqa: E402

SCENARIOS = ROOT / "tests" / "e2e" / "scenarios"
TRUNK_SCENARIO = ROOT / "bench" / "scenarios" / "soak_trunk.xml"
USER = "soak"
USER_ID = f"@{USER}:{SERVER_NAME}"
DIALLED = "18005550100"  # routed to USER_ID
# Numbers (11 digits, E.164 without +). The trunk scenario hangs up itself on calls to 1555777....
OUT_LONG, OUT_SHORT, OUT_SHORT_TRUNK_BYE, IN_LONG, IN_SHORT = "1555123", "1555124", "1555777", "1555765", "1555766"
MATRIX_OUT_HZ, MATRIX_IN_HZ, TRUNK_HZ, CALLER_HZ = 440.0, 660.0, 1000.0, 800.0
SHORT_HOLD_MS = 2000  # how long the phone talks before it hangs up (short calls where SIP hangs up)
SHORT_AUDIO_FRAMES = 10  # 0.2 s of audio heard on Matrix before a short call is hung up
CALL_TIMEOUT = 45.0  # one call's set-up/tear-down, whatever happens
RSS_PER_CALL_LIMIT_KIB = 16.0
TONE_MIN_RATIO = 0.5
AUDIO_WINDOW_S = 3.0
MIN_WINDOW_SHARE = 0.8  # of the 50 packets/s a long call should deliver during the final window
SETTLE_LIMIT_S = 90.0


def number(prefix: str, n: int) -> str:
    return f"{prefix}{n:04d}"


def ghost(num: str) -> str:
    return f"@sip_{num}:{SERVER_NAME}"


# ------------------------------------------------------------------------------------------------ the phones
@dataclass
class Stream:
    """One RTP stream from the bridge (one call), keyed by the bridge's RTP address."""

    received: int = 0
    last_rx: float = 0.0
    first_rx: float = 0.0
    recent: deque[bytes] = field(default_factory=lambda: deque(maxlen=50))  # last second of PCMU payloads
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    seq: int = field(default_factory=lambda: random.getrandbits(16))
    ts: int = field(default_factory=lambda: random.getrandbits(32))
    sent: int = 0


_ULAW = array.array("h", [0] * 256)
for _b in range(256):
    _v = ~_b & 0xFF
    _s = (((_v & 0x0F) << 3) + 0x84) << ((_v >> 4) & 0x07)
    _ULAW[_b] = -(_s - 0x84) if _v & 0x80 else _s - 0x84


class PhoneBank(asyncio.DatagramProtocol):
    """Plain-RTP phones on ONE port for many calls: like a symmetric-RTP phone, each new source (a bridge call)
    gets its own stream, answered with a PCMU tone every 20 ms until it has been silent for a second."""

    def __init__(self, tone_hz: float) -> None:
        self.payloads = tone_payloads(tone_hz, 50)
        self.streams: dict[tuple[str, int], Stream] = {}
        self.garbage = 0
        self.transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._task = asyncio.create_task(self._send_loop(), name="phone-bank")
        return self.port

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            packet = parse_rtp(data)
        except RtpParseError:
            self.garbage += 1
            return
        now = time.monotonic()
        stream = self.streams.get(addr)
        if stream is None:
            stream = self.streams[addr] = Stream(first_rx=now)
        stream.received += 1
        stream.last_rx = now
        if packet.payload_type == 0:
            stream.recent.append(packet.payload)

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        while True:  # until close() cancels it
            now = time.monotonic()
            for addr, s in self.streams.items():
                if now - s.last_rx < 1.0 and self.transport is not None:
                    self.transport.sendto(build_rtp(0, s.sent == 0, s.seq, s.ts, s.ssrc,
                                                    self.payloads[s.sent % 50]), addr)
                    s.sent += 1
                    s.seq, s.ts = (s.seq + 1) & 0xFFFF, (s.ts + 160) & 0xFFFFFFFF
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))

    def counts(self) -> dict[tuple[str, int], int]:
        return {addr: s.received for addr, s in self.streams.items()}

    def tone(self, addr: tuple[str, int], hz: float) -> float:
        samples = array.array("h", (_ULAW[b] for payload in self.streams[addr].recent for b in payload))
        return tone_ratio(samples, 8000, hz)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.transport is not None:
            self.transport.close()


# ------------------------------------------------------------------------------------------------ the bridge
def _die_with_parent() -> None:
    """Child side (preexec): the kernel sends the bridge SIGTERM if this script dies without stopping it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_STATS_RE = re.compile(r"bridge\.stats: stats: (.*)$")


@dataclass
class Sample:
    """One measurement of the bridge process."""

    t: float
    label: str
    rss_kib: int
    fds: int
    fd_udp: int
    tcp_conns: int  # established TCP connections (HTTP to/from Synapse: they come and go with its pool)
    threads: int
    rtp_sockets: int  # kernel: bridge UDP sockets bound in the RTP range
    calls: int
    dialogs: int
    transactions: int
    tasks: int
    http_tasks: int  # RequestHandler.start: one per HTTP connection from Synapse
    room_tasks: int  # RoomQueues._worker: one per room with recent events, ends after 30 s idle
    rtp_ports: int  # the bridge's allocator
    py_blocks: int  # sys.getallocatedblocks() in the bridge
    task_kinds: dict[str, int] = field(default_factory=dict)
    long_up: int = 0
    short_ok: int = 0
    short_failed: int = 0

    @property
    def other_tasks(self) -> int:
        """Tasks that are neither an HTTP connection nor an idle-expiring room queue: calls hold these."""
        return self.tasks - self.http_tasks - self.room_tasks

    @property
    def other_fds(self) -> int:
        """Descriptors other than established TCP connections (sockets, listeners, files, pipes)."""
        return self.fds - self.tcp_conns


class BridgeProcess:
    """`python -m bridge -c config.yaml` as a child process, plus what /proc and SIGUSR1 tell about it."""

    def __init__(self, workdir: Path, rtp_range: tuple[int, int], root: Path = ROOT) -> None:
        self.workdir = workdir
        self.root = root  # the checkout whose `bridge` package runs
        self.log_path = workdir / "bridge.log"
        self.rtp_range = rtp_range
        self.proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._log_offset = 0
        self._last_stats: str | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        path = os.pathsep.join(filter(None, [str(self.root), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        with self.log_path.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "-c", "config.yaml", cwd=self.workdir, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while "bridge running" not in self.log_path.read_text(errors="replace"):
            if self.proc.returncode is not None:
                raise RuntimeError(f"the bridge exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the bridge did not log 'bridge running' within 60 s:\n{self.log_tail()}")
            await asyncio.sleep(0.2)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no bridge log>"

    def _new_stats_line(self) -> str | None:
        """The last `stats:` line logged since the previous call (complete lines only)."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._log_offset += end
        found = None
        for line in chunk[:end].decode(errors="replace").splitlines():
            if m := _STATS_RE.search(line):
                found = m.group(1)
        return found

    async def bridge_stats(self) -> tuple[dict[str, int], dict[str, int]]:
        """Send SIGUSR1 and parse the one new `stats:` line the bridge logs: (counters, task kinds)."""
        self._new_stats_line()  # skip what came before the signal
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while (line := self._new_stats_line()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the bridge logged no stats line within 10 s of SIGUSR1")
            await asyncio.sleep(0.05)
        counters: dict[str, int] = {}
        kinds: dict[str, int] = {}
        for key, _, value in (item.partition("=") for item in line.split()):
            if key == "task_kinds":
                kinds = {k: int(n) for k, _, n in (kv.rpartition(":") for kv in value.split(","))}
            else:
                counters[key] = int(value) if value.isdigit() else -1
        return counters, kinds

    def _proc_status(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "Threads"):
                    out[key] = int(value.split()[0])
        return out

    def _fds(self) -> tuple[int, set[int]]:
        """(descriptor count, socket inodes) of the bridge."""
        fd_dir = Path(f"/proc/{self.pid}/fd")
        inodes: set[int] = set()
        count = 0
        for entry in fd_dir.iterdir():
            with contextlib.suppress(OSError):  # closed while we looked
                target = os.readlink(entry)
                count += 1
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        return count, inodes

    def _sockets(self, proto: str, inodes: set[int]) -> list[tuple[int, str]]:
        """(local port, state) of the bridge's sockets of one protocol (udp, udp6, tcp, tcp6); state 01 is
        ESTABLISHED, 0A LISTEN (include/net/tcp_states.h)."""
        found = []
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/net/{proto}") as table:
            next(table)
            for line in table:
                cols = line.split()
                if int(cols[9]) in inodes:
                    found.append((int(cols[1].rsplit(":", 1)[1], 16), cols[3]))
        return found

    async def sample(self, label: str, t0: float) -> Sample:
        async with self._lock:
            stats, kinds = await self.bridge_stats()
            status = self._proc_status()
            fds, inodes = self._fds()
            udp = self._sockets("udp", inodes) + self._sockets("udp6", inodes)
            tcp = self._sockets("tcp", inodes) + self._sockets("tcp6", inodes)
        lo, hi = self.rtp_range
        return Sample(
            t=time.monotonic() - t0, label=label, rss_kib=status["VmRSS"], fds=fds, fd_udp=len(udp),
            tcp_conns=sum(state == "01" for _, state in tcp), threads=status["Threads"],
            rtp_sockets=sum(lo <= port <= hi for port, _ in udp), calls=stats.get("calls", -1),
            dialogs=stats.get("dialogs", -1), transactions=stats.get("transactions", -1), tasks=stats.get("tasks", -1),
            http_tasks=kinds.get("RequestHandler.start", 0), room_tasks=kinds.get("RoomQueues._worker", 0),
            rtp_ports=stats.get("rtp_ports", -1), py_blocks=stats.get("py_blocks", -1), task_kinds=kinds)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# ------------------------------------------------------------------------------------------------ calls
@dataclass
class CallResult:
    kind: str  # e.g. "short out, SIP hangs up"
    ok: bool
    seconds: float
    frames: int = 0
    error: str = ""


@dataclass
class LongCall:
    index: int
    direction: str  # "out" (Matrix -> SIP) or "in"
    call: OutgoingCall | IncomingCall
    answered_at: float
    phone_hz: float
    sipp: SippProcess | None = None  # inbound: its own caller


def hold_scenario(workdir: Path, limit_s: float) -> Path:
    """tests/e2e caller_wait_bye.xml with its 60 s wait for the bridge's BYE raised to the soak's length."""
    text = (SCENARIOS / "caller_wait_bye.xml").read_text()
    old = '<recv request="BYE" timeout="60000"/>'
    if text.count(old) != 1:
        raise RuntimeError(f"caller_wait_bye.xml changed: expected one {old}")
    path = workdir / "caller_wait_bye_long.xml"
    path.write_text(text.replace(old, f'<recv request="BYE" timeout="{int(limit_s * 1000)}"/>'))
    return path


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.dir = workdir
        self.t0 = time.monotonic()
        self.plan = StackPlan(workdir / "stack", rtp_range=free_rtp_range(200))
        self.plan.tmp.mkdir(parents=True, exist_ok=True)
        self.bridge = BridgeProcess(self.plan.tmp, self.plan.rtp_range)
        self.synapse: SynapseServer | None = None
        self._synapse_start: asyncio.Future[SynapseServer] | None = None
        self.client: MatrixTestClient | None = None
        self.trunk: SippProcess | None = None
        self.trunk_phones = PhoneBank(TRUNK_HZ)
        self.caller_phones = PhoneBank(CALLER_HZ)
        self.sipps: list[SippProcess] = []
        self.rooms: dict[str, str] = {}  # number -> portal room
        self.longs: list[LongCall] = []
        self.long_failures: list[str] = []
        self.warmup: list[CallResult] = []
        self.shorts: list[CallResult] = []
        self.short_not_placed = 0
        self.outbound_placed = 0
        self.samples: list[Sample] = []
        self.long_audio: list[dict[str, Any]] = []
        self.phone_streams: dict[str, Any] = {}
        self.settle_s: float | None = None
        self.sipp_limit_s = args.minutes * 60 + 600

    # -- output
    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    async def measure(self, label: str) -> Sample:
        s = await self.bridge.sample(label, self.t0)
        s.long_up = sum(1 for lc in self.longs if lc.call.connection_state == "connected")
        s.short_ok = sum(r.ok for r in self.shorts)
        s.short_failed = sum(not r.ok for r in self.shorts)
        self.samples.append(s)
        print_sample(s)
        return s

    # -- stack
    async def start(self) -> None:
        registration = self.plan.write_registration()
        self.say(f"work dir {self.dir}; starting Synapse ...")
        self._synapse_start = asyncio.ensure_future(start_synapse(
            self.dir / "synapse", server_name=SERVER_NAME, appservice_registrations=[registration]))
        self.synapse = await asyncio.shield(self._synapse_start)
        self.plan.homeserver_url = self.synapse.url
        config = self.plan.config_dict(self._config)
        (self.plan.tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        await register_user(self.synapse, USER, "soak password")
        await self.bridge.start()
        lo, hi = self.plan.rtp_range
        self.say(f"bridge running as pid {self.bridge.pid}: `python -m bridge -c config.yaml` "
                 f"(log {self.bridge.log_path}), RTP range {lo}-{hi}")
        self.client = await MatrixTestClient.login(self.synapse.url, USER_ID, "soak password")
        await self.client.start_sync(auto_join=True)
        await self.trunk_phones.open()
        await self.caller_phones.open()
        self.trunk = SippProcess(TRUNK_SCENARIO, local_port=self.plan.trunk_port, calls=self.outbound_planned(),
                                 timeout=self.sipp_limit_s, trace=False, workdir=self.dir / "sipp-trunk",
                                 extra_args=["-key", "rtp_port", str(self.trunk_phones.port),
                                             "-d", str(SHORT_HOLD_MS)])
        self.sipps.append(self.trunk)
        await self.trunk.start()

    def _config(self, data: dict[str, Any]) -> None:
        data["sip"]["inbound"]["routes"] = [{"number": DIALLED, "users": [USER_ID]}]
        data["media"]["ice_host_addresses"] = ["127.0.0.1"]
        data["logging"]["level"] = "INFO"
        # one Matrix user places every call of the run: bridge.limits (made for humans) must not refuse them
        data["bridge"]["limits"] = {"attempts_per_minute": 10000, "concurrent_calls": 1000,
                                    "total_concurrent_calls": 1000}

    def outbound_planned(self) -> int:
        return 2 + (self.args.calls + 1) // 2 + (self.args.short_calls + 1) // 2

    async def open_portals(self) -> None:
        """A DM with every number the run uses; inbound calls from a number then ring in that same portal."""
        assert self.client is not None
        client = self.client
        numbers = [number(OUT_LONG, i) for i in range(0, self.args.calls, 2)]
        numbers += [number(IN_LONG, i) for i in range(1, self.args.calls, 2)]
        for w in range(self.args.short_concurrency):
            numbers += [number(OUT_SHORT, w), number(OUT_SHORT_TRUNK_BYE, w), number(IN_SHORT, 2 * w),
                        number(IN_SHORT, 2 * w + 1)]
        gate = asyncio.Semaphore(4)

        async def open_one(num: str) -> None:
            async with gate:
                room = await client.create_dm(ghost(num))
                await client.wait_for_membership(room, ghost(num), "join", timeout=60)
                self.rooms[num] = room

        self.say(f"opening {len(numbers)} portal rooms (one per number) ...")
        await asyncio.gather(*(open_one(n) for n in numbers))

    # -- one short call each way
    async def short_call(self, index: int, worker: int) -> CallResult:
        outbound = index % 2 == 0
        sip_hangs_up = (index // 2) % 2 == 1
        kind = f"{'Matrix->SIP' if outbound else 'SIP->Matrix'}, {'SIP' if sip_hangs_up else 'Matrix'} hangs up"
        started = time.monotonic()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                if outbound:
                    frames = await self._short_out(worker, sip_hangs_up)
                else:
                    frames = await self._short_in(worker, sip_hangs_up)
            return CallResult(kind, True, time.monotonic() - started, frames)
        except Exception as exc:
            return CallResult(kind, False, time.monotonic() - started, error=f"{type(exc).__name__}: {exc}"[:600])

    async def _short_out(self, worker: int, sip_hangs_up: bool) -> int:
        assert self.client is not None
        num = number(OUT_SHORT_TRUNK_BYE if sip_hangs_up else OUT_SHORT, worker)
        self.outbound_placed += 1
        call = await self.client.place_call(self.rooms[num], ghost(num), tone_hz=MATRIX_OUT_HZ)
        try:
            await call.wait_answer(timeout=30)
            await call.wait_for_frames(SHORT_AUDIO_FRAMES, timeout=20)
            if sip_hangs_up:
                await call.wait_hangup_or_reject(timeout=30)
            else:
                await call.hangup()
            return call.frames_received
        finally:
            await call.close()

    async def _short_in(self, worker: int, sip_hangs_up: bool) -> int:
        assert self.client is not None
        num = number(IN_SHORT, 2 * worker + sip_hangs_up)
        scenario, extra = (("caller_talk.xml", ["-d", str(SHORT_HOLD_MS)]) if sip_hangs_up
                           else ("caller_wait_bye.xml", []))
        sipp = self._caller(SCENARIOS / scenario, num, extra)
        await sipp.start()
        call: IncomingCall | None = None
        try:
            call = await self._ringing(sipp, num)
            await call.answer(tone_hz=MATRIX_IN_HZ)
            await call.wait_select_answer(timeout=30)
            await call.wait_for_frames(SHORT_AUDIO_FRAMES, timeout=20)
            if sip_hangs_up:
                await call.wait_hangup(timeout=30)
            else:
                await call.hangup()
            code = await sipp.wait(timeout=30)
            if code != 0:
                raise RuntimeError(f"sipp caller exit {code}: {sipp.errors[-300:]}")
            return call.frames_received
        finally:
            if call is not None:
                await call.close()
            await sipp.aclose()
            self.sipps.remove(sipp)
            sipp.cleanup()

    async def _ringing(self, sipp: SippProcess, num: str) -> IncomingCall:
        """The Matrix invite of the call sipp places; if none comes, say what sipp saw."""
        assert self.client is not None
        try:
            return await self.client.wait_incoming_call(self.rooms[num], timeout=30)
        except TimeoutError as exc:
            code = await sipp.wait(timeout=1)
            tail = " | ".join((sipp.errors.strip() or sipp.stdout.strip()).splitlines()[-6:])
            raise TimeoutError(f"no m.call.invite within 30 s; sipp exit {code}: {tail[-400:]}") from exc

    def _caller(self, scenario: Path, caller: str, extra: list[str], timeout: float = 60) -> SippProcess:
        sipp = SippProcess(scenario, remote=("127.0.0.1", self.plan.sip_port), service=DIALLED, timeout=timeout,
                           trace=False, extra_args=["-key", "caller", caller, "-key", "caller_name", "Soak Phone",
                                                    "-key", "rtp_port", str(self.caller_phones.port), *extra])
        self.sipps.append(sipp)
        return sipp

    # -- long calls
    async def long_call(self, index: int) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                self.longs.append(await (self._long_out(index) if index % 2 == 0 else self._long_in(index)))
        except Exception as exc:
            self.long_failures.append(f"long call {index + 1}: {type(exc).__name__}: {str(exc)[:300]}")

    async def _long_out(self, index: int) -> LongCall:
        assert self.client is not None
        num = number(OUT_LONG, index)
        self.outbound_placed += 1
        call = await self.client.place_call(self.rooms[num], ghost(num), tone_hz=MATRIX_OUT_HZ)
        try:
            await call.wait_answer(timeout=30)
            answered = time.monotonic()
            await call.wait_for_tone(TRUNK_HZ, timeout=20)
        except BaseException:
            await call.close()
            raise
        return LongCall(index, "out", call, answered, TRUNK_HZ)

    async def _long_in(self, index: int) -> LongCall:
        assert self.client is not None
        num = number(IN_LONG, index)
        sipp = self._caller(hold_scenario(self.dir, self.sipp_limit_s), num, [], timeout=self.sipp_limit_s)
        await sipp.start()
        call: IncomingCall | None = None
        try:
            call = await self.client.wait_incoming_call(self.rooms[num], timeout=30)
            await call.answer(tone_hz=MATRIX_IN_HZ)
            answered = time.monotonic()
            await call.wait_select_answer(timeout=30)
            await call.wait_for_tone(CALLER_HZ, timeout=20)
        except BaseException:
            if call is not None:
                await call.close()
            await sipp.aclose()
            raise
        return LongCall(index, "in", call, answered, CALLER_HZ, sipp)

    async def check_long_audio(self) -> None:
        """Audio at both ends of every long call over the last AUDIO_WINDOW_S seconds (no short call is up)."""
        before_frames = [lc.call.frames_received for lc in self.longs]
        before_trunk, before_caller = self.trunk_phones.counts(), self.caller_phones.counts()
        await asyncio.sleep(AUDIO_WINDOW_S)
        now = time.monotonic()
        for lc, before in zip(self.longs, before_frames, strict=True):
            held = now - lc.answered_at
            self.long_audio.append({
                "call": lc.index + 1, "direction": "Matrix->SIP" if lc.direction == "out" else "SIP->Matrix",
                "held_s": round(held, 1), "matrix_frames_total": lc.call.frames_received,
                "matrix_delivered_pct": round(100 * lc.call.frames_received / (held * 50), 2),
                "matrix_frames_window": lc.call.frames_received - before,
                "matrix_tone_ratio": round(lc.call.tone_ratio(lc.phone_hz), 3),
                "connection": lc.call.connection_state})
        self.phone_streams = {
            "Matrix->SIP": self._streams(self.trunk_phones, before_trunk, MATRIX_OUT_HZ),
            "SIP->Matrix": self._streams(self.caller_phones, before_caller, MATRIX_IN_HZ)}

    @staticmethod
    def _streams(bank: PhoneBank, before: dict[tuple[str, int], int], matrix_hz: float) -> dict[str, Any]:
        """Streams still flowing at the phones (= the long calls), with the Matrix tone checked in each."""
        active = []
        for addr, s in bank.streams.items():
            window = s.received - before.get(addr, 0)
            if window > 0:
                held = s.last_rx - s.first_rx
                active.append({"bridge_rtp_port": addr[1], "packets_window": window,
                               "delivered_pct": round(100 * s.received / max(1.0, held * 50 + 1), 2),
                               "tone_ratio": round(bank.tone(addr, matrix_hz), 3)})
        short = [s.received for s in bank.streams.values() if s.received and s.last_rx < time.monotonic() - 2]
        return {"streams_total": len(bank.streams), "active": active,
                "ended_streams_with_audio": sum(n >= SHORT_AUDIO_FRAMES for n in short), "ended_streams": len(short)}

    async def hang_up_longs(self) -> None:
        for lc in self.longs:
            with contextlib.suppress(Exception):
                await lc.call.hangup()
        for lc in self.longs:
            if lc.sipp is not None:
                code = await lc.sipp.wait(timeout=30)
                if code != 0:
                    self.long_failures.append(f"long call {lc.index + 1}: sipp caller exit {code}")
            await lc.call.close()

    # -- the run
    async def run(self) -> None:
        await self.start()
        await self.open_portals()
        self.say("warm-up: 4 short calls (each direction, each side hanging up once) ...")
        for i in range(4):
            self.warmup.append(await self.short_call(i, 0))
        bad = [r for r in self.warmup if not r.ok]
        if bad:
            raise RuntimeError(f"warm-up call failed ({bad[0].kind}): {bad[0].error}")
        print_header()
        await self.measure("start")
        baseline = await self.settle("baseline", None)
        await self.soak(baseline)
        await self.hang_up_longs()
        await self.finish_trunk()
        await self.settle("after", baseline)

    async def soak(self, baseline: Sample) -> None:
        self.say(f"placing {self.args.calls} long calls (alternating Matrix->SIP / SIP->Matrix) ...")
        await asyncio.gather(*(self.long_call(i) for i in range(self.args.calls)))
        for failure in self.long_failures:
            self.say(f"FAILED {failure}")
        hold_s = self.args.minutes * 60
        hold_start = time.monotonic()
        await self.measure("hold 0:00")
        self.say(f"{len(self.longs)} long calls up; holding {self.args.minutes:g} min with "
                 f"{self.args.short_calls} short calls spread over it ...")
        monitor = asyncio.create_task(self.every_minute(hold_start, hold_s))
        try:
            await self.run_shorts(hold_start, hold_s)
            await asyncio.sleep(max(0.0, hold_start + hold_s - AUDIO_WINDOW_S - time.monotonic()))
            await self.check_long_audio()
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        await self.measure("hold end")

    async def every_minute(self, hold_start: float, hold_s: float) -> None:
        minute = 1
        while minute * 60 < hold_s - AUDIO_WINDOW_S - 1:
            await asyncio.sleep(max(0.0, hold_start + minute * 60 - time.monotonic()))
            await self.measure(f"hold {minute}:00")
            minute += 1

    async def run_shorts(self, hold_start: float, hold_s: float) -> None:
        """K short calls at evenly spaced start times; they must all be over AUDIO_WINDOW_S + 12 s before the
        hold ends (calls not started by then are counted as not placed)."""
        k = self.args.short_calls
        window = max(1.0, hold_s - AUDIO_WINDOW_S - 12 - CALL_TIMEOUT / 3)
        last_start = hold_start + hold_s - AUDIO_WINDOW_S - 12 - CALL_TIMEOUT / 3
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(k):
            queue.put_nowait(i)

        async def worker(w: int) -> None:
            while not queue.empty():
                i = queue.get_nowait()
                await asyncio.sleep(max(0.0, hold_start + i * window / k - time.monotonic()))
                if time.monotonic() > last_start:
                    self.short_not_placed += 1
                    continue
                result = await self.short_call(i, w)
                self.shorts.append(result)
                if not result.ok:
                    self.say(f"short call {i + 1} ({result.kind}) FAILED: {result.error}")

        await asyncio.gather(*(worker(w) for w in range(self.args.short_concurrency)))

    async def finish_trunk(self) -> None:
        assert self.trunk is not None
        if self.outbound_placed == self.outbound_planned():
            code = await self.trunk.wait(timeout=30)
            self.say(f"trunk sipp: {self.outbound_placed} calls, exit {code} (0: every call completed its scenario)")
        else:
            self.say(f"trunk sipp: {self.outbound_placed} of {self.outbound_planned()} planned calls placed; stopped")
        errors = self.trunk.errors.strip()
        if errors:
            self.say(f"trunk sipp errors:\n{errors[-1500:]}")

    async def settle(self, label: str, baseline: Sample | None) -> Sample:
        """Sample every 2 s until the bridge is idle (no call, dialog, transaction, RTP port; and for the final
        sample, tasks, threads and descriptors at the baseline), at most SETTLE_LIMIT_S."""
        started = time.monotonic()
        previous: Sample | None = None
        while True:
            s = await self.bridge.sample(label, self.t0)
            if baseline is None:  # the baseline: idle, and two equal samples in a row
                done = previous is not None and same_counts(s, previous)
            else:
                done = not_above(s, baseline)
            if idle(s) and done:
                break
            if time.monotonic() - started > SETTLE_LIMIT_S:
                break
            previous = s
            await asyncio.sleep(2)
        s.short_ok = sum(r.ok for r in self.shorts)
        s.short_failed = sum(not r.ok for r in self.shorts)
        self.samples.append(s)
        if baseline is not None:
            self.settle_s = time.monotonic() - started
        print_sample(s)
        return s

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        for sipp in list(self.sipps):
            await sipp.aclose()
        await self.trunk_phones.close()
        await self.caller_phones.close()
        await self.bridge.stop()
        if self.synapse is None and self._synapse_start is not None:
            with contextlib.suppress(Exception):
                self.synapse = await self._synapse_start
        if self.synapse is not None:
            await stop_synapse(self.synapse)


def idle(s: Sample) -> bool:
    return s.calls == 0 and s.dialogs == 0 and s.transactions == 0 and s.rtp_ports == 0 and s.rtp_sockets == 0


# What must be back at the baseline once every call has ended. Left out, but printed: HTTP connections to and from
# Synapse (their descriptors and handler tasks come and go with its connection pool) and idle room queues.
LEAK_FIELDS = ("calls", "dialogs", "transactions", "rtp_ports", "rtp_sockets", "other_tasks", "threads", "other_fds")


def same_counts(a: Sample, b: Sample) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in LEAK_FIELDS)


def not_above(a: Sample, b: Sample) -> bool:
    return all(getattr(a, f) <= getattr(b, f) for f in LEAK_FIELDS)


# ------------------------------------------------------------------------------------------------ report
def print_header() -> None:
    print("\nfds: all (established TCP = HTTP to/from Synapse); tasks: all (HTTP connection handlers / room queues);"
          " rtp: ports held by the allocator / UDP sockets bound in the range (kernel)")
    print(f"{'time':>7} {'sample':<10} {'long':>4} {'short ok/fail':>13} {'RSS MiB':>8} {'fds (tcp)':>9} {'udp':>4} "
          f"{'thr':>4} | {'calls':>5} {'dlgs':>4} {'txns':>4} {'tasks (http/rooms)':>18} {'rtp':>7} {'py blocks':>9}",
          flush=True)


def print_sample(s: Sample) -> None:
    fds = f"{s.fds} ({s.tcp_conns})"
    tasks = f"{s.tasks} ({s.http_tasks}/{s.room_tasks})"
    print(f"{s.t:6.0f}s {s.label:<10} {s.long_up:>4} {f'{s.short_ok}/{s.short_failed}':>13} {s.rss_kib / 1024:8.1f} "
          f"{fds:>9} {s.fd_udp:>4} {s.threads:>4} | {s.calls:>5} {s.dialogs:>4} {s.transactions:>4} {tasks:>18} "
          f"{f'{s.rtp_ports}/{s.rtp_sockets}':>7} {s.py_blocks:>9}", flush=True)


def rss_slope(samples: list[Sample]) -> tuple[float | None, str]:
    """RSS growth per short call while the long calls are up: from the first per-minute sample of the hold
    (short calls already running, so their own concurrent footprint is in both ends) to the hold's end."""
    hold = [s for s in samples if s.label.startswith("hold")]
    minutes = [s for s in hold if s.label not in ("hold 0:00", "hold end")]
    first = minutes[0] if minutes else (hold[0] if hold else None)
    last = hold[-1] if hold else None
    if first is None or last is None or last is first:
        return None, "no hold samples"
    calls = (last.short_ok + last.short_failed) - (first.short_ok + first.short_failed)
    if calls <= 0:
        return None, "no short call between the samples"
    growth = last.rss_kib - first.rss_kib
    return growth / calls, f"{growth:+d} KiB over {calls} short calls ({first.label} -> {last.label})"


def growth_by_interval(samples: list[Sample]) -> list[str]:
    """RSS and Python blocks gained per short call between consecutive hold samples: a leak costs the same for
    every call; caches and allocator pools filling up cost less and less."""
    hold = [s for s in samples if s.label.startswith("hold")]
    lines = []
    for a, b in pairwise(hold):
        calls = (b.short_ok + b.short_failed) - (a.short_ok + a.short_failed)
        if calls > 0:
            lines.append(f"   {a.label} -> {b.label}: {calls:>3} short calls, RSS {b.rss_kib - a.rss_kib:+6d} KiB "
                         f"({(b.rss_kib - a.rss_kib) / calls:+7.1f} per call), Python blocks "
                         f"{b.py_blocks - a.py_blocks:+7d} ({(b.py_blocks - a.py_blocks) / calls:+8.1f} per call)")
    return lines


def verdict(soak: Soak) -> tuple[bool, list[str]]:
    lines: list[str] = []
    ok = True
    baseline = next(s for s in soak.samples if s.label == "baseline")
    after = soak.samples[-1]
    lines.append(f"deltas after every call ended (settled in {soak.settle_s:.0f} s; limit {SETTLE_LIMIT_S:.0f} s), "
                 "final - baseline:")
    for name in ("rss_kib", "py_blocks", *LEAK_FIELDS, "tasks", "http_tasks", "room_tasks", "fds", "tcp_conns"):
        delta = getattr(after, name) - getattr(baseline, name)
        leak = name in LEAK_FIELDS and delta > 0
        ok = ok and not leak
        note = "   LEAK" if leak else "   (below the baseline)" if name in LEAK_FIELDS and delta < 0 else ""
        if name not in LEAK_FIELDS and name not in ("rss_kib", "py_blocks"):
            note = "   (not judged: comes and goes with Synapse's connections / room activity)"
        lines.append(f"   {name:<13} {getattr(baseline, name):>8} -> {getattr(after, name):>8}  {delta:+d}{note}")
    kinds = {k: n - baseline.task_kinds.get(k, 0) for k, n in after.task_kinds.items()}
    grown = {k: d for k, d in kinds.items() if d > 0}
    if grown:
        lines.append(f"   tasks above the baseline, by coroutine: {grown}")
    placed = len(soak.shorts)
    if placed:
        lines.append(f"   RSS per short call, baseline -> final (long calls included): "
                     f"{(after.rss_kib - baseline.rss_kib) / placed:+.1f} KiB")
    lines.append("growth during the hold, long calls up:")
    lines += growth_by_interval(soak.samples)
    per_call, how = rss_slope(soak.samples)
    flat = per_call is not None and per_call <= RSS_PER_CALL_LIMIT_KIB
    ok = ok and flat
    shown = "n/a" if per_call is None else f"{per_call:+.1f} KiB"
    lines.append(f"RSS growth per short call during the hold: {shown} ({how}); threshold <= "
                 f"{RSS_PER_CALL_LIMIT_KIB:g} KiB per call: {'FLAT' if flat else 'NOT FLAT'}")
    leaked = [n for n in LEAK_FIELDS if getattr(after, n) > getattr(baseline, n)]
    none = ("0 leaked (call sessions, dialogs, transactions, RTP ports and sockets, tasks, threads and descriptors "
            "not above the baseline)")
    lines.append("leaks: " + (none if not leaked else "LEAKED " + ", ".join(leaked)))
    return ok, lines


def audio_report(soak: Soak) -> tuple[bool, list[str]]:
    lines = []
    ok = True
    for row in soak.long_audio:
        good = (row["matrix_tone_ratio"] >= TONE_MIN_RATIO
                and row["matrix_frames_window"] >= MIN_WINDOW_SHARE * 50 * AUDIO_WINDOW_S)
        ok = ok and good
        lines.append(f"   long call {row['call']:>2} {row['direction']}: held {row['held_s']:.0f} s, Matrix heard "
                     f"{row['matrix_frames_total']} frames ({row['matrix_delivered_pct']:.2f} % of 50/s), "
                     f"{row['matrix_frames_window']} in the last {AUDIO_WINDOW_S:g} s, phone tone ratio "
                     f"{row['matrix_tone_ratio']:.2f}{'' if good else '  FAILED'}")
    for direction, info in soak.phone_streams.items():
        expected = sum(1 for lc in soak.longs if (lc.direction == "out") == (direction == "Matrix->SIP"))
        active = info["active"]
        good_streams = [a for a in active if a["tone_ratio"] >= TONE_MIN_RATIO
                        and a["packets_window"] >= MIN_WINDOW_SHARE * 50 * AUDIO_WINDOW_S]
        good = len(active) == expected and len(good_streams) == expected
        ok = ok and good
        pct = ", ".join(f"{a['delivered_pct']:.2f}" for a in active) or "-"
        lines.append(f"   phones of {direction} calls: {len(active)} streams still flowing (expected {expected}), "
                     f"{len(good_streams)} with >= {MIN_WINDOW_SHARE:.0%} of packets in the last {AUDIO_WINDOW_S:g} s "
                     f"and the Matrix tone; delivered % per stream: {pct}{'' if good else '  FAILED'}")
        lines.append(f"      ended streams (short + warm-up calls): {info['ended_streams']}, "
                     f"{info['ended_streams_with_audio']} with >= {SHORT_AUDIO_FRAMES} packets")
    return ok, lines


def report(soak: Soak) -> bool:
    print("\n== calls")
    k = soak.args.short_calls
    ok_shorts = [r for r in soak.shorts if r.ok]
    failed = [r for r in soak.shorts if not r.ok]
    print(f"   long calls: {len(soak.longs)} of {soak.args.calls} up for {soak.args.minutes:g} min")
    for failure in soak.long_failures:
        print(f"   FAILED {failure}")
    print(f"   short calls: {len(ok_shorts)} of {k} ok, {len(failed)} failed, {soak.short_not_placed} not placed")
    kinds = sorted({r.kind for r in soak.shorts})
    for kind in kinds:
        rs = [r for r in soak.shorts if r.kind == kind]
        secs = sorted(r.seconds for r in rs if r.ok)
        median = f"{secs[len(secs) // 2]:.1f} s" if secs else "-"
        print(f"      {kind:<32} {sum(r.ok for r in rs):>3}/{len(rs):<3} ok, median {median} per call")
    for r in failed[:10]:
        print(f"      FAILED {r.kind}: {r.error}")
    print("\n== audio on the long calls at the end of the hold")
    audio_ok, lines = audio_report(soak)
    print("\n".join(lines))
    print("\n== verdict")
    leak_ok, lines = verdict(soak)
    print("\n".join(lines))
    calls_ok = not failed and not soak.long_failures and soak.short_not_placed == 0
    return leak_ok and audio_ok and calls_ok


def write_json(soak: Soak, path: str, ok: bool) -> None:
    per_call, how = rss_slope(soak.samples)
    data = {
        "args": vars(soak.args), "ok": ok, "rss_per_short_call_kib": per_call, "rss_slope_basis": how,
        "rss_per_call_limit_kib": RSS_PER_CALL_LIMIT_KIB, "settle_s": soak.settle_s,
        "samples": [{**asdict(s), "other_tasks": s.other_tasks, "other_fds": s.other_fds}
                    for s in soak.samples], "long_audio": soak.long_audio,
        "phone_streams": soak.phone_streams, "long_failures": soak.long_failures,
        "short_calls": [asdict(r) for r in soak.shorts], "short_not_placed": soak.short_not_placed,
    }
    Path(path).write_text(json.dumps(data, indent=2))


# ------------------------------------------------------------------------------------------------ main
async def main_async(args: argparse.Namespace, workdir: Path) -> int:
    soak = Soak(args, workdir)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    code = 1
    try:
        budget = args.minutes * 60 + 420  # set-up, warm-up, settle: the run cannot outlive this
        async with asyncio.timeout(budget):
            await soak.run()
        ok = report(soak)
        if args.output:
            write_json(soak, args.output, ok)
            print(f"\nJSON written to {args.output}")
        print("\nSOAK OK: flat, 0 leaked, audio on every long call" if ok else "\nSOAK FAILED (see above)")
        code = 0 if ok else 1
    except asyncio.CancelledError:
        print("\nSOAK INTERRUPTED", flush=True)
        code = 130
    except Exception as exc:
        print(f"\nSOAK ERROR: {type(exc).__name__}: {exc}\nlast lines of the bridge log:\n{soak.bridge.log_tail()}",
              flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        soak.say("stopping sipp, phones, the Matrix client, the bridge and Synapse ...")
        await soak.close()
        soak.say("all processes stopped")
    return code


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0: {text}")
        return value

    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=positive(int), default=10, help="long calls held concurrently (default 10)")
    parser.add_argument("--minutes", type=positive(float), default=5.0, help="how long they are held (default 5)")
    parser.add_argument("--short-calls", type=positive(int), default=100,
                        help="short calls placed during the hold (default 100)")
    parser.add_argument("--short-concurrency", type=positive(int), default=2,
                        help="short calls in flight at once (default 2)")
    parser.add_argument("--output", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (bridge log, config, sipp files)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="soak-bench-"))
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
