"""Prometheus metrics for the bridge, on one :class:`prometheus_client.CollectorRegistry` built by the composition root.

Two kinds of numbers:

* **Events**, counted when they happen by whoever sees them: calls started/answered/ended (through the call-log
  port, :class:`MeteredCallLog`), post-dial delay and answer latency (the call driver's :class:`CallObserver`
  events), refusals by a rate or call limit, SIP messages in and out (the UA's observation hook), requests to the
  homeserver (:meth:`Metrics.homeserver_request`).
* **State read at scrape time** (:class:`_ScrapeCollector`): active calls, RTP packets/bytes/loss/jitter and DTMF,
  the trunk registration state, appservice transactions in flight and room queue depth. The media plane keeps
  plain integer counters on its legs; nothing is done per RTP packet for Prometheus. Counters of calls that ended
  are folded into running totals when their media closes (:meth:`Metrics.media_closed`), so the exported
  counters never go down.

Labels are bounded: direction (``inbound``/``outbound``), a known end reason (else ``other``), SIP method (a known
method, else ``other``) and status code (100-699, else ``other``), leg and stream direction. No call IDs, numbers,
user IDs or addresses ever become labels.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .calls.ports import CallLogPort

PREFIX = "matrix_sip_bridge"

DIRECTIONS = ("inbound", "outbound")

# call-log end reasons (bridge/call/outbound.py, inbound.py, recovery.py, calls/manager.py); sip_<status> and
# matrix_<hangup reason> are checked by pattern
END_REASONS = frozenset({
    "sip_timeout", "sip_transport_error", "sip_bye", "sip_cancel", "sip_dialog_lost", "caller_left", "callee_left",
    "answered_elsewhere", "invite_timeout", "bridge_shutdown", "bridge_crash", "not_started", "matrix_reject",
    "ice_failed", "ice_timeout", "user_media_failed", "unknown_error",
})
MATRIX_HANGUP_REASONS = frozenset({
    "user_hangup", "user_busy", "invite_timeout", "ice_failed", "ice_timeout", "user_media_failed", "unknown_error",
})
_SIP_STATUS_REASON = re.compile(r"^sip_[1-6][0-9][0-9]$")

SIP_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK", "SUBSCRIBE", "NOTIFY",
    "REFER", "MESSAGE", "PUBLISH",
})

REFUSAL_KINDS = frozenset({"sip_source_rate", "user_attempts", "user_concurrency", "total_concurrency"})

REGISTRATION_STATES = ("unregistered", "registering", "registered", "failed", "unregistering")

# seconds; post-dial delay is mostly the trunk's, answer latency mostly ours (WebRTC answer, one Synapse send)
POST_DIAL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0)
ANSWER_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

MAX_TRACKED_CALLS = 10000  # calls between start and end we hold timestamps for (a leak guard, never reached)


def end_reason_label(reason: str) -> str:
    """A call-log end reason as a bounded label value."""
    if reason in END_REASONS or _SIP_STATUS_REASON.match(reason):
        return reason
    if reason.startswith("matrix_") and reason[7:] in MATRIX_HANGUP_REASONS:
        return reason
    return "other"


def sip_method_label(method: str) -> str:
    method = method.upper()
    return method if method in SIP_METHODS else "other"


def sip_status_label(status: int | str) -> str:
    text = str(status)
    return text if len(text) == 3 and text.isdigit() and "100" <= text <= "699" else "other"


class MediaCounters(Protocol):
    """What one call's media plane reports (bridge.media.call_media.MediaStats, structurally)."""

    rtp_packets_in: int
    rtp_packets_out: int
    rtp_bytes_in: int
    rtp_bytes_out: int
    rtp_lost: int
    rtp_jitter_s: float
    webrtc_frames_in: int
    webrtc_frames_out: int
    dtmf: list[tuple[str, str]]


