"""Routes each appservice event to the right place: call events to the call driver, invites to ghosts or the
bot, bot commands to the bot, memberships to the portal waiters and the call driver."""

from __future__ import annotations

import logging
from typing import Any

from bridge.config import Config
from bridge.matrix.bot import Bot
from bridge.matrix.ghosts import Ghosts
from bridge.matrix.handler import CallEvent, CallHandler
from bridge.matrix.permissions import Permissions
from bridge.matrix.portals import Portals
from bridge.matrix.rtc import RTC_TYPES, RtcCalls

log = logging.getLogger(__name__)


class EventDispatcher:
    def __init__(self, config: Config, ghosts: Ghosts, portals: Portals, bot: Bot, permissions: Permissions,
                 handler: CallHandler) -> None:
        self.bot_mxid = config.bot_mxid
        self.ghosts = ghosts
        self.portals = portals
        self.bot = bot
        self.permissions = permissions
        self.handler = handler
        self.rtc = RtcCalls(portals)

    def is_bridge_user(self, mxid: str) -> bool:
        return mxid == self.bot_mxid or self.ghosts.is_ghost(mxid)

    async def dispatch(self, evt: dict[str, Any]) -> None:
        """Handle one event; never raises (a failure is logged with the event ID)."""
        event_id = evt.get("event_id")
        try:
            await self._dispatch(evt)
        except Exception:
            log.exception("handling %s %s in %s failed", evt.get("type"), event_id, evt.get("room_id"),
                          extra={"event_id": event_id, "room_id": evt.get("room_id")})

    async def _dispatch(self, evt: dict[str, Any]) -> None:
        etype: str = evt["type"]
        room_id: str = evt["room_id"]
        sender = evt.get("sender")
        content = evt.get("content")
        if not isinstance(sender, str) or not isinstance(content, dict):
            log.warning("skipping event %s in %s: no sender or content", evt.get("event_id"), room_id)
            return
        if etype == "m.room.member":
            await self._membership(room_id, sender, evt.get("state_key"), content)
        elif etype in RTC_TYPES and not self.is_bridge_user(sender):
            if (portal := await self.portals.get(room_id)) is not None:  # MatrixRTC call in a portal: decline
                await self.rtc.on_event(evt, portal.number)
        elif etype.startswith("m.call."):
            await self._call_event(evt, room_id, sender, content)
        elif etype == "m.room.message" and not self.is_bridge_user(sender):
            if await self.portals.get(room_id) is None:
                await self.bot.handle_message(room_id, sender, content, str(evt.get("event_id", "")))

    async def _membership(self, room_id: str, sender: str, state_key: Any, content: dict[str, Any]) -> None:
        membership = content.get("membership")
        if not isinstance(state_key, str) or not isinstance(membership, str):
            log.warning("skipping malformed membership event in %s", room_id)
            return
        self.portals.on_membership(room_id, state_key, membership)
        if state_key == self.bot_mxid:
            if membership == "invite" and not self.is_bridge_user(sender):
                await self.bot.handle_invite(room_id, sender)
            else:
                self.bot.on_own_membership(room_id, membership)
            return
        if self.ghosts.is_ghost(state_key):
            if membership == "invite" and not self.is_bridge_user(sender):
                await self.portals.handle_ghost_invite(room_id, sender, state_key, content)
            elif membership in ("leave", "ban"):
                await self.portals.on_ghost_left(room_id, state_key)
            return
        if await self.portals.get(room_id) is not None:
            await self.handler.on_member_change(room_id, state_key, membership)

    async def _call_event(self, evt: dict[str, Any], room_id: str, sender: str, content: dict[str, Any]) -> None:
        if self.is_bridge_user(sender):
            return  # our own ghosts' events echoed back
        portal = await self.portals.get(room_id)
        if portal is None:
            log.debug("ignoring %s %s: %s is not a portal room", evt["type"], evt.get("event_id"), room_id)
            return
        ts = evt.get("origin_server_ts")
        unsigned = evt.get("unsigned")
        age = unsigned.get("age") if isinstance(unsigned, dict) else None
        await self.handler.on_call_event(CallEvent(
            room_id=room_id,
            event_id=str(evt.get("event_id", "")),
            sender=sender,
            type=evt["type"],
            content=content,
            ts=ts if isinstance(ts, int) and not isinstance(ts, bool) else 0,
            age=age if isinstance(age, int) and not isinstance(age, bool) else None,
        ))
