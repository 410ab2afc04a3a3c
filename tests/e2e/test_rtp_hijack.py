"""RTP hijack protection end to end (issue 7): an attacker sprays the bridge's whole RTP port range with a
steady PCMU tone before and during a Matrix -> phone call. Real Synapse, the bridge, sipp as the trunk, a
symmetric-RTP far end playing 1 kHz, an aiortc Matrix caller playing 440 Hz; the attacker plays 2.5 kHz."""

from __future__ import annotations

import array
import asyncio
import logging
from collections.abc import AsyncIterator

import av
import pytest

from tests.e2e.conftest import E2E, GHOST, SCENARIOS, assert_released, eventually
from tests.harness.bridge_stack import free_udp_port
from tests.harness.rtp_peer import RtpPeer
from tests.harness.rtp_sprayer import RtpSprayer
from tests.harness.sipp import SippProcess
from tests.harness.tone import SILENCE_RMS, frame_mono_samples, rms, tone_ratio

pytestmark = pytest.mark.e2e

TRUNK_HZ = 1000.0
ATTACK_HZ = 2500.0


@pytest.fixture
async def rtp_peer() -> AsyncIterator[RtpPeer]:
    peer = RtpPeer(tone_hz=TRUNK_HZ)
    await peer.open()
    yield peer
    await peer.close()


@pytest.mark.parametrize(
    ("mode", "attacker_hosts"),
    [
        # the default: an attacker anywhere but the SDP's / signalling peer's IP is refused outright
        ("signalling", ["127.0.0.2"]),
        # strict: even another port on the trunk's own IP is refused (signalling mode would let a stream
        # from there qualify as a NATed far end before the trunk's own media starts)
        ("strict", ["127.0.0.2", "127.0.0.1"]),
    ],
)
async def test_rtp_sprayed_at_the_whole_port_range_is_never_heard_nor_answered(
    e2e: E2E, rtp_peer: RtpPeer, caplog: pytest.LogCaptureFixture, mode: str, attacker_hosts: list[str]
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    bridge = await e2e.bridge(lambda data: data["media"].update(rtp_source=mode))
    start, end = e2e.plan.rtp_range
    attackers = [RtpSprayer(host, range(start, end), tone_hz=ATTACK_HZ) for host in attacker_hosts]
    try:
        for attacker in attackers:
            await attacker.start()
        await asyncio.sleep(0.5)  # spraying before the call: no port is taken yet
        rtp_peer.start_sending(seconds=60)
        sipp = SippProcess(SCENARIOS / "trunk_answer.xml", local_port=e2e.plan.trunk_port,
                           extra_args=["-key", "rtp_port", str(rtp_peer.port)], timeout=60, workdir=e2e.tmp / "sipp")
        await e2e.own(sipp).start()
        alice = await e2e.client("alice")
        room = await alice.create_dm(GHOST)
        await alice.wait_for_membership(room, GHOST, "join", timeout=30)
        call = await alice.place_call(room, GHOST)

        # every audible frame the Matrix user gets is checked for the attacker's tone, not just the last second
        attack_share: list[float] = []
        receive = call.receiver.add

        def checked(frame: av.AudioFrame) -> None:
            receive(frame)
            samples: array.array[int] = frame_mono_samples(frame)
            if rms(samples) > SILENCE_RMS:
                attack_share.append(tone_ratio(samples, frame.sample_rate, ATTACK_HZ))

        call.receiver.add = checked  # type: ignore[method-assign]

        await call.wait_answer(timeout=30)
        await call.wait_for_tone(TRUNK_HZ, timeout=30, min_frames=50)
        await eventually(lambda: rtp_peer.received_payload_types.get(0, 0) >= 50, 20, "Matrix audio at the trunk")
        heard = call.frames_received
        await eventually(lambda: call.frames_received >= heard + 50, 20, "a further second of audio under attack")
        assert call.tone_ratio(TRUNK_HZ) >= 0.5
        assert len(attack_share) >= 50 and max(attack_share) < 0.2, max(attack_share)

        media = bridge.calls.outbound[call.call_id].media
        # counters of a call in a media worker reach the bridge process once a second
        await eventually(lambda: media.stats().rtp_refused >= 100, 5, "refusals counted")
        stats = media.stats()
        assert stats.rtp_refused >= 100 and stats.rtp_refused_sources == len(attackers)
        assert not media.rtp_leg.latched  # still the trunk's SDP address
        assert [a.received for a in attackers] == [0] * len(attackers)

        await call.hangup()
        assert await sipp.wait() == 0, sipp.report()
        await assert_released(bridge)
        await asyncio.sleep(0.2)  # the attackers keep spraying the freed port: still nothing comes back
        assert [a.received for a in attackers] == [0] * len(attackers)
    finally:
        for attacker in attackers:
            await attacker.close()

    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    refusals = [line for line in lines if "refusing RTP" in line]
    # logged once per attacker (the rest only counted), with its address and the call's IDs
    assert len(refusals) == len(attackers), refusals
    for host in attacker_hosts:
        assert any(f"from {host}:" in line and f"call_id={call.call_id} " in line and "sip_call_id=-]" not in line
                   for line in refusals), refusals
    # and the count when the call ends
    assert any(f"call_id={call.call_id} " in line and f"from {len(attackers)} sources during the call" in line
               for line in lines), lines


async def test_a_natted_trunk_sending_from_another_port_is_latched_while_a_sprayer_is_refused(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    """The default mode still works with a trunk behind NAT: its SDP names a port nothing sends from (and that
    never answers); its media comes from another port on its signalling IP and is taken after 4 packets."""
    bridge = await e2e.bridge()
    start, end = e2e.plan.rtp_range
    attacker = RtpSprayer("127.0.0.2", range(start, end), tone_hz=ATTACK_HZ)
    try:
        await attacker.start()
        rtp_peer.start_sending(seconds=60)
        advertised = free_udp_port()  # the "private" address of the SDP: nobody listens there
        sipp = SippProcess(SCENARIOS / "trunk_answer.xml", local_port=e2e.plan.trunk_port,
                           extra_args=["-key", "rtp_port", str(advertised)], timeout=60, workdir=e2e.tmp / "sipp")
        await e2e.own(sipp).start()
        alice = await e2e.client("alice")
        room = await alice.create_dm(GHOST)
        await alice.wait_for_membership(room, GHOST, "join", timeout=30)
        call = await alice.place_call(room, GHOST)
        await call.wait_answer(timeout=30)
        media = bridge.calls.outbound[call.call_id].media
        assert media.rtp_port is not None
        rtp_peer.send_to(("127.0.0.1", media.rtp_port))  # a NATed phone just starts talking
        await call.wait_for_tone(TRUNK_HZ, timeout=30, min_frames=50)
        await eventually(lambda: rtp_peer.received_payload_types.get(0, 0) >= 50, 20, "Matrix audio at the trunk")
        await eventually(lambda: media.rtp_leg.latched, 5, "the NATed source latched (as reported by a worker)")
        assert media.rtp_leg.latched and media.rtp_leg.remote == ("127.0.0.1", rtp_peer.port)
        assert call.tone_ratio(ATTACK_HZ) < 0.2
        stats = media.stats()
        assert stats.rtp_refused > 0 and stats.rtp_refused_sources == 1 and attacker.received == 0
        await call.hangup()
        assert await sipp.wait() == 0, sipp.report()
        await assert_released(bridge)
    finally:
        await attacker.close()
