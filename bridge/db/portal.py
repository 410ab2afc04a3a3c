"""``portal`` table: the DM room that connects one Matrix user with one phone number."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Connection, Database


@dataclass(frozen=True)
class Portal:
    room_id: str
    mxid: str  # the real Matrix user
    number: str  # E.164 digits without '+' ("unknown" for withheld caller IDs)
    created_at: int  # ms since the epoch

    @classmethod
    def from_row(cls, row: Any) -> Portal:
        return cls(room_id=row["room_id"], mxid=row["mxid"], number=row["number"], created_at=row["created_at"])


class PortalTable:
    _COLUMNS = "room_id, mxid, number, created_at"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_by_room(self, room_id: str) -> Portal | None:
        row = await self.db.fetchrow(f"SELECT {self._COLUMNS} FROM portal WHERE room_id=$1", room_id)
        return Portal.from_row(row) if row else None

    async def get_by_pair(self, mxid: str, number: str) -> Portal | None:
        row = await self.db.fetchrow(
            f"SELECT {self._COLUMNS} FROM portal WHERE mxid=$1 AND number=$2", mxid, number
        )
        return Portal.from_row(row) if row else None

    async def put(self, room_id: str, mxid: str, number: str) -> Portal:
        """Store ``room_id`` as THE portal of (mxid, number), replacing any older room for that pair."""
        portal = Portal(room_id=room_id, mxid=mxid, number=number, created_at=int(time.time() * 1000))
        conn: Connection
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM portal WHERE (mxid=$1 AND number=$2) OR room_id=$3",
                               mxid, number, room_id)
            await conn.execute(
                f"INSERT INTO portal ({self._COLUMNS}) VALUES ($1, $2, $3, $4)",
                portal.room_id, portal.mxid, portal.number, portal.created_at,
            )
        return portal

    async def delete(self, room_id: str) -> None:
        await self.db.execute("DELETE FROM portal WHERE room_id=$1", room_id)

    async def all_for_user(self, mxid: str) -> list[Portal]:
        rows = await self.db.fetch(f"SELECT {self._COLUMNS} FROM portal WHERE mxid=$1 ORDER BY created_at", mxid)
        return [Portal.from_row(r) for r in rows]
