"""SRTP on the RTP leg: encrypted on the wire, decrypted for the relay, replays dropped, contexts kept."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.media.dtmf import DtmfEvent
from bridge.media.rtp_leg import RtpLeg
from bridge.media.rtp_packet import RtpPacket
from bridge.media.settings import MediaSettings
from bridge.sip.sdp import SdpError

from .call_fixtures import make_media
from .helpers import wait_for

log = logging.getLogger("test.srtp_leg")
SUITE = "AES_CM_128_HMAC_SHA1_80"
TONE = bytes(range(160))


@pytest.fixture
async def legs() -> AsyncIterator[tuple[RtpLeg, RtpLeg]]:
    loop = asyncio.get_running_loop()
    a = RtpLeg(log=log, source_mode="any")
    b = RtpLeg(log=log, source_mode="any")
    await loop.create_datagram_endpoint(lambda: a, local_addr=("127.0.0.1", 0))
    await loop.create_datagram_endpoint(lambda: b, local_addr=("127.0.0.1", 0))
    for leg, other in ((a, b), (b, a)):
        leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=other.local_address)
    yield a, b
    await a.close()
    await b.close()


def keyed(a: RtpLeg, b: RtpLeg) -> tuple[bytes, bytes]:
    ka, kb = secrets.token_bytes(30), secrets.token_bytes(30)
    a.set_srtp((SUITE, ka, kb))
    b.set_srtp((SUITE, kb, ka))
    return ka, kb


async def test_audio_and_dtmf_cross_encrypted_and_replays_are_dropped(legs: tuple[RtpLeg, RtpLeg]) -> None:
    a, b = legs
    keyed(a, b)
    wire: list[bytes] = []
    real = a.transport
    assert real is not None
    original = real.sendto

    def spy(data: bytes, addr: Any = None) -> None:
        wire.append(data)
        original(data, addr)

    real.sendto = spy  # type: ignore[method-assign,assignment]
    got: list[RtpPacket] = []
    digits: list[str] = []
    b.on_audio = got.append
    b.on_dtmf = digits.append
    for _ in range(5):
        a.send_audio(TONE)
        await asyncio.sleep(0.02)
    a.relay_dtmf(DtmfEvent(5, True, 10, 800), True)
    await wait_for(lambda: len(got) >= 3 and digits == ["5"])
    assert all(p.payload == TONE for p in got)
    assert all(TONE[:40] not in d for d in wire) and all(len(d) == 12 + 160 + 10 for d in wire[:5])
    b_addr = b.local_address
    assert b_addr is not None and b.srtp is not None
    before = len(got)
    original(wire[0], b_addr)  # a replay of the first packet
    original(wire[1][:-1] + bytes([wire[1][-1] ^ 1]), b_addr)  # a forged tag
    await wait_for(lambda: b.srtp is not None and b.srtp.replayed + b.srtp.auth_failures >= 2)
    await asyncio.sleep(0.1)
    assert len(got) == before


async def test_same_keys_keep_the_contexts_and_a_new_peer_key_replaces_only_receiving(
        legs: tuple[RtpLeg, RtpLeg]) -> None:
    a, b = legs
    ka, kb = keyed(a, b)
    session = a.srtp
    assert session is not None
    tx, rx = session._tx, session._rx
    a.set_srtp((SUITE, ka, kb))  # re-INVITE (hold / resume) with the same keys
    assert a.srtp is session and session._tx is tx and session._rx is rx
    a.set_srtp((SUITE, ka, secrets.token_bytes(30)))
    assert session._tx is tx and session._rx is not rx and session.rekeys == 1


async def test_plain_packets_are_refused_by_an_encrypted_leg(legs: tuple[RtpLeg, RtpLeg]) -> None:
    a, b = legs
    b.set_srtp((SUITE, secrets.token_bytes(30), secrets.token_bytes(30)))
    got: list[RtpPacket] = []
    b.on_audio = got.append
    for _ in range(5):
        a.send_audio(TONE)  # a sends plain RTP
    await wait_for(lambda: b.srtp is not None and b.srtp.auth_failures >= 5)
    assert got == []


async def test_call_media_negotiates_srtp_both_ways_and_never_logs_a_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caller, caller_ports = make_media(MediaSettings(srtp="required"))
    callee, callee_ports = make_media(MediaSettings(srtp="optional"))
    try:
        await caller.open_rtp()
        await callee.open_rtp()
        offer = caller.sip_offer()
        answer = callee.answer_sip_offer(offer)
        caller.apply_sip_answer(answer)
        assert b"RTP/SAVP" in offer and b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in answer
        assert caller.srtp_suite == callee.srtp_suite == "AES_CM_128_HMAC_SHA1_80"
        reoffer = caller.sip_reoffer("sendonly")  # hold: same line, same key
        assert reoffer.count(b"a=crypto:") == 1 and offer.split(b"a=crypto:1 ")[1][:70] in reoffer
        caller.apply_sip_answer(callee.answer_sip_offer(reoffer))
        keys = [line.split(b"inline:")[1].split(b"\r")[0].decode() for line in (offer + answer).split(b"\n")
                if b"inline:" in line]
        assert len(keys) == 4
        assert not any(key in caplog.text or key[:16] in caplog.text for key in keys)
    finally:
        await caller.close()
        await callee.close()
        del caller_ports, callee_ports


async def test_offerless_invite_takes_the_srtp_answer_from_the_ack_and_required_refuses_a_plain_one() -> None:
    bridge, bridge_ports = make_media(MediaSettings(srtp="required"))
    phone, phone_ports = make_media(MediaSettings(srtp="optional"))
    try:
        await bridge.open_rtp()
        await phone.open_rtp()
        offer = bridge.sip_offer_for_offerless()  # in our 200
        bridge.apply_sip_answer(phone.answer_sip_offer(offer))  # the phone's answer in its ACK
        assert bridge.srtp_suite == phone.srtp_suite == "AES_CM_128_HMAC_SHA1_80"
        plain = phone.sip_offer().replace(b"a=crypto", b"a=x-crypto")  # an answerer that ignores crypto
        bridge.sip_offer_for_offerless()
        with pytest.raises(SdpError):
            bridge.apply_sip_answer(plain)
    finally:
        await bridge.close()
        await phone.close()
        del bridge_ports, phone_ports
