"""The whole bridge against hostile SIP: stray 2xx reflect nothing, '%' Call-IDs are logged intact."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest

from bridge.sip.settings import ListenAddress, SipSettings
from bridge.sip.ua import UserAgent
from tests.e2e.conftest import E2E, assert_released, eventually
from tests.harness.sip_fuzzer import run_fuzz
from tests.harness.sip_ua import RawUdpPeer

pytestmark = pytest.mark.e2e

DIALLED = "18005550100"
ALICE = "@alice:bridge.test"
PERCENT_ID = "abc%s%d%(x)s%"
SDP = ("v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def invite(port: int, bridge_port: int, call_id: str) -> str:
    return (f"INVITE sip:{DIALLED}@127.0.0.1:{bridge_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKpct1;rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:15557654321@127.0.0.1>;tag=pct\r\nTo: <sip:{DIALLED}@127.0.0.1>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: 1 INVITE\r\nContact: <sip:15557654321@127.0.0.1:{port}>\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(SDP)}\r\n\r\n{SDP}")


def cancel(port: int, bridge_port: int, call_id: str) -> str:
    return (f"CANCEL sip:{DIALLED}@127.0.0.1:{bridge_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKpct1;rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:15557654321@127.0.0.1>;tag=pct\r\nTo: <sip:{DIALLED}@127.0.0.1>\r\nCall-ID: {call_id}\r\n"
            "CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n")


async def test_bridge_logs_percent_call_id_intact_and_reflects_no_stray_2xx(
        e2e: E2E, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO)

    def routes(data: dict[str, object]) -> None:
        data["sip"]["inbound"]["routes"] = [{"number": DIALLED, "users": [ALICE]}]  # type: ignore[index]

    bridge = await e2e.bridge(routes)
    alice = await e2e.client("alice")
    await alice.start_sync(auto_join=True)
    phone = await RawUdpPeer.open("127.0.0.1")
    attacker = await RawUdpPeer.open("127.0.0.2")
    victim = await RawUdpPeer.open("127.0.0.3")
    target = ("127.0.0.1", e2e.plan.sip_port)
    try:
        # stray 2xx: Contact/Record-Route name a victim and a DNS name; the bridge sends nothing anywhere
        for i, contact in enumerate((f"<sip:v@127.0.0.3:{victim.port}>", "<sip:v@reflect.example.invalid>")):
            attacker.send(f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{e2e.plan.sip_port};branch=z9hG4bKx{i}\r\n"
                          f"From: <sip:bridge@127.0.0.1>;tag=guess{i}\r\nTo: <sip:v@127.0.0.3>;tag=t{i}\r\n"
                          f"Call-ID: stray{i}\r\nCSeq: 1 INVITE\r\nContact: {contact}\r\n"
                          f"Record-Route: <sip:127.0.0.3:{victim.port};lr>\r\nContent-Length: 0\r\n\r\n", target)
        # a call whose Call-ID is full of format directives rings Alice, then the phone cancels it
        phone.send(invite(phone.port, e2e.plan.sip_port, PERCENT_ID), target)
        call = await alice.wait_incoming_call(timeout=40)
        assert call.invite["content"]["invitee"] == ALICE
        phone.send(cancel(phone.port, e2e.plan.sip_port, PERCENT_ID), target)
        await phone.wait_for_message("SIP/2.0 487", timeout=20)
        await eventually(lambda: not bridge.calls.sessions(), 20, "the cancelled call released")
        await asyncio.sleep(1.0)
        assert victim.received == [] and attacker.received == []
        assert bridge.ua.unsolicited_responses == 2
        assert any(f"sip_call_id={PERCENT_ID}]" in r.getMessage() for r in caplog.records)
        assert "--- Logging error ---" not in capfd.readouterr().err
        await assert_released(bridge)
    finally:
        for peer in (phone, attacker, victim):
            peer.close()


async def test_fuzzing_the_running_bridge_crashes_nothing_reflects_nothing_and_calls_still_route(e2e: E2E) -> None:
    bridge = await e2e.bridge()

    async def unrouted_call(tag: str, addr: tuple[str, int]) -> bool:
        """A call from the trunk still gets the real CallManager's answer (no route: 404)."""
        await asyncio.sleep(3.0)  # the per-source INVITE rate limit refills after the trusted phase
        caller = UserAgent(SipSettings(listen=[ListenAddress("udp", "127.0.0.1", 0)], t1=0.1, t2=0.8))
        await caller.start()
        try:
            call = caller.invite(f"sip:19995550000@{addr[0]}:{addr[1]}", from_uri="sip:15550001111@127.0.0.1",
                                 sdp=SDP.encode())
            return (await asyncio.wait_for(call.wait_final(), 15)).status == 404
        finally:
            await caller.stop()

    count = int(os.environ.get("SIP_FUZZ_BRIDGE_COUNT", "3000"))  # e.g. 100000 for the full run (-s to see it)
    report = await run_fuzz(count, seed=11, target=bridge.ua, normal_call=unrouted_call, time_limit=900)
    print(json.dumps(report.as_dict(), indent=1))
    assert report.datagrams >= 0.8 * count
    assert report.crashes == 0 and report.logging_errors == 0
    assert report.tracebacks == 0, report.traceback_samples
    assert report.untrusted_sent_to_non_sender == 0 and report.victim_received_untrusted_phase == 0
    assert report.lookups_untrusted_phase == 0
    assert report.calls_before_ok and report.calls_after_ok
    await eventually(lambda: not bridge.calls.sessions(), 30, "every fuzzed call released")
