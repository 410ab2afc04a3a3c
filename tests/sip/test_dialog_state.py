"""Snapshots of SIP state survive a "restart": a new UserAgent on the same port, given only the JSON of a
snapshot, hangs up the dialog, CANCELs the INVITE or answers the received INVITE finally. Real UAs and
raw UDP peers on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bridge.sip.dialog import Dialog
from bridge.sip.dialog_state import (
    CSEQ_MARGIN,
    DialogState,
    PendingInviteState,
    ReceivedInviteState,
    cancel_invite,
    reject_invite,
    restore_dialog,
    snapshot_client_invite,
    snapshot_dialog,
    snapshot_server_invite,
)
from bridge.sip.server import ServerInvite
from bridge.sip.settings import ListenAddress, SipSettings
from bridge.sip.ua import UserAgent
from tests.harness.sip_ua import (
    SDP_ANSWER,
    SDP_OFFER,
    RawUdpPeer,
    fast_settings,
    raw_request,
    running_ua,
    uri_of,
    wait_for,
)


def same_port(ua: UserAgent) -> SipSettings:
    host, port = ua.bound_address()
    return SipSettings(listen=[ListenAddress("udp", host, port)], t1=0.05, t2=0.4, t4=0.5)


def through_json(data: dict[str, object]) -> dict[str, object]:
    return json.loads(json.dumps(data))


@asynccontextmanager
async def restarted(old: UserAgent) -> AsyncIterator[UserAgent]:
    """Stop `old` (nothing sent: it is a crash) and run a fresh UA on the same address."""
    settings = same_port(old)
    await old.stop()
    await asyncio.sleep(0.05)  # a datagram transport closes on the next loop iteration
    async with running_ua(settings) as new:
        yield new


async def test_restored_dialog_sends_bye_with_a_higher_cseq_and_the_peer_ends_the_call() -> None:
    terminated: list[str] = []
    callee_dialogs: list[Dialog] = []

    async def on_invite(si: ServerInvite) -> None:
        dialog = await si.respond(200, body=SDP_ANSWER)
        assert dialog is not None
        dialog.on_terminated = terminated.append
        callee_dialogs.append(dialog)

    async with running_ua(fast_settings(), on_invite=on_invite) as callee:
        old = UserAgent(fast_settings())
        await old.start()
        call = old.invite(uri_of(callee), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
        assert call.dialog is not None
        state = DialogState.from_dict(through_json(snapshot_dialog(call.dialog).to_dict()))
        assert state == snapshot_dialog(call.dialog)
        assert state.is_uac and state.remote_target.startswith("sip:")
        async with restarted(old) as new:
            dialog = restore_dialog(new, state)
            assert new.find_dialog(*dialog.id) is dialog and dialog.state == "confirmed"
            bye = await dialog.bye()
            assert bye is not None and bye.status == 200
            await wait_for(lambda: terminated == ["bye_received"])
            assert callee_dialogs[0].remote_cseq == state.local_cseq + CSEQ_MARGIN + 1


async def test_peer_bye_reaches_a_restored_dialog_and_a_reaped_one_still_gets_200() -> None:
    callee_dialogs: list[Dialog] = []

    async def on_invite(si: ServerInvite) -> None:
        dialog = await si.respond(200, body=SDP_ANSWER)
        assert dialog is not None
        callee_dialogs.append(dialog)

    async with running_ua(fast_settings(), on_invite=on_invite) as callee:
        old = UserAgent(fast_settings())
        await old.start()
        calls = [old.invite(uri_of(callee), from_uri="sip:alice@example.test", sdp=SDP_OFFER) for _ in range(2)]
        for call in calls:
            assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
        states = [snapshot_dialog(c.dialog) for c in calls if c.dialog is not None]
        await wait_for(lambda: len(callee_dialogs) == 2)
        peer = {d.call_id: d for d in callee_dialogs}
        async with restarted(old) as new:
            first, second = (restore_dialog(new, s) for s in states)
            ended: list[str] = []
            first.on_terminated = ended.append
            resp = await peer[first.call_id].bye()  # the trunk hangs up first: the restored dialog answers
            assert resp is not None and resp.status == 200 and ended == ["bye_received"]
            new.remember_reaped_dialog(second.id)
            await second.bye()  # we hang up first; the peer's crossing BYE must not see 481
            late = await peer[second.call_id].request("BYE")
            assert late.status == 200


async def test_persisted_ringing_invite_is_cancelled_and_its_487_is_acked() -> None:
    invites: list[ServerInvite] = []

    async def on_invite(si: ServerInvite) -> None:
        invites.append(si)
        await si.respond(180)
        await si.cancelled.wait()

    async with running_ua(fast_settings(), on_invite=on_invite) as callee:
        old = UserAgent(fast_settings())
        await old.start()
        call = old.invite(uri_of(callee), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        ringing = asyncio.Event()
        call.on_provisional = lambda _resp: ringing.set()
        await asyncio.wait_for(ringing.wait(), 10)
        state = PendingInviteState.from_dict(through_json(snapshot_client_invite(call).to_dict()))
        assert state.local_tag == call.local_tag and state.cseq == call.request.cseq[0]
        async with restarted(old) as new:
            resp = await cancel_invite(new, state)
            assert resp is not None and resp.status == 200
            assert invites[0].cancelled.is_set() and invites[0].final_status == 487
            # the ACK for the 487 ends the callee's INVITE transaction (no timer G retransmissions left)
            await wait_for(lambda: not [tx for tx in callee.transactions._servers.values() if tx.is_invite], 3)


async def test_a_2xx_crossing_the_cancel_of_a_persisted_invite_is_acked_and_hung_up() -> None:
    answer_now = asyncio.Event()
    acked: list[bool] = []
    terminated: list[str] = []

    async def on_invite(si: ServerInvite) -> None:
        await si.respond(180)
        await answer_now.wait()
        dialog = await si.respond(200, body=SDP_ANSWER)
        if dialog is not None:
            dialog.on_terminated = terminated.append
            acked.append(await si.wait_ack(5) is not None)

    async with running_ua(fast_settings(), on_invite=on_invite) as callee:
        old = UserAgent(fast_settings())
        await old.start()
        call = old.invite(uri_of(callee), from_uri="sip:alice@example.test", sdp=SDP_OFFER)
        ringing = asyncio.Event()
        call.on_provisional = lambda _resp: ringing.set()
        await asyncio.wait_for(ringing.wait(), 10)
        state = snapshot_client_invite(call)
        async with restarted(old) as new:
            answer_now.set()
            await asyncio.sleep(0)
            await cancel_invite(new, state)
            await wait_for(lambda: acked == [True] and terminated == ["bye_received"])


async def test_persisted_received_invite_gets_its_final_response_retransmitted_until_the_ack() -> None:
    received: list[ServerInvite] = []

    async def on_invite(si: ServerInvite) -> None:
        received.append(si)
        await si.respond(180)

    peer = await RawUdpPeer.open()
    try:
        old = UserAgent(fast_settings(), on_invite=on_invite)
        await old.start()
        target = old.bound_address()
        peer.send(raw_request("INVITE", target, via_port=peer.port, branch="z9hG4bKring1", body=SDP_OFFER.decode()),
                  target)
        ringing = (await peer.wait_for_message("SIP/2.0 180"))[0].decode()
        state = ReceivedInviteState.from_dict(through_json(snapshot_server_invite(received[0]).to_dict()))
        assert f"tag={state.to_tag}" in ringing
        async with restarted(old) as new:
            outcome = asyncio.create_task(reject_invite(new, state, 480))
            finals = await peer.wait_for_message("SIP/2.0 480", count=3)  # timer G: re-sent until the ACK
            text = finals[0].decode()
            assert f"tag={state.to_tag}" in text and "CSeq: 1 INVITE" in text and "branch=z9hG4bKring1" in text
            peer.send(raw_request("ACK", target, via_port=peer.port, branch="z9hG4bKring1", to_tag=state.to_tag),
                      target)
            assert await asyncio.wait_for(outcome, 5) is True
            count = len(peer.messages("SIP/2.0 480"))
            await asyncio.sleep(0.5)
            assert len(peer.messages("SIP/2.0 480")) == count  # the ACK was absorbed: no more retransmissions
    finally:
        peer.close()


async def test_final_response_gives_up_at_timer_h_without_an_ack() -> None:
    received: list[ServerInvite] = []

    async def on_invite(si: ServerInvite) -> None:
        received.append(si)
        await si.respond(180)

    peer = await RawUdpPeer.open()
    try:
        old = UserAgent(fast_settings(), on_invite=on_invite)
        await old.start()
        target = old.bound_address()
        peer.send(raw_request("INVITE", target, via_port=peer.port, body=SDP_OFFER.decode()), target)
        await peer.wait_for_message("SIP/2.0 180")
        state = snapshot_server_invite(received[0])
        async with restarted(old) as new:
            # T1 = 50 ms: timer H fires after 3.2 s
            assert await asyncio.wait_for(reject_invite(new, state, 503, headers=[("Retry-After", "30")]), 6) is False
            finals = peer.messages("SIP/2.0 503")
            assert len(finals) >= 5 and b"Retry-After: 30" in finals[0][1]
    finally:
        peer.close()
