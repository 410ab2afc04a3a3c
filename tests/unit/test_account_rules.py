"""Per-user SIP account rules without SIP traffic: shared-trunk permission, login input checks, the Contact a
user's account trunk uses, and that registration trouble is reported once when it starts and once when it ends."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from bridge.call.account_record import AccountRecord
from bridge.calls.account_api import AccountStatus, LoginError, LoginRequest
from bridge.calls.accounts import AccountManager, AccountSettings, _Account
from bridge.calls.outbound import TrunkTarget
from bridge.config import DialplanConfig
from bridge.db.credential_cipher import CredentialCipher, generate_key

SHARED = TrunkTarget(proxy="sip:127.0.0.1:5080", domain="trunk.test", from_uri="sip:bridge@trunk.test",
                     from_display=None, credentials=None)
LEVELS = {"@admin:x": "admin", "@user:x": "user", "@stranger:y": "none"}


def accounts(shared: str = "user") -> AccountManager:
    return AccountManager(ua_ref=lambda: None, store=None, cipher=CredentialCipher(generate_key()),  # type: ignore
                          settings=AccountSettings(shared_trunk=shared), shared_trunk=SHARED,
                          dialplan=DialplanConfig(), permission_level=lambda m: LEVELS.get(m, "none"))


@pytest.mark.parametrize(("mode", "user_ok", "admin_ok"), [("user", True, True), ("admin", False, True),
                                                           ("none", False, False)])
def test_shared_trunk_modes(mode: str, user_ok: bool, admin_ok: bool) -> None:
    acc = accounts(mode)
    for mxid, ok in (("@user:x", user_ok), ("@admin:x", admin_ok)):
        trunk = acc.outbound_trunk(mxid)
        assert (trunk is SHARED) == ok
        if not ok:
            assert isinstance(trunk, str) and "no SIP account" in trunk


@pytest.mark.parametrize(("request_kw", "code"), [
    ({"uri": "not a uri at all"}, "M_BAD_JSON"),
    ({"uri": "sip:pbx.test"}, "M_BAD_JSON"),  # no user part
    ({"transport": "sctp"}, "M_BAD_JSON"),
    ({"outbound_proxy": "sip:bad host"}, "M_BAD_JSON"),
    ({"password": ""}, "M_BAD_JSON"),
    ({"mxid": "@stranger:y"}, "M_NOT_PERMITTED"),
])
async def test_login_input_is_checked_before_any_sip_traffic(request_kw: dict[str, Any], code: str) -> None:
    fields = {"mxid": "@user:x", "uri": "sip:alice@pbx.test", "password": "pw", **request_kw}
    with pytest.raises(LoginError) as err:
        await accounts().login(LoginRequest(**fields))
    assert err.value.code == code


def account(**kw: Any) -> _Account:
    fields: dict[str, Any] = {"mxid": "@user:x", "aor": "sip:15550001111@pbx.test:5070", "auth_username": "auth-id",
                              "password_enc": "x", "outbound_proxy": None, "transport": "tcp",
                              "contact_token": "tok", **kw}
    return _Account(AccountRecord(**fields), "pw")


def test_account_trunk_uses_the_aor_credentials_proxy_and_transport() -> None:
    acc = accounts()
    trunk = acc._trunk(account())
    assert trunk.from_uri == "sip:15550001111@pbx.test:5070" and trunk.request_uri("1555") == "sip:1555@pbx.test:5070"
    assert trunk.proxy == "sip:pbx.test:5070;transport=tcp"
    assert trunk.credentials is not None and trunk.credentials.username == "auth-id"
    via_proxy = acc._trunk(account(outbound_proxy="sip:edge.test:5080", transport="udp"))
    assert via_proxy.proxy == "sip:edge.test:5080"
    assert acc._status(account()).number == "15550001111"
    assert acc._status(account(aor="sip:alice@pbx.test")).number is None


class FakeRegistration:
    state = "registered"
    last_error: str | None = None
    last_response = None
    expires_at = None


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, str | None]] = []

    async def registration_changed(self, mxid: str, status: AccountStatus, *, recovered: bool) -> None:
        self.calls.append((mxid, recovered, status.last_error))


async def test_registration_trouble_is_reported_once_and_recovery_once() -> None:
    acc = accounts()
    acc.notifier = notifier = Recorder()
    acct = account()
    reg: Any = FakeRegistration()
    acct.registration = reg
    acc._accounts["@user:x"] = acct
    for state, error in [("registered", None), ("failed", "403 Forbidden"), ("registering", "403 Forbidden"),
                         ("failed", "timeout"), ("failed", "timeout"), ("registered", None), ("registered", None)]:
        reg.state, reg.last_error = state, error
        acc._on_state(acct, reg, state)
    await asyncio.sleep(0.01)
    assert notifier.calls == [("@user:x", False, "403 Forbidden"), ("@user:x", True, None)]
    # a registration that was replaced (re-login) reports nothing
    acc._on_state(acct, FakeRegistration(), "failed")  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert len(notifier.calls) == 2


class MemoryStore:
    def __init__(self) -> None:
        self.rows: dict[str, AccountRecord] = {}

    async def get(self, mxid: str) -> AccountRecord | None:
        return self.rows.get(mxid)

    async def all(self) -> list[AccountRecord]:
        return list(self.rows.values())

    async def put(self, account: AccountRecord) -> AccountRecord:
        self.rows[account.mxid] = account
        return account

    async def set_enabled(self, mxid: str, enabled: bool) -> None: ...
    async def set_password_enc(self, mxid: str, password_enc: str) -> None: ...

    async def delete(self, mxid: str) -> bool:
        return self.rows.pop(mxid, None) is not None


async def test_login_to_a_registrar_that_never_answers_fails_in_time_and_stores_nothing() -> None:
    from tests.harness.sip_ua import fast_settings, running_ua
    from tests.harness.sipp import free_port

    dead = free_port()
    store = MemoryStore()
    async with running_ua(fast_settings("udp")) as ua:
        acc = AccountManager(ua_ref=lambda: ua, store=store, cipher=CredentialCipher(generate_key()),
                             settings=AccountSettings(login_timeout_s=1.0), shared_trunk=SHARED,
                             dialplan=DialplanConfig(), permission_level=lambda m: "user")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(LoginError) as err:
            await acc.login(LoginRequest("@user:x", f"sip:alice@127.0.0.1:{dead}", "pw"))
        assert loop.time() - started < 3.0
    assert err.value.code == "SIP_UNREACHABLE" and "timeout" in str(err.value)
    assert store.rows == {} and acc.status("@user:x") is None and acc.callee_for_contact("anything") is None


def test_login_request_repr_hides_the_password() -> None:
    request = LoginRequest("@user:x", "sip:alice@pbx.test", "Very-Secret-1")
    assert "Very-Secret-1" not in repr(request) and "Very-Secret-1" not in str(request)


class Refuser(asyncio.DatagramProtocol):
    """A registrar that answers every request 403, once per request."""

    def __init__(self) -> None:
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.requests += 1
        head = data.decode().split("\r\n\r\n", 1)[0].split("\r\n")[1:]
        copied = [h for h in head if h.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
        reply = "\r\n".join(["SIP/2.0 403 Forbidden", *copied, "Content-Length: 0", "", ""])
        self.transport.sendto(reply.encode(), addr)  # type: ignore[attr-defined]


async def test_a_refused_login_is_not_retried_and_the_log_does_not_say_it_is(caplog: pytest.LogCaptureFixture) -> None:
    from tests.harness.sip_ua import fast_settings, running_ua

    caplog.set_level(logging.DEBUG, logger="bridge")
    loop = asyncio.get_running_loop()
    transport, refuser = await loop.create_datagram_endpoint(Refuser, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        async with running_ua(fast_settings("udp")) as ua:
            acc = AccountManager(ua_ref=lambda: ua, store=MemoryStore(), cipher=CredentialCipher(generate_key()),
                                 settings=AccountSettings(login_timeout_s=5.0, retry_base_s=0.1), shared_trunk=SHARED,
                                 dialplan=DialplanConfig(), permission_level=lambda m: "user")
            with pytest.raises(LoginError) as err:
                await acc.login(LoginRequest("@user:x", f"sip:alice@127.0.0.1:{port}", "pw"))
            await asyncio.sleep(0.5)  # a retry (base 0.1 s) would have been sent by now
    finally:
        transport.close()
    assert err.value.code == "M_FORBIDDEN" and "403" in str(err.value)
    assert refuser.requests == 1
    failed = [r.getMessage() for r in caplog.records if "registration of" in r.getMessage()]
    assert failed and all("retrying in" not in m for m in failed), failed


async def test_listens_on_tells_whether_an_accounts_transport_has_a_listener() -> None:
    from tests.harness.sip_ua import fast_settings, running_ua

    async with running_ua(fast_settings("udp", "tcp")) as ua:
        acc = AccountManager(ua_ref=lambda: ua, store=MemoryStore(), cipher=None, settings=AccountSettings(),
                             shared_trunk=SHARED, dialplan=DialplanConfig(), permission_level=lambda m: "user")
        assert acc.listens_on("udp") and acc.listens_on("tcp") and not acc.listens_on("tls")