@dataclass
class _MediaTotals:
    sip_packets_in: int = 0
    sip_packets_out: int = 0
    sip_bytes_in: int = 0
    sip_bytes_out: int = 0
    sip_lost: int = 0
    matrix_packets_in: int = 0
    matrix_packets_out: int = 0
    dtmf_from_matrix: int = 0
    dtmf_from_sip: int = 0

    def add(self, stats: MediaCounters) -> None:
        self.sip_packets_in += stats.rtp_packets_in
        self.sip_packets_out += stats.rtp_packets_out
        self.sip_bytes_in += stats.rtp_bytes_in
        self.sip_bytes_out += stats.rtp_bytes_out
        self.sip_lost += stats.rtp_lost
        self.matrix_packets_in += stats.webrtc_frames_in
        self.matrix_packets_out += stats.webrtc_frames_out
        for _digit, side in stats.dtmf:
            if side == "matrix":
                self.dtmf_from_matrix += 1
            else:
                self.dtmf_from_sip += 1

    def copy(self) -> _MediaTotals:
        return _MediaTotals(**vars(self))


@dataclass
class _LiveCall:
    direction: str
    started: float
    progress_seen: bool = False
    answer_mark: float | None = None  # outbound: SIP 2xx received; inbound: m.call.answer received


@dataclass
class Sources:
    """State read at scrape time; app.py fills these in (each may stay None)."""

    live_media: Callable[[], Iterable[MediaCounters]] | None = None
    registration_state: Callable[[], str | None] | None = None
    transactions_in_flight: Callable[[], int] | None = None
    room_queue_depth: Callable[[], int] | None = None
    room_queues_active: Callable[[], int] | None = None


