"""Call-setup latency through the bridge, both directions, on loopback (a script, not a test).

Stack: a real Synapse (subprocess), the bridge running IN this process (real config, real DB, its own
appservice port), sipp as the phone side, and a MatrixTestClient (aiortc) as the Matrix user. Calls run one at
a time; the first call of each direction is a warm-up (ghost registration, portal creation) and is excluded.

Outbound (Matrix -> SIP; sipp trunk_answer.xml answers every call, one sipp for all of them):
  A  m.call.invite handed to the call manager (CallManager.on_call_event entered) -> INVITE left the SIP socket
  B  200 OK (to the INVITE) datagram received -> m.call.answer send_call_event issued (B) / returned (B_ret)
Inbound (SIP -> Matrix; sipp caller_wait_bye.xml with -l 1 places the calls one at a time):
  C  INVITE datagram received -> m.call.invite send_call_event issued (C) / returned (C_ret)
  D  m.call.answer handed to the call manager -> 200 OK (to the INVITE) left the SIP socket

Method: timestamps (time.perf_counter) taken by thin wrappers installed at runtime on the live objects of the
running bridge, in this script only (no bridge code changes):
  * SIP in:  the UDP listener protocol's ``datagram_received`` (instance attribute), before parsing;
  * SIP out: ``TransportLayer.send_udp`` (instance attribute), right after ``sendto`` returned;
  * Matrix in:  ``CallManager.on_call_event`` (the appservice/dispatcher hands events to it) on entry;
  * Matrix out: ``Portals.send_call_event`` on entry (request issued) and on return (Synapse accepted it).
Only the first occurrence of each (message, Call-ID) counts, so retransmissions are ignored. The SIP Call-ID
of each call is read from the live session (``bridge.calls.outbound/inbound[call_id].sip_call_id``).
For the breakdown, the same kind of wrappers time the awaited steps of the call driver (DB, Matrix API,
aiortc, RTP socket); each step is attributed to the interval it started in, per call.

Caveat: the Matrix test client (aiortc, /sync) shares this process's event loop and the 2-core box with
Synapse and sipp; a production bridge has its loop to itself, so these figures are an upper bound.

    .venv/bin/python bench/call_latency_bench.py                 # 50 calls each way
    .venv/bin/python bench/call_latency_bench.py --calls 20 --direction inbound
    .venv/bin/python bench/call_latency_bench.py --profile /tmp/lat.prof   # + cProfile of the whole run
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import inspect
import logging
import math
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.app import Bridge  # noqa: E402
from bridge.logs import CallLogger, setup_logging  # noqa: E402
from bridge.matrix.outbox import OutboxItem  # noqa: E402
from bridge.media.call_media import CallMedia  # noqa: E402
from tests.harness.bridge_stack import SERVER_NAME, StackPlan, start_bridge  # noqa: E402
from tests.harness.matrix_client import MatrixTestClient, loopback_ice  # noqa: E402
from tests.harness.rtp_peer import RtpPeer  # noqa: E402
from tests.harness.sipp import SippProcess  # noqa: E402
from tests.harness.synapse import SynapseServer, register_user_sync, start_synapse_sync, stop_synapse_sync  # noqa: E402

log = logging.getLogger("bench.call_latency")

SCENARIOS = ROOT / "tests" / "e2e" / "scenarios"
OUT_NUMBER = "15551234567"
OUT_GHOST = f"@sip_{OUT_NUMBER}:{SERVER_NAME}"
DIALLED = "18005550100"
CALLER = "15557654321"
ALICE = f"@alice:{SERVER_NAME}"
PASSWORD = "bench password"
TARGETS_MS = {"A": 50.0, "B": 30.0, "C": 50.0, "D": 20.0}
LABELS = {
    "A": "m.call.invite in -> SIP INVITE out",
    "B": "SIP 200 in -> m.call.answer issued",
    "B_ret": "SIP 200 in -> m.call.answer returned",
    "C": "SIP INVITE in -> m.call.invite issued",
    "C_ret": "SIP INVITE in -> m.call.invite returned",
    "D": "m.call.answer in -> SIP 200 out",
}

_CALL_ID_RE = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_CSEQ_RE = re.compile(rb"^cseq[ \t]*:[ \t]*\d+[ \t]+(\w+)", re.IGNORECASE | re.MULTILINE)


def sip_key(data: bytes) -> tuple[str, str, str] | None:
    """(start line kind, Call-ID, CSeq method) of a datagram: e.g. ("INVITE", "abc", "INVITE"),
    ("200", "abc", "INVITE"). Cheap regexes, not the bridge's parser: this runs inside the receive path."""
    end = data.find(b"\r\n")
    if end <= 0:
        return None
    first = data[:end].split(b" ", 2)
    call = _CALL_ID_RE.search(data)
    cseq = _CSEQ_RE.search(data)
    if len(first) < 2 or call is None or cseq is None:
        return None
    kind = first[1] if first[0].startswith(b"SIP/") else first[0]
    return kind.decode(errors="replace"), call.group(1).decode(errors="replace"), cseq.group(1).decode().upper()


