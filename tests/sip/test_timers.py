"""RFC 3261 transaction timers against silent or non-ACKing peers (small T1 so the tests are quick)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from bridge.sip.errors import SipTimeout
from bridge.sip.server import ServerInvite
from tests.harness.sip_ua import SDP_ANSWER, SDP_OFFER, RawUdpPeer, fast_settings, raw_request, running_ua

T1 = 0.05


async def test_timers_a_b_invite_retransmitted_with_doubling_then_times_out() -> None:
    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings(t1=T1)) as ua:
            call = ua.invite(f"sip:bob@127.0.0.1:{peer.port}", from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
            start = asyncio.get_running_loop().time()
            with pytest.raises(SipTimeout):
                await asyncio.wait_for(call.wait_final(), 20)
            elapsed = asyncio.get_running_loop().time() - start
        invites = peer.messages("INVITE")
        # sent at 0, T1, 3T1, 7T1, 15T1, 31T1 (timer A doubles, no T2 cap); B fires at 64*T1 = 3.2 s
        # (the last one may slip past B on a loaded machine); timers never fire early, but may fire late
        assert len(invites) in (6, 7), [round(t - invites[0][0], 3) for t, _ in invites]
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(invites)]
        for i, gap in enumerate(gaps):
            assert 0.9 * T1 * 2**i <= gap <= T1 * 2**i + 0.5, gaps
        # (the lower bounds alone prove no T2 cap for INVITE: gap 4 >= 0.72 s while T2 is 0.4 s here)
        assert 64 * T1 * 0.95 <= elapsed <= 64 * T1 + 1.5
        assert len({d for _, d in invites}) == 1  # retransmissions are byte-identical
    finally:
        peer.close()


async def test_timers_e_f_non_invite_retransmits_capped_at_t2_then_times_out() -> None:
    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings(t1=T1, t2=0.2)) as ua:
            request, transport, addr = ua.build_request(
                "OPTIONS", f"sip:bob@127.0.0.1:{peer.port}", from_header="<sip:alice@bridge.test>;tag=x",
                to_header=f"<sip:bob@127.0.0.1:{peer.port}>", call_id="opt-1", cseq=1)
            with pytest.raises(SipTimeout):
                await asyncio.wait_for(ua.transactions.request(request, transport, addr), 20)
        sent = peer.messages("OPTIONS")
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(sent)]
        # 50, 100, 200, 200, 200 ms ... (doubling capped at T2 = 200 ms) for 64*T1 = 3.2 s
        assert 0.9 * T1 <= gaps[0] <= T1 + 0.5
        assert max(gaps) < 0.2 + 0.5  # capped at T2 (plus scheduling slack)
        assert 8 <= len(sent) <= 19, gaps
    finally:
        peer.close()


async def test_timers_g_h_2xx_retransmitted_until_ack_timeout_then_bye() -> None:
    peer = await RawUdpPeer.open()
    reasons: list[str] = []
    acks: list[object] = []

    async def on_invite(si: ServerInvite) -> None:
        dialog = await si.respond(200, body=SDP_ANSWER)
        assert dialog is not None
        dialog.on_terminated = reasons.append
        acks.append(await si.wait_ack(20))

    try:
        async with running_ua(fast_settings(t1=T1, t2=0.4), on_invite=on_invite) as ua:
            target = ua.bound_address()
            peer.send(raw_request("INVITE", target, via_port=peer.port, body=SDP_OFFER.decode()), target)
            await peer.wait_for_message("BYE", timeout=20)  # peer never ACKs: 2xx retransmitted, then BYE
            oks = peer.messages("SIP/2.0 200")
            assert reasons == ["ack_timeout"]
            assert acks == [None]
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(oks)]
        # T1, 2T1, 4T1, then T2 (0.4 s) until 64*T1 = 3.2 s
        assert 0.9 * T1 <= gaps[0] <= T1 + 0.5
        assert max(gaps) < 0.4 + 0.5  # capped at T2 (plus scheduling slack)
        assert 6 <= len(oks) <= 14, gaps
        bye_time = peer.messages("BYE")[0][0]
        assert 64 * T1 * 0.95 <= bye_time - oks[0][0] <= 64 * T1 + 1.5
    finally:
        peer.close()


async def test_timers_g_stop_when_ack_arrives_for_2xx() -> None:
    peer = await RawUdpPeer.open()
    acked = asyncio.Event()

    async def on_invite(si: ServerInvite) -> None:
        await si.respond(200, body=SDP_ANSWER)
        if await si.wait_ack(20) is not None:
            acked.set()

    try:
        async with running_ua(fast_settings(t1=T1, t2=0.4), on_invite=on_invite) as ua:
            target = ua.bound_address()
            peer.send(raw_request("INVITE", target, via_port=peer.port, body=SDP_OFFER.decode()), target)
            ok = (await peer.wait_for_message("SIP/2.0 200"))[0].decode()
            to_tag = ok.split("To:", 1)[1].split("tag=", 1)[1].split("\r\n", 1)[0]
            peer.send(raw_request("ACK", target, via_port=peer.port, branch="z9hG4bKack1", to_tag=to_tag), target)
            await asyncio.wait_for(acked.wait(), 10)
            count = len(peer.messages("SIP/2.0 200"))
            await asyncio.sleep(0.6)
            assert len(peer.messages("SIP/2.0 200")) == count  # no retransmission after the ACK
    finally:
        peer.close()


async def test_timers_retransmitted_invite_absorbed_and_handler_runs_once() -> None:
    peer = await RawUdpPeer.open()
    calls: list[ServerInvite] = []

    async def on_invite(si: ServerInvite) -> None:
        calls.append(si)
        await si.respond(180)
        await asyncio.sleep(0.5)
        await si.respond(486)

    try:
        async with running_ua(fast_settings(t1=T1), on_invite=on_invite) as ua:
            target = ua.bound_address()
            invite = raw_request("INVITE", target, via_port=peer.port, body=SDP_OFFER.decode())
            peer.send(invite, target)
            await peer.wait_for_message("SIP/2.0 180")
            for _ in range(3):
                peer.send(invite, target)  # retransmissions while proceeding: answered with the last 1xx
                await asyncio.sleep(0.05)
            await peer.wait_for_message("SIP/2.0 180", count=4)
            await peer.wait_for_message("SIP/2.0 486")
            peer.send(invite, target)  # retransmission after the final: the 486 again
            await peer.wait_for_message("SIP/2.0 486", count=2)
            assert len(calls) == 1
    finally:
        peer.close()
