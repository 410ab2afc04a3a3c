"""Building the durable record (bridge.call.record.CallRecord) of a call from its session, for the
CallStatePort. The sessions call these at each step that changes what recovery would have to do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..call.record import CallRecord, SipPhase
from ..sip.dialog_state import snapshot_client_invite, snapshot_dialog, snapshot_server_invite
from .ports import CallStatePort

if TYPE_CHECKING:
    from .inbound import InboundSession
    from .outbound import OutboundSession


def _now_ms() -> int:
    return int(time.time() * 1000)


class NoCallState:
    """A CallStatePort that keeps nothing (tests and tools that need no crash recovery)."""

    async def save(self, record: CallRecord) -> None:
        return None

    async def delete(self, call_id: str) -> None:
        return None


class CallStateWriter:
    """One call's writes, in order: each save records the call as it is when the write runs (so a slow
    early save cannot overwrite a later state), and nothing is saved after the delete."""

    def __init__(self, port: CallStatePort, call_id: Callable[[], str], build: Callable[[], CallRecord | None]) -> None:
        self._port = port
        self._call_id = call_id
        self._build = build
        self._lock = asyncio.Lock()
        self._deleted = False

    async def save(self) -> None:
        async with self._lock:
            if self._deleted:
                return
            record = self._build()
            if record is not None:
                await self._port.save(record)

    async def delete(self) -> None:
        async with self._lock:
            self._deleted = True
            await self._port.delete(self._call_id())


def outbound_record(session: OutboundSession) -> CallRecord | None:
    """None once the SIP side needs nothing more (the INVITE was refused)."""
    invite = session.client_invite
    if invite is None:
        return None
    phase: SipPhase
    if session.dialog is not None:
        phase = "dialog"
        sip = snapshot_dialog(session.dialog).to_dict()
    elif invite.final is None:
        phase = "invite_sent"
        sip = snapshot_client_invite(invite).to_dict()
    else:
        return None
    portal = session.portal
    return CallRecord(
        call_id=session.call_id, direction="outbound", sip_call_id=invite.call_id, sip_phase=phase,
        sip=sip, room_id=portal.room_id, mxid=portal.mxid, number=portal.number, party_id=session.party_id,
        version="0" if session.invite.version == 0 else "1", answered=session.matrix_answered,
        rtp_port=session.rtp_port, updated_ts=_now_ms(),
    )


def inbound_record(session: InboundSession) -> CallRecord | None:
    """None once the INVITE got a final response without a dialog (nothing left on the SIP side)."""
    phase: SipPhase
    if session.dialog is not None:
        phase = "dialog"
        sip = snapshot_dialog(session.dialog).to_dict()
    elif not session.sip.responded:
        phase = "invite_received"
        sip = snapshot_server_invite(session.sip).to_dict()
    else:
        return None
    portal = session.portal
    return CallRecord(
        call_id=session.call_id, direction="inbound", sip_call_id=session.sip_call_id, sip_phase=phase,
        sip=sip, room_id=portal.room_id if portal else None, mxid=session.callee,
        number=portal.number if portal else session.caller_number, party_id=session.party_id, version="1",
        answered=session.dialog is not None, rtp_port=session.rtp_port, updated_ts=_now_ms(),
    )
