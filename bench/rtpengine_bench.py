"""Media CPU with ``media.backend: rtpengine``: N concurrent calls, audio both ways, through one rtpengine node.

    .venv/bin/python bench/rtpengine_bench.py --calls 40 --seconds 30 [--transcode]

The far ends are media_bench.py's (a second process: N aiortc "Element" peers and N plain RTP phones, 20 ms
packets both ways). This process is the bridge side: RtpengineCallMedia per call (the ng signalling of the
outbound flow), so its CPU over the window is what the bridge spends per call once media flows (expected ~0:
it carries no audio). rtpengine is started here (tests/harness/rtpengine.py: userspace forwarding, 127.0.0.1)
and its CPU time is read from /proc/<pid>/stat over the same window. Printed: both CPU figures per call and
the share of packets delivered each way.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from media_bench import FarEnds

from bridge.media.rtpengine_media import RtpengineBackend, RtpengineCallMedia, RtpengineSettings
from bridge.media.rtpengine_nodes import NodeSpec
from bridge.media.settings import MediaSettings
from tests.harness.matrix_client import loopback_ice
from tests.harness.rtpengine import RtpengineProcess
from tests.media.call_fixtures import sip_sdp

log = logging.getLogger("bench")


def sip_target(sdp: bytes) -> tuple[str, int]:
    host, port = "127.0.0.1", 0
    for line in sdp.decode().splitlines():
        if line.startswith("c=IN IP4 "):
            host = line.split()[-1]
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
    return host, port


async def bridge_main(args: argparse.Namespace, node: RtpengineProcess) -> None:
    backend = RtpengineBackend(RtpengineSettings([NodeSpec(node.url)]), MediaSettings(ice_timeout_s=0))
    await backend.start()
    medias: list[RtpengineCallMedia] = []

    async def setup(request: dict[str, Any]) -> dict[str, Any]:
        media = backend.new_media(logging.LoggerAdapter(log, {"call_id": request["call"]}))
        medias.append(media)
        await media.prepare_sip_offer(request["offer"])
        offer = media.sip_offer()
        media.apply_sip_answer(sip_sdp(request["rtp"], "0 101"))
        answer = await media.create_webrtc_answer()
        await media.add_webrtc_candidates(request["candidates"])
        media.start()
        return {"answer": answer, "target": list(sip_target(offer))}

    far_ends = FarEnds(args.calls, args.transcode, setup)
    await far_ends.start()
    peers = far_ends.command

    await asyncio.sleep(3)  # ICE and DTLS done everywhere
    await peers("go")
    await asyncio.sleep(1)
    cpu0, rcpu0, wall0 = time.process_time(), node.cpu_seconds(), time.monotonic()
    await asyncio.sleep(args.seconds)
    cpu1, rcpu1, wall1 = time.process_time(), node.cpu_seconds(), time.monotonic()
    stats = [await m.refresh_stats() for m in medias]
    await peers("stop")
    await asyncio.sleep(1.5)
    end = await peers("totals")
    for media in medias:
        await media.close()
    await backend.close()
    far_ends.close()

    wall = wall1 - wall0
    per = 100 / wall / args.calls
    print(f"calls: {args.calls}  window: {wall:.1f} s  mode: {'transcode' if args.transcode else 'passthrough'}")
    print(f"connected (media from Matrix seen by rtpengine): {sum(s.webrtc_frames_in > 0 for s in stats)}/"
          f"{len(stats)}  codecs SIP/WebRTC: {stats[0].codec_sip}/{stats[0].codec_webrtc}")
    print(f"bridge CPU: {100 * (cpu1 - cpu0) / wall:.2f} % of one core total, {(cpu1 - cpu0) * per:.3f} % per call")
    print(f"rtpengine CPU: {100 * (rcpu1 - rcpu0) / wall:.1f} % of one core total, "
          f"{(rcpu1 - rcpu0) * per:.2f} % per call (userspace forwarding, no kernel module)")
    print(f"delivered SIP->Matrix: {100 * end['matrix_received'] / max(1, end['rtp_sent']):.2f} % of "
          f"{end['rtp_sent']}   Matrix->SIP: {100 * end['rtp_received'] / max(1, end['matrix_sent']):.2f} % of "
          f"{end['matrix_sent']}")


async def ng_setups(node: RtpengineProcess, calls: int, concurrency: int) -> None:
    """--ng-setups: the rtpengine share of a call setup on its own: the outbound ng cycle (offer from an
    Element-like SDP, answer from the trunk, delete) for ``calls`` calls, ``concurrency`` at a time."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    backend = RtpengineBackend(RtpengineSettings([NodeSpec(node.url)], timeout_s=5), MediaSettings(ice_timeout_s=0))
    await backend.start()
    answer = sip_sdp(40000, "0 101")
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            media = backend.new_media(log)
            await media.prepare_sip_offer(offer)
            media.sip_offer()
            media.apply_sip_answer(answer)
            await media.create_webrtc_answer()
            await media.close()

    start = time.monotonic()
    rcpu0 = node.cpu_seconds()
    await asyncio.gather(*(one(i) for i in range(calls)))
    wall = time.monotonic() - start
    print(f"ng call cycles (offer+answer+query+delete): {calls} in {wall:.2f} s = {calls / wall:.0f}/s with "
          f"{concurrency} in flight; rtpengine CPU {1000 * (node.cpu_seconds() - rcpu0) / calls:.2f} ms per call")
    await backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--transcode", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="rtpengine --num-threads")
    parser.add_argument("--ng-setups", type=int, default=0, help="only time N ng call cycles (no media)")
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        node = RtpengineProcess(tmp, ports=4 * args.calls + 20, threads=args.threads)
        node.start()
        try:
            with loopback_ice():
                if args.ng_setups:
                    asyncio.run(ng_setups(node, args.ng_setups, args.concurrency))
                else:
                    asyncio.run(bridge_main(args, node))
        finally:
            node.stop()


if __name__ == "__main__":
    main()
