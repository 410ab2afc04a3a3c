"""A TLS trunk with SDES-SRTP media, end to end: Synapse, the bridge, an aiortc Matrix caller, and baresip
(Debian baresip-core, srtp module) as the trunk/phone. Proves the tone crosses both ways through SRTP, that
nothing on the wire is plaintext RTP (tcpdump on lo), that a wrong TLS certificate or a plain-RTP peer is
refused and the Matrix side is told."""

from __future__ import annotations

import array
import asyncio
import base64
import logging
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import E2E, GHOST, assert_released
from tests.harness.baresip import Baresip
from tests.harness.rtp_peer import G711_DECODE
from tests.harness.sipp import free_port, free_port_pair
from tests.harness.tls_certs import TestCa
from tests.harness.tone import tone_ratio
from tests.harness.udp_capture import LoopbackCapture

pytestmark = pytest.mark.e2e
SRTP_TAG_80 = 10  # bytes of HMAC-SHA1-80 authentication tag after every SRTP packet


def free_sip_pair() -> int:
    """A port free for UDP and TCP whose successor is free for TCP too (baresip's TLS port)."""
    for _ in range(50):
        port = free_port(socket.SOCK_STREAM)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


@pytest.fixture
async def peers(tmp_path: Path) -> AsyncIterator[list[Baresip]]:
    started: list[Baresip] = []
    yield started
    for peer in started:
        await peer.stop()


async def baresip(peers: list[Baresip], tmp: Path, **kwargs: Any) -> Baresip:
    peer = Baresip(tmp / f"baresip{len(peers)}", sip_port=free_sip_pair(), rtp_port=free_port_pair(), **kwargs)
    if not peer.available:
        pytest.fail("baresip with its srtp module is not installed (scripts/setup.sh installs baresip-core)")
    peers.append(peer)
    await peer.start()
    return peer


def tls_trunk(ca: TestCa, peer: Baresip, srtp: str = "required") -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        data["sip"]["tls_ca"] = ca.cert
        # a host name, so the certificate check is against the name we dialled, not an address
        data["sip"]["trunk"].update(proxy=f"sip:localhost:{peer.tls_port}", transport="tls")
        data["media"]["srtp"] = srtp

    return apply


async def portal(e2e: E2E) -> tuple[Any, str]:
    alice = await e2e.client("alice")
    room = await alice.create_dm(GHOST)
    await alice.wait_for_membership(room, GHOST, "join", timeout=30)
    return alice, room


def rtp_audio(packets: list[tuple[int, int, bytes]]) -> list[bytes]:
    """The RTP-looking datagrams (version 2, PT 0 PCMU) of a capture."""
    return [p for _, _, p in packets if len(p) > 12 and p[0] >> 6 == 2 and p[1] & 0x7F == 0]


