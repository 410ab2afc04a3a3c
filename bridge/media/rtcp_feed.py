"""RTCP receiver reports for the Matrix party's stream in passthrough (aiortc 1.16 internals, guarded).

In passthrough the RTP tap (webrtc_leg.py) consumes the Matrix client's audio before aiortc's receiver sees it,
so aiortc's receiver keeps no statistics: the client (Chrome) would then get no report for its outbound stream
and show no RTT or loss. This feeds the tapped packets' sequence numbers and timestamps into the receiver's own
``StreamStatistics``, which the report blocks of webrtc_rtcp.py read (or, without the fast path, aiortc's own
RTCP loop: the SSRC is registered with the transport's RTP router so the client's sender reports reach it).

Per packet: two attribute stores and aiortc's ``StreamStatistics.add`` (no allocation).
"""

from __future__ import annotations

from typing import Any

from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics


class ReceiverReportFeed:
    __slots__ = ("_clock_rate", "_receiver", "_router", "_streams", "sequence_number", "timestamp")

    def __init__(self, receiver: RTCRtpReceiver, clock_rate: int) -> None:
        inner: Any = receiver
        self._receiver = receiver
        self._streams: dict[int, StreamStatistics] = inner._RTCRtpReceiver__remote_streams
        self._router: Any = receiver.transport._rtp_router
        self._clock_rate = clock_rate
        # StreamStatistics.add reads these two attributes of the packet it is given: this object is that packet
        self.sequence_number = 0
        self.timestamp = 0

    @classmethod
    def for_receiver(cls, receiver: RTCRtpReceiver, clock_rate: int) -> ReceiverReportFeed | None:
        """None when this aiortc does not have the internals used here."""
        inner: Any = receiver
        if not isinstance(getattr(inner, "_RTCRtpReceiver__remote_streams", None), dict):
            return None
        if getattr(getattr(receiver.transport, "_rtp_router", None), "ssrc_table", None) is None:
            return None
        return cls(receiver, clock_rate)

    def feed(self, ssrc: int, sequence: int, timestamp: int) -> None:
        if not self._receiver._enabled:
            return  # held (not receiving): aiortc would not count it either
        stats = self._streams.get(ssrc)
        if stats is None:
            stats = self._streams[ssrc] = StreamStatistics(self._clock_rate)
            self._router.ssrc_table.setdefault(ssrc, self._receiver)  # its sender reports reach the receiver
        self.sequence_number = sequence
        self.timestamp = timestamp
        stats.add(self)  # type: ignore[arg-type]
