"""Observability end to end: /metrics scraped during a real Matrix -> phone call (real Synapse, the bridge, sipp as
the trunk with a tone-playing RTP peer, an aiortc caller) moves as the call does; /ready follows a real homeserver
that stops and starts again; /health answers throughout."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import Bridge
from tests.e2e.conftest import E2E, GHOST, SCENARIOS, assert_released, eventually_async
from tests.harness.bridge_stack import SERVER_NAME
from tests.harness.rtp_peer import RtpPeer
from tests.harness.sipp import SippProcess
from tests.harness.synapse import restart_synapse_sync, stop_synapse_sync

pytestmark = pytest.mark.e2e

P = "matrix_sip_bridge_"
RING_MS = 2000  # the trunk rings this long before its 200: time to see "started, not answered"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def base_url(bridge: Bridge) -> str:
    assert bridge.monitoring is not None and bridge.monitoring.port, "monitoring listener not running"
    return f"http://127.0.0.1:{bridge.monitoring.port}"


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, await resp.text()


async def scrape(bridge: Bridge) -> Samples:
    status, text = await get(base_url(bridge) + "/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((P + name, frozenset(labels.items())), 0.0)


async def ready(bridge: Bridge) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url(bridge) + "/ready", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, await resp.json()


async def test_metrics_move_with_a_matrix_call_to_a_phone(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge(lambda d: d["metrics"].update(enabled=True))
    m = await scrape(bridge)
    assert val(m, "calls_started_total", direction="outbound") == 0
    assert val(m, "active_calls", direction="outbound") == 0

    rtp_peer.start_sending(seconds=60)
    scenario = e2e.tmp / "trunk_answer_slow.xml"
    text = (SCENARIOS / "trunk_answer.xml").read_text()
    assert '<pause milliseconds="300"/>' in text
    scenario.write_text(text.replace('<pause milliseconds="300"/>', f'<pause milliseconds="{RING_MS}"/>', 1))
    sipp = SippProcess(scenario, local_port=e2e.plan.trunk_port, extra_args=["-key", "rtp_port", str(rtp_peer.port)],
                       timeout=60, workdir=e2e.tmp / "sipp")
    await e2e.own(sipp).start()
    alice = await e2e.client("alice")
    room = await alice.create_dm(GHOST)
    await alice.wait_for_membership(room, GHOST, "join", timeout=30)
    call = await alice.place_call(room, GHOST)

    # ringing: started and active, the 180 timed the post-dial delay, not answered yet
    async def ringing() -> bool:
        m = await scrape(bridge)
        return (val(m, "calls_started_total", direction="outbound") == 1
                and val(m, "active_calls", direction="outbound") == 1
                and val(m, "post_dial_delay_seconds_count") == 1)
    await eventually_async(ringing, 15, "a started, ringing call in /metrics")
    m = await scrape(bridge)
    assert val(m, "calls_answered_total", direction="outbound") == 0
    assert val(m, "answer_latency_seconds_count", direction="outbound") == 0
    assert val(m, "sip_requests_total", direction="out", method="INVITE") >= 1
    assert val(m, "sip_responses_total", direction="in", status="180") >= 1

    # answered: counted once, with one answer-latency sample (SIP 200 -> m.call.answer sent)
    await call.wait_answer(timeout=30)

    async def answered() -> bool:
        m = await scrape(bridge)
        return (val(m, "calls_answered_total", direction="outbound") == 1
                and val(m, "answer_latency_seconds_count", direction="outbound") == 1)
    await eventually_async(answered, 10, "the answer in /metrics")
    m = await scrape(bridge)
    assert 0 < val(m, "answer_latency_seconds_sum", direction="outbound") < 5
    assert val(m, "sip_responses_total", direction="in", status="200") >= 1
    assert val(m, "sip_requests_total", direction="out", method="ACK") >= 1

    # audio flows: the RTP counters grow between two scrapes, on both legs
    await call.wait_for_tone(1000.0, timeout=30, min_frames=25)
    first = await scrape(bridge)
    await asyncio.sleep(1.0)
    second = await scrape(bridge)
    for leg, direction in (("sip", "in"), ("sip", "out"), ("matrix", "in"), ("matrix", "out")):
        before = val(first, "rtp_packets_total", leg=leg, direction=direction)
        after = val(second, "rtp_packets_total", leg=leg, direction=direction)
        assert after > before, f"{leg}/{direction} RTP packets did not grow: {before} -> {after}"
    assert val(second, "rtp_bytes_total", leg="sip", direction="in") >= 172 * val(
        second, "rtp_packets_total", leg="sip", direction="in")  # 160 bytes PCMU + 12 header
    assert val(second, "rtp_jitter_max_seconds", leg="sip") < 0.5

    # ended with the call-log reason; the media totals outlive the call
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)

    async def ended() -> bool:
        m = await scrape(bridge)
        return (val(m, "calls_ended_total", direction="outbound", reason="matrix_user_hangup") == 1
                and val(m, "active_calls", direction="outbound") == 0)
    await eventually_async(ended, 10, "the end in /metrics")
    m = await scrape(bridge)
    assert val(m, "rtp_packets_total", leg="sip", direction="in") >= val(
        second, "rtp_packets_total", leg="sip", direction="in")
    assert val(m, "sip_requests_total", direction="out", method="BYE") >= 1
    assert val(m, "homeserver_requests_total", outcome="ok") >= 2  # m.call.answer, m.call.candidates
    assert (await get(base_url(bridge) + "/health"))[0] == 200


async def test_metrics_move_with_a_phone_call_to_matrix(e2e: E2E, rtp_peer: RtpPeer) -> None:
    alice_id = "@alice:bridge.test"

    def config(d: dict[str, Any]) -> None:
        d["metrics"].update(enabled=True)
        d["sip"]["inbound"]["routes"] = [{"number": "18005550100", "users": [alice_id]}]
    bridge = await e2e.bridge(config)
    alice = await e2e.client("alice")
    await alice.start_sync(auto_join=True)
    rtp_peer.start_sending(seconds=60)
    sipp = SippProcess(SCENARIOS / "caller_talk.xml", remote=("127.0.0.1", e2e.plan.sip_port), service="18005550100",
                       timeout=60, workdir=e2e.tmp / "sipp",
                       extra_args=["-key", "caller", "15557654321", "-key", "caller_name", "Bob",
                                   "-key", "rtp_port", str(rtp_peer.port), "-d", "3000"])
    await e2e.own(sipp).start()
    call = await alice.wait_incoming_call(timeout=40)

    async def ringing() -> bool:  # the 180 goes out right after the m.call.invite
        m = await scrape(bridge)
        return (val(m, "calls_started_total", direction="inbound") == 1
                and val(m, "active_calls", direction="inbound") == 1
                and val(m, "sip_responses_total", direction="out", status="180") >= 1)
    await eventually_async(ringing, 10, "a ringing inbound call in /metrics")
    m = await scrape(bridge)
    assert val(m, "calls_answered_total", direction="inbound") == 0
    assert val(m, "sip_requests_total", direction="in", method="INVITE") >= 1
    await call.answer()

    async def answered() -> bool:  # m.call.answer received -> SIP 200 sent, timed once
        m = await scrape(bridge)
        return (val(m, "calls_answered_total", direction="inbound") == 1
                and val(m, "answer_latency_seconds_count", direction="inbound") == 1
                and val(m, "sip_responses_total", direction="out", status="200") >= 1)
    await eventually_async(answered, 15, "the inbound answer in /metrics")
    await call.wait_hangup(timeout=30)  # the phone hangs up after 3 s
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)
    m = await scrape(bridge)
    assert val(m, "calls_ended_total", direction="inbound", reason="sip_bye") == 1
    assert val(m, "active_calls", direction="inbound") == 0
    assert val(m, "sip_requests_total", direction="in", method="BYE") >= 1
    assert val(m, "rtp_packets_total", leg="sip", direction="in") > 0
    assert val(m, "calls_started_total", direction="outbound") == 0


async def test_ready_follows_the_homeserver_going_away_and_coming_back(e2e: E2E, synapse_factory: Any) -> None:
    # a homeserver of this test's own, so that it can be stopped
    hs = await asyncio.to_thread(synapse_factory, [e2e.plan.write_registration()], server_name=SERVER_NAME)
    e2e.synapse = hs
    bridge = await e2e.bridge(lambda d: d["metrics"].update(
        homeserver_check_interval_s=0.5, homeserver_check_timeout_s=0.5))
    assert (await get(base_url(bridge) + "/metrics"))[0] == 404  # metrics.enabled is off by default

    async def is_ready() -> bool:
        status, body = await ready(bridge)
        return status == 200 and body["ready"] is True
    await eventually_async(is_ready, 10, "/ready 200")
    status, body = await ready(bridge)
    assert status == 200 and set(body["checks"]) == {"started", "database", "homeserver", "sip"}

    await asyncio.to_thread(stop_synapse_sync, hs)

    async def not_ready() -> bool:
        status, body = await ready(bridge)
        return status == 503 and body["failed"] == ["homeserver"]
    await eventually_async(not_ready, 10, "/ready 503 naming the homeserver")
    status, body = await ready(bridge)
    assert status == 503 and body["checks"]["homeserver"]["ok"] is False and body["checks"]["homeserver"]["error"]
    assert (await get(base_url(bridge) + "/health"))[0] == 200  # alive all the same

    await asyncio.to_thread(restart_synapse_sync, hs)
    await eventually_async(is_ready, 10, "/ready 200 again")


async def test_a_failed_start_releases_the_listeners_and_the_database(e2e: E2E) -> None:
    import threading

    import aiosqlite

    from tests.harness.synapse import free_port

    def aiosqlite_threads() -> int:  # one thread per open SQLite connection
        return sum(1 for t in threading.enumerate() if isinstance(t, aiosqlite.Connection))

    before = aiosqlite_threads()
    # The SIP port is taken: the start fails after the database was opened (an unreachable homeserver would
    # not fail it: the bridge waits for the homeserver, see test_homeserver_outage.py).
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]

    def config(d: dict[str, Any]) -> None:
        d["appservice"]["database"] = f"sqlite:{e2e.tmp / 'failed.db'}"
        d["appservice"]["port"] = free_port()
        d["sip"]["listen"] = [{"transport": "udp", "host": "127.0.0.1", "port": port}]
    bridge = Bridge(e2e.plan.config(config))
    try:
        with pytest.raises(OSError, match=r"[Aa]ddress already in use"):
            await bridge.start()
    finally:
        taken.close()
    assert not bridge.ua.listening
    assert bridge.monitoring is not None and bridge.monitoring.port
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(base_url(bridge) + "/health")
    for _ in range(50):  # the database thread ends once the connection is closed
        if aiosqlite_threads() <= before:
            break
        await asyncio.sleep(0.05)
    assert aiosqlite_threads() <= before, "the database was left open: the process would not exit"
