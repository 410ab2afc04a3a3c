"""A trunk reached by domain (RFC 3263): a real dnsmasq serves NAPTR + two SRV targets for
sip:provider.example; the first is dead (nothing answers) or answers 503, so a Matrix user's call must be
set up with the second one, with audio."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import E2E, GHOST, SCENARIOS, assert_released
from tests.e2e.test_outbound_calls import portal_room
from tests.harness.bridge_stack import free_udp_port
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.rtp_peer import RtpPeer
from tests.harness.sipp import SippProcess

pytestmark = pytest.mark.e2e


async def provider_dns(tmp: Path, first_port: int, second_port: int) -> Dnsmasq:
    return await Dnsmasq(tmp / "dns", [
        "naptr-record=provider.example,10,10,S,SIP+D2U,,_sip._udp.provider.example",
        f"srv-host=_sip._udp.provider.example,sip1.provider.example,{first_port},10,100",
        f"srv-host=_sip._udp.provider.example,sip2.provider.example,{second_port},20,100",
        "host-record=sip1.provider.example,127.0.0.1",
        "host-record=sip2.provider.example,127.0.0.1",
    ]).start()


@pytest.mark.parametrize("first", ["dead", "503"])
async def test_matrix_call_to_trunk_domain_fails_over_to_second_srv_target(
        e2e: E2E, rtp_peer: RtpPeer, first: str) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound and never read: the INVITE times out
    silent.bind(("127.0.0.1", 0))
    first_port = silent.getsockname()[1]
    if first == "503":
        text = (SCENARIOS / "trunk_reject.xml").read_text().replace("STATUS PHRASE", "503 Service Unavailable")
        (e2e.tmp / "trunk_503.xml").write_text(text)
        first_port = free_udp_port()
        busy = SippProcess(e2e.tmp / "trunk_503.xml", local_port=first_port, timeout=60, workdir=e2e.tmp / "sipp1")
        await e2e.own(busy).start()
    dns = await provider_dns(e2e.tmp, first_port, e2e.plan.trunk_port)
    try:
        def via_dns(data: dict[str, Any]) -> None:
            data["sip"]["t1_ms"] = 50  # Timer B = 64 x T1 = 3.2 s before the dead target is given up
            data["sip"]["trunk"]["proxy"] = "sip:provider.example"
            data["sip"]["dns"] = {"nameservers": [dns.nameserver], "timeout_s": 2}

        bridge = await e2e.bridge(via_dns)
        rtp_peer.start_sending(seconds=60)
        sipp = SippProcess(SCENARIOS / "trunk_answer.xml", local_port=e2e.plan.trunk_port, timeout=90,
                           extra_args=["-key", "rtp_port", str(rtp_peer.port)], workdir=e2e.tmp / "sipp2")
        await e2e.own(sipp).start()
        alice = await e2e.client("alice")
        room = await portal_room(alice)
        call = await alice.place_call(room, GHOST)
        await call.wait_answer(timeout=30)
        await call.wait_for_tone(1000.0, timeout=30, min_frames=50)  # the second target's RTP reaches Matrix
        assert dns.queries("_sip._udp.provider.example") == 1
        if first == "503":
            assert await busy.wait() == 0, busy.report()  # it got the INVITE, answered 503 and got its ACK
        await call.hangup()
        assert await sipp.wait() == 0, sipp.report()
        assert re.search(r"INVITE sip:\+?15551234567@provider.example SIP/2.0", sipp.messages)
        await assert_released(bridge)
    finally:
        silent.close()
        await dns.stop()
