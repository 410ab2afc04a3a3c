"""RFC 3261 14.1 end to end: the trunk answers the bridge's hold re-INVITE with 491 Request Pending; the
bridge (owner of the Call-ID on a Matrix -> SIP call) retries after 2.1-4 s and the hold then takes effect."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import E2E, GHOST, assert_released, eventually
from tests.e2e.test_outbound_calls import portal_room, trunk
from tests.harness.rtp_peer import RtpPeer

pytestmark = pytest.mark.e2e


async def test_hold_reinvite_refused_491_is_retried_after_the_call_id_owner_delay(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge()
    rtp_peer.start_sending(seconds=60)
    sipp = await trunk(e2e, "trunk_hold_glare.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    media = bridge.calls.outbound[call.call_id].media
    await call.hold(True)
    await eventually(lambda: "491 Request Pending" in sipp.messages, 20, "the 491 to the hold re-INVITE")
    refused = time.monotonic()
    await eventually(lambda: media.rtp_leg.hold, 10, "the retried re-INVITE's 200")
    assert 2.0 <= time.monotonic() - refused <= 5.0
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()  # sipp saw both re-INVITEs with a=inactive, then the BYE
    await assert_released(bridge)
