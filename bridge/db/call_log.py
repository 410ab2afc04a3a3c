"""``call_log`` table: one row per bridged call, written by the call driver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mautrix.util.async_db import Database

Direction = Literal["outbound", "inbound"]


@dataclass(frozen=True)
class CallLogEntry:
    call_id: str  # Matrix call_id
    room_id: str
    direction: Direction  # "outbound" = Matrix user calls a number, "inbound" = SIP calls Matrix
    invite_ts: int  # ms since the epoch
    party_id: str | None = None  # the Matrix party_id of the user's side, when known
    sip_call_id: str | None = None
    number: str | None = None
    mxid: str | None = None
    answer_ts: int | None = None
    end_ts: int | None = None
    end_reason: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> CallLogEntry:
        return cls(**{name: row[name] for name in _COLUMNS})


_COLUMNS = ("call_id", "party_id", "sip_call_id", "room_id", "direction", "number", "mxid", "invite_ts",
            "answer_ts", "end_ts", "end_reason")


class CallLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, entry: CallLogEntry) -> None:
        placeholders = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
        await self.db.execute(
            f"INSERT INTO call_log ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
            *(getattr(entry, name) for name in _COLUMNS),
        )

    async def claim(self, entry: CallLogEntry) -> bool:
        """Insert the row unless its call_id is already logged; True if this call wrote it.

        One statement (no read-then-write), so two claims of one call_id cannot both win.
        """
        placeholders = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
        inserted = await self.db.fetchval(
            f"INSERT INTO call_log ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
            "ON CONFLICT (call_id) DO NOTHING RETURNING call_id",
            *(getattr(entry, name) for name in _COLUMNS),
        )
        return inserted is not None

    async def update_answered(self, call_id: str, ts: int) -> None:
        await self.db.execute("UPDATE call_log SET answer_ts=$2 WHERE call_id=$1 AND answer_ts IS NULL", call_id, ts)

    async def update_ended(self, call_id: str, ts: int, reason: str) -> None:
        """Record the end once; later calls (e.g. a BYE racing a hangup) keep the first reason."""
        await self.db.execute(
            "UPDATE call_log SET end_ts=$2, end_reason=$3 WHERE call_id=$1 AND end_ts IS NULL", call_id, ts, reason
        )

    async def close_unfinished(self, ts: int, reason: str) -> int:
        """At start-up: calls still open in the log died with the previous process; end them. Returns how many."""
        rows = await self.db.fetch("SELECT call_id FROM call_log WHERE end_ts IS NULL")
        await self.db.execute("UPDATE call_log SET end_ts=$1, end_reason=$2 WHERE end_ts IS NULL", ts, reason)
        return len(rows)

    async def set_sip_call_id(self, call_id: str, sip_call_id: str) -> None:
        await self.db.execute("UPDATE call_log SET sip_call_id=$2 WHERE call_id=$1", call_id, sip_call_id)

    async def get(self, call_id: str) -> CallLogEntry | None:
        row = await self.db.fetchrow(f"SELECT {', '.join(_COLUMNS)} FROM call_log WHERE call_id=$1", call_id)
        return CallLogEntry.from_row(row) if row else None

    async def recent(self, limit: int = 50) -> list[CallLogEntry]:
        rows = await self.db.fetch(
            f"SELECT {', '.join(_COLUMNS)} FROM call_log ORDER BY invite_ts DESC LIMIT $1", limit
        )
        return [CallLogEntry.from_row(r) for r in rows]
