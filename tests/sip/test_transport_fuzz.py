"""Mangled input from the network never raises into the event loop and never stops other calls."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from bridge.sip.server import ServerInvite
from tests.harness.sip_ua import (
    SDP_ANSWER,
    SDP_OFFER,
    RawUdpPeer,
    fast_settings,
    raw_request,
    running_ua,
    uri_of,
)


def mutations(base: bytes, rng: random.Random, count: int) -> list[bytes]:
    out: list[bytes] = []
    lines = base.split(b"\r\n")
    for _ in range(count):
        kind = rng.randrange(6)
        data = bytearray(base)
        if kind == 0:  # flip a few bytes
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:  # truncate
            data = data[: rng.randrange(len(data))]
        elif kind == 2:  # drop a header line
            keep = [ln for i, ln in enumerate(lines) if i != rng.randrange(1, len(lines))]
            data = bytearray(b"\r\n".join(keep))
        elif kind == 3:  # duplicate / garble a header value
            i = rng.randrange(1, 8)
            name = lines[i].split(b":", 1)[0]
            junk = bytes(rng.randrange(32, 127) for _ in range(rng.randint(0, 40)))
            data = bytearray(b"\r\n".join([*lines[:i], name + b": " + junk, *lines[i:]]))
        elif kind == 4:  # insert random bytes
            pos = rng.randrange(len(data))
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))
        else:  # wrong Content-Length
            data = bytearray(base.replace(b"Content-Length: ", b"Content-Length: 9", 1))
        out.append(bytes(data))
    return out


async def test_transport_fuzzed_udp_and_tcp_input_leaves_the_ua_working(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    answered: list[str] = []

    async def on_invite(si: ServerInvite) -> None:
        answered.append(si.call_id)
        await si.respond(200, body=SDP_ANSWER)

    rng = random.Random(20261122)
    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings("udp", "tcp"), on_invite=on_invite) as ua, \
                running_ua(fast_settings()) as caller:
            target = ua.bound_address()
            kinds = ("INVITE", "BYE", "ACK", "OPTIONS", "CANCEL", "INFO")
            for i, method in enumerate(kinds):
                base = raw_request(method, target, via_port=peer.port, branch=f"z9hG4bKfz{i}",
                                   call_id=f"fuzz-{i}", to_tag="t" if method in ("BYE", "INFO") else None,
                                   body=SDP_OFFER.decode() if method == "INVITE" else "").encode()
                for data in mutations(base, rng, 60):
                    peer.send(data, target)
                await asyncio.sleep(0.05)
            # the same over one TCP connection
            tcp_port = ua.bound_address("tcp")[1]
            _reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
            try:
                base = raw_request("OPTIONS", ("127.0.0.1", tcp_port), via_port=peer.port).encode()
                for data in mutations(base, rng, 100):
                    if writer.is_closing():
                        break
                    writer.write(data)
                await asyncio.sleep(0.3)
            finally:
                writer.close()
            await asyncio.sleep(0.3)
            # a real call still works
            call = caller.invite(uri_of(ua), from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
            assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
            assert call.dialog is not None
            assert (await call.dialog.bye()) is not None
    finally:
        peer.close()
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert crashes == [], [r.getMessage() for r in crashes][:5]
    assert call.call_id in answered
    assert sum("malformed" in r.getMessage() for r in caplog.records) > 50  # the garbage did arrive
