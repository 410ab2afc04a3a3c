"""RFC 3550 RTP header parsing/building and sequence/timestamp arithmetic.

Kept allocation-light: parsing returns a slotted object holding a ``memoryview`` free copy
of the payload bytes only (one slice), building is one ``struct.pack`` plus a concat.
"""

from __future__ import annotations

import struct

RTP_VERSION = 2
_FIXED = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, seq, ts, ssrc
HEADER_SIZE = _FIXED.size


class RtpParseError(ValueError):
    """The datagram is not a valid RTP packet."""


class RtpPacket:
    __slots__ = ("marker", "payload", "payload_type", "sequence", "ssrc", "timestamp")

    def __init__(
        self, payload_type: int, marker: bool, sequence: int, timestamp: int, ssrc: int, payload: bytes
    ) -> None:
        self.payload_type = payload_type
        self.marker = marker
        self.sequence = sequence
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.payload = payload

    def __repr__(self) -> str:
        return (
            f"RtpPacket(pt={self.payload_type}, m={int(self.marker)}, seq={self.sequence}, "
            f"ts={self.timestamp}, ssrc={self.ssrc:#010x}, {len(self.payload)} bytes)"
        )


def is_rtcp(data: bytes) -> bool:
    """RTCP multiplexed on the RTP port (RFC 5761): second byte 192..223 (PT 64..95 with marker)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one RTP datagram; raises only :class:`RtpParseError`."""
    length = len(data)
    if length < HEADER_SIZE:
        raise RtpParseError(f"short packet ({length} bytes)")
    b0, b1, seq, ts, ssrc = _FIXED.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        raise RtpParseError(f"RTP version {b0 >> 6}")
    offset = HEADER_SIZE + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in 32-bit words
        if offset + 4 > length:
            raise RtpParseError("truncated header extension")
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    end = length
    if b0 & 0x20:  # padding: last octet counts the padding octets, itself included
        pad = data[-1]
        if pad == 0:
            raise RtpParseError("zero padding length")
        end -= pad
    if offset > end:
        raise RtpParseError("header longer than packet")
    return RtpPacket(b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, bytes(data[offset:end]))


def build_rtp(payload_type: int, marker: bool, sequence: int, timestamp: int, ssrc: int, payload: bytes) -> bytes:
    """A minimal RTP packet: no CSRC, no extension, no padding."""
    return _FIXED.pack(0x80, (0x80 if marker else 0) | payload_type, sequence, timestamp, ssrc) + payload


def seq_add(seq: int, delta: int) -> int:
    return (seq + delta) & 0xFFFF


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in 16-bit sequence space (-32768..32767)."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


def ts_add(ts: int, delta: int) -> int:
    return (ts + delta) & 0xFFFFFFFF


def ts_diff(a: int, b: int) -> int:
    """Signed distance a - b in 32-bit timestamp space."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d
