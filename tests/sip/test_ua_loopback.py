"""Two real UserAgents calling each other on loopback."""

from __future__ import annotations

import asyncio

from bridge.sip.dialog import Dialog
from bridge.sip.message import Headers, Request, Response, Via
from bridge.sip.server import ServerInvite, ServerRequest
from tests.harness.sip_ua import SDP_ANSWER, SDP_OFFER, fast_settings, running_ua, uri_of, wait_for


async def test_ua_call_answer_ack_bye_between_two_user_agents() -> None:
    invites: list[ServerInvite] = []
    terminated: list[str] = []

    async def on_invite(si: ServerInvite) -> None:
        invites.append(si)
        await si.respond(180)
        dialog = await si.respond(200, body=SDP_ANSWER)
        assert dialog is not None
        dialog.on_terminated = terminated.append
        ack = await si.wait_ack(10)
        assert ack is not None and ack.method == "ACK"

    async with running_ua(fast_settings(), on_invite=on_invite) as callee, running_ua(fast_settings()) as caller:
        provisional: list[Response] = []
        call = caller.invite(uri_of(callee), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        call.on_provisional = provisional.append
        final = await asyncio.wait_for(call.wait_final(), 10)
        assert final.status == 200
        assert final.body == SDP_ANSWER
        assert [r.status for r in provisional] == [180]
        assert call.dialog is not None and call.dialog.state == "confirmed"
        bye = await call.dialog.bye()
        assert bye is not None and bye.status == 200
        await wait_for(lambda: terminated == ["bye_received"])
        assert len(invites) == 1
        assert callee.dialogs == [] and caller.dialogs == []


async def test_ua_reinvite_and_info_reach_the_callee_application() -> None:
    seen: list[str] = []

    async def in_dialog(req: ServerRequest | ServerInvite) -> None:
        seen.append(req.method)
        await req.respond(200, body=SDP_ANSWER if req.method == "INVITE" else b"")

    async def on_invite(si: ServerInvite) -> None:
        dialog = await si.respond(200, body=SDP_ANSWER)
        assert dialog is not None
        dialog.on_request = in_dialog

    async with running_ua(fast_settings(), on_invite=on_invite) as callee, running_ua(fast_settings()) as caller:
        call = caller.invite(uri_of(callee), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
        assert call.dialog is not None
        resp = await call.dialog.reinvite(SDP_OFFER)
        assert resp.status == 200
        info = await call.dialog.request("INFO", body=b"Signal=1\r\n", content_type="application/dtmf-relay")
        assert info.status == 200
        assert seen == ["INVITE", "INFO"]
        await call.dialog.bye()
        await wait_for(lambda: seen == ["INVITE", "INFO", "BYE"])


async def test_ua_bye_in_early_dialog_ends_the_pending_invite_with_487() -> None:
    invites: list[ServerInvite] = []

    async def on_invite(si: ServerInvite) -> None:
        invites.append(si)
        await si.respond(180)

    async with running_ua(fast_settings(), on_invite=on_invite) as callee, running_ua(fast_settings()) as caller:
        call = caller.invite(uri_of(callee), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        await wait_for(lambda: bool(call.early_dialogs))
        early = next(iter(call.early_dialogs.values()))
        bye = await early.bye()
        assert bye is not None and bye.status == 200
        final = await asyncio.wait_for(call.wait_final(), 10)
        assert final.status == 487
        assert invites[0].cancelled.is_set()


async def test_ua_cancelled_reinvite_keeps_the_dialog() -> None:
    reinvites: list[ServerInvite] = []

    async def in_dialog(req: ServerRequest | ServerInvite) -> None:
        if isinstance(req, ServerInvite):
            reinvites.append(req)  # never answered: the caller cancels it

    async def on_invite(si: ServerInvite) -> None:
        dialog = await si.respond(200, body=SDP_ANSWER)
        assert dialog is not None
        dialog.on_request = in_dialog

    async with running_ua(fast_settings(), on_invite=on_invite) as callee, running_ua(fast_settings()) as caller:
        call = caller.invite(uri_of(callee), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
        assert call.dialog is not None
        reinvite = asyncio.create_task(call.dialog.reinvite(SDP_OFFER))
        await wait_for(lambda: bool(reinvites))
        # a real CANCEL for the re-INVITE (same Via/branch, CSeq number, From/To/Call-ID) from the caller
        received = reinvites[0].request
        via = Via.parse(received.headers.get_all("Via")[0])
        via.params.pop("received", None)
        via.params["rport"] = None
        headers = Headers()
        headers.add("Via", str(via))
        for name in ("From", "To", "Call-ID"):
            headers.add(name, received.headers.get(name) or "")
        headers.add("CSeq", f"{received.cseq[0]} CANCEL")
        headers.add("Max-Forwards", "70")
        cancel = Request("CANCEL", received.uri, headers)
        cancel_resp = await caller.transactions.request(cancel, "udp", callee.bound_address())
        assert cancel_resp.status == 200
        assert reinvites[0].cancelled.is_set()
        resp = await asyncio.wait_for(reinvite, 10)
        assert resp.status == 487
        assert call.dialog.state == "confirmed"
        dialogs = callee.dialogs
        assert len(dialogs) == 1 and dialogs[0].state == "confirmed"
        assert (await call.dialog.bye()) is not None


async def test_ua_in_dialog_defaults_and_481_ends_the_dialog() -> None:
    callee_dialogs: list[Dialog] = []

    async def on_invite(si: ServerInvite) -> None:
        dialog = await si.respond(200, body=SDP_ANSWER)
        assert dialog is not None
        callee_dialogs.append(dialog)  # no on_request: the core's defaults answer

    async with running_ua(fast_settings(), on_invite=on_invite) as callee, running_ua(fast_settings()) as caller:
        call = caller.invite(uri_of(callee), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
        dialog = call.dialog
        assert dialog is not None
        reasons: list[str] = []
        dialog.on_terminated = reasons.append
        assert (await dialog.request("OPTIONS")).status == 200
        assert (await dialog.request("UPDATE", body=SDP_OFFER)).status == 501
        assert (await dialog.reinvite(SDP_OFFER)).status == 501
        assert dialog.state == "confirmed"
        callee_dialogs[0].terminate("test: forgotten by the far end")
        assert (await dialog.request("INFO")).status == 481
        assert dialog.state == "terminated" and reasons == ["info_481"]
