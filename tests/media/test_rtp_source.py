"""RTP hijack protection: the SIP-side leg takes media only from where the SDP / signalling say (issue 7).

Real UDP sockets on loopback; 127.0.0.2 plays the attacker spraying the port, 127.0.0.3 a NATed far end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bridge.media.rtp_leg import RtpLeg
from bridge.media.rtp_packet import RtpPacket
from bridge.media.settings import MediaSettings

from .call_fixtures import Call, connect_inbound, connect_outbound, make_media, sip_sdp
from .helpers import wait_for
from .rtp_peer import RtpPeer, open_rtp_peer
from .webrtc_peer import MatrixPeer

log = logging.getLogger("test.rtp_source")

FAR = b"\x11" * 160
EVIL = b"\xee" * 160
NOWHERE = ("127.0.0.9", 9)  # an SDP address nobody sends from (a far end behind NAT advertising its private one)

LegFactory = Callable[..., Awaitable[RtpLeg]]


@pytest.fixture
async def make_leg() -> AsyncIterator[LegFactory]:
    legs: list[RtpLeg] = []

    async def factory(mode: str = "signalling", latch: int = 4) -> RtpLeg:
        leg = RtpLeg(log=log, source_mode=mode, latch_packets=latch)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: leg, local_addr=("127.0.0.1", 0))
        legs.append(leg)
        return leg

    yield factory
    for leg in legs:
        await leg.close()


@pytest.fixture
async def peers() -> AsyncIterator[Callable[[str], Awaitable[RtpPeer]]]:
    opened: list[RtpPeer] = []

    async def factory(host: str = "127.0.0.1") -> RtpPeer:
        peer = await open_rtp_peer(host)
        opened.append(peer)
        return peer

    yield factory
    for peer in opened:
        await peer.close()


def where(leg: RtpLeg) -> tuple[str, int]:
    addr = leg.local_address
    assert addr is not None
    return addr


def sink(leg: RtpLeg) -> list[RtpPacket]:
    got: list[RtpPacket] = []
    leg.on_audio = got.append
    return got


async def settle() -> None:
    """Let datagrams already sent on loopback be delivered (a probe sent after them arrives after them)."""
    await asyncio.sleep(0.1)


def spray(attacker: RtpPeer, target: tuple[str, int], count: int) -> None:
    for _ in range(count):
        attacker.send_packet(target, EVIL)


@pytest.mark.parametrize("mode", ["strict", "signalling"])
async def test_a_sprayer_on_another_ip_is_never_heard_nor_answered(
    make_leg: LegFactory, peers: Callable[[str], Awaitable[RtpPeer]], mode: str
) -> None:
    leg = await make_leg(mode)
    far, attacker = await peers("127.0.0.1"), await peers("127.0.0.2")
    got = sink(leg)
    spray(attacker, where(leg), 10)  # before the SDP is known
    await settle()
    leg.send_audio(FAR)  # not configured: nothing may leave
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    leg.set_signalling_peer("127.0.0.1")
    spray(attacker, where(leg), 10)  # after it, before the far end speaks
    for _ in range(5):
        far.send_packet(where(leg), FAR)
        spray(attacker, where(leg), 2)  # during the call
    await wait_for(lambda: len(got) == 5, what="the far end's audio")
    for _ in range(5):
        leg.send_audio(FAR)
    await wait_for(lambda: len(far.received) == 5, what="our audio at the far end")
    await settle()
    assert attacker.received == []
    assert all(p.payload == FAR for p in got)
    assert leg.refused == 30 and leg.guard.refused_sources == 1
    assert not leg.latched


async def test_strict_mode_refuses_another_port_on_the_sdp_ip_even_after_many_packets(
    make_leg: LegFactory, peers: Callable[[str], Awaitable[RtpPeer]]
) -> None:
    leg = await make_leg("strict")
    far, neighbour = await peers("127.0.0.1"), await peers("127.0.0.1")
    got = sink(leg)
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    leg.set_signalling_peer("127.0.0.1")
    spray(neighbour, where(leg), 20)  # one consistent stream, far more than latch_packets
    await settle()
    leg.send_audio(FAR)
    await wait_for(lambda: len(far.received) == 1, what="our audio at the SDP address")
    far.send_packet(where(leg), FAR)
    await wait_for(lambda: len(got) == 1)
    await settle()
    assert neighbour.received == [] and [p.payload for p in got] == [FAR]
    assert leg.refused == 20


async def test_a_natted_far_end_on_the_signalling_ip_is_taken_only_after_n_consistent_packets(
    make_leg: LegFactory, peers: Callable[[str], Awaitable[RtpPeer]]
) -> None:
    leg = await make_leg("signalling", latch=4)
    natted = await peers("127.0.0.3")
    got = sink(leg)
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=NOWHERE)
    leg.set_signalling_peer("127.0.0.3")
    assert natted.transport is not None
    # an inconsistent stream never qualifies: the SSRC changes on every packet
    for _ in range(6):
        natted.ssrc = (natted.ssrc + 1) & 0xFFFFFFFF
        natted.send_packet(where(leg), FAR)
    # nor one that skips sequence numbers
    for _ in range(6):
        natted.seq = (natted.seq + 1) & 0xFFFF
        natted.send_packet(where(leg), FAR)
    await settle()
    natted.ssrc = (natted.ssrc + 1) & 0xFFFFFFFF  # a fresh stream from here on
    assert got == [] and not leg.latched
    for _ in range(3):  # N - 1 consistent packets: still on probation, nothing taken, nothing sent there
        natted.send_packet(where(leg), FAR)
    await settle()
    leg.send_audio(FAR)
    await settle()
    assert got == [] and natted.received == [] and leg.remote == NOWHERE
    natted.send_packet(where(leg), FAR)  # the Nth
    await wait_for(lambda: leg.latched, what="latching")
    assert len(got) == 1
    leg.send_audio(FAR)
    await wait_for(lambda: len(natted.received) == 1, what="our audio at the NATed far end")
    assert leg.refused == 0  # probation is not a refusal


async def test_once_the_sdp_address_is_heard_an_orphaned_stream_on_the_same_ip_cannot_latch(
    make_leg: LegFactory, peers: Callable[[str], Awaitable[RtpPeer]]
) -> None:
    """After a crash the trunk may still stream to a port a new call is given: it must not take the call over."""
    leg = await make_leg("signalling", latch=3)
    far, orphan = await peers("127.0.0.1"), await peers("127.0.0.1")
    got = sink(leg)
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    leg.set_signalling_peer("127.0.0.1")
    far.send_packet(where(leg), FAR)
    await wait_for(lambda: len(got) == 1)
    spray(orphan, where(leg), 20)
    await settle()
    leg.send_audio(FAR)
    await wait_for(lambda: len(far.received) == 1)
    await settle()
    assert orphan.received == [] and len(got) == 1 and leg.refused == 20


async def test_the_sdp_address_wins_back_a_source_that_latched_before_it_spoke(
    make_leg: LegFactory, peers: Callable[[str], Awaitable[RtpPeer]]
) -> None:
    leg = await make_leg("signalling", latch=3)
    far, orphan = await peers("127.0.0.1"), await peers("127.0.0.1")
    got = sink(leg)
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    spray(orphan, where(leg), 3)
    await wait_for(lambda: leg.latched)
    far.send_packet(where(leg), FAR)
    await wait_for(lambda: got[-1].payload == FAR, what="the SDP address taken back")
    orphan.send_packet(where(leg), EVIL)
    leg.send_audio(FAR)
    await wait_for(lambda: len(far.received) == 1)
    await settle()
    assert not leg.latched and got[-1].payload == FAR and leg.refused == 1


async def test_refusals_are_logged_once_per_source_and_counted(
    make_leg: LegFactory, peers: Callable[[str], Awaitable[RtpPeer]], caplog: pytest.LogCaptureFixture
) -> None:
    leg = await make_leg("signalling")
    far, a, b = await peers("127.0.0.1"), await peers("127.0.0.2"), await peers("127.0.0.2")
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    with caplog.at_level(logging.INFO, logger=log.name):
        spray(a, where(leg), 7)
        spray(b, where(leg), 5)
        await wait_for(lambda: leg.refused == 12)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "refusing RTP" in r.getMessage()]
    assert sorted(r.getMessage().split()[3] for r in warnings) == sorted(
        [f"127.0.0.2:{a.port}", f"127.0.0.2:{b.port}"]
    )
    assert leg.guard.refused_by_source == {("127.0.0.2", a.port): 7, ("127.0.0.2", b.port): 5}


async def test_rtcp_follows_the_same_rule_and_never_latches(
    make_leg: LegFactory, peers: Callable[[str], Awaitable[RtpPeer]]
) -> None:
    leg = await make_leg("signalling", latch=2)
    far, attacker, natted = await peers("127.0.0.1"), await peers("127.0.0.2"), await peers("127.0.0.3")
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    leg.set_signalling_peer("127.0.0.3")
    receiver_report = bytes([0x80, 201, 0, 1]) + (1234).to_bytes(4, "big")  # RTCP RR, no report blocks
    assert far.transport and attacker.transport and natted.transport
    for _ in range(3):
        attacker.transport.sendto(receiver_report, where(leg))
        natted.transport.sendto(receiver_report, where(leg))  # RTCP cannot qualify a NATed source
        far.transport.sendto(receiver_report, where(leg))
    await wait_for(lambda: leg.rtcp_in == 3 and leg.refused == 6, what="RTCP judged")
    assert not leg.latched and leg.remote == ("127.0.0.1", far.port)
    leg.send_audio(FAR)
    await wait_for(lambda: len(far.received) == 1)
    await settle()
    assert attacker.received == [] and natted.received == []


async def test_a_reinvite_moving_the_far_end_relatches_and_a_hold_keeps_the_lock(
    make_leg: LegFactory, peers: Callable[[str], Awaitable[RtpPeer]]
) -> None:
    leg = await make_leg("strict")
    old, new = await peers("127.0.0.1"), await peers("127.0.0.3")
    got = sink(leg)
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", old.port))
    old.send_packet(where(leg), FAR)
    await wait_for(lambda: len(got) == 1)
    # hold: same address in the SDP, we stop sending; the lock stays
    leg.hold = True
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", old.port))
    new.send_packet(where(leg), EVIL)
    # RFC 2543 hold (c=0.0.0.0): nobody may send
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=None)
    new.send_packet(where(leg), EVIL)
    await wait_for(lambda: leg.refused == 2)
    # resume at the new address: the old one is refused from now on
    leg.hold = False
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.3", new.port))
    old.send_packet(where(leg), EVIL)
    new.send_packet(where(leg), FAR)
    await wait_for(lambda: len(got) == 2 and leg.refused == 3)
    leg.send_audio(FAR)
    await wait_for(lambda: len(new.received) == 1)
    await settle()
    assert [p.payload for p in got] == [FAR, FAR] and old.received == []


async def test_any_mode_keeps_the_old_first_packet_latch(
    make_leg: LegFactory, peers: Callable[[str], Awaitable[RtpPeer]]
) -> None:
    leg = await make_leg("any")
    far, other = await peers("127.0.0.1"), await peers("127.0.0.2")
    got = sink(leg)
    leg.configure(payload_type=0, clock_rate=8000, telephone_event_pt=101, remote=("127.0.0.1", far.port))
    other.send_packet(where(leg), FAR)
    await wait_for(lambda: len(got) == 1 and leg.latched)
    leg.send_audio(FAR)
    await wait_for(lambda: len(other.received) == 1)


async def test_a_bridged_call_never_relays_a_sprayer_and_reports_it_in_stats(
    peers: Callable[[str], Awaitable[RtpPeer]], caplog: pytest.LogCaptureFixture
) -> None:
    media, ports = make_media()
    call = Call(media, ports, MatrixPeer(freq=1000.0), await peers("127.0.0.1"))
    attacker = await peers("127.0.0.2")
    try:
        with caplog.at_level(logging.INFO):
            media.set_signalling_peer("127.0.0.1")
            await connect_outbound(call)
            attacker.start_tone(call.rtp_target, freq=2000.0)
            call.rtp.start_tone(call.rtp_target)
            await wait_for(lambda: len(call.matrix.frames) >= 50, what="audio at the Matrix peer")
            await wait_for(lambda: len(call.rtp.received) >= 50, what="audio at the phone")
            assert call.matrix.heard_frequency() == pytest.approx(440.0, rel=0.1)
            stats = media.stats()
            assert stats.rtp_refused >= 10 and stats.rtp_refused_sources == 1
            await attacker.stop_tone()
            await call.matrix.close()
            await media.close()
        assert attacker.received == []
        refusals = [r for r in caplog.records if "refus" in r.getMessage() and r.levelno == logging.WARNING]
        # the first refusal and the end-of-call count; the leg's logger carries the call's IDs
        assert len(refusals) == 2 and all(getattr(r, "call_id", None) == "test" for r in refusals)
    finally:
        await call.matrix.close()
        await media.close()



async def test_a_phone_reinvite_to_a_new_port_moves_the_accepted_source_with_it(
    peers: Callable[[str], Awaitable[RtpPeer]]
) -> None:
    media, ports = make_media(MediaSettings(rtp_source="strict"))
    call = Call(media, ports, MatrixPeer(freq=1000.0), await peers("127.0.0.1"))
    moved = await peers("127.0.0.1")
    try:
        await connect_inbound(call)
        got: list[RtpPacket] = []
        media.rtp_leg.on_audio = got.append  # the leg's sink, for this check only
        call.rtp.send_packet(call.rtp_target, FAR)
        await wait_for(lambda: len(got) == 1)
        media.answer_sip_offer(sip_sdp(moved.port))  # re-INVITE from the phone: media now at another port
        call.rtp.send_packet(call.rtp_target, EVIL)
        moved.send_packet(call.rtp_target, FAR)
        await wait_for(lambda: len(got) == 2 and media.stats().rtp_refused == 1)
        media.rtp_leg.send_audio(FAR)
        await wait_for(lambda: len(moved.received) >= 1, what="audio at the new port")
        assert [p.payload for p in got] == [FAR, FAR]
    finally:
        await call.matrix.close()
        await media.close()
