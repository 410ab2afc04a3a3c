"""Call setups per second between the SIP core and sipp on loopback (a script, not a test).

--direction uas (default): sipp (UAC, tests/sip/scenarios/bench_uac.xml) places calls at --rate calls/s for
--duration seconds to our UserAgent, which answers every INVITE with 180 + 200 (SDP); sipp ACKs and hangs up
with BYE. --direction uac: our UserAgent places the calls (INVITE, waits for the 200, ACK, BYE) to a sipp UAS
(bench_uas.xml). Prints calls attempted/completed/failed and the achieved rate. Optional --profile writes a
cProfile dump of our side.

    .venv/bin/python bench/sip_bench.py --rate 300 --duration 60
    .venv/bin/python bench/sip_bench.py --rate 300 --duration 60 --direction uac
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import csv
import logging
import pstats
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.sip.server import ServerInvite  # noqa: E402
from bridge.sip.settings import ListenAddress, SipSettings  # noqa: E402
from bridge.sip.ua import UserAgent  # noqa: E402
from tests.harness.sipp import SippProcess  # noqa: E402

SCENARIO = ROOT / "tests" / "sip" / "scenarios" / "bench_uac.xml"
SCENARIO_UAS = ROOT / "tests" / "sip" / "scenarios" / "bench_uas.xml"
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def last_stats(path: Path) -> dict[str, str]:
    with path.open() as f:
        rows = list(csv.reader(f, delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


async def run(rate: float, duration: float, transport: str, profile: str | None) -> int:
    answered = 0
    ended: Counter[str] = Counter()  # how our dialogs ended: "bye_received" is a clean call

    async def on_invite(si: ServerInvite) -> None:
        nonlocal answered
        si.respond_now(180)
        dialog = si.respond_now(200, body=SDP)
        if dialog is not None:
            dialog.on_terminated = lambda reason: ended.update((reason,))
        answered += 1

    settings = SipSettings(listen=[ListenAddress(transport, "127.0.0.1", 0)], trying_delay=0.2)
    ua = UserAgent(settings, on_invite=on_invite)
    await ua.start()
    calls = int(rate * duration)
    workdir = Path(tempfile.mkdtemp(prefix="sip-bench-"))
    sipp = SippProcess(
        SCENARIO,
        remote=ua.bound_address(transport),
        transport={"udp": "u1", "tcp": "t1"}[transport],
        calls=calls,
        rate=rate,
        timeout=duration + 60,
        workdir=workdir,
        trace=False,
        extra_args=["-fd", "1", "-l", str(max(100, int(rate * 5)))],
    )
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    start = time.monotonic()
    await sipp.start()
    code = await sipp.wait(timeout=duration + 120)
    elapsed = time.monotonic() - start
    if prof and profile:
        prof.disable()
        prof.dump_stats(profile)
    await asyncio.sleep(0.5)  # let the last BYEs land
    open_dialogs = len(ua.dialogs)
    await ua.stop()
    stats = last_stats(sipp.stat_file)
    created = int(stats.get("TotalCallCreated", stats.get("OutgoingCall(C)", "0")) or 0)
    ok = int(stats.get("SuccessfulCall(C)", "0") or 0)
    failed = int(stats.get("FailedCall(C)", "0") or 0)
    print(f"direction=uas transport={transport} target_rate={rate:g}/s duration_target={duration:g}s")
    print(f"calls attempted={created} completed={ok} failed={failed} answered_by_ua={answered}")
    # sipp may count a call whose ACK/BYE we never got (a retransmitted INVITE 200 satisfies its BYE step),
    # so our own view is the honest one: every dialog must end with the peer's BYE
    print(f"UA side: dialogs ended {dict(ended)}; still open {open_dialogs}")
    print(f"wall time={elapsed:.1f}s achieved={ok / elapsed:.1f} completed calls/s (each: INVITE,180,200,ACK,BYE,200)")
    print(f"sipp exit code={code}; logs in {workdir}")
    if prof and profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
    clean = ended.get("bye_received", 0)
    return 0 if code == 0 and failed == 0 and ok == calls and clean == calls else 1


async def run_uac(rate: float, duration: float, transport: str) -> int:
    """Our UA calls a sipp UAS at `rate` calls/s: INVITE -> 180 -> 200 -> ACK -> BYE -> 200."""
    settings = SipSettings(listen=[ListenAddress(transport, "127.0.0.1", 0)])
    ua = UserAgent(settings)
    await ua.start()
    calls = int(rate * duration)
    workdir = Path(tempfile.mkdtemp(prefix="sip-bench-"))
    sipp = SippProcess(
        SCENARIO_UAS,
        transport={"udp": "u1", "tcp": "t1"}[transport],
        calls=calls,
        timeout=duration + 60,
        workdir=workdir,
        trace=False,
        extra_args=["-fd", "1"],
    )
    await sipp.start()
    results: Counter[str] = Counter()
    target = f"sip:bob@{sipp.uri_host}" + ("" if transport == "udp" else f";transport={transport}")

    async def one_call() -> None:
        try:
            call = ua.invite(target, from_uri="sip:bench@127.0.0.1", sdp=SDP)
            final = await call.wait_final()
            if final.status != 200 or call.dialog is None:
                results[f"final_{final.status}"] += 1
                return
            bye = await call.dialog.bye()
            results["ok" if bye is not None and bye.status == 200 else "bye_failed"] += 1
        except Exception as exc:
            results[type(exc).__name__] += 1

    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time()
    for i in range(calls):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one_call())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=120)
    elapsed = loop.time() - start
    code = await sipp.wait(timeout=30)
    await ua.stop()
    ok = results.get("ok", 0)
    print(f"direction=uac transport={transport} target_rate={rate:g}/s duration_target={duration:g}s")
    print(f"calls attempted={calls} completed={ok} failed={calls - ok} outcomes={dict(results)}")
    print(f"wall time={elapsed:.1f}s achieved={ok / elapsed:.1f} completed calls/s (each: INVITE,180,200,ACK,BYE,200)")
    print(f"sipp exit code={code}; logs in {workdir}")
    return 0 if ok == calls and code == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="calls per second sipp places")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    parser.add_argument(
        "--direction",
        choices=("uas", "uac"),
        default="uas",
        help="uas: sipp calls our UA (default); uac: our UA calls sipp",
    )
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile dump of the UA side (uas only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.direction == "uac":
        sys.exit(asyncio.run(run_uac(args.rate, args.duration, args.transport)))
    sys.exit(asyncio.run(run(args.rate, args.duration, args.transport, args.profile)))


if __name__ == "__main__":
    main()
