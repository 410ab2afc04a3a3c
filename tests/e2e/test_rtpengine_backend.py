"""media.backend rtpengine end to end (real Synapse, sipp, aiortc Matrix client, real rtpengine): two nodes with
the first one dead, and the clear refusal of a phone's REFER. The common call tests run against rtpengine with
BRIDGE_E2E_MEDIA=rtpengine (tests/e2e/conftest.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import E2E, GHOST, SCENARIOS, assert_released, eventually
from tests.harness.rtp_peer import RtpPeer
from tests.harness.rtpengine import RtpengineProcess
from tests.harness.sipp import SippProcess

pytestmark = pytest.mark.e2e


def rtpengine_config(*urls: str, timeout_s: float = 1.0) -> Any:
    def apply(data: dict[str, Any]) -> None:
        data["media"]["backend"] = "rtpengine"
        data["media"]["rtpengine"] = {"nodes": [{"url": url, "weight": 100 if i == 0 else 1}
                                                for i, url in enumerate(urls)], "timeout_s": timeout_s}
    return apply


@pytest.fixture
def live_node(tmp_path: Path, rtpengine_node: RtpengineProcess | None) -> Iterator[RtpengineProcess]:
    if rtpengine_node is not None:
        yield rtpengine_node
        return
    node = RtpengineProcess(tmp_path, ports=40, threads=1)
    node.start()
    yield node
    node.stop()


async def test_call_goes_through_the_second_node_when_the_first_does_not_answer(
        e2e: E2E, rtp_peer: RtpPeer, live_node: RtpengineProcess) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))  # bound, never read: ng requests to it time out
        dead_url = f"udp:127.0.0.1:{dead.getsockname()[1]}"

        bridge = await e2e.bridge(rtpengine_config(dead_url, live_node.url, timeout_s=0.3))
        rtp_peer.start_sending(seconds=60)
        sipp = SippProcess(SCENARIOS / "trunk_answer.xml", local_port=e2e.plan.trunk_port, timeout=90,
                           extra_args=["-key", "rtp_port", str(rtp_peer.port)], workdir=e2e.tmp / "sipp")
        await e2e.own(sipp).start()
        alice = await e2e.client("alice")
        room = await alice.create_dm(GHOST)
        await alice.wait_for_membership(room, GHOST, "join", timeout=30)
        call = await alice.place_call(room, GHOST)
        await call.wait_answer(timeout=30)
        media: Any = bridge.calls.outbound[call.call_id].media
        assert media.node.url == live_node.url
        backend = bridge.rtpengine
        assert backend is not None and not backend.pool.is_up(backend.pool.nodes[0])  # dead node: out of rotation
        await call.wait_for_tone(1000.0, timeout=30, min_frames=50)  # SIP -> Matrix through rtpengine
        await eventually(lambda: rtp_peer.received >= 50, 20, "RTP at the trunk")  # Matrix -> SIP
        ng_call_id = media.ng_call_id
        await call.hangup()
        assert await sipp.wait() == 0, sipp.report()
        await assert_released(bridge)
        calls = await backend.ng.request(("127.0.0.1", live_node.ng_port), {"command": "list"})
        assert ng_call_id not in (calls.get("calls") or [])  # delete was sent at the call's end


async def test_phone_refer_is_refused_501_and_the_call_goes_on(
        e2e: E2E, rtp_peer: RtpPeer, live_node: RtpengineProcess) -> None:
    """Moving the SIP side to a new far end is not done through rtpengine: the REFER gets 501 and the call keeps
    its audio and ends normally."""
    text = (SCENARIOS / "caller_refer.xml").read_text()
    start, end = text.index('  <recv response="202"/>'), text.index('  <recv request="BYE"')
    scenario = e2e.tmp / "caller_refer_501.xml"
    scenario.write_text(text[:start] + '  <recv response="501"/>\n' + text[end:])

    def route(data: dict[str, Any]) -> None:
        rtpengine_config(live_node.url)(data)
        data["sip"]["inbound"]["routes"] = [{"number": "15550001111", "users": ["@alice:bridge.test"]}]

    bridge = await e2e.bridge(route)
    alice = await e2e.client("alice")
    await alice.start_sync(auto_join=True)
    rtp_peer.start_sending(seconds=60)
    phone = SippProcess(scenario, remote=("127.0.0.1", e2e.plan.sip_port), service="15550001111", timeout=60,
                        workdir=e2e.tmp / "sipp-phone",
                        extra_args=["-key", "caller", "15557654321", "-key", "caller_name", "Bob Phone",
                                    "-key", "rtp_port", str(rtp_peer.port),
                                    "-key", "refer_to", "sip:15559870001@t.test"])
    await e2e.own(phone).start()
    call = await alice.wait_incoming_call(timeout=30)
    await call.answer()
    await call.wait_for_tone(1000.0, timeout=20, min_frames=25)
    await eventually(lambda: "SIP/2.0 501" in phone.messages, 20, "the 501 to the REFER")
    at_matrix = call.frames_received
    await call.wait_for_frames(at_matrix + 25, timeout=10)  # the call goes on
    await call.hangup()
    assert await phone.wait() == 0, phone.report()  # 501, then our BYE
    await assert_released(bridge)
