"""Media capacity with media workers: bench/media_bench.py's calls, their media in N worker processes.

    .venv/bin/python bench/workers_bench.py --calls 40 --seconds 20 --workers 2 [--transcode]
    .venv/bin/python bench/workers_bench.py --calls 40 --seconds 20 --workers 0    # in-process, as media_bench

Same far ends and call set-up as media_bench.py (a second process runs N aiortc "Element" peers and N RTP
phones); the bridge side here builds each call's media with the factory the bridge uses for ``media.workers``.
Printed: CPU of the bridge process and of each worker over the window (from /proc: user + system time, the
decoder threads included), the busiest process's load (the one that saturates first: capacity is reached when
it nears 100 % of a core) and the capacity that implies, and the share of packets delivered each way.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.media_bench import FarEnds, connect_far_end
from bridge.media.call_media import CallMedia
from bridge.media.factory import InProcessMedia, MediaFactory, WorkerMedia
from bridge.media.ports import PortAllocator
from bridge.media.settings import MediaSettings
from bridge.media.worker_pool import WorkerPool
from tests.harness.matrix_client import loopback_ice
from tests.media.call_fixtures import free_port_range

log = logging.getLogger("bench.workers")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def bridge_main(args: argparse.Namespace) -> None:
    settings = MediaSettings()
    settings.port_start, settings.port_end = free_port_range(2 * args.calls + 20)
    ports = PortAllocator(settings.rtp_host, settings.port_start, settings.port_end)
    pool = WorkerPool(settings, args.workers, ice_host_addresses=["127.0.0.1"], log_level="WARNING") \
        if args.workers else None
    factory: MediaFactory = WorkerMedia(pool) if pool is not None else InProcessMedia()
    await factory.start()
    medias: list[CallMedia] = []

    async def setup(request: dict[str, Any]) -> dict[str, Any]:
        media = factory.new(settings, ports, logging.LoggerAdapter(log, {"call_id": request["call"]}))
        medias.append(media)
        return await connect_far_end(media, request)

    far_ends = FarEnds(args.calls, args.transcode, setup)
    await far_ends.start()
    peers = far_ends.command

    await asyncio.sleep(3)  # ICE and DTLS done everywhere
    await peers("go")
    await asyncio.sleep(2)  # streams running (and counters pushed by the workers); steady state from here
    pids = {"bridge": os.getpid()}
    if pool is not None:
        pids.update({f"worker {w.index}": w.pid for w in pool.workers if w.pid is not None})
    cpu0, wall0 = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
    await asyncio.sleep(args.seconds)
    cpu1, wall1 = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
    await peers("stop")
    await asyncio.sleep(1.5)  # drain everything in flight
    end = await peers("totals")
    stats = [m.stats() for m in medias]
    states = [m.webrtc_connection_state for m in medias]
    for media in medias:
        await media.close()
    far_ends.close()
    await factory.stop()

    wall = wall1 - wall0
    load = {k: (cpu1[k] - cpu0[k]) / wall for k in pids}
    total = sum(load.values())
    busiest = max(load.values())
    sip_to_matrix = end["matrix_received"] / max(1, end["rtp_sent"])
    matrix_to_sip = end["rtp_received"] / max(1, end["matrix_sent"])
    mode = "transcode" if args.transcode else "passthrough"
    print(f"calls: {args.calls}  workers: {args.workers}  window: {wall:.1f} s  mode: {mode}")
    print(f"connected: {states.count('connected')}/{len(states)}  passthrough: {sum(s.passthrough for s in stats)}")
    print("CPU (% of one core): " + "  ".join(f"{k} {100 * v:.1f}" for k, v in load.items())
          + f"  total {100 * total:.1f} ({100 * total / args.calls:.2f} per call)")
    # the calls are spread evenly, so the busiest process reaches a full core first: that is the capacity (with
    # workers: as long as there are as many free cores as workers)
    print(f"busiest process {100 * busiest:.1f} % of a core -> capacity about {args.calls / busiest:.0f} calls "
          f"(media in {max(1, args.workers)} process(es), {os.cpu_count()} cores here)")
    print(
        f"delivered SIP->Matrix: {100 * sip_to_matrix:.2f} % of {end['rtp_sent']}   "
        f"Matrix->SIP: {100 * matrix_to_sip:.2f} % of {end['matrix_sent']}"
    )
    print(f"bridge drops (all calls): {sum(s.dropped for s in stats)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--transcode", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    with loopback_ice():
        asyncio.run(bridge_main(args))


if __name__ == "__main__":
    main()
