"""A response remembers where it came from: the call driver hands that IP to media/ (media follows signalling)."""

from __future__ import annotations

import asyncio

import pytest

from bridge.sip.server import ServerInvite
from tests.harness.sip_ua import SDP_ANSWER, SDP_OFFER, fast_settings, running_ua, uri_of


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_the_200_of_an_invite_carries_the_address_it_came_from(transport: str) -> None:
    async def on_invite(si: ServerInvite) -> None:
        await si.respond(200, body=SDP_ANSWER)

    async with (
        running_ua(fast_settings(transport, host="127.0.0.2"), on_invite=on_invite) as callee,
        running_ua(fast_settings(transport)) as caller,
    ):
        call = caller.invite(uri_of(callee, transport), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        final = await asyncio.wait_for(call.wait_final(), 10)
        assert final.status == 200
        assert final.source is not None and final.source[0] == "127.0.0.2"
        assert call.dialog is not None
        await call.dialog.bye()
