"""End-to-end fixtures: one Synapse per test session with the bridge's registration; a fresh bridge
(own SQLite DB, own config overrides) per test on the registered appservice port; sipp as the trunk."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.media.factory import WorkerMedia
from tests.harness.bridge_stack import SERVER_NAME, StackPlan, start_bridge
from tests.harness.matrix_client import MatrixTestClient
from tests.harness.rtp_peer import RtpPeer
from tests.harness.rtpengine import RtpengineProcess
from tests.harness.sipp import SippProcess
from tests.harness.synapse import SynapseServer, register_user_sync

SCENARIOS = Path(__file__).parent / "scenarios"
NUMBER = "15551234567"
GHOST = f"@sip_{NUMBER}:{SERVER_NAME}"
USERS = ("alice", "bob", "carol")
# BRIDGE_E2E_MEDIA=rtpengine runs the same tests with media.backend: rtpengine (a real rtpengine per session)
MEDIA_BACKEND = os.environ.get("BRIDGE_E2E_MEDIA", "embedded")
PASSWORD = "correct horse"


@dataclass
class E2E:
    plan: StackPlan
    synapse: SynapseServer
    tmp: Path
    bridges: list[Bridge] = field(default_factory=list)
    clients: list[MatrixTestClient] = field(default_factory=list)
    sipps: list[SippProcess] = field(default_factory=list)
    rtpengine: RtpengineProcess | None = None

    def own(self, sipp: SippProcess) -> SippProcess:
        """Stop this sipp at teardown, whatever the test did."""
        self.sipps.append(sipp)
        return sipp

    async def bridge(self, overrides: Callable[[dict[str, Any]], None] | None = None) -> Bridge:
        def per_test(data: dict[str, Any]) -> None:
            data["appservice"]["database"] = f"sqlite:{self.tmp / f'bridge{len(self.bridges)}.db'}"
            if self.rtpengine is not None:
                data["media"]["backend"] = "rtpengine"
                data["media"]["rtpengine"] = {"nodes": [{"url": self.rtpengine.url}]}
            if overrides:
                overrides(data)

        self.plan.sink.stop()
        try:
            bridge = await start_bridge(self.plan, self.synapse, per_test)
        except BaseException:
            self.plan.sink.start()
            raise
        self.bridges.append(bridge)
        return bridge

    async def client(self, localpart: str, device_id: str | None = None) -> MatrixTestClient:
        client = await MatrixTestClient.login(self.synapse.url, f"@{localpart}:{SERVER_NAME}", PASSWORD,
                                              device_id=device_id)
        await client.start_sync()
        self.clients.append(client)
        return client


class AppserviceSink:
    """Answers the appservice port with 200 while no bridge is running (between tests).

    Synapse backs off exponentially (2 s, 4 s, 8 s, ...) from an appservice whose push failed; with the
    bridge restarted for every test, a push landing between two tests would otherwise delay every later one.
    A thread, not the event loop: pytest-asyncio gives each test its own loop.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _ok(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_PUT = do_POST = do_GET = _ok

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture(scope="session")
def e2e_env(tmp_path_factory: pytest.TempPathFactory, synapse_factory: Any) -> tuple[StackPlan, SynapseServer]:
    plan = StackPlan(tmp_path_factory.mktemp("stack"))
    plan.sink = AppserviceSink(plan.as_port)
    plan.sink.start()
    server = synapse_factory([plan.write_registration()], server_name=SERVER_NAME)
    plan.homeserver_url = server.url
    for user in USERS:
        register_user_sync(server, user, PASSWORD)
    return plan, server


@pytest.fixture(scope="session")
def rtpengine_node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One rtpengine daemon for the session when BRIDGE_E2E_MEDIA=rtpengine, else None."""
    if MEDIA_BACKEND != "rtpengine":
        yield None
        return
    node = RtpengineProcess(tmp_path_factory.mktemp("rtpengine"))
    node.start()
    yield node
    node.stop()


@pytest.fixture
async def e2e(e2e_env: tuple[StackPlan, SynapseServer], tmp_path: Path, rtpengine_node: Any) -> AsyncIterator[E2E]:
    plan, server = e2e_env
    env = E2E(plan, server, tmp_path, rtpengine=rtpengine_node)
    try:
        yield env
    finally:
        for sipp in env.sipps:
            await sipp.aclose()
        for client in env.clients:
            await client.close()
        for bridge in env.bridges:
            await bridge.stop()
        if env.bridges:
            plan.sink.start()


@pytest.fixture
async def rtp_peer() -> AsyncIterator[RtpPeer]:
    """The phone's RTP end: plays a 1 kHz tone (tests/harness/rtp_peer.py)."""
    peer = RtpPeer(tone_hz=1000.0)
    await peer.open()
    yield peer
    await peer.close()


def bridge_call_tasks() -> list[asyncio.Task[Any]]:
    """Live tasks running code of the bridge's call driver or media plane (none may outlive a call)."""
    out = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if code is not None and code.co_qualname == "MediaWorkerProcess._read":
            continue  # a media worker's reader lives as long as the worker, not a call (its calls: see below)
        if "/bridge/calls/" in filename or "/bridge/media/" in filename:
            out.append(task)
    return out


async def assert_released(bridge: Bridge) -> None:
    """No call session, RTP port, or call/media task is left once the calls are over."""
    await eventually(lambda: not bridge.calls.sessions(), 15, "call sessions to finish")
    assert bridge.calls.ports.in_use == frozenset()
    await eventually(lambda: not bridge_call_tasks(), 5, f"call tasks to end: {bridge_call_tasks()}")
    if isinstance(bridge.media, WorkerMedia):  # media.workers: no call left placed on a worker
        pool = bridge.media.pool
        assert [w.load for w in pool.workers] == [0] * len(pool.workers)


async def eventually(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def eventually_async(cond: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
