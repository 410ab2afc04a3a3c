"""Crash recovery: the pure decision per record, and the reaper driving a real UA against raw UDP peers
with a Matrix side that does not answer (the homeserver is down)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from bridge.call.record import CallRecord
from bridge.call.recovery import CRASH_REASON, RecoveryPlan, plan_recovery
from bridge.calls.ports import PortalInfo
from bridge.calls.recovery import CrashRecovery
from bridge.media.ports import PortAllocator
from bridge.sip.dialog_state import DialogState, ReceivedInviteState
from tests.harness.sip_ua import RawUdpPeer, fast_settings, running_ua, wait_for

BASE = CallRecord(call_id="c1", direction="outbound", sip_call_id="sip-1", sip_phase="dialog", room_id="!r:x",
                  mxid="@alice:x", number="15551234567", party_id="OURPARTYID", version="1", answered=True)


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, RecoveryPlan("bye", "m.call.hangup", "unknown_error")),
    ({"sip_phase": "invite_sent", "answered": False}, RecoveryPlan("cancel", "m.call.reject", "unknown_error")),
    ({"sip_phase": "invite_sent", "answered": False, "version": "0"},
     RecoveryPlan("cancel", "m.call.hangup", "unknown_error")),
    ({"answered": False}, RecoveryPlan("bye", "m.call.reject", "unknown_error")),  # 200 in, m.call.answer not out
    ({"direction": "inbound", "sip_phase": "invite_received", "answered": False},
     RecoveryPlan("respond", "m.call.hangup", "unknown_error")),  # we are the Matrix caller: hangup is right
    ({"direction": "inbound", "sip_phase": "invite_received", "room_id": None}, RecoveryPlan("respond", None, None)),
])
def test_recovery_plan_per_call_state(changes: dict[str, Any], expected: RecoveryPlan) -> None:
    assert plan_recovery(replace(BASE, **changes)) == expected


class MemoryStore:
    def __init__(self, records: list[CallRecord]) -> None:
        self.records = {r.call_id: r for r in records}

    async def save(self, record: CallRecord) -> None:
        self.records[record.call_id] = record

    async def delete(self, call_id: str) -> None:
        self.records.pop(call_id, None)

    async def all(self) -> list[CallRecord]:
        return list(self.records.values())


class HomeserverDown:
    """A MatrixPort whose sends hang until `up` is set (what an outbox does while the homeserver is down)."""

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    async def send_call_event(self, portal: PortalInfo, event_type: str, content: dict[str, Any], *,
                              deliver_within: float | None = None) -> str:
        await self.up.wait()
        self.sent.append((portal.room_id, event_type, content))
        return "$event"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"recovery must not use MatrixPort.{name}")


class CallLog:
    def __init__(self) -> None:
        self.ended: dict[str, str] = {}

    async def call_started(self, **_: Any) -> bool:
        raise AssertionError("not expected")

    async def call_answered(self, call_id: str) -> None:
        raise AssertionError("not expected")

    async def call_ended(self, call_id: str, reason: str) -> None:
        self.ended.setdefault(call_id, reason)


def dialog_record(call_id: str, peer_port: int, rtp_port: int) -> CallRecord:
    state = DialogState(call_id=f"sip-{call_id}", local_tag="ours", remote_tag="theirs",
                        local_header="<sip:bridge@127.0.0.1>;tag=ours", remote_header="<sip:1555@127.0.0.1>;tag=theirs",
                        local_cseq=5, remote_target=f"sip:trunk@127.0.0.1:{peer_port}")
    return replace(BASE, call_id=call_id, sip_call_id=state.call_id, sip=state.to_dict(), rtp_port=rtp_port)


def ringing_record(call_id: str, sip_call_id: str, peer_port: int, **changes: Any) -> CallRecord:
    state = ReceivedInviteState(
        request_uri="sip:18005550100@127.0.0.1",
        vias=[f"SIP/2.0/UDP 127.0.0.1:{peer_port};branch=z9hG4bK{sip_call_id}"],
        from_header="<sip:15557654321@127.0.0.1>;tag=phone", to_header="<sip:18005550100@127.0.0.1>",
        call_id=sip_call_id, cseq=1, transport="udp", src_host="127.0.0.1", src_port=peer_port, to_tag="ourtag")
    return replace(BASE, call_id=call_id, direction="inbound", sip_call_id=sip_call_id, sip_phase="invite_received",
                   answered=False, sip=state.to_dict(), **changes)


async def test_sip_side_is_ended_at_once_while_the_homeserver_is_down_and_records_wait_for_matrix() -> None:
    peer = await RawUdpPeer.open()
    try:
        records = [
            dialog_record("answered", peer.port, rtp_port=20000),
            # one INVITE ringing two Matrix users: a single final response
            ringing_record("fork-a", "sip-ring", peer.port),
            ringing_record("fork-b", "sip-ring", peer.port, room_id="!other:x"),
            # one ringing user, but another user of the same INVITE answered: the dialog's BYE is all it needs
            ringing_record("lost-fork", "sip-answered", peer.port),
            replace(dialog_record("won-fork", peer.port, rtp_port=20002), sip_call_id="sip-answered"),
        ]
        store, matrix, call_log = MemoryStore(records), HomeserverDown(), CallLog()
        ports = PortAllocator("127.0.0.1", 20000, 20006)
        async with running_ua(fast_settings()) as ua:
            recovery = CrashRecovery(ua=ua, store=store, matrix=matrix, call_log=call_log, ports=ports)
            assert await asyncio.wait_for(recovery.reap(), 2) == 5
            byes = await peer.wait_for_message("BYE ", count=2, timeout=2)
            assert all(b"CSeq: 106 BYE" in b for b in byes)  # persisted CSeq + margin + 1
            finals = await peer.wait_for_message("SIP/2.0 480", timeout=2)
            assert b"tag=ourtag" in finals[0] and b"sip-ring" in finals[0]
            assert call_log.ended == {r.call_id: CRASH_REASON for r in records}
            assert ports.allocate() == 20004  # the dead calls' RTP ports are quarantined
            await asyncio.sleep(0.3)
            assert not [m for _, m in peer.received if b"sip-answered" in m and m.startswith(b"SIP/2.0 480")]
            assert len(peer.messages("SIP/2.0 480")) >= 1 and store.records  # Matrix not told yet: kept
            matrix.up.set()
            await wait_for(lambda: len(matrix.sent) == 5)
            kinds = {(room, kind, c["call_id"], c["party_id"]) for room, kind, c in matrix.sent}
            assert ("!r:x", "m.call.hangup", "answered", "OURPARTYID") in kinds
            assert ("!other:x", "m.call.hangup", "fork-b", "OURPARTYID") in kinds
            await wait_for(lambda: not store.records, 8)  # both sides done (the unACKed 480 gave up at timer H)
            await recovery.stop()
    finally:
        peer.close()
