"""``ghost`` table: puppet users we have registered, and the display name we last set on each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database


@dataclass(frozen=True)
class Ghost:
    mxid: str
    number: str  # E.164 digits, or "unknown"
    displayname: str | None

    @classmethod
    def from_row(cls, row: Any) -> Ghost:
        return cls(mxid=row["mxid"], number=row["number"], displayname=row["displayname"])


class GhostTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, mxid: str) -> Ghost | None:
        row = await self.db.fetchrow("SELECT mxid, number, displayname FROM ghost WHERE mxid=$1", mxid)
        return Ghost.from_row(row) if row else None

    async def put(self, ghost: Ghost) -> None:
        await self.db.execute(
            """INSERT INTO ghost (mxid, number, displayname) VALUES ($1, $2, $3)
               ON CONFLICT (mxid) DO UPDATE SET number=excluded.number, displayname=excluded.displayname""",
            ghost.mxid, ghost.number, ghost.displayname,
        )
