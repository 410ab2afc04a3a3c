"""A plain RTP far end for end-to-end tests: sends a PCMU tone, counts what it receives.

It does not know the bridge's RTP address in advance (sipp does the signalling): like a symmetric-RTP
phone it waits for the bridge's first packet and answers to its source, or is told a target.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
from dataclasses import dataclass, field


def _linear_to_ulaw(sample: int) -> int:
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    sample = min(clip, abs(sample)) + bias
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def pcmu_tone(hz: float, packets: int, samples_per_packet: int = 160, rate: int = 8000) -> list[bytes]:
    out = []
    for p in range(packets):
        frame = bytes(
            _linear_to_ulaw(int(8000 * math.sin(2 * math.pi * hz * (p * samples_per_packet + i) / rate)))
            for i in range(samples_per_packet)
        )
        out.append(frame)
    return out


@dataclass
class RtpPeer(asyncio.DatagramProtocol):
    host: str = "127.0.0.1"
    payload_type: int = 0
    tone_hz: float = 1000.0
    received: int = 0
    received_payload_types: dict[int, int] = field(default_factory=dict)
    dtmf_events: list[int] = field(default_factory=list)
    sent: int = 0
    remote: tuple[str, int] | None = None
    transport: asyncio.DatagramTransport | None = None
    _task: asyncio.Task[None] | None = None
    _first: asyncio.Event = field(default_factory=asyncio.Event)

    async def open(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, port))
        self.transport = transport
        return int(transport.get_extra_info("sockname")[1])

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        pt = data[1] & 0x7F
        self.received += 1
        self.received_payload_types[pt] = self.received_payload_types.get(pt, 0) + 1
        if pt == 101 and len(data) >= 16:
            self.dtmf_events.append(data[12])
        if self.remote is None:
            self.remote = addr
            self._first.set()

    def send_to(self, addr: tuple[str, int]) -> None:
        """Send there at once instead of waiting for the bridge's first packet (a far end behind NAT)."""
        self.remote = addr
        self._first.set()

    def start_sending(self, *, seconds: float = 30.0) -> None:
        self._task = asyncio.create_task(self._send_loop(seconds))

    async def _send_loop(self, seconds: float) -> None:
        await self._first.wait()
        frames = pcmu_tone(self.tone_hz, 50)
        ssrc = random.getrandbits(32)
        seq = random.getrandbits(16)
        ts = random.getrandbits(32)
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while loop.time() - start < seconds:
            header = struct.pack("!BBHII", 0x80, (0x80 if n == 0 else 0) | self.payload_type, seq, ts, ssrc)
            if self.transport is not None and self.remote is not None:
                self.transport.sendto(header + frames[n % len(frames)], self.remote)
                self.sent += 1
            n += 1
            seq = (seq + 1) & 0xFFFF
            ts = (ts + 160) & 0xFFFFFFFF
            await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.transport is not None:
            self.transport.close()
