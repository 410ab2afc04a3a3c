"""Crash recovery: at start, end on both sides every call a previous process left open.

The SIP side is handled at once and never waits for Matrix (the homeserver may be down): dialogs are put
back into the UA first (a BYE from the trunk around the restart gets 200, not 481), then hung up; INVITEs
we sent are CANCELled; INVITEs we received get a final response. The Matrix side (m.call.hangup, or
m.call.reject for an unanswered version "1" invite) is sent from owned tasks through the MatrixPort. A
record is deleted once both sides are done; until then a later restart would try again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from ..call import events as ev
from ..call.record import CallRecord
from ..call.recovery import CRASH_REASON, SIP_FINAL_STATUS, plan_recovery
from ..logs import call_logger
from ..media.ports import QUARANTINE_S, PortAllocator
from ..sip.dialog import Dialog
from ..sip.dialog_state import (
    DialogState,
    PendingInviteState,
    ReceivedInviteState,
    cancel_invite,
    reject_invite,
    restore_dialog,
)
from ..sip.ua import UserAgent
from .ports import CallLogPort, CallStateStore, MatrixPort, PortalInfo

log = logging.getLogger(__name__)


MATRIX_DELIVERY_S = 600.0  # as long as the outbox keeps an event


class CrashRecovery:
    def __init__(self, *, ua: UserAgent, store: CallStateStore, matrix: MatrixPort, call_log: CallLogPort,
                 ports: PortAllocator, quarantine_s: float = QUARANTINE_S) -> None:
        self.ua = ua
        self.store = store
        self.matrix = matrix
        self.call_log = call_log
        self.ports = ports
        self.quarantine_s = quarantine_s
        self._tasks: set[asyncio.Task[Any]] = set()
        self._records: list[CallRecord] | None = None  # read by load(), consumed by reap()
        self._dialogs: dict[str, Dialog] = {}

    async def load(self) -> None:
        """Read the records a dead process left and put their dialogs back into the UA. Run this BEFORE the UA
        listens: a BYE the trunk sent while the bridge was down (and retransmits now) must find its dialog and
        get 200, not 481."""
        try:
            self._records = await self.store.all()
        except Exception:
            log.exception("crash recovery: cannot read the call state; calls left open stay open")
            self._records = []
        for record in self._records:
            if record.sip_phase == "dialog":
                try:
                    self._dialogs[record.call_id] = restore_dialog(self.ua, DialogState.from_dict(record.sip))
                except Exception:
                    log.exception("crash recovery: unusable dialog state for %s", record.call_id)

    async def reap(self) -> int:
        """Start ending every open call (``load`` first); returns how many. The SIP messages are on their way
        when this returns; the rest (retransmissions, Matrix events, deleting the records) runs in owned tasks."""
        if self._records is None:
            await self.load()
        records, dialogs = self._records or [], self._dialogs
        self._records, self._dialogs = [], {}
        if not records:
            return 0
        log.warning("crash recovery: %d call(s) were in progress when the bridge stopped; ending them",
                     len(records))
        answered_sip = {r.sip_call_id for r in records if r.sip_phase == "dialog"}
        responded: set[str] = set()
        for record in records:
            sip_done = self._end_sip(record, dialogs, answered_sip, responded)
            matrix_done = self._end_matrix(record)
            if record.rtp_port is not None:
                self.ports.quarantine(record.rtp_port, self.quarantine_s)
            self._spawn(self._finish(record, sip_done, matrix_done), f"recover {record.call_id}")
        for record in records:  # after the SIP messages are out: DB writes must not delay them
            await self.call_log.call_ended(record.call_id, CRASH_REASON)
        return len(records)

    def _end_sip(self, record: CallRecord, dialogs: dict[str, Dialog], answered_sip: set[str],
                 responded: set[str]) -> asyncio.Task[Any] | None:
        clog = call_logger(__name__, record.call_id, record.sip_call_id)
        action = plan_recovery(record).sip
        try:
            if action == "bye":
                dialog = dialogs.get(record.call_id)
                if dialog is None:
                    return None
                self.ua.remember_reaped_dialog(dialog.id)
                clog.info("crash recovery: BYE")
                return self._spawn(dialog.bye(), "recovery bye")
            if action == "cancel":
                clog.info("crash recovery: CANCEL")
                return self._spawn(cancel_invite(self.ua, PendingInviteState.from_dict(record.sip)), "recovery cancel")
            if action == "respond":
                # several Matrix users may ring for one INVITE: answer it once, and not at all if one answered
                if record.sip_call_id in answered_sip or record.sip_call_id in responded:
                    return None
                responded.add(record.sip_call_id)
                clog.info("crash recovery: %d to the unanswered INVITE", SIP_FINAL_STATUS)
                return self._spawn(reject_invite(self.ua, ReceivedInviteState.from_dict(record.sip),
                                                 SIP_FINAL_STATUS), "recovery final response")
        except Exception:
            clog.exception("crash recovery: cannot end the SIP side")
        return None

    def _end_matrix(self, record: CallRecord) -> asyncio.Task[Any] | None:
        plan = plan_recovery(record)
        if plan.matrix_event is None or record.room_id is None:
            return None
        portal = PortalInfo(room_id=record.room_id, mxid=record.mxid or "", number=record.number)
        out = ev.OutgoingContent(record.call_id, record.party_id)
        reason = plan.matrix_content_reason or "unknown_error"
        content = out.reject(reason) if plan.matrix_event == "m.call.reject" else out.hangup(reason)
        # Wait for delivery (the outbox retries while the homeserver is down): the record is deleted only once
        # Matrix has it, so a hangup still queued when this process dies is sent again by the next one.
        send = self.matrix.send_call_event(portal, plan.matrix_event, content, deliver_within=MATRIX_DELIVERY_S)
        return self._spawn(send, "recovery matrix")

    async def _finish(self, record: CallRecord, sip: asyncio.Task[Any] | None,
                      matrix: asyncio.Task[Any] | None) -> None:
        clog = call_logger(__name__, record.call_id, record.sip_call_id)
        ok = True
        for task, side in ((sip, "SIP"), (matrix, "Matrix")):
            if task is None:
                continue
            try:
                await task
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                ok = False
                clog.warning("crash recovery: ending the %s side failed: %s", side, exc)
        if ok:
            await self.store.delete(record.call_id)
            clog.info("crash recovery: call ended on both sides")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self, timeout: float) -> bool:
        """Wait for every recovery task (tests, shutdown); False on timeout."""
        pending = list(self._tasks)
        if not pending:
            return True
        _done, still = await asyncio.wait(pending, timeout=timeout)
        return not still

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
