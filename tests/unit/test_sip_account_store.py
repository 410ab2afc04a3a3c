"""The sip_account table (migration v4) on SQLite and PostgreSQL, and the account service's use of it at start:
rows written with a previous key are re-encrypted, undecryptable rows are skipped, no key loads nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from mautrix.util.async_db import Database

from bridge.call.account_record import AccountRecord
from bridge.calls.account_api import LoginError, LoginRequest
from bridge.calls.accounts import AccountManager, AccountSettings
from bridge.calls.outbound import TrunkTarget
from bridge.config import DialplanConfig
from bridge.db import Tables
from bridge.db.credential_cipher import CredentialCipher, generate_key
from tests.unit.test_db import db, db_url, pg  # noqa: F401  (fixtures: both databases)

SHARED = TrunkTarget(proxy="sip:127.0.0.1:5080", domain="trunk.test", from_uri="sip:bridge@trunk.test",
                     from_display=None, credentials=None)


def record(mxid: str, token: str, password_enc: str = "v1.x.y", **kw: Any) -> AccountRecord:
    fields: dict[str, Any] = {"aor": f"sip:{mxid[1:].split(':')[0]}@pbx.test", "auth_username": None,
                              "outbound_proxy": None, "transport": "udp", "registration_enabled": True, **kw}
    return AccountRecord(mxid=mxid, password_enc=password_enc, contact_token=token, **fields)


def manager(store: Any, cipher: CredentialCipher | None, shared: str = "user",
            levels: dict[str, str] | None = None) -> AccountManager:
    levels = levels or {}

    def no_ua() -> Any:
        raise AssertionError("no SIP traffic expected in this test")

    return AccountManager(ua_ref=no_ua, store=store, cipher=cipher, settings=AccountSettings(shared_trunk=shared),
                          shared_trunk=SHARED, dialplan=DialplanConfig(),
                          permission_level=lambda m: levels.get(m, "user"))


async def test_sip_account_crud_and_unique_contact_token(db: Database) -> None:  # noqa: F811
    table = Tables.for_db(db).sip_account
    assert await db.table_exists("sip_account")
    assert await table.get("@a:x") is None
    stored = await table.put(record("@a:x", "tok-a", outbound_proxy="sip:proxy.test;transport=tcp"))
    assert stored.created_at > 0 and stored.registration_enabled
    assert stored.outbound_proxy == "sip:proxy.test;transport=tcp"
    replaced = await table.put(dataclasses.replace(stored, aor="sip:a2@pbx.test", contact_token="tok-a2",
                                                   created_at=0))
    assert replaced.aor == "sip:a2@pbx.test" and replaced.created_at == stored.created_at
    await table.set_enabled("@a:x", False)
    await table.set_password_enc("@a:x", "v1.k.new")
    got = await table.get("@a:x")
    assert got is not None and not got.registration_enabled and got.password_enc == "v1.k.new"
    await table.put(record("@b:x", "tok-b"))
    assert [r.mxid for r in await table.all()] == ["@a:x", "@b:x"]
    with pytest.raises(Exception):  # noqa: B017 - asyncpg and sqlite raise different IntegrityErrors
        await table.put(record("@c:x", "tok-b"))
    assert await table.delete("@a:x") and not await table.delete("@a:x")
    assert [r.mxid for r in await table.all()] == ["@b:x"]


async def test_start_re_encrypts_rows_of_a_previous_key_and_skips_foreign_ones(db: Database) -> None:  # noqa: F811
    table = Tables.for_db(db).sip_account
    old, new, foreign = generate_key(), generate_key(), generate_key()
    off = {"registration_enabled": False}
    await table.put(record("@a:x", "tok-a", CredentialCipher(old).encrypt("pw-a", "@a:x"), **off))
    await table.put(record("@b:x", "tok-b", CredentialCipher(foreign).encrypt("pw-b", "@b:x"), **off))
    # a row moved to another user (same key) does not open either
    await table.put(record("@c:x", "tok-c", CredentialCipher(new).encrypt("pw-a", "@a:x"), **off))
    cipher = CredentialCipher(new, [old])
    accounts = manager(table, cipher)
    await accounts.start()
    row = await table.get("@a:x")
    assert row is not None and cipher.is_current(row.password_enc)
    assert cipher.decrypt(row.password_enc, "@a:x") == "pw-a"
    status = accounts.status("@a:x")
    assert status is not None and status.state == "unregistered" and not status.registration_enabled
    assert accounts.status("@b:x") is None and accounts.status("@c:x") is None
    # a disabled account's Contact rings nobody; its trunk is still the user's own
    assert accounts.callee_for_contact("tok-a") is None
    trunk = accounts.outbound_trunk("@a:x")
    assert isinstance(trunk, TrunkTarget) and trunk.from_uri == "sip:a@pbx.test" and trunk.credentials is not None
    assert trunk.credentials.password == "pw-a" and "pw-a" not in repr(trunk)
    await accounts.stop()


async def test_without_a_key_nothing_is_loaded_and_logins_are_refused(db: Database) -> None:  # noqa: F811
    table = Tables.for_db(db).sip_account
    await table.put(record("@a:x", "tok-a", registration_enabled=False))
    accounts = manager(table, None)
    await accounts.start()
    assert accounts.status("@a:x") is None
    with pytest.raises(LoginError, match="encryption_key"):
        await accounts.login(LoginRequest("@a:x", "sip:a@pbx.test", "pw"))
