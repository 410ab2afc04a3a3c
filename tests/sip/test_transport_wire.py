"""Transport behaviour on the wire: rport, TCP framing, malformed input, TLS, IPv6, stray requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.sip.server import ServerInvite
from tests.harness.sip_ua import (
    SDP_ANSWER,
    SDP_OFFER,
    RawUdpPeer,
    fast_settings,
    raw_request,
    running_ua,
    self_signed_cert,
    uri_of,
)


async def answer_and_wait_ack(si: ServerInvite) -> None:
    await si.respond(200, body=SDP_ANSWER)
    await si.wait_ack(10)


async def test_transport_rport_response_goes_to_source_port_not_via_port() -> None:
    sender = await RawUdpPeer.open()
    via_target = await RawUdpPeer.open()  # the port the Via claims; must receive nothing
    try:
        async with running_ua(fast_settings()) as ua:
            target = ua.bound_address()
            sender.send(raw_request("OPTIONS", target, via_port=via_target.port), target)
            reply = (await sender.wait_for_message("SIP/2.0 200"))[0].decode()
            assert f";rport={sender.port}" in reply
            assert ";received=127.0.0.1" in reply
            assert "Allow:" in reply and "Accept: application/sdp" in reply
            await asyncio.sleep(0.1)
            assert via_target.received == []
    finally:
        sender.close()
        via_target.close()


async def test_transport_unknown_dialog_request_gets_481() -> None:
    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings()) as ua:
            target = ua.bound_address()
            peer.send(raw_request("BYE", target, via_port=peer.port, to_tag="nosuchdialog"), target)
            await peer.wait_for_message("SIP/2.0 481")
            peer.send(raw_request("INFO", target, via_port=peer.port, to_tag="x", branch="z9hG4bKi"), target)
            await peer.wait_for_message("SIP/2.0 481", count=2)
    finally:
        peer.close()


async def test_transport_malformed_udp_is_answered_or_dropped_and_calls_still_work() -> None:
    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings(), on_invite=answer_and_wait_ack) as callee, \
                running_ua(fast_settings()) as caller:
            target = callee.bound_address()
            peer.send(b"\x00\xffgarbage that is not SIP at all\r\n\r\n", target)
            peer.send(b"INVITE sip:x SIP/2.0\r\nVia: broken\r\n\r\n", target)
            # readable request line and dialog headers but a broken CSeq: answerable with 400
            bad = raw_request("OPTIONS", target, via_port=peer.port).replace("CSeq: 1 OPTIONS", "CSeq: abc OPTIONS")
            peer.send(bad, target)
            await peer.wait_for_message("SIP/2.0 400")
            call = caller.invite(uri_of(callee), from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
            assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
            assert call.dialog is not None
            assert (await call.dialog.bye()) is not None
    finally:
        peer.close()


async def read_responses(reader: asyncio.StreamReader, count: int, timeout: float = 10.0) -> list[str]:
    """Read `count` responses (Content-Length framed) from a TCP stream."""
    out: list[str] = []
    while len(out) < count:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        text = head.decode()
        length = int(text.lower().split("content-length:", 1)[1].split("\r\n", 1)[0].strip())
        body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
        out.append(text + body.decode())
    return out


def tcp_request(method: str, port: int, local: tuple[str, int], branch: str, cseq: int = 1,
                to_tag: str | None = None, body: str = "", call_id: str = "tcp-call") -> bytes:
    return raw_request(method, ("127.0.0.1", port), via_port=local[1], branch=branch, cseq=cseq, to_tag=to_tag,
                       body=body, call_id=call_id).replace("SIP/2.0/UDP", "SIP/2.0/TCP").encode()


async def test_transport_tcp_split_body_and_several_messages_per_segment() -> None:
    invites: list[ServerInvite] = []

    async def on_invite(si: ServerInvite) -> None:
        invites.append(si)
        await si.respond(200, body=SDP_ANSWER)

    async with running_ua(fast_settings("tcp"), on_invite=on_invite) as ua:
        port = ua.bound_address("tcp")[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            local = writer.get_extra_info("sockname")
            invite = tcp_request("INVITE", port, local, "z9hG4bKtcp1", body=SDP_OFFER.decode())
            # header and body cut at awkward places, sent in pieces
            for piece in (invite[:10], invite[10:200], invite[200:-20], invite[-20:]):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.05)
            ok = [r for r in await read_responses(reader, 1) if not r.startswith("SIP/2.0 100")]
            while not ok:
                ok = [r for r in await read_responses(reader, 1) if not r.startswith("SIP/2.0 100")]
            assert ok[0].startswith("SIP/2.0 200")
            assert ok[0].endswith(SDP_ANSWER.decode())
            to_tag = ok[0].split("To:", 1)[1].split("tag=", 1)[1].split("\r\n", 1)[0]
            # ACK + OPTIONS + BYE in one segment
            batch = (tcp_request("ACK", port, local, "z9hG4bKtcp2", to_tag=to_tag)
                     + tcp_request("OPTIONS", port, local, "z9hG4bKtcp3", cseq=2, to_tag=to_tag)
                     + tcp_request("BYE", port, local, "z9hG4bKtcp4", cseq=3, to_tag=to_tag))
            writer.write(batch)
            await writer.drain()
            replies = await read_responses(reader, 2)
            assert [r.split("\r\n", 1)[0] for r in replies] == ["SIP/2.0 200 OK", "SIP/2.0 200 OK"]
            assert "CSeq: 2 OPTIONS" in replies[0] and "CSeq: 3 BYE" in replies[1]
            assert len(invites) == 1 and invites[0].dialog is not None
            assert invites[0].dialog.state == "terminated"
        finally:
            writer.close()


async def test_transport_tcp_connection_survives_a_malformed_message_with_intact_framing() -> None:
    async def on_invite(si: ServerInvite) -> None:
        await si.respond(200, body=SDP_ANSWER)

    async with running_ua(fast_settings("tcp"), on_invite=on_invite) as ua:
        port = ua.bound_address("tcp")[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            local = writer.get_extra_info("sockname")
            invite = tcp_request("INVITE", port, local, "z9hG4bKs1", body=SDP_OFFER.decode())
            writer.write(invite)
            ok = await read_responses(reader, 1)
            to_tag = ok[-1].split("To:", 1)[1].split("tag=", 1)[1].split("\r\n", 1)[0]
            writer.write(tcp_request("ACK", port, local, "z9hG4bKs2", to_tag=to_tag))
            # a malformed but framed message: bad CSeq -> 400, connection stays up
            bad = tcp_request("INFO", port, local, "z9hG4bKs3", cseq=2, to_tag=to_tag).replace(
                b"CSeq: 2 INFO", b"CSeq: x INFO")
            writer.write(bad)
            assert (await read_responses(reader, 1))[0].startswith("SIP/2.0 400")
            writer.write(tcp_request("BYE", port, local, "z9hG4bKs4", cseq=3, to_tag=to_tag))
            bye_ok = await read_responses(reader, 1)
            assert bye_ok[0].startswith("SIP/2.0 200") and "CSeq: 3 BYE" in bye_ok[0]
            assert not writer.is_closing()
        finally:
            writer.close()


async def test_transport_tcp_framing_failure_closes_only_that_connection() -> None:
    async with running_ua(fast_settings("tcp", max_message_size=4000)) as ua:
        port = ua.bound_address("tcp")[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 999999\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the UA
            local = writer2.get_extra_info("sockname")
            writer2.write(tcp_request("OPTIONS", port, local, "z9hG4bKok"))
            assert (await read_responses(reader2, 1))[0].startswith("SIP/2.0 200")
        finally:
            writer.close()
            writer2.close()


async def test_transport_tls_call_between_two_user_agents(tmp_path: Path) -> None:
    certfile, keyfile = self_signed_cert(tmp_path)
    callee_settings = fast_settings("tls", tls_certfile=certfile, tls_keyfile=keyfile)
    caller_settings = fast_settings("udp", tls_cafile=certfile)
    async with running_ua(callee_settings, on_invite=answer_and_wait_ack) as callee, \
            running_ua(caller_settings) as caller:
        call = caller.invite(uri_of(callee, "tls"), from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
        final = await asyncio.wait_for(call.wait_final(), 10)
        assert final.status == 200
        assert call.dialog is not None
        bye = await call.dialog.bye()
        assert bye is not None and bye.status == 200
        # a sips: Request-URI means TLS and sips: Contacts both ways (RFC 3261 8.1.1.8, 12.1.1)
        host, port = callee.bound_address("tls")
        secure = caller.invite(f"sips:bob@{host}:{port}", from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
        final = await asyncio.wait_for(secure.wait_final(), 10)
        assert final.status == 200
        assert (secure.request.headers.get("Contact") or "").startswith("<sips:")
        assert (final.headers.get("Contact") or "").startswith("<sips:")
        assert secure.dialog is not None and secure.dialog.destination()[0] == "tls"
        bye = await secure.dialog.bye()
        assert bye is not None and bye.status == 200


async def test_transport_ipv6_call_between_two_user_agents() -> None:
    async with running_ua(fast_settings(host="::1"), on_invite=answer_and_wait_ack) as callee, \
            running_ua(fast_settings(host="::1")) as caller:
        call = caller.invite(uri_of(callee), from_uri="sip:alice@[::1]", sdp=SDP_OFFER)
        assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
        assert "SIP/2.0/UDP [::1]:" in (call.request.headers.get("Via") or "")
        assert call.dialog is not None
        bye = await call.dialog.bye()
        assert bye is not None and bye.status == 200


async def test_transport_advertised_address_used_in_via_and_contact() -> None:
    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings(advertised_host="203.0.113.7", advertised_port=5999)) as ua:
            ua.invite(f"sip:bob@127.0.0.1:{peer.port}", from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
            invite = (await peer.wait_for_message("INVITE"))[0].decode()
            assert "Via: SIP/2.0/UDP 203.0.113.7:5999;branch=" in invite
            assert "Contact: <sip:203.0.113.7:5999>" in invite
    finally:
        peer.close()


async def test_transport_tcp_connection_refused_fails_the_invite_with_transport_error() -> None:
    import socket

    import pytest

    from bridge.sip.errors import SipTransportError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens here once the socket is closed
    async with running_ua(fast_settings("udp", "tcp")) as ua:
        call = ua.invite(f"sip:bob@127.0.0.1:{closed_port};transport=tcp", from_uri="sip:alice@bridge.test",
                         sdp=SDP_OFFER)
        with pytest.raises(SipTransportError):
            await asyncio.wait_for(call.wait_final(), 10)


async def test_transport_required_extension_is_refused_with_420() -> None:
    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings(), on_invite=answer_and_wait_ack) as ua:
            target = ua.bound_address()
            peer.send(raw_request("INVITE", target, via_port=peer.port, body=SDP_OFFER.decode(),
                                  extra="Require: 100rel\r\n"), target)
            reply = (await peer.wait_for_message("SIP/2.0 420"))[0].decode()
            assert "Unsupported: 100rel" in reply
    finally:
        peer.close()
