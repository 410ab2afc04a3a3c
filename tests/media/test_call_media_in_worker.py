"""tests/media/test_call_media.py again, each call's media in a worker process (``RemoteCallMedia``, the
default ``media.workers: auto``): the facade must behave the same whichever process runs the media."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bridge.media.ports import PortAllocator
from bridge.media.remote_media import RemoteCallMedia
from bridge.media.settings import MediaSettings
from bridge.media.worker_pool import WorkerPool

from .call_fixtures import Call, connect_inbound, free_port_range, sip_sdp
from .helpers import wait_for
from .rtp_peer import RtpPeer, open_rtp_peer
from .test_call_media import *  # noqa: F403 (the same tests, with the make_call below)
from .test_call_media import MATRIX_TONE, assert_audio_both_ways, rtp_audio
from .webrtc_peer import MatrixPeer

log = logging.getLogger("test.call_media_in_worker")


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    settings = MediaSettings()
    settings.port_start, settings.port_end = free_port_range(40)
    p = WorkerPool(settings, 1, stats_interval_s=0.05)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture  # type: ignore[no-redef]
async def make_call(pool: WorkerPool) -> AsyncIterator[Callable[..., Any]]:
    calls: list[Call] = []
    extra: list[RtpPeer] = []
    ports = PortAllocator(pool.settings.rtp_host, pool.settings.port_start, pool.settings.port_end)

    async def factory(*, codecs: list[str] | None = None) -> Call:
        media = RemoteCallMedia(pool.settings, ports, pool, log=logging.LoggerAdapter(log, {"call_id": "test"}))
        call = Call(media, ports, MatrixPeer(freq=MATRIX_TONE, codecs=codecs), await open_rtp_peer())
        media.on_failure = call.failures.append
        calls.append(call)
        return call

    factory.extra = extra  # type: ignore[attr-defined]
    yield factory
    for call in calls:
        await call.rtp.close()
        await call.matrix.close()
        await call.media.close()
    for peer in extra:
        await peer.close()


# It switches the aiortc-internals flag off with monkeypatch, in this process only: not applicable here.
del test_without_the_aiortc_internals_the_call_is_transcoded  # noqa: F821


async def test_sip_reinvite_to_another_codec_switches_to_transcoding(make_call: Any) -> None:  # type: ignore[no-redef]
    """As in test_call_media.py, but the worker's counters reach this process a moment after the re-INVITE."""
    call: Call = await make_call()
    await connect_inbound(call)
    await assert_audio_both_ways(call, packets=10)
    assert call.media.stats().passthrough
    await call.rtp.stop_tone()
    call.media.answer_sip_offer(sip_sdp(call.rtp.port, "8 101"))  # re-INVITE: PCMA only
    await wait_for(lambda: call.media.stats().codec_sip == "PCMA", what="the worker's counters after the re-INVITE")
    stats = call.media.stats()
    assert not stats.passthrough and stats.codec_sip == "PCMA" and stats.codec_webrtc == "PCMU"
    call.rtp.start_tone(call.rtp_target, pt=8)
    await wait_for(lambda: len(rtp_audio(call.rtp, 8)) >= 25, what="PCMA at the phone after re-INVITE")
    frames_before = len(call.matrix.frames)
    await wait_for(lambda: len(call.matrix.frames) >= frames_before + 25, what="audio at Matrix after re-INVITE")
