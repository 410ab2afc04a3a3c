"""AccountNotifier on Matrix: a notice in the user's management room when their registration starts failing and
when it works again. A user without a management room (logged in through the provisioning API) gets one: the bot
opens it and invites them, as mautrix bridges do."""

from __future__ import annotations

import logging
import time

from mautrix.errors import MatrixRequestError

from bridge.calls.account_api import AccountStatus
from bridge.matrix.account_commands import describe
from bridge.matrix.management_rooms import ManagementRooms
from bridge.matrix.portals import Portals

log = logging.getLogger(__name__)


def notice_text(status: AccountStatus, *, recovered: bool, now: float) -> str:
    if recovered:
        head = f"✅ The registration of {status.aor} works again: incoming calls reach you."
    else:
        reason = f" ({status.last_error})" if status.last_error else ""
        head = (f"⚠️ The registration of {status.aor} is failing{reason}: incoming calls to it will not reach you "
                "until it recovers. I keep retrying.")
    return head + "\n" + describe(status, now)


class RoomNotifier:
    """calls.account_api.AccountNotifier: notices go through the bot's outbox (retried while the homeserver is
    down)."""

    def __init__(self, rooms: ManagementRooms, portals: Portals) -> None:
        self.rooms = rooms
        self.portals = portals

    async def registration_changed(self, mxid: str, status: AccountStatus, *, recovered: bool) -> None:
        room_id = await self.rooms.get(mxid)
        if room_id is None:
            try:
                room_id, _ = await self.rooms.private_room(mxid)
            except MatrixRequestError as e:
                log.warning("registration notice for %s not sent: no management room (%s)", mxid, e)
                return
        log.info("registration of %s %s: notice to %s", mxid, "recovered" if recovered else "failing", room_id)
        self.portals.send_bot_notice(room_id, notice_text(status, recovered=recovered, now=time.time()))
