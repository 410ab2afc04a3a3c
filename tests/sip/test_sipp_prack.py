"""RFC 3262 PRACK against real sipp: sipp as a UAS sending a reliable 183 with SDP (we PRACK it and see the
early SDP once), and sipp as a UAC requiring 100rel (our 180 goes reliably, its PRACK is answered, then 200)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.sip.message import Response
from bridge.sip.server import ServerInvite
from tests.harness.sip_ua import SDP_ANSWER, SDP_OFFER, fast_settings, running_ua
from tests.harness.sipp import SippProcess

SCENARIOS = Path(__file__).parent / "scenarios"


async def test_reliable_183_with_sdp_from_sipp_is_pracked_and_seen_once(tmp_path: Path) -> None:
    async with running_ua(fast_settings(t1=0.1, t2=1.0, prack="supported")) as ua:
        peer = SippProcess(SCENARIOS / "uas_183_reliable.xml", workdir=tmp_path, timeout=20)
        try:
            await peer.start()
            call = ua.invite(f"sip:bob@{peer.uri_host}", from_uri="sip:alice@example.test", sdp=SDP_OFFER)
            early: list[Response] = []
            call.on_provisional = early.append
            assert "100rel" in (call.request.headers.get("Supported") or "")
            final = await asyncio.wait_for(call.wait_final(), 15)
            assert final.status == 200
            assert [r.status for r in early if r.status > 100] == [183]  # retransmissions not handed on
            assert b"m=audio" in early[-1].body  # the early media SDP reached the application
            assert call.dialog is not None
            await call.dialog.bye()
            assert await peer.wait() == 0, peer.report()  # sipp checked the PRACK's RAck
        finally:
            await peer.aclose()


async def test_sipp_requiring_100rel_gets_a_reliable_180_and_our_prack_answer(tmp_path: Path) -> None:
    events: list[str] = []

    async def on_invite(si: ServerInvite) -> None:
        await si.respond(180)
        await asyncio.sleep(0.5)
        dialog = await si.respond(200, body=SDP_ANSWER)
        assert dialog is not None
        assert await si.wait_ack(10) is not None
        events.append("acked")
        await dialog.bye()

    async with running_ua(fast_settings(t1=0.1, t2=1.0, prack="supported"), on_invite=on_invite) as ua:
        seen: list[str] = []
        ua.on_message_observed = lambda direction, what: seen.append(f"{direction} {what}")
        peer = SippProcess(SCENARIOS / "uac_require_100rel.xml", workdir=tmp_path,
                           remote=ua.bound_address("udp"), timeout=20)
        try:
            await peer.start()
            assert await peer.wait() == 0, peer.report()
        finally:
            await peer.aclose()
        assert events == ["acked"]
        assert "in PRACK" in seen
        assert seen.count("out 180") == 1  # PRACKed before its first retransmission (T1 = 0.1 s)
