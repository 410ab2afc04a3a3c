"""A small arrival-driven jitter buffer for the plain RTP leg.

Packets are released strictly in sequence order. When one is missing, later packets are
held until ``depth`` of them are waiting (about ``jitter_ms`` of audio), then the gap is
skipped. No timer is needed, so the buffer costs nothing while packets arrive in order.
"""

from __future__ import annotations

from .rtp_packet import RtpPacket, seq_add, seq_diff


class JitterBuffer:
    def __init__(self, depth: int, capacity: int) -> None:
        self.depth = max(1, depth)
        self.capacity = max(self.depth + 1, capacity)
        self._held: dict[int, RtpPacket] = {}
        self._next: int | None = None
        self.late = 0
        """Packets dropped because their turn had passed (late or duplicate)."""
        self.lost = 0
        """Sequence numbers skipped over."""

    def __len__(self) -> int:
        return len(self._held)

    def reset(self) -> None:
        self._held.clear()
        self._next = None

    def take_in_order(self, seq: int) -> bool:
        """The packet ``push`` would release at once, alone (next in sequence, nothing held): the caller hands it
        on itself (no RtpPacket needed). False: use ``push``."""
        if self._held or (self._next is not None and self._next != seq):
            return False
        self._next = (seq + 1) & 0xFFFF
        return True

    def push(self, packet: RtpPacket) -> list[RtpPacket]:
        """Add a packet; returns the packets now ready, in order (often just this one)."""
        seq = packet.sequence
        if self._next is None:
            self._next = seq
        diff = seq_diff(seq, self._next)
        if diff < 0:
            if diff < -1000:  # the source restarted its sequence: follow it
                self.reset()
                self._next = seq
            else:
                self.late += 1
                return []
        elif diff > 1000:
            self.reset()
            self._next = seq
        if diff == 0 and not self._held:  # fast path: in order, nothing waiting
            self._next = seq_add(seq, 1)
            return [packet]
        if seq in self._held:
            self.late += 1
            return []
        self._held[seq] = packet
        return self._drain()

    def _drain(self) -> list[RtpPacket]:
        out: list[RtpPacket] = []
        assert self._next is not None
        while self._held:
            packet = self._held.pop(self._next, None)
            if packet is not None:
                out.append(packet)
                self._next = seq_add(self._next, 1)
                continue
            if len(self._held) < self.depth:
                break
            # give up on the missing packet: jump to the oldest one we hold
            oldest = min(self._held, key=lambda s: seq_diff(s, self._next or 0))
            self.lost += seq_diff(oldest, self._next)
            self._next = oldest
        return out
