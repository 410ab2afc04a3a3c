"""Each user's management room: the room where the bot talks to them about their SIP account.

The password step of ``login`` needs a room where the bot can redact the user's message. In a DM the user created,
the user holds all the power and the bot none, so the bot cannot. Then the bot opens a room of its own (it is the
creator, the user an ordinary member) and the login continues there. The room a login happened in is remembered
(table ``management_room``) so registration notices reach the user later, even after a restart.
"""

from __future__ import annotations

import asyncio
import logging

from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixRequestError
from mautrix.types import RoomCreatePreset, RoomID, UserID

from bridge.db.management_room import ManagementRoomTable
from bridge.matrix.portals import Portals

log = logging.getLogger(__name__)

ROOM_NAME = "SIP bridge"
ROOM_TOPIC = "Your SIP account on the bridge: send `help` for the commands"


class ManagementRooms:
    def __init__(self, az: AppServiceAPI, bot_mxid: str, table: ManagementRoomTable, portals: Portals) -> None:
        self.az = az
        self.bot_mxid = bot_mxid
        self.table = table
        self.portals = portals
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, mxid: str) -> str | None:
        room = await self.table.get(mxid)
        return room.room_id if room else None

    async def remember(self, mxid: str, room_id: str) -> None:
        """``room_id`` becomes the user's management room (unless it already is)."""
        current = await self.table.get(mxid)
        if current is None or current.room_id != room_id:
            await self.table.put(mxid, room_id, bot_owned=False)

    async def can_redact(self, mxid: str, room_id: str) -> bool:
        """Whether the bot may redact ``mxid``'s messages in the room."""
        current = await self.table.get(mxid)
        if current is not None and current.room_id == room_id and current.bot_owned:
            return True
        try:
            levels = await self.az.bot_intent().get_power_levels(RoomID(room_id), ignore_cache=True)
        except MatrixRequestError as e:
            log.info("power levels of %s unknown (%s): assuming the bot cannot redact there", room_id, e)
            return False
        return levels.get_user_level(UserID(self.bot_mxid)) >= levels.redact

    async def private_room(self, mxid: str) -> tuple[str, bool]:
        """A bot-owned room with the user (joined or invited), created if there is none. Returns (room, created)."""
        lock = self._locks.setdefault(mxid, asyncio.Lock())
        async with lock:
            current = await self.table.get(mxid)
            if current is not None and current.bot_owned and await self._usable(current.room_id, mxid):
                return current.room_id, False
            room_id = str(await self.az.bot_intent().create_room(
                preset=RoomCreatePreset.PRIVATE, is_direct=True, invitees=[UserID(mxid)], name=ROOM_NAME,
                topic=ROOM_TOPIC,
            ))
            await self.table.put(mxid, room_id, bot_owned=True)
            log.info("created management room %s for %s", room_id, mxid)
            return room_id, True

    async def _usable(self, room_id: str, mxid: str) -> bool:
        return (await self.portals.membership(room_id, self.bot_mxid, as_number="") == "join"
                and await self.portals.membership(room_id, mxid, as_number="") in ("join", "invite"))
