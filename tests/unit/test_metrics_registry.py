"""bridge/metrics.py: counters follow the call lifecycle, latencies are timed between the right moments, media
counters are read at scrape time and survive the end of a call, labels stay bounded; and the /health, /ready,
/metrics listener (bridge/observability.py) on a free loopback port."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import Metrics, end_reason_label, sip_method_label, sip_status_label
from bridge.observability import HomeserverProbe, Listen, ObservabilityServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeStats:
    rtp_packets_in: int = 0
    rtp_packets_out: int = 0
    rtp_bytes_in: int = 0
    rtp_bytes_out: int = 0
    rtp_lost: int = 0
    rtp_jitter_s: float = 0.0
    webrtc_frames_in: int = 0
    webrtc_frames_out: int = 0
    dtmf: list[tuple[str, str]] = field(default_factory=list)


class RecordingCallLog:
    def __init__(self, claim: bool = True) -> None:
        self.claim = claim
        self.calls: list[tuple[str, Any]] = []

    async def call_started(self, **kw: Any) -> bool:
        self.calls.append(("started", kw["call_id"]))
        return self.claim

    async def call_answered(self, call_id: str) -> None:
        self.calls.append(("answered", call_id))

    async def call_ended(self, call_id: str, reason: str) -> None:
        self.calls.append(("ended", (call_id, reason)))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def start(log: Any, call_id: str, direction: str) -> bool:
    return bool(await log.call_started(call_id=call_id, party_id="p", sip_call_id="s", room_id="!r:x",
                                       direction=direction, number="15551234567", mxid="@a:x"))


async def test_outbound_call_is_started_answered_and_ended_with_its_reason_and_latencies() -> None:
    clock = FakeClock()
    metrics = Metrics(clock=clock)
    inner = RecordingCallLog()
    log = metrics.wrap_call_log(inner)
    p = "matrix_sip_bridge"
    assert await start(log, "c1", "outbound")
    assert sample(metrics, f"{p}_calls_started_total", direction="outbound") == 1
    assert sample(metrics, f"{p}_active_calls", direction="outbound") == 1
    clock.now += 0.8
    metrics.sip_progress("c1")
    clock.now += 5
    metrics.sip_progress("c1")  # only the first provisional counts
    assert sample(metrics, f"{p}_post_dial_delay_seconds_count") == 1
    assert abs(sample(metrics, f"{p}_post_dial_delay_seconds_sum") - 0.8) < 1e-9
    metrics.sip_answered("c1")
    clock.now += 0.2
    await log.call_answered("c1")
    assert sample(metrics, f"{p}_calls_answered_total", direction="outbound") == 1
    assert sample(metrics, f"{p}_answer_latency_seconds_count", direction="outbound") == 1
    assert abs(sample(metrics, f"{p}_answer_latency_seconds_sum", direction="outbound") - 0.2) < 1e-9
    await log.call_ended("c1", "matrix_user_hangup")
    assert sample(metrics, f"{p}_calls_ended_total", direction="outbound", reason="matrix_user_hangup") == 1
    assert sample(metrics, f"{p}_active_calls", direction="outbound") == 0
    assert [k for k, _ in inner.calls] == ["started", "answered", "ended"]  # the real call log saw everything


async def test_inbound_answer_latency_runs_from_matrix_answer_to_sip_200() -> None:
    clock = FakeClock()
    metrics = Metrics(clock=clock)
    log = metrics.wrap_call_log(RecordingCallLog())
    await start(log, "in1", "inbound")
    clock.now += 3  # ringing does not count
    metrics.matrix_answered("in1")
    clock.now += 0.05
    metrics.matrix_answered("in1")  # a second device's answer does not move the mark
    clock.now += 0.05
    await log.call_answered("in1")
    assert abs(sample(metrics, "matrix_sip_bridge_answer_latency_seconds_sum", direction="inbound") - 0.1) < 1e-9
    assert sample(metrics, "matrix_sip_bridge_post_dial_delay_seconds_count") == 0


async def test_replayed_invite_not_claimed_is_not_counted_and_its_end_is_ignored() -> None:
    metrics = Metrics()
    log = metrics.wrap_call_log(RecordingCallLog(claim=False))
    assert not await start(log, "dup", "outbound")
    await log.call_ended("dup", "not_started")
    assert sample(metrics, "matrix_sip_bridge_calls_started_total", direction="outbound") == 0
    assert sample(metrics, "matrix_sip_bridge_calls_ended_total", direction="outbound", reason="not_started") == 0


def test_labels_stay_bounded() -> None:
    assert end_reason_label("sip_486") == "sip_486"
    assert end_reason_label("matrix_user_busy") == "matrix_user_busy"
    assert end_reason_label("matrix_whatever the client sent") == "other"
    assert end_reason_label("sip_99999") == "other"
    assert end_reason_label("bridge_crash") == "bridge_crash"
    assert sip_method_label("invite") == "INVITE"
    assert sip_method_label("X-EVIL-" + "A" * 100) == "other"
    assert sip_status_label(183) == "183" and sip_status_label(99) == "other" and sip_status_label(700) == "other"


def test_media_counters_are_read_at_scrape_time_and_kept_after_the_call_ends() -> None:
    metrics = Metrics()
    live = FakeStats(rtp_packets_in=10, rtp_packets_out=12, rtp_bytes_in=1720, rtp_bytes_out=2064, rtp_lost=1,
                     rtp_jitter_s=0.004, webrtc_frames_in=11, webrtc_frames_out=9, dtmf=[("1", "matrix")])
    calls = [live]
    metrics.sources.live_media = lambda: calls
    p = "matrix_sip_bridge"
    assert sample(metrics, f"{p}_rtp_packets_total", leg="sip", direction="in") == 10
    live.rtp_packets_in = 50  # the leg counts; the next scrape sees it
    assert sample(metrics, f"{p}_rtp_packets_total", leg="sip", direction="in") == 50
    assert sample(metrics, f"{p}_rtp_packets_total", leg="matrix", direction="out") == 9
    assert sample(metrics, f"{p}_rtp_bytes_total", leg="sip", direction="out") == 2064
    assert sample(metrics, f"{p}_rtp_lost_packets_total", leg="sip") == 1
    assert sample(metrics, f"{p}_rtp_jitter_max_seconds", leg="sip") == 0.004
    assert sample(metrics, f"{p}_dtmf_events_total", source="matrix") == 1
    # the call ends: its media closes with its final counters, and it is no longer live
    metrics.media_closed(live)
    calls.clear()
    assert sample(metrics, f"{p}_rtp_packets_total", leg="sip", direction="in") == 50
    assert sample(metrics, f"{p}_dtmf_events_total", source="matrix") == 1
    assert sample(metrics, f"{p}_rtp_jitter_max_seconds", leg="sip") == 0
    calls.append(FakeStats(rtp_packets_in=5))  # a new call adds to the total
    assert sample(metrics, f"{p}_rtp_packets_total", leg="sip", direction="in") == 55


def test_sip_messages_refusals_homeserver_requests_and_state_gauges() -> None:
    metrics = Metrics()
    p = "matrix_sip_bridge"
    metrics.sip_message("out", "INVITE")
    metrics.sip_message("in", 180)
    metrics.sip_message("in", 200)
    metrics.sip_message("in", "malformed")
    metrics.call_refused("sip_source_rate")
    metrics.call_refused("user_attempts")
    metrics.homeserver_request(ok=True)
    metrics.homeserver_request(ok=False)
    metrics.homeserver_request(ok=True, retry=True)
    assert sample(metrics, f"{p}_sip_requests_total", direction="out", method="INVITE") == 1
    assert sample(metrics, f"{p}_sip_responses_total", direction="in", status="180") == 1
    assert sample(metrics, f"{p}_sip_malformed_messages_total") == 1
    assert sample(metrics, f"{p}_call_refusals_total", limit="sip_source_rate") == 1
    assert sample(metrics, f"{p}_call_refusals_total", limit="user_concurrency") == 0  # exported from the start
    assert sample(metrics, f"{p}_homeserver_requests_total", outcome="ok") == 2
    assert sample(metrics, f"{p}_homeserver_requests_total", outcome="error") == 1
    assert sample(metrics, f"{p}_homeserver_request_retries_total") == 1
    assert metrics.registry.get_sample_value(f"{p}_sip_registration_state", {"state": "registered"}) is None
    metrics.sources.registration_state = lambda: "registered"
    metrics.sources.transactions_in_flight = lambda: 2
    metrics.sources.room_queue_depth = lambda: 7
    assert sample(metrics, f"{p}_sip_registration_state", state="registered") == 1
    assert sample(metrics, f"{p}_sip_registration_state", state="failed") == 0
    assert sample(metrics, f"{p}_appservice_transactions_in_flight") == 2
    assert sample(metrics, f"{p}_room_queue_depth") == 7


def test_each_bridge_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.call_refused("user_attempts")
    assert sample(b, "matrix_sip_bridge_call_refusals_total", limit="user_attempts") == 0
    # the text exposition parses (no duplicate or malformed families)
    names = {f.name for f in text_string_to_metric_families(generate_latest(a.registry).decode())}
    wanted = {"calls_started", "rtp_packets", "active_calls", "answer_latency_seconds"}
    assert {f"matrix_sip_bridge_{n}" for n in wanted} <= names


async def test_listener_serves_health_ready_with_the_failed_check_and_metrics() -> None:
    metrics = Metrics()
    problems: dict[str, str | None] = {"database": None, "homeserver": None}

    def check(name: str) -> Any:
        async def run() -> str | None:
            return problems[name]
        return run

    async def hanging() -> str | None:
        await asyncio.sleep(60)
        return None

    server = ObservabilityServer(Listen("127.0.0.1", 0), registry=metrics.registry, health=True,
                                 checks={"database": check("database"), "homeserver": check("homeserver")})
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/health") as r:
                assert r.status == 200
            async with http.get(f"{base}/ready") as r:
                assert r.status == 200 and (await r.json())["ready"] is True
            problems["homeserver"] = "no answer within 2 s"
            async with http.get(f"{base}/ready") as r:
                body = await r.json()
                assert r.status == 503 and body["failed"] == ["homeserver"]
                assert body["checks"]["homeserver"] == {"ok": False, "error": "no answer within 2 s"}
                assert body["checks"]["database"] == {"ok": True}
            server.checks["slow"] = hanging  # a hanging check fails after the check timeout; the probe answers
            async with http.get(f"{base}/ready", timeout=aiohttp.ClientTimeout(total=10)) as r:
                assert r.status == 503 and "slow" in (await r.json())["failed"]
            async with http.get(f"{base}/metrics") as r:
                assert r.status == 200
                assert "matrix_sip_bridge_calls_started_total" in await r.text()
    finally:
        await server.stop()


async def test_metrics_endpoint_is_absent_unless_enabled() -> None:
    server = ObservabilityServer(Listen("127.0.0.1", 0), registry=None, health=True, checks={})
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{server.port}/metrics") as r:
                assert r.status == 404
    finally:
        await server.stop()


async def test_listener_on_a_taken_port_is_logged_not_fatal() -> None:
    first = ObservabilityServer(Listen("127.0.0.1", 0), registry=None, health=True, checks={})
    await first.start()
    assert first.port is not None
    second = ObservabilityServer(Listen("127.0.0.1", first.port), registry=None, health=True, checks={})
    try:
        await second.start()
        assert second.port is None
    finally:
        await second.stop()
        await first.stop()


async def test_homeserver_probe_follows_the_homeserver_and_goes_stale() -> None:
    up = True

    async def versions(request: web.Request) -> web.Response:
        return web.json_response({"versions": ["v1.11"]}, status=200 if up else 502)

    app = web.Application()
    app.router.add_get("/_matrix/client/versions", versions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    clock = FakeClock()
    probe = HomeserverProbe(f"http://127.0.0.1:{port}", interval=3600, timeout=2, clock=clock)
    await probe.start()  # the first check runs at once
    try:
        for _ in range(100):
            if probe.checked_at is not None:
                break
            await asyncio.sleep(0.02)
        assert probe.problem() is None
        up = False
        await probe.check_once()
        assert probe.problem() == "HTTP 502"
        await runner.cleanup()
        await probe.check_once()
        assert probe.problem() == "ClientConnectorError"
        clock.now += 3 * 3600 + 1
        assert probe.problem() == "homeserver check is stale"
    finally:
        await probe.stop()
        await runner.cleanup()


def test_default_registry_is_not_used() -> None:
    from prometheus_client import REGISTRY

    metrics = Metrics()
    assert metrics.registry is not REGISTRY and isinstance(metrics.registry, CollectorRegistry)
    assert REGISTRY.get_sample_value("matrix_sip_bridge_calls_started_total", {"direction": "outbound"}) is None


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    metrics = Metrics()
    metrics.sources.registration_state = lambda: "registered"
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {f.name + suffix for f in metrics.registry.collect() for suffix in suffixes[f.type]}
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"matrix_sip_bridge_\w+", target["expr"])}
    assert used and used <= exported, used - exported
