"""Calls and registrations through a real Kamailio (record-routing proxy, digest registrar)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.sip.digest import Credentials
from bridge.sip.registration import Registration
from tests.harness.kamailio import KamailioProcess
from tests.harness.sip_ua import SDP_OFFER, fast_settings, running_ua, wait_for
from tests.harness.sipp import SippProcess

SCENARIOS = Path(__file__).parent / "scenarios"


@pytest.fixture
async def far_end(tmp_path: Path) -> AsyncIterator[SippProcess]:
    proc = SippProcess(SCENARIOS / "uas_rr.xml", workdir=tmp_path)
    await proc.start()
    yield proc
    await proc.aclose()


@pytest.fixture
async def kamailio(tmp_path: Path, far_end: SippProcess) -> AsyncIterator[KamailioProcess]:
    kam = KamailioProcess(tmp_path, relay_to=far_end.address)
    await kam.start()
    yield kam
    await kam.stop()


async def test_kamailio_record_route_ack_and_bye_reach_far_end(kamailio: KamailioProcess,
                                                               far_end: SippProcess) -> None:
    async with running_ua(fast_settings(t1=0.1, t2=1.0)) as ua:
        call = ua.invite("sip:bob@peer.test", from_uri="sip:alice@bridge.test", sdp=SDP_OFFER,
                         outbound_proxy=kamailio.uri)
        final = await asyncio.wait_for(call.wait_final(), 20)
        assert final.status == 200
        assert call.dialog is not None
        assert call.dialog.route_set, "Record-Route from Kamailio must become the route set"
        assert f"127.0.0.1:{kamailio.port}" in call.dialog.route_set[0]
        await asyncio.sleep(0.3)
        bye = await asyncio.wait_for(call.dialog.bye(), 20)
        assert bye is not None and bye.status == 200
    assert await far_end.wait() == 0, far_end.report() + kamailio.log[-3000:]
    assert "ACK arrived at UAS" in far_end.logs
    assert "BYE arrived at UAS" in far_end.logs
    assert "DROPPING in-dialog ACK" not in kamailio.log


async def test_kamailio_register_with_digest_and_refresh(kamailio: KamailioProcess) -> None:
    async with running_ua(fast_settings(t1=0.1, t2=1.0)) as ua:
        states: list[str] = []
        reg = Registration(ua, registrar="sip:peer.test", aor="sip:alice@peer.test",
                           credentials=Credentials("alice", "secret"), expires=2, outbound_proxy=kamailio.uri)
        reg.on_state = states.append
        await reg.start()
        assert reg.state == "registered", reg.last_response
        assert reg.granted_expires == 2
        # granted 2 s -> refreshed after ~1.2 s
        await wait_for(lambda: reg.successes >= 2, timeout=15)
        assert reg.state == "registered"
        await reg.stop()
        assert reg.state == "unregistered"
        assert reg.last_response is not None and reg.last_response.status == 200
    assert kamailio.log.count("REGISTER auth OK") >= 3  # register, refresh, unregister


async def test_kamailio_call_over_tcp_to_proxy_uses_double_record_route(kamailio: KamailioProcess,
                                                                         far_end: SippProcess) -> None:
    async with running_ua(fast_settings("udp", "tcp", t1=0.1, t2=1.0)) as ua:
        call = ua.invite("sip:bob@peer.test", from_uri="sip:alice@bridge.test", sdp=SDP_OFFER,
                         outbound_proxy=f"{kamailio.uri};transport=tcp")
        final = await asyncio.wait_for(call.wait_final(), 20)
        assert final.status == 200
        assert call.dialog is not None
        # Kamailio switches TCP (our side) -> UDP (far end) and records both hops; ours comes first
        assert "transport=tcp" in call.dialog.route_set[0].lower()
        assert call.dialog.destination()[0] == "tcp"
        await asyncio.sleep(0.3)
        bye = await asyncio.wait_for(call.dialog.bye(), 20)
        assert bye is not None and bye.status == 200
    assert await far_end.wait() == 0, far_end.report() + kamailio.log[-3000:]
    assert "ACK arrived at UAS" in far_end.logs and "BYE arrived at UAS" in far_end.logs
