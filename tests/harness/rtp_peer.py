"""A plain RTP far end for end-to-end tests: sends a PCMU tone, counts what it receives.

It does not know the bridge's RTP address in advance (sipp does the signalling): like a symmetric-RTP
phone it waits for the bridge's first packet and answers to its source, or is told a target.

With ``decode_audio=True`` it also decodes the G.711 (PCMU/PCMA) audio it receives and keeps the last ~second,
so a test can check which tone the phone hears (``tone_ratio``), not only that packets arrive.
"""

from __future__ import annotations

import array
import asyncio
import itertools
import math
import random
import struct
from collections import deque
from dataclasses import dataclass, field

from tests.harness.tone import tone_ratio


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


def _ulaw_to_linear(byte: int) -> int:
    u = ~byte & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    return 0x84 - magnitude if u & 0x80 else magnitude - 0x84


def _alaw_to_linear(byte: int) -> int:
    a = byte ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    magnitude = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if a & 0x80 else -magnitude


G711_DECODE = {0: [_ulaw_to_linear(b) for b in range(256)], 8: [_alaw_to_linear(b) for b in range(256)]}


def rtp_payload(data: bytes) -> bytes:
    """The payload of an RTP packet (after CSRCs and a header extension; padding removed)."""
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10 and len(data) >= offset + 4:
        offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
    end = len(data) - (data[-1] if data[0] & 0x20 and data[-1] else 0)
    return data[offset:end]


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
    ssrc: int = 0  # of the stream it sends (set when sending starts)
    received_seqs: list[int] = field(default_factory=list)  # RTP sequence numbers as they arrived
    received_ssrcs: set[int] = field(default_factory=set)  # SSRCs of the RTP that arrived
    remote: tuple[str, int] | None = None
    transport: asyncio.DatagramTransport | None = None
    decode_audio: bool = False  # decode received PCMU/PCMA for tone_ratio() (off: costs CPU in load tests)
    audio_frames: int = 0  # G.711 packets decoded (with decode_audio)
    _recent: deque[array.array[int]] = field(default_factory=lambda: deque(maxlen=50))  # ~1 s of 20 ms packets
    _task: asyncio.Task[None] | None = None
    _first: asyncio.Event = field(default_factory=asyncio.Event)
    _dtmf_pt: int = 101
    _dtmf_script: deque[tuple[int, int, bool]] = field(default_factory=deque)  # (event, packet index, end)

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
        self.received_seqs.append(int.from_bytes(data[2:4], "big"))
        self.received_ssrcs.add(int.from_bytes(data[8:12], "big"))
        self.received_payload_types[pt] = self.received_payload_types.get(pt, 0) + 1
        # RFC 4733 events: PT 101 (what the embedded bridge offers) or any dynamic PT carrying one 4-byte event
        # (rtpengine keeps the Matrix client's own number)
        if (pt == 101 and len(data) >= 16) or (pt >= 96 and len(data) == 16):
            self.dtmf_events.append(data[12])
        elif self.decode_audio and pt in G711_DECODE:
            table = G711_DECODE[pt]
            self._recent.append(array.array("h", [table[b] for b in rtp_payload(data)]))
            self.audio_frames += 1
        if self.remote is None:
            self.remote = addr
            self._first.set()

    def seq_gaps(self) -> list[tuple[int, int]]:
        """(previous, next) for every received sequence number that does not follow the one before it."""
        seqs = self.received_seqs
        return [(a, b) for a, b in itertools.pairwise(seqs) if b != (a + 1) & 0xFFFF]

    def send_to(self, addr: tuple[str, int]) -> None:
        """Start sending to ``addr`` without waiting for the bridge's first packet (early media, NAT)."""
        self.remote = addr
        self._first.set()

    def tone_ratio(self, hz: float) -> float:
        """How much of the last ~second of decoded G.711 audio is a tone at ``hz`` (0..1; needs decode_audio)."""
        joined = array.array("h")
        for samples in self._recent:
            joined.extend(samples)
        return tone_ratio(joined, 8000, hz)

    def send_dtmf(self, digits: str, packets: int = 5, pt: int = 101) -> None:
        """Key presses as RFC 4733 events (payload type ``pt``) in place of audio, 20 ms per packet, three end
        packets each, a 100 ms gap between digits (needs start_sending)."""
        self._dtmf_pt = pt
        for digit in digits:
            event = "0123456789*#".index(digit)
            self._dtmf_script.extend((event, i, False) for i in range(packets))
            self._dtmf_script.extend((event, packets, True) for _ in range(3))
            self._dtmf_script.extend((-1, 0, False) for _ in range(5))  # gap: audio

    def start_sending(self, *, seconds: float = 30.0) -> None:
        self._task = asyncio.create_task(self._send_loop(seconds))

    async def _send_loop(self, seconds: float) -> None:
        await self._first.wait()
        frames = pcmu_tone(self.tone_hz, 50)
        ssrc = self.ssrc = random.getrandbits(32)
        seq = random.getrandbits(16)
        ts = random.getrandbits(32)
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        event_ts = ts
        while loop.time() - start < seconds:
            event, index, end = self._dtmf_script.popleft() if self._dtmf_script else (-1, 0, False)
            if event >= 0:
                if index == 0:
                    event_ts = ts
                header = struct.pack("!BBHII", 0x80, (0x80 if index == 0 else 0) | self._dtmf_pt, seq, event_ts, ssrc)
                body = struct.pack("!BBH", event, (0x80 if end else 0) | 10, 160 * (index + 1))
            else:
                header = struct.pack("!BBHII", 0x80, (0x80 if n == 0 else 0) | self.payload_type, seq, ts, ssrc)
                body = frames[n % len(frames)]
            if self.transport is not None and self.remote is not None:
                self.transport.sendto(header + body, self.remote)
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
