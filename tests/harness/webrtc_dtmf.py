"""RFC 4733 DTMF inside an aiortc WebRTC stream, the way Chrome (Element) sends and receives it.

aiortc 1.16 neither negotiates nor sends ``telephone-event``. For the test client we therefore
- add Chrome's ``telephone-event/48000`` (PT 110) and ``telephone-event/8000`` (PT 126) to the SDP we send;
- shadow ``RTCDtlsTransport._send_rtp`` on one connection's transport (an instance attribute, the class is
  untouched): while a digit plays, outgoing audio packets are rewritten in place into telephone-event packets
  (same SSRC and sequence numbers, event timestamp held, duration growing, three end packets), as a browser
  replaces audio with events;
- shadow ``RTCDtlsTransport._handle_rtp_data`` to take telephone-event packets out before aiortc's router
  (which would drop them) and record the digits.
Both are aiortc 1.16 internals (checked by ``SUPPORTED``), used only by the test harness.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiortc
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import is_rtcp

log = logging.getLogger(__name__)

SUPPORTED = aiortc.__version__.startswith("1.16.") and hasattr(RTCDtlsTransport, "_send_rtp")
CHROME_TELEPHONE_EVENTS = ((110, 48000), (126, 8000))
DIGITS = "0123456789*#ABCD"
FRAME_MS = 20  # aiortc sends 20 ms audio packets


def _audio_section(lines: list[str]) -> tuple[int, int] | None:
    start = None
    for i, line in enumerate(lines):
        if line.startswith("m="):
            if start is not None:
                return start, i
            if line.startswith("m=audio "):
                start = i
    return (start, len(lines)) if start is not None else None


def rtpmaps(sdp: str) -> dict[int, tuple[str, int]]:
    """payload type -> (encoding name lower-case, clock rate) of the first audio section."""
    lines = sdp.splitlines()
    section = _audio_section(lines)
    out: dict[int, tuple[str, int]] = {}
    if section is None:
        return out
    for line in lines[section[0] : section[1]]:
        if line.startswith("a=rtpmap:"):
            try:
                pt_text, encoding = line[len("a=rtpmap:") :].split(" ", 1)
                name, rate = encoding.split("/")[:2]
                out[int(pt_text)] = (name.lower(), int(rate))
            except ValueError:
                continue
    return out


def telephone_event_pts(sdp: str) -> dict[int, int]:
    """telephone-event payload type -> clock rate, from the first audio section."""
    return {pt: rate for pt, (name, rate) in rtpmaps(sdp).items() if name == "telephone-event"}


def add_telephone_events(sdp: str, events: tuple[tuple[int, int], ...] = CHROME_TELEPHONE_EVENTS) -> str:
    """Append telephone-event payload types (pt, clock) to the first m=audio line, with rtpmap + fmtp."""
    lines = sdp.splitlines()
    section = _audio_section(lines)
    if section is None or telephone_event_pts(sdp):
        return sdp
    start, end = section
    taken = set(rtpmaps(sdp))
    events = tuple((pt, rate) for pt, rate in events if pt not in taken)
    lines[start] += "".join(f" {pt}" for pt, _ in events)
    last_rtpmap = max((i for i in range(start, end) if lines[i].startswith(("a=rtpmap:", "a=fmtp:"))), default=end - 1)
    extra = []
    for pt, rate in events:
        extra += [f"a=rtpmap:{pt} telephone-event/{rate}", f"a=fmtp:{pt} 0-15"]
    lines[last_rtpmap + 1 : last_rtpmap + 1] = extra
    return "\r\n".join(lines) + "\r\n"


def _header_length(data: bytes) -> int:
    """RTP header length including CSRCs and the header extension (RFC 3550 5.1, 5.3.1)."""
    length = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        (words,) = struct.unpack_from("!H", data, length + 2)
        length += 4 + 4 * words
    return length


@dataclass
class _Step:
    event: int
    index: int  # packet number within the event
    end: bool
    packets: int  # non-end packets of the event (gives the final duration)


class DtmfTap:
    """Send and receive RFC 4733 events on one aiortc connection's DTLS transport."""

    def __init__(self, dtls: RTCDtlsTransport, call_id: str = "") -> None:
        self.log = logging.LoggerAdapter(log, {"call_id": call_id})
        self.send_events: dict[int, int] = {}  # pt -> clock the far end accepts (from its SDP)
        self.recv_pts: set[int] = set()  # telephone-event PTs the far end may send
        self.received: list[str] = []
        self.packets_received = 0
        self.packets_sent = 0
        self._ended: deque[int] = deque(maxlen=32)  # timestamps of events already reported
        self._script: deque[_Step | None] = deque()
        self._drained = asyncio.Event()
        self._drained.set()
        self._event_ts = 0
        self._audio_pt: int | None = None
        self._send_clock: Callable[[int], int | None] = lambda pt: None
        self._original_send: Callable[[bytes], Awaitable[None]] = dtls._send_rtp
        self._original_handle: Callable[[bytes, int], Awaitable[None]] = dtls._handle_rtp_data
        dtls_any: Any = dtls
        dtls_any._send_rtp = self._send_rtp
        dtls_any._handle_rtp_data = self._handle_rtp_data

    def set_remote_sdp(self, sdp: str) -> None:
        self.send_events = telephone_event_pts(sdp)
        self.recv_pts |= set(self.send_events)
        maps = rtpmaps(sdp)
        self._send_clock = lambda pt: maps[pt][1] if pt in maps else None

    def set_local_sdp(self, sdp: str) -> None:
        self.recv_pts |= set(telephone_event_pts(sdp))

    async def send(self, digits: str, duration_ms: int = 100, gap_ms: int = 70, timeout: float = 10.0) -> None:
        """Play ``digits`` as RFC 4733 events in the outgoing stream; returns when the last one was sent."""
        if not self.send_events:
            raise RuntimeError("the far end did not negotiate telephone-event")
        packets = max(1, duration_ms // FRAME_MS)
        gap = max(1, -(-gap_ms // FRAME_MS))
        for digit in digits.upper():
            event = DIGITS.index(digit)  # ValueError for a non-DTMF character
            self._script.extend(_Step(event, i, False, packets) for i in range(packets))
            self._script.extend(_Step(event, packets - 1, True, packets) for _ in range(3))
            self._script.extend([None] * gap)
        self._drained.clear()
        async with asyncio.timeout(timeout):
            await self._drained.wait()

    async def _send_rtp(self, data: bytes) -> None:
        if self._script and not is_rtcp(data) and len(data) >= 12:
            data = self._rewrite(data)
            if not self._script:
                self._drained.set()
        await self._original_send(data)

    def _rewrite(self, data: bytes) -> bytes:
        step = self._script.popleft()
        if step is None:
            return data
        audio_pt = data[1] & 0x7F
        clock = self._send_clock(audio_pt) or 8000
        te_pt = next((pt for pt, rate in self.send_events.items() if rate == clock), None)
        if te_pt is None:
            self.log.warning("no telephone-event at %d Hz negotiated; digit dropped", clock)
            return data
        (timestamp,) = struct.unpack_from("!I", data, 4)
        first = step.index == 0 and not step.end
        if first:
            self._event_ts = timestamp
        duration = min(0xFFFF, (step.index + 1) * clock * FRAME_MS // 1000)
        header = bytearray(data[: _header_length(data)])
        header[1] = (0x80 if first else 0) | te_pt
        struct.pack_into("!I", header, 4, self._event_ts)
        payload = struct.pack("!BBH", step.event, (0x80 if step.end else 0) | 10, duration)  # volume -10 dBm0
        self.packets_sent += 1
        return bytes(header) + payload

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        if len(data) >= 12 and not is_rtcp(data) and (data[1] & 0x7F) in self.recv_pts:
            self._record(data)
            return  # aiortc would drop it anyway; never let it near a decoder
        await self._original_handle(data, arrival_time_ms)

    def _record(self, data: bytes) -> None:
        self.packets_received += 1
        try:
            offset = _header_length(data)
            event, flags, _duration = struct.unpack_from("!BBH", data, offset)
            (timestamp,) = struct.unpack_from("!I", data, 4)
        except struct.error:
            self.log.warning("short telephone-event packet (%d bytes) ignored", len(data))
            return
        if flags & 0x80 and timestamp not in self._ended and event < len(DIGITS):
            self._ended.append(timestamp)
            self.received.append(DIGITS[event])
