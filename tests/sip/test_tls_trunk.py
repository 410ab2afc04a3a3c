"""TLS towards a trunk: the certificate must chain to sip.tls_ca and name the host of the URI we dialled."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest

from bridge.sip.errors import SipTimeout, SipTransportError
from bridge.sip.server import ServerInvite
from tests.harness.sip_ua import SDP_ANSWER, SDP_OFFER, fast_settings, running_ua
from tests.harness.tls_certs import TestCa


async def answer(si: ServerInvite) -> None:
    await si.respond(200, body=SDP_ANSWER)
    await si.wait_ack(10)


async def call(trunk_cert: str, trunk_key: str, cafile: str, host: str,
               client: tuple[str, str] | None = None, require_client: str | None = None) -> int:
    trunk = fast_settings("tls", tls_certfile=trunk_cert, tls_keyfile=trunk_key)
    bridge = fast_settings("udp", tls_cafile=cafile, tls_certfile=client[0] if client else None,
                           tls_keyfile=client[1] if client else None)
    async with running_ua(trunk, on_invite=answer) as callee, running_ua(bridge) as caller:
        if require_client:  # mutual TLS: the trunk wants a certificate from our CA
            ctx = callee.transport._server_ssl_context()
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(require_client)
        port = callee.bound_address("tls")[1]
        inv = caller.invite(f"sip:bob@{host}:{port};transport=tls", from_uri="sip:bridge@test", sdp=SDP_OFFER)
        final = await asyncio.wait_for(inv.wait_final(), 10)
        if final.status == 200 and inv.dialog is not None:
            await inv.dialog.bye()
        return final.status


async def test_tls_trunk_with_a_certificate_for_its_host_name_from_our_ca_is_accepted(tmp_path: Path) -> None:
    ca = TestCa(tmp_path)
    leaf = ca.leaf("localhost")
    assert await call(leaf.cert, leaf.key, ca.cert, "localhost") == 200


async def test_tls_trunk_certificate_for_another_host_name_is_refused_with_a_clear_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca = TestCa(tmp_path)
    leaf = ca.leaf("trunk.example.net")  # valid chain, wrong name: we dialled localhost
    with pytest.raises(SipTransportError, match="certificate of localhost refused"):
        await call(leaf.cert, leaf.key, ca.cert, "localhost")
    assert "TLS: certificate of localhost" in caplog.text and "refused" in caplog.text


async def test_tls_trunk_certificate_from_an_untrusted_ca_is_refused(tmp_path: Path) -> None:
    ours, theirs = TestCa(tmp_path, "ours"), TestCa(tmp_path, "rogue")
    leaf = theirs.leaf("127.0.0.1")
    with pytest.raises(SipTransportError, match="refused"):
        await call(leaf.cert, leaf.key, ours.cert, "127.0.0.1")


async def test_bridge_presents_tls_cert_as_client_certificate_to_a_trunk_that_asks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ca = TestCa(tmp_path)
    trunk, bridge = ca.leaf("127.0.0.1"), ca.leaf("bridge.test")
    assert await call(trunk.cert, trunk.key, ca.cert, "127.0.0.1", client=(bridge.cert, bridge.key),
                      require_client=ca.cert) == 200
    # without one the mutual-TLS trunk drops the connection (with TLS 1.3 after our handshake ended: a timeout)
    with pytest.raises((SipTransportError, SipTimeout)):
        await call(trunk.cert, trunk.key, ca.cert, "127.0.0.1", require_client=ca.cert)
