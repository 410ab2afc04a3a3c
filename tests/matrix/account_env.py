"""A real Synapse with the bridge's Matrix side (bot commands, provisioning API) and an account service, for the
account front-end tests. ``make_account_env`` takes any AccountService (the fake, or the real one)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml

from bridge.calls.account_api import AccountService
from bridge.config import Config, build_registration, parse_config
from bridge.db import create_database
from bridge.matrix import MatrixSide
from tests.harness.matrix_client import MatrixHttpError, MatrixTestClient
from tests.harness.synapse import SynapseServer, free_port, register_user_sync
from tests.matrix.matrix_env import SERVER, RecordingHandler, make_config_data

BOT = f"@sipbot:{SERVER}"
SECRET = secrets.token_urlsafe(32)
USERS = ("alice", "bob", "mallory")


@dataclass
class AccountEnv:
    hs: SynapseServer
    config: Config
    side: MatrixSide
    clients: dict[str, MatrixTestClient]
    tmp: Path

    @property
    def prov_url(self) -> str:
        return f"http://127.0.0.1:{self.config.appservice.port}/_matrix/provision/v3"

    def mxid(self, name: str) -> str:
        return f"@{name}:{SERVER}"

    async def prov(self, method: str, path: str, *, token: str | None, user_id: str | None = None,
                   body: Any = None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        params = {"user_id": user_id} if user_id else {}
        async with aiohttp.ClientSession() as http, http.request(
                method, self.prov_url + path, headers=headers, params=params, json=body) as resp:
            return resp.status, await resp.json()


def bot_notices(client: MatrixTestClient, room_id: str) -> list[str]:
    return [e["content"].get("body", "") for e in client.events
            if e.get("room_id") == room_id and e.get("sender") == BOT and e["type"] == "m.room.message"
            and e["content"].get("msgtype") == "m.notice"]


async def wait_notice(client: MatrixTestClient, room_id: str, containing: str, timeout: float = 30) -> str:
    """The first bot notice in the room containing the text (waiting for it)."""
    found = await client.wait_for(
        lambda: next((n for n in bot_notices(client, room_id) if containing in n), None), timeout=timeout,
        what=f"bot notice with {containing!r} in {room_id}")
    return str(found)


async def wait_new_notice(client: MatrixTestClient, room_id: str, after: int, timeout: float = 40) -> str:
    """The bot's next notice in the room after the first ``after`` ones."""
    await client.wait_for(lambda: len(bot_notices(client, room_id)) > after, timeout=timeout,
                          what=f"bot notice #{after + 1} in {room_id}")
    return bot_notices(client, room_id)[after]


async def fetch_event(client: MatrixTestClient, room_id: str, event_id: str) -> dict[str, Any]:
    return await client.request("GET", f"/rooms/{quote(room_id)}/event/{quote(event_id)}")


async def is_redacted(client: MatrixTestClient, room_id: str, event_id: str) -> bool:
    try:
        event = await fetch_event(client, room_id, event_id)
    except MatrixHttpError:
        return False
    return event.get("content") == {} and "redacted_because" in event.get("unsigned", {})


@asynccontextmanager
async def make_account_env(synapse_factory: Any, tmp: Path, accounts: AccountService | None,
                           tweak: Callable[[dict[str, Any]], None] | None = None) -> AsyncIterator[AccountEnv]:
    port = free_port()
    as_token, hs_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    data = make_config_data(tmp, "http://127.0.0.1:1", port, as_token, hs_token)
    data["provisioning"] = {"shared_secret": SECRET}
    if tweak is not None:
        tweak(data)
    reg_path = tmp / "registration.yaml"
    reg_path.write_text(yaml.safe_dump(build_registration(parse_config(data), as_token, hs_token)))
    hs = await asyncio.to_thread(synapse_factory, [reg_path], server_name=SERVER)
    data["homeserver"]["address"] = hs.url
    config = parse_config(data)
    for name in USERS:
        await asyncio.to_thread(register_user_sync, hs, name, "pass")
    side = MatrixSide(config, create_database(config.appservice.database), RecordingHandler())
    side.accounts = accounts
    await side.start()
    clients = {name: await MatrixTestClient.login(hs.url, f"@{name}:{SERVER}", "pass") for name in USERS}
    for client in clients.values():
        await client.start_sync()
    try:
        yield AccountEnv(hs=hs, config=config, side=side, clients=clients, tmp=tmp)
    finally:
        for client in clients.values():
            await client.close()
        await side.stop()