@dataclass
class Probe:
    """Timestamps recorded by the wrappers: first occurrence per key, plus timed driver steps."""

    marks: dict[tuple[str, ...], float] = field(default_factory=dict)
    steps: list[tuple[str, float, float]] = field(default_factory=list)

    def mark(self, *key: str) -> None:
        self.marks.setdefault(key, time.perf_counter())

    def get(self, *key: str) -> float | None:
        return self.marks.get(key)

    def step(self, name: str, start: float, end: float) -> None:
        self.steps.append((name, start, end))

    def steps_between(self, start: float, end: float) -> dict[str, float]:
        """Total time per step name for the steps that started inside [start, end]."""
        out: dict[str, float] = defaultdict(float)
        for name, s, e in self.steps:
            if start <= s <= end:
                out[name] += e - s
        return out

    # ---------------------------------------------------------------- wrappers
    def time_method(self, obj: Any, name: str, label: str) -> None:
        """Replace obj.name (an instance attribute shadowing the method) by a timed wrapper."""
        orig = getattr(obj, name)
        if inspect.iscoroutinefunction(orig):
            @functools.wraps(orig)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await orig(*args, **kwargs)
                finally:
                    self.step(label, start, time.perf_counter())

            setattr(obj, name, timed_async)
        else:
            @functools.wraps(orig)
            def timed(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return orig(*args, **kwargs)
                finally:
                    self.step(label, start, time.perf_counter())

            setattr(obj, name, timed)

    def install(self, bridge: Bridge) -> None:
        """Instrument the running bridge (after start(): the UDP listener exists)."""
        transport = bridge.ua.transport
        for listener in transport._listeners:
            proto = listener.udp
            if proto is None:
                continue
            received = proto.datagram_received

            def on_datagram(data: bytes, addr: tuple[str | int, ...], _orig: Any = received) -> None:
                now = time.perf_counter()
                key = sip_key(data)
                if key is not None:
                    self.marks.setdefault(("sip_in", *key), now)
                _orig(data, addr)

            proto.datagram_received = on_datagram  # type: ignore[method-assign]

        send_udp = transport.send_udp

        def on_send(data: bytes, addr: tuple[str, int]) -> None:
            send_udp(data, addr)
            now = time.perf_counter()
            key = sip_key(data)
            if key is not None:
                self.marks.setdefault(("sip_out", *key), now)

        transport.send_udp = on_send  # type: ignore[method-assign]

        manager = bridge.calls
        on_call_event = manager.on_call_event

        async def call_event_in(evt: Any) -> None:
            self.mark("mx_in", evt.type, str(evt.content.get("call_id")))
            await on_call_event(evt)

        manager.on_call_event = call_event_in  # type: ignore[method-assign]

        portals = bridge.matrix.portals
        outbox = portals.outbox
        deliver = outbox.send

        # "Sent" = the outbox issued the request to Synapse (sends are queued; the outbox delivers them).
        async def call_event_out(item: OutboxItem) -> str:
            call_id = str(item.content.get("call_id"))
            self.mark("mx_out", item.event_type, call_id)
            start = time.perf_counter()
            try:
                return await deliver(item)
            finally:
                end = time.perf_counter()
                self.marks.setdefault(("mx_out_ret", item.event_type, call_id), end)
                self.step(f"matrix send {item.event_type}", start, end)

        outbox.send = call_event_out

        # Breakdown probes: the awaited steps of the call driver.
        for name in ("portal_for_room", "portal_for_inbound", "is_joined", "wait_joined", "send_notice"):
            self.time_method(manager.matrix, name, f"matrix.{name}")
        for name in ("call_started", "call_answered", "call_ended"):
            self.time_method(manager.call_log, name, f"db call_log.{name}")
        for name in ("ensure_portal", "membership", "get"):
            self.time_method(portals, name, f"portals.{name}")
        self.time_method(bridge.matrix.ghosts, "intent_for", "ghosts.intent_for")
        self.time_method(bridge.ua, "invite", "ua.invite (build+send INVITE)")
        new_media = manager._new_media

        def media_factory(clog: CallLogger) -> CallMedia:
            media = new_media(clog)
            for name in ("open_rtp", "sip_offer", "apply_sip_answer", "answer_sip_offer", "set_webrtc_offer",
                         "create_webrtc_answer", "create_webrtc_offer", "set_webrtc_answer",
                         "add_webrtc_candidates"):
                self.time_method(media, name, f"media.{name}")
            return media

        setattr(manager, "_new_media", media_factory)  # noqa: B010 (mypy: a bound method is read-only)


@dataclass
class Results:
    direction: str
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # metric -> ms
    steps: dict[str, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    attempted: int = 0
    failures: list[str] = field(default_factory=list)
    sipp_rc: int | None = None
    failed: int = 0  # failed calls, warm-up included, plus measured calls not placed after an abort
    consecutive_failures: int = 0
    sipp_report: str = ""
    wall_s: float = 0.0


def add_interval(res: Results, probe: Probe, metric: str, start: float | None, end: float | None) -> str | None:
    """Record end - start for one call; returns what was missing, if anything."""
    if start is None or end is None:
        return f"{metric}: no {'start' if start is None else 'end'} timestamp"
    res.samples[metric].append((end - start) * 1000)
    if metric in TARGETS_MS:
        for name, total in probe.steps_between(start, end).items():
            res.steps[metric][name].append(total * 1000)
    return None


MAX_CONSECUTIVE_FAILURES = 3


def failure_label(res: Results, index: int, measured: bool, exc: Exception) -> str:
    return f"{res.direction} call {index + 1}{'' if measured else ' (warm-up)'}: {type(exc).__name__}: {str(exc)[:300]}"


def record_failure(res: Results, label: str, index: int, total: int, warmup: int) -> bool:
    """Count a failed call (never skipped); True = give up on this direction (the peer is likely gone),
    counting every measured call not placed as failed too, so the run stays bounded."""
    res.failures.append(label)
    res.failed += 1
    log.warning("%s", label)
    res.consecutive_failures += 1
    if res.consecutive_failures < MAX_CONSECUTIVE_FAILURES:
        return False
    not_placed = total - max(index + 1, warmup)  # measured calls left
    if not_placed > 0:
        res.attempted += not_placed
        res.failed += not_placed
        res.failures.append(f"{not_placed} measured calls not placed: aborted after "
                            f"{MAX_CONSECUTIVE_FAILURES} consecutive failures")
    return True


async def first_reply(client: MatrixTestClient, room_id: str, call_id: str, wanted: str,
                      timeout: float = 30.0) -> None:
    """Wait for the bridge's `wanted` event of this call; an earlier end (reject/hangup) fails the call at once
    instead of after the timeout."""
    types = {wanted, "m.call.hangup", "m.call.reject"}
    event = await client.wait_for_event(
        room_id, lambda ev: ev.get("type") in types and ev.get("sender") != client.user_id
        and ev.get("content", {}).get("call_id") == call_id, timeout=timeout)
    if event["type"] != wanted:
        raise RuntimeError(f"the bridge ended the call with {event['type']} "
                           f"(reason {event['content'].get('reason')}) instead of {wanted}")


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------- outbound
async def run_outbound(bridge: Bridge, probe: Probe, alice: MatrixTestClient, plan: StackPlan, calls: int,
                       warmup: int, workdir: Path) -> Results:
    res = Results("outbound")
    peer = RtpPeer(tone_hz=1000.0)
    await peer.open()
    total = calls + warmup
    sipp = SippProcess(SCENARIOS / "trunk_answer.xml", local_port=plan.trunk_port, calls=total,
                       extra_args=["-key", "rtp_port", str(peer.port)], timeout=60 + 10 * total, trace=False,
                       workdir=workdir / "sipp-outbound")
    started = time.perf_counter()
    try:
        await sipp.start()
        room = await alice.create_dm(OUT_GHOST)
        await alice.wait_for_membership(room, OUT_GHOST, "join", timeout=30)
        for i in range(total):
            measured = i >= warmup
            res.attempted += measured
            call = None
            try:
                call = await alice.place_call(room, OUT_GHOST)
                await first_reply(alice, room, call.call_id, "m.call.answer")
                await call.wait_answer(timeout=10)
                session = bridge.calls.outbound.get(call.call_id)
                sip_call_id = session.sip_call_id if session is not None else None
                await call.hangup()
                await wait_until(lambda c=call.call_id: c not in bridge.calls.outbound, 20,  # type: ignore[misc]
                                 "the bridge to end the call")
                res.consecutive_failures = 0
                if not measured:
                    continue
                if sip_call_id is None:
                    raise RuntimeError("no SIP Call-ID on the bridge's session")
                missing = [m for m in (
                    add_interval(res, probe, "A", probe.get("mx_in", "m.call.invite", call.call_id),
                                 probe.get("sip_out", "INVITE", sip_call_id, "INVITE")),
                    add_interval(res, probe, "B", probe.get("sip_in", "200", sip_call_id, "INVITE"),
                                 probe.get("mx_out", "m.call.answer", call.call_id)),
                    add_interval(res, probe, "B_ret", probe.get("sip_in", "200", sip_call_id, "INVITE"),
                                 probe.get("mx_out_ret", "m.call.answer", call.call_id)),
                ) if m]
                if missing:
                    raise RuntimeError("; ".join(missing))
            except Exception as exc:
                if record_failure(res, failure_label(res, i, measured, exc), i, total, warmup):
                    sipp.kill()  # it still expects the calls not placed
                    break
                # let the bridge settle before the next call so one failure does not cascade
                await asyncio.sleep(1)
            finally:
                if call is not None:
                    await call.close()
        res.sipp_rc = await sipp.wait(timeout=30)
        if res.sipp_rc != 0:
            res.sipp_report = sipp.report()
    finally:
        res.wall_s = time.perf_counter() - started
        await sipp.aclose()
        await peer.close()
    return res


# ---------------------------------------------------------------------------------------------- inbound
async def run_inbound(bridge: Bridge, probe: Probe, alice: MatrixTestClient, plan: StackPlan, calls: int,
                      warmup: int, workdir: Path) -> Results:
    res = Results("inbound")
    peer = RtpPeer(tone_hz=1000.0)
    await peer.open()
    total = calls + warmup
    # -l 1: at most one call at a time; sipp starts the next as soon as the previous one has ended.
    sipp = SippProcess(SCENARIOS / "caller_wait_bye.xml", remote=("127.0.0.1", plan.sip_port), service=DIALLED,
                       calls=total, rate=10, timeout=60 + 10 * total, trace=False,
                       extra_args=["-key", "caller", CALLER, "-key", "caller_name", "Bench Phone",
                                   "-key", "rtp_port", str(peer.port), "-l", "1"],
                       workdir=workdir / "sipp-inbound")
    started = time.perf_counter()
    try:
        await sipp.start()
        for i in range(total):
            measured = i >= warmup
            res.attempted += measured
            call = None
            try:
                call = await alice.wait_incoming_call(timeout=60)
                session = bridge.calls.inbound.get(call.call_id)
                sip_call_id = session.sip_call_id if session is not None else None
                await call.answer()
                await first_reply(alice, call.room_id, call.call_id, "m.call.select_answer")
                await call.hangup()
                await wait_until(lambda c=call.call_id: c not in bridge.calls.inbound, 20,  # type: ignore[misc]
                                 "the bridge to end the call")
                res.consecutive_failures = 0
                if not measured:
                    continue
                if sip_call_id is None:
                    raise RuntimeError("no inbound session for the invite")
                invite_in = probe.get("sip_in", "INVITE", sip_call_id, "INVITE")
                missing = [m for m in (
                    add_interval(res, probe, "C", invite_in, probe.get("mx_out", "m.call.invite", call.call_id)),
                    add_interval(res, probe, "C_ret", invite_in,
                                 probe.get("mx_out_ret", "m.call.invite", call.call_id)),
                    add_interval(res, probe, "D", probe.get("mx_in", "m.call.answer", call.call_id),
                                 probe.get("sip_out", "200", sip_call_id, "INVITE")),
                ) if m]
                if missing:
                    raise RuntimeError("; ".join(missing))
            except Exception as exc:
                if record_failure(res, failure_label(res, i, measured, exc), i, total, warmup):
                    sipp.kill()  # it still expects the calls not placed
                    break
                await asyncio.sleep(1)
            finally:
                if call is not None:
                    await call.close()
        res.sipp_rc = await sipp.wait(timeout=30)
        if res.sipp_rc != 0:
            res.sipp_report = sipp.report()
    finally:
        res.wall_s = time.perf_counter() - started
        await sipp.aclose()
        await peer.close()
    return res


# ---------------------------------------------------------------------------------------------- report
def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def report(res: Results) -> bool:
    """Print the figures; True when every target was met and nothing failed."""
    ok = not res.failures and res.sipp_rc == 0
    print(f"\n== {res.direction}: {res.attempted} measured calls, {res.failed} failed (warm-up included), "
          f"sipp exit {res.sipp_rc}, {res.wall_s:.1f} s")
    print(f"   {'metric':<44} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  target")
    for metric in ("A", "B", "B_ret") if res.direction == "outbound" else ("C", "C_ret", "D"):
        values = res.samples.get(metric, [])
        if not values:
            print(f"   {metric:<6} {LABELS[metric]:<37} {0:>4}        -        -        -")
            ok = False
            continue
        p95 = percentile(values, 95)
        target = TARGETS_MS.get(metric)
        verdict = ""
        if target is not None:
            met = p95 <= target
            ok = ok and met
            verdict = f"p95 <= {target:g} ms: {'met' if met else 'MISSED'}"
        print(f"   {metric:<6} {LABELS[metric]:<37} {len(values):>4} {percentile(values, 50):>8.1f} {p95:>8.1f} "
              f"{max(values):>8.1f}  {verdict}")
    for metric, steps in sorted(res.steps.items()):
        print(f"   breakdown of {metric} (steps started inside the interval; median / p95 ms per call; nested "
              "steps overlap):")
        for name, values in sorted(steps.items(), key=lambda kv: -statistics.median(kv[1])):
            print(f"      {name:<44} n={len(values):<4} {statistics.median(values):8.2f} "
                  f"{percentile(values, 95):8.2f}")
    for failure in res.failures:
        print(f"   FAILED {failure}")
    if res.sipp_report:
        print("   sipp report:\n" + "\n".join("      " + line for line in res.sipp_report.splitlines()[-40:]))
    return ok


# ---------------------------------------------------------------------------------------------- main
def bench_config(data: dict[str, Any]) -> None:
    data["sip"]["inbound"]["routes"] = [{"number": DIALLED, "users": [ALICE]}]
    # sequential calls from one source: the per-source INVITE rate limit must not be what is measured
    data["sip"]["inbound"]["rate_limit"] = {"per_source_per_second": 1000, "burst": 1000}
    # the same for the calls Alice places: bridge.limits must not refuse the measured calls
    data["bridge"]["limits"] = {"attempts_per_minute": 10000, "concurrent_calls": 100, "total_concurrent_calls": 1000}


async def run(args: argparse.Namespace, workdir: Path) -> bool:
    plan = StackPlan(workdir / "stack")
    plan.tmp.mkdir(parents=True, exist_ok=True)
    registration = plan.write_registration()
    synapse: SynapseServer | None = None
    bridge: Bridge | None = None
    alice: MatrixTestClient | None = None
    results: list[Results] = []
    try:
        print("starting Synapse ...", flush=True)
        synapse = await asyncio.to_thread(start_synapse_sync, workdir / "synapse", server_name=SERVER_NAME,
                                          appservice_registrations=[registration])
        await asyncio.to_thread(register_user_sync, synapse, "alice", PASSWORD)
        bridge = await start_bridge(plan, synapse, bench_config)
        probe = Probe()
        probe.install(bridge)
        alice = await MatrixTestClient.login(synapse.url, ALICE, PASSWORD)
        await alice.start_sync(auto_join=True)
        if args.direction in ("both", "outbound"):
            print(f"outbound: {args.warmup} warm-up + {args.calls} calls ...", flush=True)
            results.append(await run_outbound(bridge, probe, alice, plan, args.calls, args.warmup, workdir))
        if args.direction in ("both", "inbound"):
            print(f"inbound: {args.warmup} warm-up + {args.calls} calls ...", flush=True)
            results.append(await run_inbound(bridge, probe, alice, plan, args.calls, args.warmup, workdir))
    finally:
        if alice is not None:
            await alice.close()
        if bridge is not None:
            await bridge.stop()
        if synapse is not None:
            await asyncio.to_thread(stop_synapse_sync, synapse)
    ok = True
    for res in results:
        ok = report(res) and ok
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50, help="measured calls per direction (default 50)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured calls first, per direction (default 1)")
    parser.add_argument("--direction", choices=("both", "outbound", "inbound"), default="both")
    parser.add_argument("--log-level", default="WARNING", help="bridge log level to stderr (default WARNING)")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile dump of the whole run to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (Synapse/sipp logs)")
    args = parser.parse_args()
    if args.calls < 1 or args.warmup < 0:
        parser.error("--calls must be >= 1 and --warmup >= 0")
    setup_logging(args.log_level)
    workdir = Path(tempfile.mkdtemp(prefix="call-latency-"))
    profiler = cProfile.Profile() if args.profile else None
    try:
        with loopback_ice():
            if profiler is not None:
                profiler.enable()
            ok = asyncio.run(run(args, workdir))
            if profiler is not None:
                profiler.disable()
    finally:
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if profiler is not None:
        profiler.dump_stats(args.profile)
        print(f"\ncProfile written to {args.profile}; top bridge functions by cumulative time:")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(r"/bridge/", 25)
    print("\nall targets met" if ok else "\nTARGET MISSED or failures (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
