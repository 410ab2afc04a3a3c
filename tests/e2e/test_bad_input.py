"""Bad input from either side gets one log line and changes nothing: the next call works normally."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from tests.e2e.conftest import E2E, GHOST, SCENARIOS, assert_released, eventually
from tests.harness.rtp_peer import RtpPeer
from tests.harness.sipp import SippProcess

pytestmark = pytest.mark.e2e


async def test_malformed_call_events_and_sip_garbage_do_not_disturb_the_next_call(
    e2e: E2E, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bridge = await e2e.bridge()
    alice = await e2e.client("alice")
    room = await alice.create_dm(GHOST)
    await alice.wait_for_membership(room, GHOST, "join", timeout=30)
    # Invalid m.call.* events from Matrix: no offer, a lifetime that is a string, a non-list of candidates,
    # and events for a call nobody knows.
    bad_events: list[tuple[str, dict[str, Any]]] = [
        ("m.call.invite", {"call_id": "bad1", "party_id": "P", "version": "1", "lifetime": 60000}),
        ("m.call.invite", {"call_id": "bad2", "party_id": "P", "version": "1", "lifetime": "soon",
                           "offer": {"type": "offer", "sdp": "v=0"}}),
        ("m.call.candidates", {"call_id": "bad3", "party_id": "P", "version": "1", "candidates": "nope"}),
        ("m.call.hangup", {"call_id": "unknown-call", "party_id": "P", "version": "1"}),
        ("m.call.answer", {"call_id": "has spaces", "version": "1"}),
    ]
    for event_type, content in bad_events:
        await alice.send_event(room, event_type, content)
    # Garbage to the bridge's SIP port.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"\x00\xff" * 300, b"INVITE sip:x SIP/2.0\r\n\r\n", b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n"):
            s.sendto(junk, ("127.0.0.1", e2e.plan.sip_port))
    await eventually(lambda: "ignoring invalid m.call.candidates" in caplog.text, 15, "the bad events handled")
    assert "ignoring invalid m.call.invite" in caplog.text and "unknown call unknown-call" in caplog.text
    assert not bridge.calls.sessions()

    # The next, valid call still works with audio.
    peer = RtpPeer(tone_hz=1000.0)
    await peer.open()
    peer.start_sending(seconds=30)
    sipp = SippProcess(SCENARIOS / "trunk_answer.xml", local_port=e2e.plan.trunk_port, timeout=60,
                       extra_args=["-key", "rtp_port", str(peer.port)], workdir=e2e.tmp / "sipp")
    await e2e.own(sipp).start()
    try:
        call = await alice.place_call(room, GHOST)
        await call.wait_answer(timeout=30)
        await call.wait_for_tone(1000.0, timeout=30, min_frames=25)
        await call.hangup()
        assert await sipp.wait() == 0, sipp.report()
        await assert_released(bridge)
    finally:
        await peer.close()
