"""``call_state`` table: the durable record of each call in progress (bridge.call.record.CallRecord).

The SIP snapshot is kept as JSON text: its shape belongs to bridge.sip.dialog_state, not to the schema.
"""

from __future__ import annotations

import json
from typing import Any

from mautrix.util.async_db import Database

from bridge.call.record import CallRecord

_COLUMNS = ("call_id", "direction", "sip_call_id", "sip_phase", "sip_state", "room_id", "mxid", "number",
            "party_id", "version", "answered", "rtp_port", "updated_ts")


def _values(record: CallRecord) -> tuple[Any, ...]:
    return (record.call_id, record.direction, record.sip_call_id, record.sip_phase, json.dumps(record.sip),
            record.room_id, record.mxid, record.number, record.party_id, record.version, record.answered,
            record.rtp_port, record.updated_ts)


def _from_row(row: Any) -> CallRecord:
    return CallRecord(
        call_id=row["call_id"], direction=row["direction"], sip_call_id=row["sip_call_id"],
        sip_phase=row["sip_phase"], sip=json.loads(row["sip_state"]), room_id=row["room_id"], mxid=row["mxid"],
        number=row["number"], party_id=row["party_id"], version=row["version"], answered=bool(row["answered"]),
        rtp_port=row["rtp_port"], updated_ts=row["updated_ts"],
    )


class CallStateTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, record: CallRecord) -> None:
        """Insert or replace the call's record."""
        placeholders = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
        updates = ", ".join(f"{name}=excluded.{name}" for name in _COLUMNS[1:])
        await self.db.execute(
            f"INSERT INTO call_state ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
            f"ON CONFLICT (call_id) DO UPDATE SET {updates}",
            *_values(record),
        )

    async def delete(self, call_id: str) -> None:
        await self.db.execute("DELETE FROM call_state WHERE call_id=$1", call_id)

    async def get(self, call_id: str) -> CallRecord | None:
        row = await self.db.fetchrow(f"SELECT {', '.join(_COLUMNS)} FROM call_state WHERE call_id=$1", call_id)
        return _from_row(row) if row else None

    async def all(self) -> list[CallRecord]:
        rows = await self.db.fetch(f"SELECT {', '.join(_COLUMNS)} FROM call_state ORDER BY updated_ts")
        return [_from_row(r) for r in rows]