class Metrics:
    """Every metric of one bridge, on ``registry`` (a fresh CollectorRegistry unless given).

    Also the call driver's :class:`bridge.calls.ports.CallObserver`, and the sink for the UA's message hook
    (:meth:`sip_message`) and for homeserver requests (:meth:`homeserver_request`).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._clock = clock
        r = self.registry
        p = PREFIX
        self.calls_started = Counter(f"{p}_calls_started", "Calls started (one per Matrix call leg; an inbound "
                                     "call ringing several users counts once per user)", ["direction"], registry=r)
        self.calls_answered = Counter(f"{p}_calls_answered", "Calls answered on both sides", ["direction"],
                                      registry=r)
        self.calls_ended = Counter(f"{p}_calls_ended", "Calls ended, by call-log end reason", ["direction", "reason"],
                                   registry=r)
        self.post_dial_delay = Histogram(
            f"{p}_post_dial_delay_seconds", "Outbound: Matrix invite accepted -> first SIP 18x response",
            buckets=POST_DIAL_BUCKETS, registry=r)
        self.answer_latency = Histogram(
            f"{p}_answer_latency_seconds", "Outbound: SIP 200 received -> m.call.answer sent; inbound: m.call.answer "
            "received -> SIP 200 sent", ["direction"], buckets=ANSWER_LATENCY_BUCKETS, registry=r)
        self.refusals = Counter(f"{p}_call_refusals", "Calls refused by a rate or call limit", ["limit"], registry=r)
        self.sip_requests = Counter(f"{p}_sip_requests", "SIP requests sent (out) and received (in), "
                                    "retransmissions included", ["direction", "method"], registry=r)
        self.sip_responses = Counter(f"{p}_sip_responses", "SIP responses sent (out) and received (in), "
                                     "retransmissions included", ["direction", "status"], registry=r)
        self.sip_malformed = Counter(f"{p}_sip_malformed_messages", "SIP messages received that could not be "
                                     "parsed", registry=r)
        self.homeserver_requests = Counter(f"{p}_homeserver_requests", "Requests the bridge sent to the homeserver "
                                           "to deliver Matrix events", ["outcome"], registry=r)
        self.homeserver_retries = Counter(f"{p}_homeserver_request_retries", "Homeserver requests that were "
                                          "retries of an earlier failed one", registry=r)
        for direction in DIRECTIONS:  # export zeros from the start: rate() and absent() behave
            self.calls_started.labels(direction)
            self.calls_answered.labels(direction)
            self.answer_latency.labels(direction)
        for kind in REFUSAL_KINDS:
            self.refusals.labels(kind)
        for outcome in ("ok", "error"):
            self.homeserver_requests.labels(outcome)
        self.sources = Sources()
        self._live: OrderedDict[str, _LiveCall] = OrderedDict()
        self._ended_media = _MediaTotals()
        self._collector = _ScrapeCollector(self)
        r.register(self._collector)

    # ------------------------------------------------------------------ call lifecycle (from the call-log port)
    def call_started(self, call_id: str, direction: str) -> None:
        direction = direction if direction in DIRECTIONS else "outbound"
        self._live[call_id] = _LiveCall(direction, self._clock())
        while len(self._live) > MAX_TRACKED_CALLS:
            self._live.popitem(last=False)
        self.calls_started.labels(direction).inc()

    def call_answered(self, call_id: str) -> None:
        call = self._live.get(call_id)
        if call is None:
            return
        self.calls_answered.labels(call.direction).inc()
        if call.answer_mark is not None:
            self.answer_latency.labels(call.direction).observe(max(0.0, self._clock() - call.answer_mark))
            call.answer_mark = None

    def call_ended(self, call_id: str, reason: str) -> None:
        call = self._live.pop(call_id, None)
        if call is None:
            return  # never started (a refused or replayed invite): not counted either way
        self.calls_ended.labels(call.direction, end_reason_label(reason)).inc()

    def active_calls(self) -> dict[str, int]:
        out = dict.fromkeys(DIRECTIONS, 0)
        for call in self._live.values():
            out[call.direction] += 1
        return out

    # ------------------------------------------------------------------ CallObserver (bridge/calls/ports.py)
    def sip_progress(self, call_id: str) -> None:
        call = self._live.get(call_id)
        if call is not None and not call.progress_seen:
            call.progress_seen = True
            self.post_dial_delay.observe(max(0.0, self._clock() - call.started))

    def sip_answered(self, call_id: str) -> None:
        self._mark_answer(call_id)

    def matrix_answered(self, call_id: str) -> None:
        self._mark_answer(call_id)

    def _mark_answer(self, call_id: str) -> None:
        call = self._live.get(call_id)
        if call is not None and call.answer_mark is None:
            call.answer_mark = self._clock()

    def call_refused(self, limit: str) -> None:
        self.refusals.labels(limit if limit in REFUSAL_KINDS else "other").inc()

    def media_closed(self, stats: MediaCounters) -> None:
        """A call's media is gone: its final counters join the totals of ended calls."""
        self._ended_media.add(stats)

    # ------------------------------------------------------------------ hooks
    def sip_message(self, direction: str, kind: str | int) -> None:
        """The UA saw a SIP message: ``kind`` is the request method (str) or the response status (int)."""
        if isinstance(kind, int):
            self.sip_responses.labels(direction, sip_status_label(kind)).inc()
        elif kind == "malformed":
            self.sip_malformed.inc()
        else:
            self.sip_requests.labels(direction, sip_method_label(kind)).inc()

    def homeserver_request(self, ok: bool, retry: bool = False) -> None:
        """One request to the homeserver finished (``retry``: it repeated a failed one). The outbox calls this
        for every attempt."""
        self.homeserver_requests.labels("ok" if ok else "error").inc()
        if retry:
            self.homeserver_retries.inc()

    # ------------------------------------------------------------------ scrape-time state
    def media_totals(self) -> _MediaTotals:
        """Ended calls' totals plus every live call's current counters; also the largest live RTP jitter."""
        totals = self._ended_media.copy()
        live = self.sources.live_media
        if live is not None:
            for stats in live():
                totals.add(stats)
        return totals

    def max_live_jitter(self) -> float:
        live = self.sources.live_media
        return max((s.rtp_jitter_s for s in live()), default=0.0) if live is not None else 0.0

    def wrap_call_log(self, inner: CallLogPort) -> MeteredCallLog:
        return MeteredCallLog(inner, self)


