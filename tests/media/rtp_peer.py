"""A plain RTP peer for tests and the benchmark: sends a PCMU tone every 20 ms, counts what it gets."""

from __future__ import annotations

import asyncio
import math
import random
import socket
from typing import cast

from bridge.media.rtp_packet import RtpPacket, RtpParseError, build_rtp, parse_rtp


def _linear_to_ulaw(sample: int) -> int:
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), clip) + bias
    exponent = 7
    for exp in range(7, -1, -1):
        if sample & (0x4000 >> (7 - exp)):
            exponent = exp
            break
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def tone_payloads(freq: float = 440.0, count: int = 50, amplitude: int = 8000) -> list[bytes]:
    """``count`` consecutive 20 ms PCMU payloads of a sine tone (loop them for longer tones)."""
    out = []
    n = 0
    for _ in range(count):
        frame = bytearray(160)
        for i in range(160):
            frame[i] = _linear_to_ulaw(int(amplitude * math.sin(2 * math.pi * freq * n / 8000)))
            n += 1
        out.append(bytes(frame))
    return out


class RtpPeer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[RtpPacket] = []
        self.sources: set[tuple[str, int]] = set()
        self.garbage = 0
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self._sender: asyncio.Task[None] | None = None
        self.sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a cast, not an isinstance check: CPython 3.11's selector datagram transport does not
        # subclass asyncio.DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sources.add(addr)
        try:
            self.received.append(parse_rtp(data))
        except RtpParseError:
            self.garbage += 1

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send_packet(self, to: tuple[str, int], payload: bytes, pt: int = 0, marker: bool = False) -> None:
        assert self.transport is not None
        self.transport.sendto(build_rtp(pt, marker, self.seq, self.ts, self.ssrc, payload), to)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 160) & 0xFFFFFFFF
        self.sent += 1

    def start_tone(self, to: tuple[str, int], pt: int = 0, packets: int | None = None, freq: float = 440.0) -> None:
        self._sender = asyncio.get_running_loop().create_task(self._tone(to, pt, packets, freq))

    async def _tone(self, to: tuple[str, int], pt: int, packets: int | None, freq: float) -> None:
        payloads = tone_payloads(freq)
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        while packets is None or i < packets:
            self.send_packet(to, payloads[i % len(payloads)], pt, marker=i == 0)
            i += 1
            # pace against the clock, not per sleep, so load does not slow the stream down
            await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))

    async def stop_tone(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            self._sender = None

    async def close(self) -> None:
        await self.stop_tone()
        if self.transport is not None:
            self.transport.close()


async def open_rtp_peer(host: str = "127.0.0.1") -> RtpPeer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(RtpPeer, local_addr=(host, 0), family=socket.AF_INET)
    return peer
