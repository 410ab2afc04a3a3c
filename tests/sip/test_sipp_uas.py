"""Our UserAgent as the callee (UAS) against real sipp UAC scenarios on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bridge.sip.dialog import Dialog
from bridge.sip.server import ServerInvite, ServerRequest
from tests.harness.sip_ua import SDP_ANSWER, fast_settings, running_ua, wait_for
from tests.harness.sipp import SippProcess

SCENARIOS = Path(__file__).parent / "scenarios"

Handler = Callable[[ServerInvite], Awaitable[None]]


async def run_sipp_against(tmp_path: Path, scenario: str, on_invite: Handler, *, transport: str = "udp",
                           host: str = "127.0.0.1") -> SippProcess:
    """Start a UA with `on_invite`, let sipp place one call to it, return the finished sipp."""
    sipp_transport = {"udp": "u1", "tcp": "t1"}[transport]
    async with running_ua(fast_settings(transport, host=host, t1=0.1, t2=1.0), on_invite=on_invite) as ua:
        proc = SippProcess(SCENARIOS / scenario, workdir=tmp_path, remote=ua.bound_address(transport),
                           transport=sipp_transport, host=host)
        try:
            await proc.start()
            await proc.wait()
        finally:
            await proc.aclose()
        return proc


@pytest.fixture
def events() -> list[str]:
    return []


async def test_sipp_uas_answers_then_hangs_up_with_bye(tmp_path: Path, events: list[str]) -> None:
    async def on_invite(si: ServerInvite) -> None:
        await si.respond(180)
        dialog = await si.respond(200, body=SDP_ANSWER)
        assert dialog is not None
        dialog.on_terminated = events.append
        assert await si.wait_ack(10) is not None
        events.append("acked")
        resp = await dialog.bye()
        events.append(f"bye:{resp.status if resp else None}")

    proc = await run_sipp_against(tmp_path, "uac_expect_bye.xml", on_invite)
    assert proc.returncode == 0, proc.report()
    assert events == ["acked", "bye_sent", "bye:200"]


@pytest.mark.parametrize("transport,host", [("tcp", "127.0.0.1"), ("udp", "::1")])
async def test_sipp_uas_call_over_tcp_and_ipv6(tmp_path: Path, events: list[str], transport: str,
                                               host: str) -> None:
    async def on_invite(si: ServerInvite) -> None:
        dialog = await si.respond(200, body=SDP_ANSWER)
        assert dialog is not None
        assert await si.wait_ack(10) is not None
        resp = await dialog.bye()
        events.append(f"bye:{resp.status if resp else None}")

    proc = await run_sipp_against(tmp_path, "uac_expect_bye.xml", on_invite, transport=transport, host=host)
    assert proc.returncode == 0, proc.report()
    assert events == ["bye:200"]


async def test_sipp_uas_486_is_not_retransmitted_after_ack(tmp_path: Path, events: list[str]) -> None:
    async def on_invite(si: ServerInvite) -> None:
        assert await si.respond(486) is None
        events.append("rejected")

    proc = await run_sipp_against(tmp_path, "uac_expect_486.xml", on_invite)
    assert proc.returncode == 0, proc.report()
    assert events == ["rejected"]
    assert proc.messages.count("SIP/2.0 486") == 1, proc.messages


async def test_sipp_uas_cancel_gets_200_and_invite_487(tmp_path: Path, events: list[str]) -> None:
    async def on_invite(si: ServerInvite) -> None:
        await si.respond(180)
        await asyncio.wait_for(si.cancelled.wait(), 10)
        events.append("cancelled")
        assert await si.respond(200, body=SDP_ANSWER) is None  # too late: a no-op

    proc = await run_sipp_against(tmp_path, "uac_cancel.xml", on_invite)
    assert proc.returncode == 0, proc.report()
    assert events == ["cancelled"]
    assert "SIP/2.0 487" in proc.messages


async def test_sipp_uas_reinvite_reaches_the_application(tmp_path: Path, events: list[str]) -> None:
    async def in_dialog(req: ServerRequest | ServerInvite) -> None:
        events.append(req.method)
        if isinstance(req, ServerInvite):
            assert b"a=sendonly" in req.request.body
            await req.respond(200, body=SDP_ANSWER.replace(b"RTP/AVP 0\r\n", b"RTP/AVP 0\r\na=recvonly\r\n"))
            assert await req.wait_ack(10) is not None
            events.append("reinvite-acked")

    dialogs: list[Dialog] = []

    async def on_invite(si: ServerInvite) -> None:
        dialog = await si.respond(200, body=SDP_ANSWER)
        assert dialog is not None
        dialog.on_request = in_dialog
        dialog.on_terminated = events.append
        dialogs.append(dialog)

    proc = await run_sipp_against(tmp_path, "uac_reinvite.xml", on_invite)
    assert proc.returncode == 0, proc.report()
    await wait_for(lambda: "BYE" in events)
    assert events == ["INVITE", "reinvite-acked", "bye_received", "BYE"]
    assert dialogs[0].state == "terminated"


async def test_sipp_uas_slow_application_gets_100_trying_sent_for_it(tmp_path: Path) -> None:
    async def on_invite(si: ServerInvite) -> None:
        await asyncio.sleep(0.8)  # much longer than trying_delay (0.2 s)
        await si.respond(486)

    proc = await run_sipp_against(tmp_path, "uac_expect_486.xml", on_invite)
    assert proc.returncode == 0, proc.report()
    assert "SIP/2.0 100 Trying" in proc.messages
    assert proc.messages.index("SIP/2.0 100") < proc.messages.index("SIP/2.0 486")
