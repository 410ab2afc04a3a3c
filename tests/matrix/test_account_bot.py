"""The bot's account commands and the provisioning API on a real Synapse, with a fake account service: login in
steps (the password message ends up redacted), status, logout, registration notices, provisioning auth."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import pytest_asyncio

from bridge.matrix.provisioning import STEP_ID
from tests.harness.fake_accounts import FakeAccounts
from tests.matrix.account_env import (
    BOT,
    SECRET,
    AccountEnv,
    bot_notices,
    is_redacted,
    make_account_env,
    wait_new_notice,
    wait_notice,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
PASSWORDS = {"sip:alice@pbx.test": "alice-Secret-123", "sip:bob@pbx.test": "bob-Secret-456"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake() -> FakeAccounts:
    return FakeAccounts(passwords=dict(PASSWORDS))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def aenv(synapse_factory: object, tmp_path_factory: pytest.TempPathFactory,
               fake: FakeAccounts) -> AsyncIterator[AccountEnv]:
    async with make_account_env(synapse_factory, tmp_path_factory.mktemp("accounts"), fake) as env:
        yield env


async def dm_with_bot(env: AccountEnv, name: str) -> str:
    client = env.clients[name]
    room = await client.create_dm(BOT)
    await wait_notice(client, room, "help")  # the greeting: the bot has joined
    return room


async def say(env: AccountEnv, name: str, room: str, text: str) -> tuple[str, str]:
    """Send text; return (its event ID, the bot's next notice)."""
    client = env.clients[name]
    before = len(bot_notices(client, room))
    event_id = await client.send_text(room, text)
    return event_id, await wait_new_notice(client, room, before)


async def private_room_from(env: AccountEnv, name: str, reply: str) -> str:
    """The bot-owned room the reply links to, joined."""
    client = env.clients[name]
    room = reply.split("https://matrix.to/#/", 1)[1].split(" ", 1)[0]
    await client.wait_for(lambda: room in client.invited_rooms or room in client.joined_rooms, timeout=30,
                          what="invite to the login room")
    if room not in client.joined_rooms:
        await client.join(room)
    await wait_notice(client, room, "Send your SIP address")
    return room


async def test_login_in_a_users_dm_moves_to_a_bot_room_and_the_password_is_redacted(
        aenv: AccountEnv, fake: FakeAccounts, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    dm = await dm_with_bot(aenv, "alice")
    _, reply = await say(aenv, "alice", dm, "login")
    assert "private room" in reply  # alice created the DM: the bot cannot redact there
    room = await private_room_from(aenv, "alice", reply)
    _, reply = await say(aenv, "alice", room, "alice@pbx.test")
    assert "password of sip:alice@pbx.test" in reply
    password_event, reply = await say(aenv, "alice", room, PASSWORDS["sip:alice@pbx.test"])
    assert "proxy" in reply.lower()
    assert await is_redacted(aenv.clients["alice"], room, password_event)
    _, reply = await say(aenv, "alice", room, "skip")
    assert "udp" in reply
    client = aenv.clients["alice"]
    before = len(bot_notices(client, room))
    await client.send_text(room, "skip")
    await wait_notice(client, room, "Logged in as sip:alice@pbx.test")
    assert len(bot_notices(client, room)) > before
    assert fake.logins[-1].password == PASSWORDS["sip:alice@pbx.test"]
    assert await aenv.side.management_rooms.get(aenv.mxid("alice")) == room
    _, status = await say(aenv, "alice", room, "whoami")
    assert "sip:alice@pbx.test" in status and "Registration: registered, expires in" in status
    # the password is in no log line (bridge, mautrix, aiohttp all log into caplog here)
    assert PASSWORDS["sip:alice@pbx.test"] not in caplog.text
    # the DM now says which line a dial uses
    _, dial = await say(aenv, "alice", dm, "dial +1 555 123 4567")
    assert "your SIP account sip:alice@pbx.test" in dial
    _, reply = await say(aenv, "alice", room, "logout")
    assert "Logged out" in reply and fake.status(aenv.mxid("alice")) is None
    _, status = await say(aenv, "alice", room, "status")
    assert "no SIP account" in status


async def test_login_where_the_bot_may_redact_stays_in_that_room(aenv: AccountEnv, fake: FakeAccounts) -> None:
    bob = aenv.clients["bob"]
    created = await bob.request("POST", "/createRoom", {
        "is_direct": True, "invite": [BOT], "preset": "private_chat",
        "power_level_content_override": {"users": {BOT: 50}}})  # bob is the creator
    room = str(created["room_id"])
    await wait_notice(bob, room, "help")
    _, reply = await say(aenv, "bob", room, "login sip:bob@pbx.test")
    assert "password of sip:bob@pbx.test" in reply
    wrong_event, reply = await say(aenv, "bob", room, "not-the-password")
    for answer in ("skip", "tcp"):
        before = len(bot_notices(bob, room))
        await bob.send_text(room, answer)
        await wait_new_notice(bob, room, before)
    failed = await wait_notice(bob, room, "Login failed")
    assert "refused the credentials" in failed and fake.status(aenv.mxid("bob")) is None
    assert await is_redacted(bob, room, wrong_event)
    assert fake.logins[-1].transport == "tcp"


async def test_cancel_and_timeout_end_the_conversation(aenv: AccountEnv, fake: FakeAccounts) -> None:
    bob = aenv.clients["bob"]
    created = await bob.request("POST", "/createRoom", {
        "invite": [BOT], "preset": "private_chat", "power_level_content_override": {"users": {BOT: 100}}})
    room = str(created["room_id"])
    await wait_notice(bob, room, "help")
    await say(aenv, "bob", room, "login")
    _, reply = await say(aenv, "bob", room, "cancel")
    assert "cancelled" in reply
    _, reply = await say(aenv, "bob", room, "sip:bob@pbx.test")
    assert "Unknown command" in reply  # no conversation any more
    await say(aenv, "bob", room, "login")
    commands = aenv.side.account_commands
    real_clock = commands.clock
    commands.clock = lambda: real_clock() + 3600  # an hour later: the step state has timed out
    try:
        _, reply = await say(aenv, "bob", room, "sip:bob@pbx.test")
    finally:
        commands.clock = real_clock
    assert "Unknown command" in reply


async def test_help_lists_the_account_commands(aenv: AccountEnv) -> None:
    dm = await dm_with_bot(aenv, "bob")
    _, reply = await say(aenv, "bob", dm, "help")
    for command in ("login", "logout", "whoami", "register", "unregister", "dial <number>"):
        assert command in reply


async def test_users_without_permission_cannot_log_in(aenv: AccountEnv) -> None:
    status, body = await aenv.prov("POST", "/login/start/password", token=aenv.clients["mallory"].access_token)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_a_slow_login_does_not_hold_up_other_rooms(aenv: AccountEnv, fake: FakeAccounts) -> None:
    fake.gate = asyncio.Event()
    try:
        bob = aenv.clients["bob"]
        created = await bob.request("POST", "/createRoom", {
            "invite": [BOT], "preset": "private_chat",
            "power_level_content_override": {"users": {BOT: 100}}})
        room = str(created["room_id"])
        await wait_notice(bob, room, "help")
        for text in ("login bob@pbx.test", PASSWORDS["sip:bob@pbx.test"], "skip"):
            await say(aenv, "bob", room, text)
        _, reply = await say(aenv, "bob", room, "skip")
        assert "Logging in" in reply
        other = await dm_with_bot(aenv, "alice")
        started = time.monotonic()
        _, reply = await say(aenv, "alice", other, "help")  # answered while bob's login waits
        assert "login" in reply and time.monotonic() - started < 20
        assert not any("Logged in" in n for n in bot_notices(bob, room))
    finally:
        fake.gate.set()
        fake.gate = None
    await wait_notice(aenv.clients["bob"], room, "Logged in as sip:bob@pbx.test")
    await fake.logout(aenv.mxid("bob"))


async def test_registration_notices_reach_the_management_room(aenv: AccountEnv, fake: FakeAccounts) -> None:
    alice = aenv.clients["alice"]
    room = await aenv.side.management_rooms.get(aenv.mxid("alice"))
    assert room is not None  # from the first test's login
    status = await fake.login(replace(fake.logins[0]))
    failing = replace(status, state="failed", last_error="403 Forbidden", expires_at=None)
    await aenv.side.account_notifier.registration_changed(aenv.mxid("alice"), failing, recovered=False)
    text = await wait_notice(alice, room, "is failing")
    assert "403 Forbidden" in text and "sip:alice@pbx.test" in text
    await aenv.side.account_notifier.registration_changed(aenv.mxid("alice"), status, recovered=True)
    assert "registered" in await wait_notice(alice, room, "works again")
    await fake.logout(aenv.mxid("alice"))


async def test_provisioning_refuses_requests_without_secret_or_token(aenv: AccountEnv) -> None:
    status, body = await aenv.prov("GET", "/whoami", token=None, user_id=aenv.mxid("alice"))
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    status, body = await aenv.prov("GET", "/whoami", token="not-a-token", user_id=aenv.mxid("alice"))
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    # a real token of bob may not act for alice
    status, body = await aenv.prov("GET", "/whoami", token=aenv.clients["bob"].access_token,
                                   user_id=aenv.mxid("alice"))
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_provisioning_login_whoami_logout_with_the_users_own_token(aenv: AccountEnv, fake: FakeAccounts) -> None:
    token = aenv.clients["bob"].access_token  # checked against Synapse's /account/whoami
    status, started = await aenv.prov("POST", "/login/start/password", token=token)
    assert status == 200 and started["step_id"] == STEP_ID
    status, body = await aenv.prov("POST", f"/login/step/{started['login_id']}/{STEP_ID}/user_input", token=token,
                                   body={"uri": "bob@pbx.test", "password": "wrong"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN") and fake.status(aenv.mxid("bob")) is None
    status, body = await aenv.prov("POST", f"/login/step/{started['login_id']}/{STEP_ID}/user_input", token=token,
                                   body={"uri": "bob@pbx.test", "password": PASSWORDS["sip:bob@pbx.test"]})
    assert status == 200 and body["complete"]["user_login_id"] == "sip:bob@pbx.test"
    status, who = await aenv.prov("GET", "/whoami", token=token)
    assert status == 200 and who["logins"][0]["state"]["state_event"] == "CONNECTED"
    assert who["bridge_bot"] == BOT
    status, _ = await aenv.prov("POST", "/logout/all", token=token)
    assert status == 200 and fake.status(aenv.mxid("bob")) is None


async def test_provisioning_with_the_shared_secret(aenv: AccountEnv, fake: FakeAccounts) -> None:
    user = aenv.mxid("alice")
    status, started = await aenv.prov("POST", "/login/start/password", token=SECRET, user_id=user)
    assert status == 200
    status, body = await aenv.prov("POST", f"/login/step/{started['login_id']}/{STEP_ID}/user_input", token=SECRET,
                                   user_id=user, body={"uri": "sip:alice@pbx.test",
                                                       "password": PASSWORDS["sip:alice@pbx.test"]})
    assert status == 200 and body["type"] == "complete" and fake.status(user) is not None
    status, who = await aenv.prov("GET", "/whoami", token=SECRET, user_id=user)
    assert who["logins"][0]["id"] == "sip:alice@pbx.test"
    assert who["management_room"] == await aenv.side.management_rooms.get(user)
    status, _ = await aenv.prov("POST", "/logout/sip:alice@pbx.test", token=SECRET, user_id=user)
    assert status == 200 and fake.status(user) is None


async def test_register_and_unregister_keep_the_account(aenv: AccountEnv, fake: FakeAccounts) -> None:
    bob = aenv.clients["bob"]
    created = await bob.request("POST", "/createRoom", {
        "invite": [BOT], "preset": "private_chat", "power_level_content_override": {"users": {BOT: 100}}})
    room = str(created["room_id"])
    await wait_notice(bob, room, "help")
    _, reply = await say(aenv, "bob", room, "unregister")
    assert "no SIP account" in reply
    await fake.login(replace(fake.logins[0], mxid=aenv.mxid("bob"), uri="sip:bob@pbx.test",
                             password=PASSWORDS["sip:bob@pbx.test"]))
    _, reply = await say(aenv, "bob", room, "unregister")
    assert "Registration is off" in reply and "Registration: off" in reply
    assert fake.calls[-1] == ("unregister", aenv.mxid("bob")) and fake.status(aenv.mxid("bob")) is not None
    _, reply = await say(aenv, "bob", room, "register")
    assert "Registration is on" in reply and "Registration: registered" in reply
    await fake.logout(aenv.mxid("bob"))


async def test_without_an_account_service_the_commands_say_accounts_are_off(aenv: AccountEnv) -> None:
    dm = await dm_with_bot(aenv, "bob")
    service = aenv.side.accounts
    aenv.side.accounts = None
    try:
        for command in ("login", "whoami", "logout"):
            _, reply = await say(aenv, "bob", dm, command)
            assert "not enabled" in reply
        status, body = await aenv.prov("GET", "/whoami", token=SECRET, user_id=aenv.mxid("bob"))
        assert (status, body["errcode"]) == (501, "M_UNRECOGNIZED")
    finally:
        aenv.side.accounts = service
