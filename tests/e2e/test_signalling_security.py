"""The whole bridge against hostile SIP: stray 2xx reflect nothing, '%' Call-IDs are logged intact."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.e2e.conftest import E2E, assert_released, eventually
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
