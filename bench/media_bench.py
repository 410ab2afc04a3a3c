"""Media-plane benchmark: N concurrent bridged calls, audio both ways.

    .venv/bin/python bench/media_bench.py --calls 40 --seconds 20 [--transcode]

This process runs only the bridge side (N CallMedia, the code under test); a second process
runs the far ends: N aiortc peers standing in for Element and N plain RTP phones, both sending
20 ms packets. Call set-up is the outbound flow (Matrix offer, SIP answer, Matrix answer),
signalled over a local JSON-lines socket. Printed: bridge CPU per call (process CPU time over
the measuring window / wall time / calls, decoder threads included), RSS per call, and the
share of packets delivered each way over that window. Loopback only; ports come from the OS.

Default: Element-like offer (Opus, PCMU, ...) -> PCMU passthrough. --transcode: the Matrix
peers offer only Opus, so the bridge transcodes Opus <-> PCMU.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import logging
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiortc import MediaStreamTrack
from av import Packet

from bridge import event_loop
from bridge.media.call_media import CallMedia
from bridge.media.ports import PortAllocator
from bridge.media.settings import MediaSettings
from tests.harness.matrix_client import loopback_ice
from tests.media.call_fixtures import free_port_range, sip_sdp
from tests.media.rtp_peer import RtpPeer, open_rtp_peer, tone_payloads
from tests.media.webrtc_peer import MatrixPeer, strip_candidates

log = logging.getLogger("bench")


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------------
# far ends (second process)


class PcmuToneTrack(MediaStreamTrack):
    """Pre-encoded PCMU tone, paced in real time: keeps the peer process cheap (no encoding)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.payloads = tone_payloads(1000.0)
        self.n = 0
        self._start: float | None = None

    async def recv(self) -> Packet:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        await asyncio.sleep(max(0.0, self._start + self.n * 0.02 - loop.time()))
        packet = Packet(self.payloads[self.n % len(self.payloads)])
        packet.pts = self.n * 160
        packet.time_base = fractions.Fraction(1, 8000)
        self.n += 1
        return packet


class GatedTrack(MediaStreamTrack):
    """Lets the inner track's packets out only between 'go' and 'stop', counting them."""

    kind = "audio"

    def __init__(self, inner: MediaStreamTrack, go: asyncio.Event, stop: asyncio.Event) -> None:
        super().__init__()
        self.inner, self.go, self.stop_event = inner, go, stop
        self.sent = 0

    async def recv(self) -> Any:
        await self.go.wait()
        if self.stop_event.is_set():
            await asyncio.Event().wait()  # silent until the connection closes
        item = await self.inner.recv()
        self.sent += 1
        return item


class CountingMatrixPeer(MatrixPeer):
    """Counts audio RTP packets as they arrive (before aiortc's jitter buffer, which holds some back)."""

    def __init__(self, transcode: bool, go: asyncio.Event, stop: asyncio.Event) -> None:
        super().__init__(freq=1000.0, codecs=["opus"] if transcode else None)
        # Element offers Opus first; without --transcode the bridge picks PCMU (passthrough)
        inner: MediaStreamTrack = self.tone if transcode else PcmuToneTrack()
        self.gated = GatedTrack(inner, go, stop)
        self.transceiver.sender.replaceTrack(self.gated)
        self.rtp_in = 0
        transport = self.transceiver.receiver.transport
        original = transport._handle_rtp_data

        async def counting(data: bytes, arrival_time_ms: int) -> None:
            if len(data) > 1 and (data[1] & 0x7F) in (0, 8, 9, 96, 111):
                self.rtp_in += 1
            await original(data, arrival_time_ms=arrival_time_ms)

        transport._handle_rtp_data = counting  # type: ignore[method-assign]

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
        except Exception:
            pass


async def peers_main(control_port: int, calls: int, transcode: bool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", control_port)
    go, stop = asyncio.Event(), asyncio.Event()
    matrix_peers: list[CountingMatrixPeer] = []
    rtp_peers: list[RtpPeer] = []
    targets: list[tuple[str, int]] = []
    for index in range(calls):
        matrix = CountingMatrixPeer(transcode, go, stop)
        rtp = await open_rtp_peer()
        offer, candidates = strip_candidates(await matrix.offer())
        writer.write(json.dumps({"call": index, "offer": offer, "candidates": candidates, "rtp": rtp.port}).encode())
        writer.write(b"\n")
        reply = json.loads(await reader.readline())
        await matrix.accept(reply["answer"])
        matrix_peers.append(matrix)
        rtp_peers.append(rtp)
        targets.append((reply["target"][0], reply["target"][1]))

    def totals() -> dict[str, int]:
        return {
            "rtp_sent": sum(p.sent for p in rtp_peers),
            "rtp_received": sum(sum(1 for r in p.received if r.payload_type == 0) for p in rtp_peers),
            "matrix_sent": sum(p.gated.sent for p in matrix_peers),
            "matrix_received": sum(p.rtp_in for p in matrix_peers),
        }

    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)["cmd"]
        if command == "go":
            go.set()
            for rtp, target in zip(rtp_peers, targets, strict=True):
                rtp.start_tone(target)
        elif command == "stop":
            stop.set()
            for rtp in rtp_peers:
                await rtp.stop_tone()
        elif command == "totals":
            pass
        writer.write(json.dumps(totals()).encode() + b"\n")
        await writer.drain()
    for rtp in rtp_peers:
        await rtp.close()
    for matrix in matrix_peers:
        await matrix.close()
    writer.close()


