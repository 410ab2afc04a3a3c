"""Our UserAgent as the caller (UAC) against real sipp UAS scenarios on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridge.sip.message import Response
from bridge.sip.ua import UserAgent
from tests.harness.sip_ua import SDP_OFFER, fast_settings, running_ua
from tests.harness.sipp import SippProcess

SCENARIOS = Path(__file__).parent / "scenarios"

Sipp = Callable[..., SippProcess]


@pytest.fixture
async def sipp(tmp_path: Path) -> AsyncIterator[Sipp]:
    started: list[SippProcess] = []

    def make(scenario: str, **kwargs: object) -> SippProcess:
        proc = SippProcess(SCENARIOS / scenario, workdir=tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield make
    for proc in started:
        await proc.aclose()


@pytest.fixture
async def ua() -> AsyncIterator[UserAgent]:
    # real RFC timers except a short T1 so a lost packet does not stall the test for long
    async with running_ua(fast_settings(t1=0.1, t2=1.0)) as agent:
        yield agent


def target(proc: SippProcess, user: str = "bob") -> str:
    return f"sip:{user}@{proc.uri_host}"


@pytest.mark.parametrize("scenario", ["uas_183_early.xml", "uas_183_early_no100.xml"])
async def test_sipp_uac_call_with_100_183_sdp_200_ack_bye(ua: UserAgent, sipp: Sipp, scenario: str) -> None:
    peer = sipp(scenario)
    await peer.start()
    provisional: list[Response] = []
    call = ua.invite(target(peer), from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
    call.on_provisional = provisional.append
    final = await asyncio.wait_for(call.wait_final(), 20)
    assert final.status == 200
    statuses = [r.status for r in provisional]
    assert 183 in statuses
    early = next(r for r in provisional if r.status == 183)
    assert b"m=audio" in early.body
    if scenario == "uas_183_early.xml":
        trying = next(r for r in provisional if r.status == 100)
        assert trying.to.tag is None
    assert call.dialog is not None and call.dialog.state == "confirmed"
    await asyncio.sleep(0.2)
    bye = await call.dialog.bye()
    assert bye is not None and bye.status == 200
    assert await peer.wait() == 0, peer.report()


@pytest.mark.parametrize("scenario", ["uas_486.xml", "uas_486_no100.xml"])
async def test_sipp_uac_486_is_acked_on_the_invite_branch(ua: UserAgent, sipp: Sipp, scenario: str) -> None:
    peer = sipp(scenario)
    await peer.start()
    call = ua.invite(target(peer), from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
    final = await asyncio.wait_for(call.wait_final(), 20)
    assert final.status == 486
    assert call.dialog is None
    assert await peer.wait() == 0, peer.report()
    # the ACK sipp received carries the INVITE's branch
    assert f"branch={call.request.branch}" in peer.messages.split("ACK sip:")[1]


@pytest.mark.parametrize("scenario", ["uas_ring_cancel.xml", "uas_ring_cancel_no100.xml",
                                      "uas_ring_cancel_lenient_no100.xml"])
async def test_sipp_uac_cancel_matches_invite_and_487_is_acked(ua: UserAgent, sipp: Sipp, scenario: str) -> None:
    peer = sipp(scenario)
    await peer.start()
    ringing = asyncio.Event()
    call = ua.invite(target(peer), from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
    call.on_provisional = lambda r: ringing.set() if r.status == 180 else None
    await asyncio.wait_for(ringing.wait(), 20)
    await asyncio.wait_for(call.cancel(), 20)
    final = await asyncio.wait_for(call.wait_final(), 20)
    assert final.status == 487
    assert await peer.wait() == 0, peer.report()
    assert "CANCEL_MISMATCH" not in peer.logs


async def test_sipp_uac_cancel_before_any_provisional_waits_for_one(ua: UserAgent, sipp: Sipp) -> None:
    peer = sipp("uas_ring_cancel_no100.xml")
    await peer.start()
    call = ua.invite(target(peer), from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
    await asyncio.wait_for(call.cancel(), 20)  # called at once: must hold the CANCEL until the 180
    assert (await asyncio.wait_for(call.wait_final(), 20)).status == 487
    assert await peer.wait() == 0, peer.report()
    assert "CANCEL_MISMATCH" not in peer.logs


@pytest.mark.parametrize("scenario,auth_header", [("uas_invite_401.xml", "Authorization"),
                                                  ("uas_invite_407.xml", "Proxy-Authorization")])
async def test_sipp_uac_invite_retried_with_digest_after_challenge(ua: UserAgent, sipp: Sipp, scenario: str,
                                                                   auth_header: str) -> None:
    from bridge.sip.digest import Credentials

    peer = sipp(scenario)
    await peer.start()
    call = ua.invite(target(peer), from_uri="sip:alice@bridge.test", sdp=SDP_OFFER,
                     credentials=Credentials("alice", "secret"))
    first_cseq = call.request.cseq[0]
    first_branch = call.request.branch
    final = await asyncio.wait_for(call.wait_final(), 20)
    assert final.status == 200, peer.report()
    assert call.request.cseq[0] == first_cseq + 1
    assert call.request.branch != first_branch
    assert auth_header in call.request.headers
    assert call.dialog is not None
    await call.dialog.bye()
    assert await peer.wait() == 0, peer.report()
    assert "AUTH RESULT: VALID digest" in peer.logs
    assert_md5_digest_valid(call.request.headers.get(auth_header) or "", "INVITE", "alice", "secret")


def assert_md5_digest_valid(value: str, method: str, user: str, password: str) -> None:
    """Independent RFC 2617 check (qop=auth, MD5) of an Authorization value we sent."""
    import hashlib
    import re

    params = dict(re.findall(r'(\w+)="?([^",]*)"?', value))
    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()
    ha1 = md5(f"{user}:{params['realm']}:{password}")
    ha2 = md5(f"{method}:{params['uri']}")
    expected = md5(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:{params['qop']}:{ha2}")
    assert params["username"] == user
    assert params["response"] == expected


async def test_sipp_uac_wrong_password_gets_final_without_looping(ua: UserAgent, sipp: Sipp) -> None:
    from bridge.sip.digest import Credentials

    peer = sipp("uas_invite_401.xml")
    await peer.start()
    call = ua.invite(target(peer), from_uri="sip:alice@bridge.test", sdp=SDP_OFFER,
                     credentials=Credentials("alice", "wrong"))
    final = await asyncio.wait_for(call.wait_final(), 20)
    assert final.status == 403
    assert await peer.wait() == 0, peer.report()
    assert "AUTH RESULT: INVALID digest" in peer.logs
