"""The rtpengine backend against a real rtpengine daemon (Debian rtpengine-daemon, userspace forwarding):
failover to the second node when the first does not answer, delete at call end, orphans deleted at startup."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.media.rtpengine_media import RtpengineBackend, RtpengineSettings
from bridge.media.rtpengine_nodes import NodeSpec
from bridge.media.settings import MediaSettings
from tests.harness.rtpengine import RtpengineProcess

SIP_OFFER = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtpengineProcess]:
    proc = RtpengineProcess(tmp_path_factory.mktemp("rtpe"), ports=40, threads=1)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A bound UDP socket nobody reads: ng requests to it are never answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def _calls(backend: RtpengineBackend, node: NodeSpec) -> list[str]:
    reply = await backend.ng.request(node.address, {"command": "list", "limit": 1000})
    return list(reply.get("calls") or [])


async def test_new_call_fails_over_to_the_second_node_and_is_deleted_at_the_end(
        node: RtpengineProcess, dead_port: int, tmp_path: Path) -> None:
    dead, live = NodeSpec(f"udp:127.0.0.1:{dead_port}", 1000), NodeSpec(node.url, 1)
    backend = RtpengineBackend(RtpengineSettings([dead, live], timeout_s=0.3, retry_after_s=60),
                               MediaSettings(ice_timeout_s=0))
    await backend.start()
    try:
        media = backend.new_media(log)
        media.answer_sip_offer(SIP_OFFER)
        offer = await media.create_webrtc_offer()  # the weight-1000 node is drawn first and times out
        assert media.node == live
        assert "UDP/TLS/RTP/SAVPF" in offer and "a=ice-ufrag:" in offer and "a=fingerprint:" in offer
        assert not backend.pool.is_up(dead)
        assert media.ng_call_id in await _calls(backend, live)
        second = backend.new_media(log)  # the failed node is skipped now: no timeout
        second.answer_sip_offer(SIP_OFFER)
        await second.create_webrtc_offer()
        assert second.node == live
        await media.close()
        await second.close()
        assert media.ng_call_id not in await _calls(backend, live)
    finally:
        await backend.close()


async def test_orphaned_calls_of_an_earlier_run_are_deleted_at_startup(node: RtpengineProcess) -> None:
    live = NodeSpec(node.url, 1)
    crashed = RtpengineBackend(RtpengineSettings([live], call_id_prefix="orph-"), MediaSettings(ice_timeout_s=0))
    await crashed.start()
    media = crashed.new_media(log)
    media.answer_sip_offer(SIP_OFFER)
    await media.create_webrtc_offer()
    other = RtpengineBackend(RtpengineSettings([live], call_id_prefix="other-"), MediaSettings(ice_timeout_s=0))
    await other.start()
    foreign = other.new_media(log)
    foreign.answer_sip_offer(SIP_OFFER)
    await foreign.create_webrtc_offer()
    crashed.ng.close()  # the process "died" without a delete

    restarted = RtpengineBackend(RtpengineSettings([live], call_id_prefix="orph-"), MediaSettings(ice_timeout_s=0))
    await restarted.start()
    try:
        calls = await _calls(restarted, live)
        assert media.ng_call_id not in calls
        assert foreign.ng_call_id in calls  # another bridge's call (other prefix) is left alone
    finally:
        await foreign.close()
        await other.close()
        await restarted.close()
