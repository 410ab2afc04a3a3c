"""A phone's Opus RTP end for tests: sends a tone encoded by a real Opus encoder (libopus via PyAV, 20 ms
packets at 48 kHz) and decodes what it receives (tone detection), keeping every payload both ways so a test can
tell passthrough (the same bytes) from transcoding."""

from __future__ import annotations

import array
import asyncio
import random
import struct
from collections import deque

import av

from tests.harness.tone import frame_mono_samples, sine_samples, tone_ratio

RATE = 48000
FRAME = 960  # 20 ms


def rtp_payload(data: bytes) -> bytes:
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    return data[offset:]


class OpusPeer(asyncio.DatagramProtocol):
    def __init__(self, tone_hz: float = 1000.0, payload_type: int = 111, event_pt: int = 110) -> None:
        self.tone_hz = tone_hz
        self.payload_type = payload_type
        self.event_pt = event_pt  # telephone-event/48000
        self.dtmf_received: list[int] = []  # RFC 4733 events (one per key press, at its end packet)
        self._dtmf_ends: set[int] = set()  # event timestamps already counted
        self._dtmf_queue: deque[int] = deque()  # events to send instead of audio
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self.sent_payloads: list[bytes] = []
        self.received_payloads: list[bytes] = []
        self.received_pts: dict[int, int] = {}
        self._decoder = av.CodecContext.create("libopus", "r")
        self._decoder.sample_rate = RATE
        self._decoder.layout = "stereo"
        self._recent: deque[array.array[int]] = deque(maxlen=50)  # ~1 s
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> int:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        return self.port

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[0] >> 6 != 2 or 192 <= data[1] <= 223:
            return  # not RTP (RTCP muxed)
        pt = data[1] & 0x7F
        self.received_pts[pt] = self.received_pts.get(pt, 0) + 1
        if self.remote is None:
            self.remote = addr
            self._first.set()
        if pt == self.event_pt and len(data) >= 16:
            (timestamp,) = struct.unpack_from("!I", data, 4)
            event = rtp_payload(data)
            if event[1] & 0x80 and timestamp not in self._dtmf_ends:
                self._dtmf_ends.add(timestamp)
                self.dtmf_received.append(event[0])
            return
        if pt != self.payload_type:
            return
        payload = rtp_payload(data)
        self.received_payloads.append(payload)
        packet = av.Packet(payload)
        for frame in self._decoder.decode(packet):
            self._recent.append(frame_mono_samples(frame))

    def tone_ratio(self, hz: float) -> float:
        joined: array.array[int] = array.array("h")
        for samples in self._recent:
            joined.extend(samples)
        return tone_ratio(joined, RATE, hz) if joined else 0.0

    def send_dtmf(self, event: int) -> None:
        """Play one key press (100 ms, RFC 4733 on the 48 kHz clock) in place of audio."""
        self._dtmf_queue.append(event)

    def start_sending(self, seconds: float = 30.0) -> None:
        self._task = asyncio.get_running_loop().create_task(self._send_loop(seconds))

    def _encoded_tone(self, packets: int) -> list[bytes]:
        encoder = av.CodecContext.create("libopus", "w")
        encoder.sample_rate = RATE
        encoder.layout = "mono"
        encoder.format = "s16"
        encoder.bit_rate = 32000
        encoder.options = {"application": "voip"}
        samples = sine_samples(self.tone_hz, RATE, FRAME * packets)
        out: list[bytes] = []
        for index in range(packets + 5):
            frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
            chunk = samples[index * FRAME:(index + 1) * FRAME] if index < packets else array.array("h", [0] * FRAME)
            if len(chunk) < FRAME:
                chunk = array.array("h", list(chunk) + [0] * (FRAME - len(chunk)))
            frame.planes[0].update(chunk.tobytes())
            frame.sample_rate = RATE
            frame.pts = index * FRAME
            out += [bytes(p) for p in encoder.encode(frame)]
        return out[:packets]

    async def _send_loop(self, seconds: float) -> None:
        await self._first.wait()
        # a whole number of tone periods per packet cycle: 1000 Hz x 1 s = 50 distinct packets, looped
        payloads = self._encoded_tone(50)
        ssrc, seq, ts = random.getrandbits(32), random.getrandbits(16), random.getrandbits(32)
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        press: list[tuple[bool, bytes]] = []  # (first, payload) of the key press being played
        event_ts = 0
        while loop.time() - start < seconds:
            if not press and self._dtmf_queue:
                event = self._dtmf_queue.popleft()
                event_ts = ts
                press = [(i == 0, struct.pack("!BBH", event, 10, (i + 1) * FRAME)) for i in range(5)]
                press += [(False, struct.pack("!BBH", event, 0x80 | 10, 5 * FRAME))] * 3
            if press:
                first, event_payload = press.pop(0)
                header = struct.pack("!BBHII", 0x80, (0x80 if first else 0) | self.event_pt, seq, event_ts, ssrc)
                if self.transport is not None and self.remote is not None:
                    self.transport.sendto(header + event_payload, self.remote)
            else:
                payload = payloads[n % len(payloads)]
                header = struct.pack("!BBHII", 0x80, (0x80 if n == 0 else 0) | self.payload_type, seq, ts, ssrc)
                if self.transport is not None and self.remote is not None:
                    self.transport.sendto(header + payload, self.remote)
                    self.sent_payloads.append(payload)
            n += 1
            seq = (seq + 1) & 0xFFFF
            ts = (ts + FRAME) & 0xFFFFFFFF
            await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.transport is not None:
            self.transport.close()
