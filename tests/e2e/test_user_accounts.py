"""Per-user SIP accounts end to end: Kamailio as the users' PBX (digest registrar with qop, location lookup, 407
on calls from users), real Synapse, the bridge in-process driven through its AccountService, aiortc-based Matrix
callers, sipp as the far end behind Kamailio and as a phone calling the users' AORs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.calls.account_api import LoginError, LoginRequest
from bridge.db.credential_cipher import generate_key
from tests.e2e.conftest import E2E, GHOST, SCENARIOS, assert_released, eventually
from tests.harness.bridge_stack import SERVER_NAME
from tests.harness.kamailio import KamailioProcess
from tests.harness.matrix_client import MatrixTestClient
from tests.harness.sipp import SippProcess, free_port
from tests.harness.tls_certs import TestCa

pytestmark = pytest.mark.e2e

ALICE, BOB, CAROL = (f"@{u}:{SERVER_NAME}" for u in ("alice", "bob", "carol"))
PASSWORDS = {"alice": "Alice-Secret-4711", "bob": "Bob-Secret-0815", "carol": "Carol-Secret-1234"}
GOOD_SDP = ("v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


@pytest.fixture
async def far_end_port() -> int:
    return free_port()


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path)


@pytest.fixture
async def kamailio(tmp_path: Path, far_end_port: int, ca: TestCa) -> AsyncIterator[KamailioProcess]:
    # with a TLS listener too (its certificate for "localhost", signed by the test CA the bridge trusts)
    kam = KamailioProcess(tmp_path, relay_to=("127.0.0.1", far_end_port), accounts=PASSWORDS,
                          tls=ca.leaf("localhost"))
    await kam.start()
    try:
        yield kam
    finally:
        await kam.stop()


def accounts_config(key: str, db: Path, tls: TestCa | None = None, **bridge: Any) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        data["appservice"]["database"] = f"sqlite:{db}"  # the same file across the restart
        # nobody may use the shared trunk: a call without an account must be refused
        data["bridge"]["accounts"] = {"encryption_key": key, "shared_trunk": "none", "register_expires": 60}
        data["bridge"].update(bridge)
        data["sip"]["listen"].append({"transport": "tcp", "host": "127.0.0.1", "port": 0})  # bob's account uses TCP
        if tls is not None:
            # a TLS listener (the Contact a TLS account registers) and the CA that signed Kamailio's certificate
            leaf = tls.leaf("127.0.0.1")
            data["sip"]["listen"].append({"transport": "tls", "host": "127.0.0.1", "port": 0})
            data["sip"].update(tls_cert=leaf.cert, tls_key=leaf.key, tls_ca=tls.cert)

    return apply


def login(kam: KamailioProcess, mxid: str, user: str, password: str, transport: str | None = None) -> LoginRequest:
    proxy = kam.tls_uri() if transport == "tls" else kam.uri
    return LoginRequest(mxid=mxid, uri=f"sip:{user}@acc.test", password=password, outbound_proxy=proxy,
                        transport=transport or ("tcp" if user == "bob" else None))


async def portal_room(client: MatrixTestClient) -> str:
    room = await client.create_dm(GHOST)
    await client.wait_for_membership(room, GHOST, "join", timeout=30)
    return room


async def contact_of(bridge: Bridge, mxid: str) -> str:
    record = await bridge.matrix.tables.sip_account.get(mxid)
    assert record is not None
    return record.contact_token


async def test_accounts_register_call_out_and_in_with_their_own_identity(
    e2e: E2E, kamailio: KamailioProcess, far_end_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge")
    db = e2e.tmp / "accounts.db"
    bridge = await e2e.bridge(accounts_config(generate_key(), db))
    service = bridge.accounts

    # two users log in: Kamailio's location shows each one's own Contact token
    for mxid, user in ((ALICE, "alice"), (BOB, "bob")):
        status = await service.login(login(kamailio, mxid, user, PASSWORDS[user]))
        assert status.state == "registered" and status.aor == f"sip:{user}@acc.test" and status.expires_at
    location = await kamailio.location()
    tokens = {u: await contact_of(bridge, m) for u, m in (("alice", ALICE), ("bob", BOB))}
    assert set(location) == {"alice", "bob"}
    for user in ("alice", "bob"):
        assert [c.split("@")[0] for c in location[user]] == [f"sip:{tokens[user]}"]
    assert location["bob"][0].endswith(";transport=tcp") and "transport" not in location["alice"][0]

    # wrong password: LoginError, nothing registered, nothing stored
    with pytest.raises(LoginError) as refused:
        await service.login(login(kamailio, CAROL, "carol", "not-the-password"))
    assert refused.value.code == "M_FORBIDDEN" and "401" in str(refused.value)
    assert service.status(CAROL) is None and await bridge.matrix.tables.sip_account.get(CAROL) is None
    assert "carol" not in await kamailio.location()

    # calls from each user reach the far end through Kamailio's proxy auth with that user's From
    far_end = SippProcess(_scenario(e2e.tmp, "trunk_reject.xml", {"STATUS PHRASE": "486 Busy Here"}),
                          local_port=far_end_port, calls=2, timeout=60, workdir=e2e.tmp / "sipp")
    await e2e.own(far_end).start()
    for who in ("alice", "bob"):
        client = await e2e.client(who)
        call = await client.place_call(await portal_room(client), GHOST)
        end = await call.wait_hangup_or_reject(timeout=30)
        assert end["type"] == "m.call.reject" and end["content"]["reason"] == "user_busy"
    assert await far_end.wait() == 0, far_end.report()
    assert "From: <sip:alice@acc.test>" in far_end.messages and "From: <sip:bob@acc.test>" in far_end.messages
    assert "INVITE auth OK for alice to 15551234567" in kamailio.log
    assert "INVITE auth OK for bob to 15551234567" in kamailio.log
    assert "proto=tcp fu=sip:bob@acc.test" in kamailio.log and "proto=tcp fu=sip:alice" not in kamailio.log

    # carol has no account and the shared trunk is closed: refused with a notice, no INVITE sent
    carol = await e2e.client("carol")
    room = await portal_room(carol)
    call = await carol.place_call(room, GHOST)
    end = await call.wait_hangup_or_reject(timeout=30)
    assert end["type"] == "m.call.reject"
    notice = await carol.wait_for_event(room, lambda ev: ev.get("type") == "m.room.message"
                                        and "no SIP account" in ev["content"].get("body", ""), timeout=15)
    assert notice["sender"] == GHOST

    # a call to each user's AOR rings that user only
    for who, mxid in (("alice", ALICE), ("bob", BOB)):
        client = next(c for c in e2e.clients if c.user_id == mxid)
        await client.start_sync(auto_join=True)
        phone = SippProcess(_scenario(e2e.tmp, "caller_expect_final.xml", {"STATUS": "603", "BODY": GOOD_SDP}),
                            remote=kamailio.address, service=who, timeout=60, workdir=e2e.tmp / "sipp",
                            extra_args=["-key", "caller", "15557654321", "-key", "caller_name", "Phone"])
        await e2e.own(phone).start()
        incoming = await client.wait_incoming_call(timeout=30)
        assert [s.callee for s in bridge.calls.inbound.values()] == [mxid]
        await incoming.reject()
        assert await phone.wait() == 0, phone.report()
    await assert_released(bridge)

    # unregister keeps the account (and its trunk) but removes the binding; register brings it back
    status = await service.unregister(ALICE)
    assert status.state == "unregistered" and not status.registration_enabled
    assert "alice" not in await kamailio.location()
    assert bridge.accounts.outbound_trunk(ALICE) != bridge.accounts.shared_trunk
    status = await service.register(ALICE)
    assert status.state == "registered" and status.registration_enabled
    assert [c.split("@")[0] for c in (await kamailio.location())["alice"]] == [f"sip:{tokens['alice']}"]

    # logout removes bob's binding; alice's stays
    assert await service.logout(BOB)
    assert set(await kamailio.location()) == {"alice"}
    assert await bridge.matrix.tables.sip_account.get(BOB) is None

    # restart: bindings are kept at stop, and the new process registers the stored account again
    registers_before = kamailio.log.count("REGISTER auth OK for alice")
    e2e.bridges.remove(bridge)
    await bridge.stop()
    assert set(await kamailio.location()) == {"alice"}
    key = bridge.config.bridge.accounts.encryption_key
    # (and now carol's dial permissions block the number: checked before anything is dialled)
    blocked = {f"{CAROL}": {"blocked": ["^1555"]}}
    bridge = await e2e.bridge(accounts_config(key, db, dial_permissions=blocked))
    await eventually(lambda: (s := bridge.accounts.status(ALICE)) is not None and s.state == "registered", 15,
                     "alice registered again after the restart")
    assert kamailio.log.count("REGISTER auth OK for alice") > registers_before
    assert (await kamailio.location())["alice"][0].startswith(f"sip:{tokens['alice']}@")

    call = await carol.place_call(room, GHOST)
    end = await call.wait_hangup_or_reject(timeout=30)
    assert end["type"] == "m.call.reject"
    await carol.wait_for_event(room, lambda ev: ev.get("type") == "m.room.message" and "blocked by your dial "
                               "permissions" in ev["content"].get("body", ""), timeout=15)

    # secrets: in no log line, and not in clear text in the database file
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    for password in PASSWORDS.values():
        assert password not in text
    stored = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert stored and all(p.encode() not in stored for p in PASSWORDS.values())


async def test_an_account_over_tls_registers_calls_out_and_is_rung_through_kamailio(
    e2e: E2E, kamailio: KamailioProcess, far_end_port: int, ca: TestCa
) -> None:
    bridge = await e2e.bridge(accounts_config(generate_key(), e2e.tmp / "accounts.db", tls=ca))
    status = await bridge.accounts.login(login(kamailio, ALICE, "alice", PASSWORDS["alice"], "tls"))
    assert status.state == "registered" and status.transport == "tls"
    # the binding is the bridge's TLS listener, registered over TLS (Kamailio's certificate checked with sip.tls_ca)
    token = await contact_of(bridge, ALICE)
    [contact] = (await kamailio.location())["alice"]
    assert contact.startswith(f"sip:{token}@127.0.0.1:") and contact.endswith(";transport=tls")
    assert "REQ REGISTER sip:acc.test from 127.0.0.1" in kamailio.log
    assert "proto=tls fu=sip:alice@acc.test" in kamailio.log and "proto=udp fu=sip:alice" not in kamailio.log

    # her call crosses Kamailio over TLS (407 answered there) and reaches the far end with her From
    far_end = SippProcess(_scenario(e2e.tmp, "trunk_reject.xml", {"STATUS PHRASE": "486 Busy Here"}),
                          local_port=far_end_port, timeout=60, workdir=e2e.tmp / "sipp")
    await e2e.own(far_end).start()
    alice = await e2e.client("alice")
    call = await alice.place_call(await portal_room(alice), GHOST)
    end = await call.wait_hangup_or_reject(timeout=30)
    assert end["type"] == "m.call.reject" and end["content"]["reason"] == "user_busy"
    assert await far_end.wait() == 0, far_end.report()
    assert "From: <sip:alice@acc.test>" in far_end.messages
    assert "INVITE auth OK for alice to 15551234567" in kamailio.log
    assert "REQ INVITE sip:15551234567@acc.test from 127.0.0.1" in kamailio.log

    # a phone calling her AOR (UDP into Kamailio): Kamailio forwards to her TLS Contact and she is rung
    await alice.start_sync(auto_join=True)
    phone = SippProcess(_scenario(e2e.tmp, "caller_expect_final.xml", {"STATUS": "603", "BODY": GOOD_SDP}),
                        remote=kamailio.address, service="alice", timeout=60, workdir=e2e.tmp / "sipp",
                        extra_args=["-key", "caller", "15557654321", "-key", "caller_name", "Phone"])
    await e2e.own(phone).start()
    incoming = await alice.wait_incoming_call(timeout=30)
    assert [s.callee for s in bridge.calls.inbound.values()] == [ALICE]
    assert f"INVITE for alice to contact {contact}" in kamailio.log
    await incoming.reject()
    assert await phone.wait() == 0, phone.report()
    await assert_released(bridge)


def _scenario(tmp: Path, name: str, replace: dict[str, str]) -> Path:
    text = (SCENARIOS / name).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp / f"{len(list(tmp.glob('*.xml')))}-{name}"
    path.write_text(text)
    return path