async def test_tls_trunk_call_with_srtp_carries_tone_both_ways_and_no_plaintext_rtp(
        e2e: E2E, peers: list[Baresip], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ca = TestCa(tmp_path)
    peer = await baresip(peers, tmp_path, mediaenc="srtp-mand", tls=ca.leaf("localhost"))
    capture = LoopbackCapture(tmp_path / "rtp.pcap", [peer.rtp_port, peer.rtp_port + 1])
    await capture.start()
    try:
        bridge = await e2e.bridge(tls_trunk(ca, peer))
        alice, room = await portal(e2e)
        call = await alice.place_call(room, GHOST, codecs=["PCMU"])
        await call.wait_answer(timeout=30)
        assert bridge.calls.outbound[call.call_id].media.srtp_suite == "AES_CM_128_HMAC_SHA1_80"
        await call.wait_for_tone(1000.0, timeout=30, min_frames=50)  # baresip's sine, decrypted by the bridge
        # hold and resume (two re-INVITEs): the same keys, so the SRTP contexts continue and audio resumes
        await call.hold(True)
        await call.hold(False)
        frames = call.frames_received
        await call.wait_for_tone(1000.0, timeout=30, min_frames=frames + 50)
        srtp = bridge.calls.outbound[call.call_id].media.rtp_leg.srtp
        assert srtp is not None and srtp.auth_failures == 0 and srtp.replayed == 0
        # the durable call record (crash recovery) holds no SRTP key, encoded or raw
        stored = b"".join(path.read_bytes() for path in e2e.tmp.glob("bridge0.db*"))
        assert call.call_id.encode() in stored  # the right database: it has this call
        for key in (srtp._local_key, srtp._remote_key):
            assert key not in stored and base64.b64encode(key)[:20] not in stored
            assert base64.b64encode(key)[:20].decode() not in caplog.text  # nor any log line (DEBUG included)
        assert "inline:" not in caplog.text
        await call.hangup()
        await assert_released(bridge)
    finally:
        await capture.stop()
    await peer.stop()  # closes baresip's recording of what it decoded
    assert peer.best_tone_ratio(440.0) > 0.5, peer.output()[-2000:]  # the Matrix tone, decrypted by baresip
    audio = rtp_audio(capture.packets())
    assert len(audio) >= 100, "no RTP seen on the wire"
    table = G711_DECODE[0]
    for datagram in audio:
        assert len(datagram) == 12 + 160 + SRTP_TAG_80  # PCMU 20 ms + the SRTP auth tag
        pcm = array.array("h", [table[b] for b in datagram[12:172]])
        assert tone_ratio(pcm, 8000, 1000.0) < 0.2 and tone_ratio(pcm, 8000, 440.0) < 0.2, "plaintext tone"


async def test_tls_trunk_with_a_certificate_for_another_host_is_refused_and_matrix_is_told(
        e2e: E2E, peers: list[Baresip], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca = TestCa(tmp_path)
    peer = await baresip(peers, tmp_path, mediaenc="srtp-mand", tls=ca.leaf("trunk.example.net"))
    bridge = await e2e.bridge(tls_trunk(ca, peer))
    alice, room = await portal(e2e)
    call = await alice.place_call(room, GHOST)
    end = await call.wait_hangup_or_reject(timeout=30)
    assert end["type"] in ("m.call.reject", "m.call.hangup")
    assert "TLS: certificate of localhost" in caplog.text and "refused" in caplog.text
    assert "INVITE" not in peer.output()  # nothing reached the impostor's SIP stack
    await assert_released(bridge)


async def test_srtp_required_against_a_plain_rtp_peer_is_refused_both_ways(
        e2e: E2E, peers: list[Baresip], tmp_path: Path) -> None:
    ca = TestCa(tmp_path)
    peer = await baresip(peers, tmp_path, mediaenc=None, tls=ca.leaf("localhost"))

    def config(data: dict[str, Any]) -> None:
        tls_trunk(ca, peer)(data)
        data["sip"]["inbound"]["default_route"] = ["@alice:bridge.test"]

    bridge = await e2e.bridge(config)
    alice, room = await portal(e2e)
    # outbound: baresip without SRTP cannot take our RTP/SAVP offer; the call ends and Matrix is told
    call = await alice.place_call(room, GHOST)
    end = await call.wait_hangup_or_reject(timeout=30)
    assert end["type"] in ("m.call.reject", "m.call.hangup")
    # inbound: its plain RTP/AVP offer gets 488 from the bridge
    await peer.dial(f"sip:15551234567@127.0.0.1:{e2e.plan.sip_port}")
    for _ in range(100):
        if "488 Not Acceptable Here" in peer.output():
            break
        await asyncio.sleep(0.1)
    assert "488 Not Acceptable Here" in peer.output()
    await assert_released(bridge)


async def test_phone_call_with_srtp_to_matrix_carries_tone_both_ways(
        e2e: E2E, peers: list[Baresip], tmp_path: Path) -> None:
    peer = await baresip(peers, tmp_path, mediaenc="srtp-mand", user="15557654321")

    def config(data: dict[str, Any]) -> None:
        data["sip"]["inbound"]["default_route"] = ["@alice:bridge.test"]
        data["media"]["srtp"] = "required"

    bridge = await e2e.bridge(config)
    alice = await e2e.client("alice")
    await alice.start_sync(auto_join=True)
    await peer.dial(f"sip:15551234567@127.0.0.1:{e2e.plan.sip_port}")
    call = await alice.wait_incoming_call(timeout=40)
    await call.answer(tone_hz=660.0)
    await call.wait_for_tone(1000.0, timeout=30, min_frames=50)  # baresip's sine through SRTP
    (session,) = bridge.calls.inbound.values()
    assert session.media.srtp_suite == "AES_CM_128_HMAC_SHA1_80"
    await asyncio.sleep(1.0)  # a second of the Matrix tone towards baresip
    await call.hangup()
    await assert_released(bridge)
    await peer.stop()
    assert peer.best_tone_ratio(660.0) > 0.5, peer.output()[-2000:]


@pytest.mark.parametrize(("mediaenc", "suite"), [("srtp", "AES_CM_128_HMAC_SHA1_80"), (None, None)])
async def test_optional_srtp_encrypts_with_a_best_effort_peer_and_falls_back_to_rtp_with_a_plain_one(
        e2e: E2E, peers: list[Baresip], tmp_path: Path, mediaenc: str | None, suite: str | None) -> None:
    peer = await baresip(peers, tmp_path, mediaenc=mediaenc)

    def config(data: dict[str, Any]) -> None:
        data["sip"]["trunk"]["proxy"] = f"sip:127.0.0.1:{peer.sip_port}"
        data["media"]["srtp"] = "optional"

    bridge = await e2e.bridge(config)
    alice, room = await portal(e2e)
    call = await alice.place_call(room, GHOST, codecs=["PCMU"])
    await call.wait_answer(timeout=30)
    assert bridge.calls.outbound[call.call_id].media.srtp_suite == suite
    await call.wait_for_tone(1000.0, timeout=30, min_frames=50)
    await call.hangup()
    await assert_released(bridge)
