"""CallStateWriter: a call's record writes land in order, each with the state current when it runs, and
none after the delete."""

from __future__ import annotations

import asyncio

from bridge.call.record import CallRecord
from bridge.calls.call_state import CallStateWriter


class SlowStore:
    def __init__(self) -> None:
        self.rows: dict[str, CallRecord] = {}
        self.log: list[str] = []

    async def save(self, record: CallRecord) -> None:
        await asyncio.sleep(0.01)
        self.rows[record.call_id] = record
        self.log.append(f"save {record.sip_phase}")

    async def delete(self, call_id: str) -> None:
        self.rows.pop(call_id, None)
        self.log.append("delete")


async def test_saves_record_the_latest_state_and_nothing_lands_after_the_delete() -> None:
    store = SlowStore()
    phase = ["invite_sent"]
    writer = CallStateWriter(store, lambda: "c1", lambda: CallRecord(
        call_id="c1", direction="outbound", sip_call_id="s1", sip_phase=phase[0]))  # type: ignore[arg-type]
    early = asyncio.create_task(writer.save())
    await asyncio.sleep(0)
    phase[0] = "dialog"
    late = asyncio.create_task(writer.save())
    await asyncio.gather(early, late)
    assert store.rows["c1"].sip_phase == "dialog"
    pending = asyncio.create_task(writer.save())  # e.g. a provisional's save racing the end of the call
    await writer.delete()
    await pending
    await writer.save()
    assert store.rows == {} and store.log[-1] == "delete"


async def test_a_session_with_nothing_to_record_writes_nothing() -> None:
    store = SlowStore()
    writer = CallStateWriter(store, lambda: "c1", lambda: None)
    await writer.save()
    assert store.log == []
