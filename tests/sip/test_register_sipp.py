"""Registration against sipp registrar scenarios (digest MD5 with and without qop, then a refresh)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.sip.digest import Credentials
from bridge.sip.registration import Registration
from tests.harness.sip_ua import fast_settings, running_ua, wait_for
from tests.harness.sipp import SippProcess

SCENARIOS = Path(__file__).parent / "scenarios"


@pytest.mark.parametrize("scenario", ["uas_register_401.xml", "uas_register_401_qop.xml"])
async def test_register_digest_then_refresh_against_sipp(tmp_path: Path, scenario: str) -> None:
    peer = SippProcess(SCENARIOS / scenario, workdir=tmp_path)
    await peer.start()
    try:
        async with running_ua(fast_settings(t1=0.1, t2=1.0)) as ua:
            # sipp grants 60 s; refresh at 2% of it (1.2 s) so the scenario's refresh step runs quickly
            reg = Registration(ua, registrar=f"sip:{peer.uri_host}", aor="sip:alice@peer.test",
                               credentials=Credentials("alice", "secret"), expires=60, refresh_fraction=0.02)
            await reg.start()
            assert reg.state == "registered", reg.last_response
            assert reg.granted_expires == 60
            await wait_for(lambda: reg.successes >= 2, timeout=15)
            # stop() unregisters; the scenario has ended by then, so that REGISTER just times out quietly
            reg._task and reg._task.cancel()
        assert await asyncio.wait_for(peer.wait(), 30) == 0, peer.report()
        assert "AUTH RESULT: VALID digest" in peer.logs
        assert "refresh REGISTER received" in peer.logs
    finally:
        await peer.aclose()
