"""Media in worker processes (media.workers), end to end: a media worker killed with SIGKILL mid-call ends
that call on both sides (Matrix hangup + SIP BYE), a call on another worker keeps its audio, the worker is
replaced and a new call afterwards works."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from bridge.media.call_media import CallMedia
from bridge.media.remote_media import RemoteCallMedia
from tests.e2e.conftest import E2E, GHOST, assert_released, eventually
from tests.e2e.test_inbound_calls import alice_client, phone, routes
from tests.e2e.test_outbound_calls import portal_room, trunk
from tests.harness.rtp_peer import RtpPeer

pytestmark = pytest.mark.e2e


def two_workers(data: dict[str, Any]) -> None:
    routes()(data)
    data["media"]["workers"] = 2  # whatever the machine's core count: the test needs two


async def test_killed_media_worker_ends_its_call_on_both_sides_and_spares_the_other(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge(two_workers)
    pool = getattr(bridge.media, "pool")  # noqa: B009 (WorkerMedia)
    assert len(pool.workers) == 2
    # call 1: bob (Matrix) -> trunk
    rtp_peer.start_sending(seconds=60)
    trunk_sipp = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    bob = await e2e.client("bob")
    bob_room = await portal_room(bob)
    doomed = await bob.place_call(bob_room, GHOST)
    await doomed.wait_answer(timeout=30)
    await doomed.wait_for_tone(1000.0, timeout=30, min_frames=25)
    # call 2: phone -> alice (Matrix), on the other worker
    phone_rtp = RtpPeer(tone_hz=1000.0)
    await phone_rtp.open()
    peers = [phone_rtp]
    try:
        phone_rtp.start_sending(seconds=60)
        alice = await alice_client(e2e)
        phone_sipp = await phone(e2e, "caller_wait_bye.xml", "-key", "rtp_port", str(phone_rtp.port))
        survivor = await alice.wait_incoming_call(timeout=40)
        await survivor.answer()
        await survivor.wait_for_frames(25, timeout=30)
        await eventually(lambda: phone_rtp.received >= 25, 20, "RTP at the phone")

        media = bridge.calls.outbound[doomed.call_id].media
        assert isinstance(media, RemoteCallMedia)
        other = next(iter(bridge.calls.inbound.values())).media
        assert isinstance(other, RemoteCallMedia) and other.worker_index != media.worker_index
        pid = pool.workers[media.worker_index].pid
        os.kill(pid, signal.SIGKILL)

        # the crashed worker's call ends on both sides
        end = await bob.wait_for_event(bob_room, lambda ev: ev.get("type") == "m.call.hangup"
                                       and ev["sender"] == GHOST, timeout=20)
        assert end["content"]["call_id"] == doomed.call_id
        assert await trunk_sipp.wait() == 0, trunk_sipp.report()  # the trunk got its BYE and answered it
        assert "BYE sip:" in trunk_sipp.messages
        # the other call still has audio both ways
        frames, packets = survivor.frames_received, phone_rtp.received
        await survivor.wait_for_frames(frames + 50, timeout=20)
        await eventually(lambda: phone_rtp.received >= packets + 50, 20, "RTP at the phone after the crash")
        assert bridge.calls.inbound, "the call on the other worker must still be up"
        # the worker is replaced, and a new call works
        await eventually(lambda: pool.workers[media.worker_index].alive, 30, "the worker to be restarted")
        assert pool.workers[media.worker_index].pid != pid and pool.restarts == 1
        fresh_rtp = RtpPeer(tone_hz=1000.0)  # a peer sends to the first source it heard: a new one
        await fresh_rtp.open()
        peers.append(fresh_rtp)
        fresh_rtp.start_sending(seconds=60)
        trunk_sipp = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(fresh_rtp.port))
        fresh = await bob.place_call(bob_room, GHOST)
        await fresh.wait_answer(timeout=30)
        await fresh.wait_for_tone(1000.0, timeout=30, min_frames=25)
        fresh_media = bridge.calls.outbound[fresh.call_id].media
        assert isinstance(fresh_media, RemoteCallMedia) and fresh_media.worker_index == media.worker_index
        await fresh.hangup()
        assert await trunk_sipp.wait() == 0, trunk_sipp.report()
        await survivor.hangup()
        assert await phone_sipp.wait() == 0, phone_sipp.report()
        await assert_released(bridge)
    finally:
        for peer in peers:
            await peer.close()


async def test_media_workers_zero_keeps_calls_in_the_bridge_process(e2e: E2E, rtp_peer: RtpPeer) -> None:
    """The default is a worker pool, which the rest of the e2e suite exercises; this is the in-process mode."""

    def in_process(data: dict[str, Any]) -> None:
        data["media"]["workers"] = 0

    bridge = await e2e.bridge(in_process)
    assert getattr(bridge.media, "pool", None) is None
    rtp_peer.start_sending(seconds=60)
    sipp = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    bob = await e2e.client("bob")
    room = await portal_room(bob)
    call = await bob.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await call.wait_for_tone(1000.0, timeout=30, min_frames=25)
    await eventually(lambda: rtp_peer.received >= 25, 20, "RTP packets at the trunk")
    media = bridge.calls.outbound[call.call_id].media
    assert type(media) is CallMedia and media.stats().passthrough
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)
