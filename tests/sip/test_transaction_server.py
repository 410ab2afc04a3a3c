"""Non-INVITE server transaction: retransmissions answered from the transaction, app called once."""

from __future__ import annotations

from bridge.sip.server import ServerRequest
from tests.harness.sip_ua import RawUdpPeer, fast_settings, raw_request, running_ua


async def test_transaction_non_invite_retransmission_answered_without_calling_app_again() -> None:
    handled: list[str] = []

    async def on_request(req: ServerRequest) -> None:
        handled.append(req.method)
        await req.respond(202, "Accepted")

    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings(), on_request=on_request) as ua:
            target = ua.bound_address()
            message = raw_request("MESSAGE", target, via_port=peer.port, body="hello")
            peer.send(message, target)
            first = (await peer.wait_for_message("SIP/2.0 202"))[0]
            peer.send(message, target)  # retransmission (same branch): timer J keeps the transaction
            replies = await peer.wait_for_message("SIP/2.0 202", count=2)
            assert replies[1] == first
            assert handled == ["MESSAGE"]
            # a new transaction (new branch) reaches the app again
            peer.send(raw_request("MESSAGE", target, via_port=peer.port, branch="z9hG4bKnew", cseq=2), target)
            await peer.wait_for_message("SIP/2.0 202", count=3)
            assert handled == ["MESSAGE", "MESSAGE"]
    finally:
        peer.close()


async def test_transaction_unhandled_methods_get_405_or_501_and_cancel_without_invite_481() -> None:
    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings()) as ua:
            target = ua.bound_address()
            peer.send(raw_request("SUBSCRIBE", target, via_port=peer.port, branch="z9hG4bKa"), target)
            assert b"Allow:" in (await peer.wait_for_message("SIP/2.0 405"))[0]
            peer.send(raw_request("FROBNICATE", target, via_port=peer.port, branch="z9hG4bKb"), target)
            await peer.wait_for_message("SIP/2.0 501")
            peer.send(raw_request("CANCEL", target, via_port=peer.port, branch="z9hG4bKc"), target)
            await peer.wait_for_message("SIP/2.0 481")
    finally:
        peer.close()
