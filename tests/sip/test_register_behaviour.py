"""Registration edge cases against a registrar built from our own UserAgent (on_request handler)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from bridge.sip.digest import Credentials, make_challenge, verify_authorization
from bridge.sip.registration import Registration
from bridge.sip.server import ServerRequest
from tests.harness.sip_ua import fast_settings, running_ua, uri_of, wait_for

Policy = Callable[[ServerRequest, int], tuple[int, list[tuple[str, str]]]]


def registrar(policy: Policy, log: list[ServerRequest]) -> Callable[[ServerRequest], Awaitable[None]]:
    async def on_request(req: ServerRequest) -> None:
        log.append(req)
        status, headers = policy(req, len(log))
        await req.respond(status, headers=headers)

    return on_request


async def test_register_423_retries_with_min_expires() -> None:
    seen: list[ServerRequest] = []

    def policy(req: ServerRequest, n: int) -> tuple[int, list[tuple[str, str]]]:
        expires = int(req.request.headers.get("Expires") or "0")
        if 0 < expires < 120:
            return 423, [("Min-Expires", "120")]
        contact = req.request.headers.get("Contact") or ""
        return 200, [("Contact", contact.split(";expires=")[0] + ";expires=120")]

    async with running_ua(fast_settings(), on_request=registrar(policy, seen)) as server, \
            running_ua(fast_settings()) as client:
        reg = Registration(client, registrar=uri_of(server).replace("bob@", ""), aor="sip:alice@peer.test",
                           credentials=None, expires=30)
        await reg.start()
        try:
            assert reg.state == "registered"
            assert reg.granted_expires == 120
            assert [r.request.headers.get("Expires") for r in seen] == ["30", "120"]
            cseqs = [r.request.cseq[0] for r in seen]
            assert cseqs == sorted(cseqs) and len(set(cseqs)) == 2
            assert len({r.request.call_id for r in seen}) == 1
        finally:
            await reg.stop()
        assert seen[-1].request.headers.get("Expires") == "0"


async def test_register_failure_backs_off_then_recovers_and_never_logs_password(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[ServerRequest] = []
    nonces: set[str] = set()

    def policy(req: ServerRequest, n: int) -> tuple[int, list[tuple[str, str]]]:
        if n <= 2:
            return 503, []
        auth = req.request.headers.get("Authorization")
        if auth and verify_authorization(auth, method="REGISTER", password_for=lambda u, r: "s3cret-pw",
                                         nonce_ok=lambda nonce: nonce in nonces):
            return 200, [("Contact", (req.request.headers.get("Contact") or "").split(";")[0] + ";expires=60")]
        challenge, nonce = make_challenge("peer.test")
        nonces.add(nonce)
        return 401, [("WWW-Authenticate", challenge)]

    states: list[str] = []
    caplog.set_level(logging.DEBUG)
    async with running_ua(fast_settings(), on_request=registrar(policy, seen)) as server, \
            running_ua(fast_settings()) as client:
        reg = Registration(client, registrar=uri_of(server).replace("bob@", ""), aor="sip:alice@peer.test",
                           credentials=Credentials("alice", "s3cret-pw"), expires=60, retry_base=0.2,
                           retry_cap=0.5)
        reg.on_state = states.append
        await reg.start()
        try:
            assert reg.state == "failed"
            await wait_for(lambda: reg.state == "registered", timeout=15)
        finally:
            await reg.stop()
    assert states[:2] == ["registering", "failed"]
    assert "registered" in states
    assert [r.request.method for r in seen].count("REGISTER") >= 5  # 503, 503, 401, 200, unregister
    assert "s3cret-pw" not in caplog.text


async def test_register_stop_cancels_refresh_task() -> None:
    seen: list[ServerRequest] = []

    def policy(req: ServerRequest, n: int) -> tuple[int, list[tuple[str, str]]]:
        return 200, [("Expires", "1")]

    async with running_ua(fast_settings(), on_request=registrar(policy, seen)) as server, \
            running_ua(fast_settings()) as client:
        reg = Registration(client, registrar=uri_of(server).replace("bob@", ""), aor="sip:alice@peer.test",
                           credentials=None, expires=1)
        await reg.start()
        await wait_for(lambda: reg.successes >= 2, timeout=10)  # refreshed at max(1 s, 0.6 * 1 s)
        await reg.stop()
        count = len(seen)
        await asyncio.sleep(1.5)
        assert len(seen) == count
        assert reg.state == "unregistered"
