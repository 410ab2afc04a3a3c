"""Helpers and the module-scoped ``env`` fixture for tests/matrix: a real Synapse with the bridge's
Matrix side registered as an appservice, shared per test module.

Ports and tokens are picked first, the registration (built by the bridge's own ``build_registration``) is
written, then Synapse starts, then ``MatrixSide`` starts with a ``RecordingHandler`` as the call handler.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from bridge.config import Config, build_registration, parse_config
from bridge.db import create_database
from bridge.matrix import CallEvent, MatrixSide
from tests.harness.matrix_client import MatrixTestClient
from tests.harness.synapse import SynapseServer, free_port, register_user_sync

SERVER = "bridge.test"


@dataclass
class RecordingHandler:
    """A CallHandler that records what reaches it, in arrival order."""

    calls: list[CallEvent] = field(default_factory=list)
    members: list[tuple[str, str, str]] = field(default_factory=list)

    async def on_call_event(self, evt: CallEvent) -> None:
        self.calls.append(evt)

    async def on_member_change(self, room_id: str, user_id: str, membership: str) -> None:
        self.members.append((room_id, user_id, membership))

    def calls_in(self, room_id: str) -> list[CallEvent]:
        return [c for c in self.calls if c.room_id == room_id]


async def eventually(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``cond`` until truthy (generous timeout: shared 2-core box)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = cond()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class MatrixEnv:
    hs: SynapseServer
    config: Config
    config_data: dict[str, Any]
    tmp: Path
    side: MatrixSide
    recorder: RecordingHandler
    alice: MatrixTestClient
    mallory: MatrixTestClient

    @property
    def as_url(self) -> str:
        return f"http://127.0.0.1:{self.config.appservice.port}"

    def ghost(self, number: str) -> str:
        return f"@sip_{number}:{SERVER}"


def make_config_data(tmp: Path, hs_url: str, port: int, as_token: str, hs_token: str,
                     db_name: str = "bridge.db") -> dict[str, Any]:
    return {
        "homeserver": {"address": hs_url, "domain": SERVER},
        "appservice": {
            "address": f"http://127.0.0.1:{port}", "hostname": "127.0.0.1", "port": port,
            "as_token": as_token, "hs_token": hs_token, "database": f"sqlite:{tmp / db_name}",
        },
        # mallory is a local user explicitly excluded: proves per-user rules beat the server rule.
        "bridge": {"permissions": {SERVER: "user", f"@mallory:{SERVER}": "none"}},
        "logging": {"level": "DEBUG"},
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(synapse_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MatrixEnv]:
    tmp = tmp_path_factory.mktemp("matrix")
    port = free_port()
    as_token, hs_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    data = make_config_data(tmp, "http://127.0.0.1:1", port, as_token, hs_token)
    reg_path = tmp / "registration.yaml"
    reg_path.write_text(yaml.safe_dump(build_registration(parse_config(data), as_token, hs_token)))
    hs = await asyncio.to_thread(synapse_factory, [reg_path], server_name=SERVER)
    data["homeserver"]["address"] = hs.url
    config = parse_config(data)
    for name in ("alice", "mallory"):
        await asyncio.to_thread(register_user_sync, hs, name, "pass")
    recorder = RecordingHandler()
    side = MatrixSide(config, create_database(config.appservice.database), recorder)
    await side.start()
    alice = await MatrixTestClient.login(hs.url, f"@alice:{SERVER}", "pass")
    mallory = await MatrixTestClient.login(hs.url, f"@mallory:{SERVER}", "pass")
    await alice.start_sync()
    await mallory.start_sync()
    try:
        yield MatrixEnv(hs=hs, config=config, config_data=data, tmp=tmp, side=side, recorder=recorder,
                        alice=alice, mallory=mallory)
    finally:
        await alice.close()
        await mallory.close()
        await side.stop()
