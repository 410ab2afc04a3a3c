"""UAC dialog handling against a hand-driven peer: forked 2xx, 2xx crossing CANCEL, offerless INVITE."""

from __future__ import annotations

import asyncio
import re

from bridge.sip.message import Response
from bridge.sip.server import ServerInvite
from tests.harness.sip_ua import SDP_ANSWER, SDP_OFFER, RawUdpPeer, fast_settings, running_ua, uri_of, wait_for


def response_to(invite: str, status: int, reason: str, *, to_tag: str | None, body: str = "",
                contact_port: int = 0, record_route: str | None = None) -> str:
    """A response built the way a UAS does: Via/From/To/Call-ID/CSeq copied from the request."""
    def header(name: str) -> str:
        m = re.search(rf"^{name}: (.*)$", invite, re.M)
        assert m, name
        return m.group(1).strip()

    to = header("To") + (f";tag={to_tag}" if to_tag else "")
    rr = f"Record-Route: {record_route}\r\n" if record_route else ""
    ct = "Content-Type: application/sdp\r\n" if body else ""
    contact = f"Contact: <sip:peer@127.0.0.1:{contact_port}>\r\n" if contact_port else ""
    return (f"SIP/2.0 {status} {reason}\r\nVia: {header('Via')}\r\nFrom: {header('From')}\r\nTo: {to}\r\n"
            f"Call-ID: {header('Call-ID')}\r\nCSeq: {header('CSeq')}\r\n{rr}{contact}{ct}"
            f"Content-Length: {len(body.encode())}\r\n\r\n{body}")


async def test_dialog_forked_second_2xx_is_acked_and_byed_first_kept() -> None:
    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings(t1=0.1)) as ua:
            call = ua.invite(f"sip:bob@127.0.0.1:{peer.port}", from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
            invite = (await peer.wait_for_message("INVITE"))[0].decode()
            target = ua.bound_address()
            peer.send(response_to(invite, 200, "OK", to_tag="fork1", body=SDP_ANSWER.decode(),
                                  contact_port=peer.port), target)
            final = await asyncio.wait_for(call.wait_final(), 10)
            assert final.to.tag == "fork1"
            peer.send(response_to(invite, 200, "OK", to_tag="fork2", body=SDP_ANSWER.decode(),
                                  contact_port=peer.port), target)
            acks = await peer.wait_for_message("ACK", count=2)
            assert ";tag=fork1" in acks[0].decode() and ";tag=fork2" in acks[1].decode()
            bye = (await peer.wait_for_message("BYE"))[0].decode()
            assert ";tag=fork2" in bye
            assert call.dialog is not None and call.dialog.remote_tag == "fork1"
            assert call.dialog.state == "confirmed"
            # a retransmitted first 2xx gets the same ACK again, no BYE
            peer.send(response_to(invite, 200, "OK", to_tag="fork1", body=SDP_ANSWER.decode(),
                                  contact_port=peer.port), target)
            acks = await peer.wait_for_message("ACK", count=3)
            assert acks[2] == acks[0]
            assert len(peer.messages("BYE")) == 1
    finally:
        peer.close()


async def test_dialog_2xx_crossing_cancel_is_acked_then_byed() -> None:
    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings(t1=0.1)) as ua:
            call = ua.invite(f"sip:bob@127.0.0.1:{peer.port}", from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
            invite = (await peer.wait_for_message("INVITE"))[0].decode()
            target = ua.bound_address()
            peer.send(response_to(invite, 180, "Ringing", to_tag="t1", contact_port=peer.port), target)
            cancel_task = asyncio.create_task(call.cancel())
            cancel = (await peer.wait_for_message("CANCEL"))[0].decode()
            branch = re.search(r"branch=([^;\r\n]+)", invite)
            assert branch and f"branch={branch.group(1)}" in cancel
            assert re.search(r"CSeq: (\d+)", invite).group(1) == re.search(r"CSeq: (\d+)", cancel).group(1)  # type: ignore[union-attr]
            peer.send(response_to(invite, 200, "OK", to_tag="t1", body=SDP_ANSWER.decode(),
                                  contact_port=peer.port), target)
            peer.send(response_to(cancel, 200, "OK", to_tag="t1"), target)
            await asyncio.wait_for(cancel_task, 10)
            assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
            await peer.wait_for_message("ACK")
            await peer.wait_for_message("BYE")
    finally:
        peer.close()


async def test_dialog_offerless_invite_answer_arrives_in_ack() -> None:
    acks: list[bytes] = []

    async def on_invite(si: ServerInvite) -> None:
        assert si.request.body == b""
        await si.respond(200, body=SDP_OFFER)  # our offer in the 200
        ack = await si.wait_ack(10)
        assert ack is not None
        acks.append(ack.body)

    async with running_ua(fast_settings(), on_invite=on_invite) as callee, running_ua(fast_settings()) as caller:
        call = caller.invite(uri_of(callee), from_uri="sip:alice@bridge.test")  # no SDP
        offers: list[bytes] = []

        def answer(resp: Response) -> bytes:
            offers.append(resp.body)
            return SDP_ANSWER

        call.ack_body = answer
        final = await asyncio.wait_for(call.wait_final(), 10)
        assert final.body == SDP_OFFER and offers == [SDP_OFFER]
        assert call.dialog is not None
        await wait_for(lambda: acks != [])
        assert acks == [SDP_ANSWER]
        await call.dialog.bye()