class MeteredCallLog:
    """A CallLogPort that counts calls started/answered/ended on the way to the real call log."""

    def __init__(self, inner: CallLogPort, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def call_started(self, *, call_id: str, party_id: str, sip_call_id: str, room_id: str, direction: str,
                           number: str | None, mxid: str) -> bool:
        claimed = await self.inner.call_started(call_id=call_id, party_id=party_id, sip_call_id=sip_call_id,
                                                room_id=room_id, direction=direction, number=number, mxid=mxid)
        if claimed:
            self.metrics.call_started(call_id, direction)
        return claimed

    async def call_answered(self, call_id: str) -> None:
        self.metrics.call_answered(call_id)
        await self.inner.call_answered(call_id)

    async def call_ended(self, call_id: str, reason: str) -> None:
        self.metrics.call_ended(call_id, reason)
        await self.inner.call_ended(call_id, reason)


class _ScrapeCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families(live=False))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(live=True))

    def _families(self, *, live: bool) -> Iterator[Metric]:
        p = PREFIX
        m = self.m
        src = m.sources
        active = GaugeMetricFamily(f"{p}_active_calls", "Calls started and not yet ended", labels=["direction"])
        for direction, count in (m.active_calls() if live else dict.fromkeys(DIRECTIONS, 0)).items():
            active.add_metric([direction], count)
        yield active

        totals = m.media_totals() if live else _MediaTotals()
        packets = CounterMetricFamily(
            f"{p}_rtp_packets", "Audio packets per leg (sip: plain RTP; matrix: WebRTC) and direction (in: received "
            "by the bridge, out: sent), live and ended calls", labels=["leg", "direction"])
        packets.add_metric(["sip", "in"], totals.sip_packets_in)
        packets.add_metric(["sip", "out"], totals.sip_packets_out)
        packets.add_metric(["matrix", "in"], totals.matrix_packets_in)
        packets.add_metric(["matrix", "out"], totals.matrix_packets_out)
        yield packets
        octets = CounterMetricFamily(f"{p}_rtp_bytes", "RTP bytes (headers included) on the plain RTP leg",
                                     labels=["leg", "direction"])
        octets.add_metric(["sip", "in"], totals.sip_bytes_in)
        octets.add_metric(["sip", "out"], totals.sip_bytes_out)
        yield octets
        lost = CounterMetricFamily(f"{p}_rtp_lost_packets", "Incoming RTP packets never received (sequence gaps the "
                                   "jitter buffer skipped)", labels=["leg"])
        lost.add_metric(["sip"], totals.sip_lost)
        yield lost
        jitter = GaugeMetricFamily(f"{p}_rtp_jitter_max_seconds", "Largest RFC 3550 interarrival jitter of incoming "
                                   "RTP over live calls", labels=["leg"])
        jitter.add_metric(["sip"], m.max_live_jitter() if live else 0.0)
        yield jitter
        dtmf = CounterMetricFamily(f"{p}_dtmf_events", "DTMF key presses relayed, by the side they came from",
                                   labels=["source"])
        dtmf.add_metric(["matrix"], totals.dtmf_from_matrix)
        dtmf.add_metric(["sip"], totals.dtmf_from_sip)
        yield dtmf

        reg = GaugeMetricFamily(f"{p}_sip_registration_state", "Trunk registration state (1 for the current one; "
                                "absent when sip.trunk.register is off)", labels=["state"])
        state = src.registration_state() if (live and src.registration_state is not None) else None
        if state is not None:
            for name in REGISTRATION_STATES:
                reg.add_metric([name], 1.0 if name == state else 0.0)
        yield reg
        for name, doc, source in (
            ("appservice_transactions_in_flight", "Appservice transactions being handled now",
             src.transactions_in_flight),
            ("room_queue_depth", "Matrix events waiting in per-room queues", src.room_queue_depth),
            ("room_queues_active", "Rooms with a running event worker", src.room_queues_active),
        ):
            yield GaugeMetricFamily(f"{p}_{name}", doc, value=source() if (live and source is not None) else 0)
