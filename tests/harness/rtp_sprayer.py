"""An attacker for end-to-end tests: sprays valid PCMU RTP (and RTCP) at every port of a range, counts replies.

Each round sends one packet to every port, paced at 20 ms, so whichever port a call gets sees a steady,
self-consistent stream (one SSRC per port, consecutive sequence numbers): the best case for hijacking a
source-latching RTP socket.
"""

from __future__ import annotations

import asyncio
import random
import struct
from typing import cast

from tests.harness.rtp_peer import pcmu_tone

RTCP_RR = bytes([0x80, 201, 0, 1]) + (0x5EED).to_bytes(4, "big")  # receiver report without blocks


class RtpSprayer(asyncio.DatagramProtocol):
    def __init__(self, host: str, ports: range, *, tone_hz: float = 2500.0) -> None:
        self.host = host
        self.ports = ports
        self.frames = pcmu_tone(tone_hz, 50)
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0
        self.sent = 0
        self._task: asyncio.Task[None] | None = None
        self._streams = {port: [random.getrandbits(32), random.getrandbits(16), random.getrandbits(32)]
                         for port in ports}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from ports no call holds

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, 0))
        self._task = loop.create_task(self._spray())

    async def _spray(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while True:
            for port, stream in self._streams.items():
                ssrc, seq, ts = stream
                header = struct.pack("!BBHII", 0x80, 0, seq, ts, ssrc)
                assert self.transport is not None
                self.transport.sendto(header + self.frames[n % len(self.frames)], ("127.0.0.1", port))
                if n % 25 == 0:
                    self.transport.sendto(RTCP_RR, ("127.0.0.1", port))
                self.sent += 1
                stream[1], stream[2] = (seq + 1) & 0xFFFF, (ts + 160) & 0xFFFFFFFF
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.transport is not None:
            self.transport.close()
