"""Media worker processes (media.workers): calls placed on the least-loaded worker, audio and DTMF through a
worker, a killed worker ending only its calls and coming back, and a stop that leaves no process behind."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bridge.media.call_media import CallMedia
from bridge.media.dtmf import DtmfError, encode_event
from bridge.media.errors import MediaError
from bridge.media.ports import PortAllocator
from bridge.media.remote_media import WORKER_CRASHED, RemoteCallMedia
from bridge.media.settings import MediaSettings
from bridge.media.worker import MediaWorker
from bridge.media.worker_ipc import WorkerInit
from bridge.media.worker_pool import WorkerPool
from bridge.sip.sdp import SdpError

from .call_fixtures import Call, connect_inbound, connect_outbound, free_port_range, sip_sdp
from .helpers import wait_for
from .rtp_peer import open_rtp_peer
from .test_call_media import MATRIX_TONE, assert_audio_both_ways
from .webrtc_peer import MatrixPeer

pytestmark = pytest.mark.timeout(120)
log = logging.getLogger("test.worker_pool")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): count it as gone only when reaped (the pool must reap its children)
    return True


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    settings = MediaSettings()
    settings.port_start, settings.port_end = free_port_range(40)
    p = WorkerPool(settings, 2, stats_interval_s=0.1)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def make_call(pool: WorkerPool) -> AsyncIterator[Callable[..., Any]]:
    ports = PortAllocator(pool.settings.rtp_host, pool.settings.port_start, pool.settings.port_end)
    calls: list[Call] = []

    async def factory(*, codecs: list[str] | None = None) -> Call:
        media = RemoteCallMedia(pool.settings, ports, pool, log=logging.LoggerAdapter(log, {"call_id": "t"}))
        call = Call(media, ports, MatrixPeer(freq=MATRIX_TONE, codecs=codecs), await open_rtp_peer())
        media.on_failure = call.failures.append
        calls.append(call)
        return call

    factory.ports = ports  # type: ignore[attr-defined]
    yield factory
    for call in calls:
        await call.rtp.close()
        await call.matrix.close()
        await call.media.close()


def _worker(media: CallMedia) -> int:
    assert isinstance(media, RemoteCallMedia)
    return media.worker_index


async def test_calls_are_placed_on_the_least_loaded_worker(pool: WorkerPool, make_call: Any) -> None:
    first, second, third = [await make_call() for _ in range(3)]
    assert [_worker(c.media) for c in (first, second, third)] == [0, 1, 0]
    assert [w.load for w in pool.workers] == [2, 1]
    await first.media.close()
    await third.media.close()
    assert [w.load for w in pool.workers] == [0, 1]
    fourth = await make_call()
    assert _worker(fourth.media) == 0


async def test_outbound_call_in_a_worker_carries_audio_both_ways_and_dtmf(make_call: Any) -> None:
    call: Call = await make_call()
    seen: list[tuple[str, str]] = []
    call.media.on_dtmf = lambda digit, side: seen.append((digit, side))
    await connect_outbound(call)
    await assert_audio_both_ways(call)
    await call.matrix.send_dtmf(event=5, payload_type=126)
    await wait_for(lambda: seen == [("5", "matrix")], what="Matrix DTMF reported by the worker")
    await wait_for(lambda: call.media.stats().webrtc_frames_in >= 50, what="counters pushed by the worker")
    stats = call.media.stats()
    assert stats.passthrough and stats.codec_sip == "PCMU" and stats.rtp_packets_in >= 50
    assert call.media.webrtc_connection_state == "connected"
    with pytest.raises(DtmfError):
        call.media.send_dtmf("x")
    await call.media.close()
    final = call.media.stats()  # the worker's last counters come back with the close
    assert final.rtp_packets_out >= stats.rtp_packets_out and final.dtmf == [("5", "matrix")]
    assert call.failures == []


async def test_inbound_call_in_a_worker_transcodes_and_reports_phone_dtmf(make_call: Any) -> None:
    call: Call = await make_call(codecs=["opus"])
    seen: list[tuple[str, str]] = []
    call.media.on_dtmf = lambda digit, side: seen.append((digit, side))
    await connect_inbound(call, sip_codecs="8 101")
    assert call.media.sip_direction == "sendrecv"
    call.rtp.start_tone(call.rtp_target, pt=8)
    await wait_for(lambda: len(call.matrix.frames) >= 30, what="phone audio at the Matrix peer")
    await wait_for(lambda: len([p for p in call.rtp.received if p.payload_type == 8]) >= 30, what="PCMA at phone")
    await call.rtp.stop_tone()
    for i in range(4):  # one key press: the same RTP timestamp, end bit from the second packet on
        call.rtp.ts = 1234
        call.rtp.send_packet(call.rtp_target, encode_event(9, end=i > 0, volume=10, duration=160), pt=101)
    await wait_for(lambda: seen == [("9", "sip")], what="phone DTMF reported by the worker")
    await wait_for(lambda: call.media.stats().codec_webrtc is not None, what="counters")
    assert call.media.stats().codec_sip == "PCMA" and not call.media.stats().passthrough


async def test_unusable_sip_answer_raises_in_the_bridge_process(make_call: Any) -> None:
    call: Call = await make_call()
    await call.media.open_rtp()
    with pytest.raises(SdpError):  # the driver catches this where it calls: it must not happen in the worker
        call.media.answer_sip_offer(sip_sdp(call.rtp.port, "9").replace(b"G722/8000", b"GSM/8000"))
    call.media.sip_offer()
    with pytest.raises(SdpError):
        call.media.apply_sip_answer(b"this is not sdp")
    # the worker saw neither: a good answer afterwards still connects the call
    call.media.apply_sip_answer(sip_sdp(call.rtp.port, "0 101"))
    call.rtp.start_tone(call.rtp_target if call.rtp_target[1] else ("127.0.0.1", call.media.rtp_port or 0))
    await wait_for(lambda: call.media.stats().rtp_packets_in >= 10, what="RTP counted by the worker")


async def test_a_port_another_process_holds_is_skipped(pool: WorkerPool, make_call: Any) -> None:
    ports: PortAllocator = make_call.ports
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", pool.settings.port_start + pool.settings.port_start % 2))
    try:
        call: Call = await make_call()
        _host, port = await call.media.open_rtp()
        assert port != blocker.getsockname()[1]
        assert ports.in_use == frozenset({port})
    finally:
        blocker.close()


async def test_killed_worker_ends_only_its_calls_and_is_replaced(pool: WorkerPool, make_call: Any) -> None:
    doomed: Call = await make_call()
    survivor: Call = await make_call()
    assert (_worker(doomed.media), _worker(survivor.media)) == (0, 1)
    await connect_outbound(doomed)
    await connect_outbound(survivor)
    await assert_audio_both_ways(survivor, packets=20)
    dead_pid = pool.workers[0].pid
    assert dead_pid is not None
    ports: PortAllocator = make_call.ports
    doomed_port = doomed.media.rtp_port

    os.kill(dead_pid, signal.SIGKILL)
    await wait_for(lambda: doomed.failures == [WORKER_CRASHED], what="the crashed worker's call told")
    with pytest.raises(MediaError):
        await doomed.media.create_webrtc_offer()
    await doomed.media.close()
    assert doomed_port not in ports.in_use
    assert ports._is_quarantined(doomed_port or 0)  # a stream may still be aimed at it

    # the other worker's call is untouched and keeps its audio
    before = len(survivor.matrix.frames), len(survivor.rtp.received)
    await wait_for(lambda: len(survivor.matrix.frames) >= before[0] + 25, what="survivor audio to Matrix")
    await wait_for(lambda: len(survivor.rtp.received) >= before[1] + 25, what="survivor audio to the phone")
    assert survivor.failures == []

    # the slot is refilled and takes new calls
    await wait_for(lambda: pool.workers[0].alive and pool.workers[0].pid != dead_pid, what="worker restarted")
    assert not _alive(dead_pid)
    assert pool.restarts == 1
    fresh: Call = await make_call()
    assert _worker(fresh.media) == 0
    await connect_outbound(fresh)
    await assert_audio_both_ways(fresh, packets=20)


async def test_stop_leaves_no_worker_process_and_signals_do_not_stop_workers() -> None:
    settings = MediaSettings()
    settings.port_start, settings.port_end = free_port_range(20)
    pool = WorkerPool(settings, 2)
    await pool.start()
    pids = [p for p in pool.pids if p is not None]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    for pid in pids:  # Ctrl-C / a service manager signal the process group: workers wait for the bridge
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert all(w.alive for w in pool.workers) and pool.restarts == 0
    ports = PortAllocator(settings.rtp_host, settings.port_start, settings.port_end)
    media = RemoteCallMedia(settings, ports, pool, log=log)
    await media.open_rtp()  # a call still open at stop: the worker closes it on its way out
    await pool.stop()
    assert all(w.process is not None and w.process.returncode == 0 for w in pool.workers)
    assert not any(_alive(p) for p in pids)


async def test_a_call_placed_while_every_worker_restarts_fails_with_media_error() -> None:
    settings = MediaSettings()
    settings.port_start, settings.port_end = free_port_range(20)
    pool = WorkerPool(settings, 1)
    await pool.start()
    try:
        ports = PortAllocator(settings.rtp_host, settings.port_start, settings.port_end)
        pid = pool.workers[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: not pool.workers[0].alive, what="the pool noticing the death")
        media = RemoteCallMedia(settings, ports, pool, log=log)  # placed, though nothing runs right now
        with pytest.raises(MediaError):
            await media.open_rtp()  # the driver handles this like a full port range
        await media.close()
        assert ports.in_use == frozenset()
        await wait_for(lambda: pool.workers[0].alive, what="the worker restarted")
    finally:
        await pool.stop()


class _Writer:
    def __init__(self) -> None:
        self.data = b""

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.data += data


def test_an_exception_that_does_not_pickle_still_answers_the_request() -> None:
    class LibraryError(Exception):  # a local class: pickle cannot name it
        pass

    writer = _Writer()
    worker = MediaWorker(WorkerInit(index=0, settings=MediaSettings()), writer)  # type: ignore[arg-type]
    worker.send_error(7, LibraryError("boom"))
    message = pickle.loads(writer.data[4:])
    assert message[:3] == ("reply", 7, False)
    assert isinstance(message[3], MediaError) and "LibraryError: boom" in str(message[3])
