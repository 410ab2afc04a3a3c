"""Shared fixtures: real Synapse homeservers (see tests/harness/synapse.py for the pattern).

- ``synapse_factory(appservice_registrations=[...], server_name=..., extra_config=...) -> SynapseServer``:
  session-scoped and synchronous, so module/session/function fixtures and async tests can all use it. Each
  call starts a fresh Synapse in its own temp dir (write the appservice registration first: Synapse reads it
  at start). Every server is stopped at session end; ``stop_synapse_sync(server)`` stops one earlier.
- ``synapse_server``: one plain Synapse (no appservice) shared by the whole session, for client-only tests.
- ``_loopback_only_ice`` (autouse, session): aioice gathers host candidates on 127.0.0.1 only, for every
  aiortc peer connection in the test process (test clients and an in-process bridge alike).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness.matrix_client import loopback_ice
from tests.harness.synapse import SynapseFactory, SynapseServer, start_synapse_sync, stop_synapse_sync


@pytest.fixture(scope="session")
def synapse_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseFactory]:
    started: list[SynapseServer] = []

    def factory(
        appservice_registrations: Sequence[Path] = (),
        *,
        server_name: str = "bridge.test",
        extra_config: dict[str, Any] | None = None,
    ) -> SynapseServer:
        server = start_synapse_sync(
            tmp_path_factory.mktemp("synapse"),
            server_name=server_name,
            appservice_registrations=appservice_registrations,
            extra_config=extra_config,
        )
        started.append(server)
        return server

    yield factory
    for server in started:
        stop_synapse_sync(server)


@pytest.fixture(scope="session")
def synapse_server(synapse_factory: SynapseFactory) -> SynapseServer:
    return synapse_factory()


@pytest.fixture(scope="session", autouse=True)
def _loopback_only_ice() -> Iterator[None]:
    with loopback_ice():
        yield
