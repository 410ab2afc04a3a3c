"""The account front ends end to end: real Synapse, the whole bridge in-process with its real AccountManager, and
Kamailio as the users' registrar (per-user digest passwords, location table). Users log in through the bot's
conversation and through the provisioning API; Kamailio's location table shows what really got registered."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.app import Bridge
from bridge.db.credential_cipher import generate_key
from bridge.matrix.provisioning import STEP_ID
from tests.e2e.conftest import E2E
from tests.harness.kamailio import KamailioProcess
from tests.harness.matrix_client import MatrixTestClient
from tests.matrix.account_env import BOT, bot_notices, is_redacted, wait_new_notice, wait_notice

pytestmark = pytest.mark.e2e

PASSWORDS = {"alice": "Alice-Secret-4711", "bob": "Bob-Secret-0815", "carol": "Carol-Secret-1234"}
SECRET = "provisioning-secret-0123456789abcdef"


@pytest.fixture
async def kamailio(tmp_path: Path) -> AsyncIterator[KamailioProcess]:
    kam = KamailioProcess(tmp_path, accounts=PASSWORDS)
    await kam.start()
    try:
        yield kam
    finally:
        await kam.stop()


def accounts_on(data: dict[str, Any], key: str | None = None) -> None:
    # the shared trunk is for admins only: a user's calls need their own account
    data["bridge"]["accounts"] = {"encryption_key": key or generate_key(), "register_expires": 60,
                                  "shared_trunk": "admin"}
    data["provisioning"] = {"shared_secret": SECRET}


def secrets_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    return [p for p in PASSWORDS.values() if p in text]


class BotUser:
    """A Matrix user talking to the bot: a DM they created, then the bot-owned room the login moves to."""

    def __init__(self, client: MatrixTestClient) -> None:
        self.client = client
        self.dm = ""
        self.room = ""

    async def say(self, room: str, text: str) -> tuple[str, str]:
        before = len(bot_notices(self.client, room))
        event_id = await self.client.send_text(room, text)
        return event_id, await wait_new_notice(self.client, room, before)

    async def login(self, kam: KamailioProcess, user: str, password: str, transport: str = "udp") -> tuple[str, str]:
        """Run the conversation; returns (the password message's event ID, the bot's final answer)."""
        self.dm = await self.client.create_dm(BOT)
        await wait_notice(self.client, self.dm, "help")
        _, reply = await self.say(self.dm, "login")
        self.room = reply.split("https://matrix.to/#/", 1)[1].split(" ", 1)[0]
        await self.client.wait_for(lambda: self.room in self.client.invited_rooms, timeout=30, what="login room")
        await self.client.join(self.room)
        await wait_notice(self.client, self.room, "Send your SIP address")
        await self.say(self.room, f"{user}@acc.test")
        password_event, _ = await self.say(self.room, password)
        await self.say(self.room, kam.uri)  # outbound proxy: acc.test does not resolve
        before = len(bot_notices(self.client, self.room))
        await self.client.send_text(self.room, transport)
        await wait_new_notice(self.client, self.room, before)  # "Logging in…"
        final = await wait_new_notice(self.client, self.room, before + 1)
        return password_event, final


async def test_users_log_in_through_the_bot_and_kamailio_registers_them(
        e2e: E2E, kamailio: KamailioProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bridge = await e2e.bridge(accounts_on)
    users = {name: BotUser(await e2e.client(name)) for name in ("alice", "bob", "carol")}
    for name in ("alice", "bob"):
        password_event, final = await users[name].login(kamailio, name, PASSWORDS[name])
        assert final.startswith(f"Logged in as sip:{name}@acc.test") and "Registration: registered" in final
        assert await is_redacted(users[name].client, users[name].room, password_event)
    assert set(await kamailio.location()) == {"alice", "bob"}

    # wrong password: a clear answer, nothing registered
    password_event, final = await users["carol"].login(kamailio, "carol", "Not-The-Password")
    assert final.startswith("Login failed:") and "401" in final and "Nothing was stored" in final
    assert await is_redacted(users["carol"].client, users["carol"].room, password_event)
    assert "carol" not in await kamailio.location() and bridge.accounts.status("@carol:bridge.test") is None

    # whoami, then logout unregisters
    _, status = await users["bob"].say(users["bob"].room, "whoami")
    assert "sip:bob@acc.test" in status and "Registration: registered, expires in" in status
    _, reply = await users["bob"].say(users["bob"].room, "logout")
    assert "Logged out" in reply
    assert set(await kamailio.location()) == {"alice"}
    # dial says which line a call uses, and refuses up front when there is none
    _, dial = await users["alice"].say(users["alice"].dm, "dial +1 555 123 4567")
    assert "invited you" in dial and "your SIP account sip:alice@acc.test" in dial
    _, dial = await users["bob"].say(users["bob"].dm, "dial +1 555 123 4567")
    assert dial.startswith("Cannot dial: You have no SIP account") and "for admins only" in dial
    assert secrets_logged(caplog) == []


async def provision(e2e: E2E, method: str, path: str, token: str | None, *, user_id: str | None = None,
                    body: Any = None) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{e2e.plan.as_port}/_matrix/provision/v3{path}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.request(
            method, url, headers=headers, params={"user_id": user_id} if user_id else {}, json=body) as resp:
        return resp.status, await resp.json()


async def test_the_provisioning_api_logs_in_and_out_like_the_bot(
        e2e: E2E, kamailio: KamailioProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bridge: Bridge = await e2e.bridge(accounts_on)
    alice = await e2e.client("alice")
    bob_id = "@bob:bridge.test"

    status, body = await provision(e2e, "GET", "/whoami", None, user_id=bob_id)
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    status, body = await provision(e2e, "GET", "/whoami", "wrong-secret", user_id=bob_id)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")

    async def login(token: str, user: str, password: str, user_id: str | None = None) -> tuple[int, dict[str, Any]]:
        status, started = await provision(e2e, "POST", "/login/start/password", token, user_id=user_id)
        assert status == 200, started
        return await provision(e2e, "POST", f"/login/step/{started['login_id']}/{STEP_ID}/user_input", token,
                          user_id=user_id, body={"uri": f"sip:{user}@acc.test", "password": password,
                                                 "outbound_proxy": kamailio.uri})

    # alice with her own Matrix access token (checked with Synapse), bob with the shared secret
    status, body = await login(alice.access_token, "alice", "Not-The-Password")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN") and "401" in body["error"]
    assert await kamailio.location() == {}
    status, body = await login(alice.access_token, "alice", PASSWORDS["alice"])
    assert status == 200 and body["complete"]["user_login_id"] == "sip:alice@acc.test"
    status, body = await login(SECRET, "bob", PASSWORDS["bob"], user_id=bob_id)
    assert status == 200 and body["sip"]["state"] == "registered"
    assert set(await kamailio.location()) == {"alice", "bob"}

    status, who = await provision(e2e, "GET", "/whoami", alice.access_token)
    assert status == 200 and who["logins"][0]["state"]["state_event"] == "CONNECTED"
    assert who["logins"][0]["sip"]["expires_at"] > 0

    # unregister removes the binding but keeps the account; register brings the binding back
    status, body = await provision(e2e, "POST", "/unregister/all", alice.access_token)
    assert status == 200 and body["sip"]["state"] == "unregistered"
    assert set(await kamailio.location()) == {"bob"} and bridge.accounts.status("@alice:bridge.test") is not None
    status, body = await provision(e2e, "POST", "/register/sip:alice@acc.test", alice.access_token)
    assert status == 200 and body["state"]["state_event"] == "CONNECTED"
    assert set(await kamailio.location()) == {"alice", "bob"}

    status, _ = await provision(e2e, "POST", "/logout/all", alice.access_token)
    assert status == 200 and bridge.accounts.status("@alice:bridge.test") is None
    assert set(await kamailio.location()) == {"bob"}
    status, _ = await provision(e2e, "POST", "/logout/sip:bob@acc.test", SECRET, user_id=bob_id)
    assert status == 200 and await kamailio.location() == {}
    assert secrets_logged(caplog) == []


async def test_registration_failure_and_recovery_are_told_in_the_management_room_after_a_restart(
        e2e: E2E, kamailio: KamailioProcess) -> None:
    key, db = generate_key(), e2e.tmp / "accounts.db"

    def same_db(data: dict[str, Any]) -> None:
        accounts_on(data, key)
        data["appservice"]["database"] = f"sqlite:{db}"

    bridge = await e2e.bridge(same_db)
    alice = BotUser(await e2e.client("alice"))
    _, final = await alice.login(kamailio, "alice", PASSWORDS["alice"])
    assert final.startswith("Logged in as sip:alice@acc.test")
    # the registrar goes away while the bridge restarts: the stored account's REGISTER fails
    await kamailio.stop()
    e2e.bridges.remove(bridge)
    await bridge.stop()
    bridge = await e2e.bridge(same_db)
    failing = await wait_notice(alice.client, alice.room, "is failing", timeout=40)  # the room was remembered
    assert "sip:alice@acc.test" in failing and "Last error:" in failing
    await kamailio.start()
    recovered = await wait_notice(alice.client, alice.room, "works again", timeout=40)
    assert "Registration: registered" in recovered
    assert set(await kamailio.location()) == {"alice"}


async def test_registrar_outage_while_running_gives_one_failing_notice_and_one_recovery_notice(
        e2e: E2E, kamailio: KamailioProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sip")

    def short_binding(data: dict[str, Any]) -> None:
        accounts_on(data)
        data["bridge"]["accounts"]["register_expires"] = 5  # refreshed every 3 s (Kamailio's min_expires is 1)

    await e2e.bridge(short_binding)
    alice = BotUser(await e2e.client("alice"))
    # TCP: with the registrar gone a refresh fails at once (connection refused), not after a 32 s UDP timeout
    _, final = await alice.login(kamailio, "alice", PASSWORDS["alice"], "tcp")
    assert final.startswith("Logged in as sip:alice@acc.test")

    def failed_refreshes() -> int:
        return sum("registration of sip:alice@acc.test failed" in r.getMessage() for r in caplog.records)

    await kamailio.stop()
    failing = await wait_notice(alice.client, alice.room, "is failing", timeout=15)
    assert "sip:alice@acc.test" in failing and "Last error:" in failing
    # the retry (about 5 s later) fails too: still one notice
    await alice.client.wait_for(lambda: failed_refreshes() >= 2 or None, timeout=15, what="a second failed REGISTER")
    await kamailio.start()
    recovered = await wait_notice(alice.client, alice.room, "works again", timeout=20)
    assert "Registration: registered" in recovered
    assert set(await kamailio.location()) == {"alice"}
    notices = bot_notices(alice.client, alice.room)
    assert sum("is failing" in n for n in notices) == 1 and sum("works again" in n for n in notices) == 1
