"""``management_room`` table: each user's management room, where the bot talks to them about their SIP account
(login conversation, registration failure/recovery notices). Durable so a notice after a restart still finds it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mautrix.util.async_db import Database


@dataclass(frozen=True)
class ManagementRoom:
    mxid: str
    room_id: str
    bot_owned: bool
    """The bot created the room (so it has the power to redact the password message there)."""


class ManagementRoomTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, mxid: str) -> ManagementRoom | None:
        row = await self.db.fetchrow("SELECT mxid, room_id, bot_owned FROM management_room WHERE mxid=$1", mxid)
        if row is None:
            return None
        return ManagementRoom(mxid=row["mxid"], room_id=row["room_id"], bot_owned=bool(row["bot_owned"]))

    async def put(self, mxid: str, room_id: str, *, bot_owned: bool) -> None:
        await self.db.execute(
            """INSERT INTO management_room (mxid, room_id, bot_owned, updated_ts) VALUES ($1, $2, $3, $4)
               ON CONFLICT (mxid) DO UPDATE SET room_id=excluded.room_id, bot_owned=excluded.bot_owned,
               updated_ts=excluded.updated_ts""",
            mxid, room_id, bot_owned, int(time.time() * 1000),
        )

    async def delete(self, mxid: str) -> None:
        await self.db.execute("DELETE FROM management_room WHERE mxid=$1", mxid)
