"""End-to-end fixtures: one Synapse per test session with the bridge's registration; a fresh bridge
(own SQLite DB, own config overrides) per test on the registered appservice port; sipp as the trunk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from tests.harness.bridge_stack import SERVER_NAME, StackPlan, start_bridge
from tests.harness.matrix_client import MatrixTestClient
from tests.harness.synapse import SynapseServer, register_user_sync

SCENARIOS = Path(__file__).parent / "scenarios"
NUMBER = "15551234567"
GHOST = f"@sip_{NUMBER}:{SERVER_NAME}"
USERS = ("alice", "bob", "carol")
PASSWORD = "correct horse"


@dataclass
class E2E:
    plan: StackPlan
    synapse: SynapseServer
    tmp: Path
    bridges: list[Bridge] = field(default_factory=list)
    clients: list[MatrixTestClient] = field(default_factory=list)

    async def bridge(self, overrides: Callable[[dict[str, Any]], None] | None = None) -> Bridge:
        def per_test(data: dict[str, Any]) -> None:
            data["appservice"]["database"] = f"sqlite:{self.tmp / f'bridge{len(self.bridges)}.db'}"
            if overrides:
                overrides(data)

        bridge = await start_bridge(self.plan, self.synapse, per_test)
        self.bridges.append(bridge)
        return bridge

    async def client(self, localpart: str, device_id: str | None = None) -> MatrixTestClient:
        client = await MatrixTestClient.login(self.synapse.url, f"@{localpart}:{SERVER_NAME}", PASSWORD,
                                              device_id=device_id)
        await client.start_sync()
        self.clients.append(client)
        return client


@pytest.fixture(scope="session")
def e2e_env(tmp_path_factory: pytest.TempPathFactory, synapse_factory: Any) -> tuple[StackPlan, SynapseServer]:
    plan = StackPlan(tmp_path_factory.mktemp("stack"))
    server = synapse_factory([plan.write_registration()], server_name=SERVER_NAME)
    plan.homeserver_url = server.url
    for user in USERS:
        register_user_sync(server, user, PASSWORD)
    return plan, server


@pytest.fixture
async def e2e(e2e_env: tuple[StackPlan, SynapseServer], tmp_path: Path) -> AsyncIterator[E2E]:
    plan, server = e2e_env
    env = E2E(plan, server, tmp_path)
    try:
        yield env
    finally:
        for client in env.clients:
            await client.close()
        for bridge in env.bridges:
            await bridge.stop()


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