def peers_process(control_port: int, calls: int, transcode: bool) -> None:
    with loopback_ice():
        asyncio.run(peers_main(control_port, calls, transcode))


# ---------------------------------------------------------------------------------------------
# bridge side (this process)


CallSetup = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def connect_far_end(media: CallMedia, request: dict[str, Any]) -> dict[str, Any]:
    """One far end's call on ``media``: its WebRTC offer answered, the SIP side pointed at its RTP peer (PCMU and
    telephone-event), started; the reply FarEnds sends back to that far end."""
    await media.set_webrtc_offer(request["offer"])
    host, port = await media.open_rtp()
    media.sip_offer()
    media.apply_sip_answer(sip_sdp(request["rtp"], "0 101"))
    answer = await media.create_webrtc_answer()
    await media.add_webrtc_candidates(request["candidates"])
    media.start()
    return {"answer": answer, "target": [host, port]}


class FarEnds:
    """The far-end process of the media benches (one aiortc caller and one RTP peer per call), driven over a
    loopback control socket. ``setup`` builds the bridge side of one call from its request and returns
    ``{"answer": <WebRTC answer>, "target": [host, port]}`` (where the RTP peer sends)."""

    def __init__(self, calls: int, transcode: bool, setup: CallSetup) -> None:
        self.calls, self.transcode, self.setup = calls, transcode, setup
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._connected = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._child: Any = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(self.calls):
            request = json.loads(await reader.readline())
            reply = await self.setup(request)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        self._streams = (reader, writer)
        self._connected.set()

    async def start(self) -> None:
        """Start the process and set up every call; ICE and DTLS then need a few seconds more."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        control_port = self._server.sockets[0].getsockname()[1]
        self._child = multiprocessing.get_context("spawn").Process(
            target=peers_process, args=(control_port, self.calls, self.transcode), daemon=True)
        self._child.start()
        await asyncio.wait_for(self._connected.wait(), timeout=60 + self.calls)

    async def command(self, cmd: str) -> dict[str, int]:
        """"go", "stop" or "totals" (the far ends' packet counters)."""
        assert self._streams is not None
        reader, writer = self._streams
        writer.write(json.dumps({"cmd": cmd}).encode() + b"\n")
        await writer.drain()
        return dict(json.loads(await reader.readline()))

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
        if self._server is not None:
            self._server.close()
        if self._child is not None:
            self._child.join(timeout=30)



async def bridge_main(args: argparse.Namespace) -> None:
    settings = MediaSettings()
    settings.port_start, settings.port_end = free_port_range(2 * args.calls + 20)
    ports = PortAllocator(settings.rtp_host, settings.port_start, settings.port_end)
    medias: list[CallMedia] = []
    rss_before = rss_kib()

    async def setup(request: dict[str, Any]) -> dict[str, Any]:
        media = CallMedia(settings, ports, log=logging.LoggerAdapter(log, {"call_id": request["call"]}))
        medias.append(media)
        return await connect_far_end(media, request)

    far_ends = FarEnds(args.calls, args.transcode, setup)
    await far_ends.start()
    peers = far_ends.command

    await asyncio.sleep(3)  # ICE and DTLS done everywhere
    states = [m.webrtc_connection_state for m in medias]
    rss_calls = rss_kib()
    await peers("go")
    await asyncio.sleep(1)  # streams running; measure CPU in steady state
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(args.seconds)
    cpu1, wall1 = time.process_time(), time.monotonic()
    await peers("stop")
    await asyncio.sleep(1.5)  # drain everything in flight
    end = await peers("totals")
    stats = [m.stats() for m in medias]
    for media in medias:
        await media.close()
    far_ends.close()

    wall = wall1 - wall0
    cpu = cpu1 - cpu0
    sip_to_matrix = end["matrix_received"] / max(1, end["rtp_sent"])
    matrix_to_sip = end["rtp_received"] / max(1, end["matrix_sent"])
    print(f"calls: {args.calls}  window: {wall:.1f} s  mode: {'transcode' if args.transcode else 'passthrough'}")
    print(f"connected: {states.count('connected')}/{len(states)}  passthrough: {sum(s.passthrough for s in stats)}")
    print(f"bridge CPU: {100 * cpu / wall:.1f} % of one core total, {100 * cpu / wall / args.calls:.2f} % per call")
    print(f"  -> {args.calls / (cpu / wall):.0f} calls per fully used core")
    print(f"RSS: {rss_calls / 1024:.1f} MiB with calls, {(rss_calls - rss_before) / args.calls:.0f} KiB per call")
    print(
        f"delivered SIP->Matrix: {100 * sip_to_matrix:.2f} % of {end['rtp_sent']}   "
        f"Matrix->SIP: {100 * matrix_to_sip:.2f} % of {end['matrix_sent']}"
    )
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"bridge drops (all calls): {sum(s.dropped for s in stats)}; max RSS {max_rss} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--transcode", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    with loopback_ice():
        event_loop.run(bridge_main(args))  # the bridge's own loop (uvloop when installed)


if __name__ == "__main__":
    main()
