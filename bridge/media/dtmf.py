"""RFC 4733 telephone-event payloads: encode, decode, and per-stream event tracking."""

from __future__ import annotations

import struct
from dataclasses import dataclass

DIGITS = "0123456789*#ABCD"
_EVENT = struct.Struct("!BBH")


class DtmfError(ValueError):
    """A telephone-event payload could not be decoded."""


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        return DIGITS[self.event] if self.event < len(DIGITS) else None


def digit_to_event(digit: str) -> int:
    index = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise DtmfError(f"not a DTMF digit: {digit!r}")
    return index


def encode_event(event: int, *, end: bool, volume: int, duration: int) -> bytes:
    if not 0 <= event <= 255 or not 0 <= volume <= 63:
        raise DtmfError(f"event {event} / volume {volume} out of range")
    return _EVENT.pack(event, (0x80 if end else 0) | volume, min(duration, 0xFFFF))


def decode_event(payload: bytes) -> DtmfEvent:
    if len(payload) < 4:
        raise DtmfError(f"telephone-event payload of {len(payload)} bytes")
    event, flags, duration = _EVENT.unpack_from(payload)
    return DtmfEvent(event, bool(flags & 0x80), flags & 0x3F, duration)


class DtmfDetector:
    """Turns a stream of telephone-event packets into one report per key press.

    An event is identified by its RTP timestamp (RFC 4733 2.5.1.2): updates and the three
    redundant end packets share it, so a digit is reported once, on its first packet.
    """

    def __init__(self) -> None:
        self._current_ts: int | None = None
        self.active = False
        """True between an event's first packet and its end packet."""

    def feed(self, timestamp: int, event: DtmfEvent) -> bool:
        """Returns True when this packet starts a new key press."""
        new = timestamp != self._current_ts
        self._current_ts = timestamp
        if new:
            self.active = not event.end
            return True
        if event.end:
            self.active = False
        return False
