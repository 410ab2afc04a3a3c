"""The provisioning API's handlers (bridge/matrix/provisioning.py) on a fake account service and a fake token check,
mounted under the appservice app as the bridge mounts it (so the hs_token middleware must let it through)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from bridge.matrix.appservice import AppserviceServer
from bridge.matrix.permissions import Permissions
from bridge.matrix.provisioning import MAX_BODY_BYTES, STEP_ID, ProvisioningAPI
from bridge.matrix.provisioning_auth import ProvisioningAuth
from bridge.matrix.room_queue import RoomQueues
from tests.harness.fake_accounts import FakeAccounts

SECRET = "s" * 32
ALICE, BOB, MALLORY = "@alice:example.org", "@bob:example.org", "@mallory:example.org"
TOKENS = {"alice-token": ALICE, "mallory-token": MALLORY}
P = "/_matrix/provision/v3"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class Env:
    def __init__(self, client: TestClient, api: ProvisioningAPI, accounts: FakeAccounts, checks: list[str],
                 clock: Clock) -> None:
        self.client = client
        self.api = api
        self.accounts = accounts
        self.checks = checks
        self.clock = clock

    async def call(self, method: str, path: str, *, token: str | None = SECRET, user: str | None = ALICE,
                   body: Any = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        params = {"user_id": user} if user is not None else {}
        resp = await self.client.request(method, P + path, headers=headers, params=params, json=body,
                                         data=raw)
        return resp.status, await resp.json()

    async def login(self, fields: dict[str, Any], **kw: Any) -> tuple[int, dict[str, Any]]:
        status, started = await self.call("POST", "/login/start/password", **kw)
        assert status == 200, started
        return await self.call("POST", f"/login/step/{started['login_id']}/{STEP_ID}/user_input", body=fields, **kw)


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    accounts = FakeAccounts(passwords={"sip:alice@pbx.test": "right-password"})
    checks: list[str] = []

    async def check_token(token: str) -> str | None:
        checks.append(token)
        return TOKENS.get(token)

    clock = Clock()
    perms = Permissions({"example.org": "user", MALLORY: "none"}, "example.org")
    api = ProvisioningAPI(auth=ProvisioningAuth(SECRET, check_token, clock=clock), permissions=perms, rooms=None,
                          bot_mxid="@sipbot:example.org", homeserver_domain="example.org", accounts=accounts,
                          clock=clock)

    async def dispatch(evt: dict[str, Any]) -> None:
        return None

    async def user_query(mxid: str) -> bool:
        return False

    server = AppserviceServer("hs-token", None, RoomQueues(), dispatch, user_query)  # type: ignore[arg-type]
    api.add_to(server.app, "/_matrix/provision")
    server.open_prefixes.append("/_matrix/provision")
    client = TestClient(TestServer(server.app))
    await client.start_server()
    try:
        yield Env(client, api, accounts, checks, clock)
    finally:
        await client.close()


async def test_requests_without_a_token_are_refused_with_401(env: Env) -> None:
    status, body = await env.call("GET", "/whoami", token=None)
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    status, body = await env.call("GET", "/whoami", token="wrong")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert env.accounts.calls == []


async def test_the_hs_token_does_not_open_the_provisioning_api(env: Env) -> None:
    status, body = await env.call("GET", "/whoami", token="hs-token")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_the_appservice_api_still_needs_the_hs_token(env: Env) -> None:
    resp = await env.client.post("/_matrix/app/v1/ping", json={})
    assert resp.status == 401


async def test_shared_secret_needs_a_user_id(env: Env) -> None:
    status, body = await env.call("GET", "/whoami", user=None)
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    status, body = await env.call("GET", "/whoami", user="alice")
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


async def test_access_token_acts_for_its_owner_and_is_cached(env: Env) -> None:
    status, body = await env.call("GET", "/whoami", token="alice-token", user=None)
    assert status == 200 and body["logins"] == [] and body["bridge_bot"] == "@sipbot:example.org"
    await env.call("GET", "/whoami", token="alice-token", user=ALICE)
    assert env.checks == ["alice-token"]  # asked the homeserver once
    env.clock.now += 301  # cache expired: asked again
    await env.call("GET", "/whoami", token="alice-token", user=None)
    assert env.checks == ["alice-token", "alice-token"]


async def test_access_token_cannot_act_for_another_user(env: Env) -> None:
    status, body = await env.call("GET", "/whoami", token="alice-token", user=BOB)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_users_below_user_level_are_refused(env: Env) -> None:
    for kw in ({"token": "mallory-token", "user": None}, {"user": MALLORY}, {"user": "@eve:elsewhere.org"}):
        status, body = await env.call("GET", "/whoami", **kw)
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), kw


async def test_login_flow_logs_in_and_whoami_shows_the_registration(env: Env) -> None:
    status, flows = await env.call("GET", "/login/flows")
    assert status == 200 and [f["id"] for f in flows["flows"]] == ["password"]
    status, started = await env.call("POST", "/login/start/password")
    assert status == 200 and started["type"] == "user_input" and started["step_id"] == STEP_ID
    assert [f["id"] for f in started["user_input"]["fields"]][:2] == ["uri", "password"]
    status, done = await env.call("POST", f"/login/step/{started['login_id']}/{STEP_ID}/user_input",
                                  body={"uri": "alice@pbx.test", "password": "right-password", "transport": "TCP"})
    assert status == 200, done
    assert done["type"] == "complete" and done["complete"]["user_login_id"] == "sip:alice@pbx.test"
    assert env.accounts.logins[-1].transport == "tcp" and env.accounts.logins[-1].mxid == ALICE
    status, who = await env.call("GET", "/whoami")
    assert status == 200
    [login] = who["logins"]
    assert login["id"] == "sip:alice@pbx.test" and login["state"]["state_event"] == "CONNECTED"
    assert login["sip"]["state"] == "registered" and login["sip"]["expires_at"] > 0
    # the finished login process is gone
    status, body = await env.call("POST", f"/login/step/{started['login_id']}/{STEP_ID}/user_input",
                                  body={"uri": "alice@pbx.test", "password": "right-password"})
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def test_wrong_password_is_a_403_and_nothing_is_stored(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    status, body = await env.login({"uri": "sip:alice@pbx.test", "password": "wrong-password-xyz"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN") and "refused" in body["error"]
    assert env.accounts.status(ALICE) is None
    assert "wrong-password-xyz" not in caplog.text and SECRET not in caplog.text


async def test_unreachable_registrar_is_a_502(env: Env) -> None:
    env.accounts.unreachable.add("sip:alice@pbx.test")
    status, body = await env.login({"uri": "sip:alice@pbx.test", "password": "right-password"})
    assert (status, body["errcode"]) == (502, "SIP_UNREACHABLE")


@pytest.mark.parametrize(("fields", "fragment"), [
    ({"password": "x"}, "required"),
    ({"uri": "alice", "password": "x"}, "not a SIP address"),
    ({"uri": "a@b.c", "password": 5}, "must be a string"),
    ({"uri": "a@b.c", "password": "x", "transport": "sctp"}, "transport"),
    ({"uri": "a@b.c", "password": "x", "outbound_proxy": "a b"}, "outbound_proxy"),
])
async def test_bad_login_input_is_a_400(env: Env, fields: dict[str, Any], fragment: str) -> None:
    status, body = await env.login(fields)
    assert (status, body["errcode"]) == (400, "M_BAD_JSON") and fragment in body["error"]
    assert env.accounts.logins == []


async def test_step_of_another_users_login_is_not_found(env: Env) -> None:
    status, started = await env.call("POST", "/login/start/password")
    status, body = await env.call("POST", f"/login/step/{started['login_id']}/{STEP_ID}/user_input", user=BOB,
                                  body={"uri": "a@b.c", "password": "x"})
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def test_started_logins_expire(env: Env) -> None:
    status, started = await env.call("POST", "/login/start/password")
    env.clock.now += 601
    status, _ = await env.call("POST", f"/login/step/{started['login_id']}/{STEP_ID}/user_input",
                                  body={"uri": "sip:alice@pbx.test", "password": "right-password"})
    assert status == 404 and env.accounts.logins == []


async def test_unknown_flow_and_wrong_step_are_refused(env: Env) -> None:
    status, body = await env.call("POST", "/login/start/qr")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, started = await env.call("POST", "/login/start/password")
    status, body = await env.call("POST", f"/login/step/{started['login_id']}/other/user_input", body={})
    assert (status, body["errcode"]) == (400, "M_BAD_STATE")


async def test_bodies_over_the_cap_are_refused_with_413(env: Env) -> None:
    status, started = await env.call("POST", "/login/start/password")
    big = b'{"uri": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}'
    status, body = await env.call("POST", f"/login/step/{started['login_id']}/{STEP_ID}/user_input", raw=big)
    assert (status, body["errcode"]) == (413, "M_TOO_LARGE")


async def test_non_json_body_is_a_400(env: Env) -> None:
    status, started = await env.call("POST", "/login/start/password")
    status, body = await env.call("POST", f"/login/step/{started['login_id']}/{STEP_ID}/user_input", raw=b"{nope")
    assert (status, body["errcode"]) == (400, "M_NOT_JSON")


async def test_logout_removes_the_account(env: Env) -> None:
    status, body = await env.call("POST", "/logout/all")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    await env.login({"uri": "sip:alice@pbx.test", "password": "right-password"})
    status, logins = await env.call("GET", "/logins")
    assert logins == {"login_ids": ["sip:alice@pbx.test"]}
    status, body = await env.call("POST", "/logout/sip:bob@pbx.test")
    assert status == 404 and env.accounts.status(ALICE) is not None
    status, body = await env.call("POST", "/logout/sip:alice@pbx.test")
    assert (status, body) == (200, {}) and env.accounts.status(ALICE) is None


async def test_unregister_keeps_the_account_and_register_brings_the_binding_back(env: Env) -> None:
    for path in ("/register/all", "/unregister/all"):  # no account yet
        status, body = await env.call("POST", path)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    await env.login({"uri": "sip:alice@pbx.test", "password": "right-password"})
    status, body = await env.call("POST", "/unregister/sip:bob@pbx.test")  # not alice's login
    assert status == 404 and env.accounts.calls[-1] == ("login", ALICE)
    status, body = await env.call("POST", "/unregister/sip:alice@pbx.test")
    assert status == 200 and env.accounts.calls[-1] == ("unregister", ALICE)
    assert body["sip"]["state"] == "unregistered" and not body["sip"]["registration_enabled"]
    assert body["state"]["state_event"] == "UNCONFIGURED" and env.accounts.status(ALICE) is not None
    status, body = await env.call("POST", "/register/all")
    assert status == 200 and env.accounts.calls[-1] == ("register", ALICE)
    assert body["sip"]["state"] == "registered" and body["state"]["state_event"] == "CONNECTED"
    # another user's secret-authorized request cannot touch alice's login
    status, body = await env.call("POST", "/unregister/all", user=BOB)
    assert status == 404 and env.accounts.calls[-1] == ("register", ALICE)


async def test_cors_preflight_and_headers(env: Env) -> None:
    resp = await env.client.options(P + "/login/start/password", headers={"Origin": "https://im.example",
                                                                         "Access-Control-Request-Method": "POST"})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    for kw in ({}, {"token": None}):  # on success and on errors
        resp = await env.client.get(P + "/login/flows", params={"user_id": ALICE},
                                    headers={"Authorization": f"Bearer {SECRET}"} if kw == {} else {})
        assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_without_an_account_service_the_api_says_so(env: Env) -> None:
    env.api.accounts = None
    status, body = await env.call("GET", "/whoami")
    assert (status, body["errcode"]) == (501, "M_UNRECOGNIZED") and "not enabled" in body["error"]


async def test_unknown_endpoints_are_json_404s(env: Env) -> None:
    status, body = await env.call("GET", "/unknown/endpoint")
    assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")
