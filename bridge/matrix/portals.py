"""Portal rooms: the direct chat connecting one Matrix user with one phone number (its ghost).

Policy when a user invites the ghost of a number they already have a portal with: the NEW room becomes the
portal (the user chose it deliberately; the old room simply stops being bridged). A room already bridged to a
different number is not re-bridged: the second ghost declines.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any, cast

from mautrix.appservice import AppServiceAPI, IntentAPI
from mautrix.errors import MatrixRequestError, MNotFound
from mautrix.types import EventType, Membership, RoomCreatePreset, RoomID, UserID

from bridge.call.dial_permissions import dial_permissions_for
from bridge.config import Config
from bridge.db.portal import Portal, PortalTable
from bridge.matrix.ghosts import UNKNOWN_NUMBER, Ghosts
from bridge.matrix.outbox import Outbox, OutboxItem
from bridge.matrix.permissions import Permissions

log = logging.getLogger(__name__)

NOT_ALLOWED = "You are not allowed to use this bridge"


class Portals:
    def __init__(self, az: AppServiceAPI, config: Config, table: PortalTable, ghosts: Ghosts,
                 permissions: Permissions) -> None:
        self.az = az
        self.config = config
        self.table = table
        self.ghosts = ghosts
        self.permissions = permissions
        self.dial_rules = dial_permissions_for(config)  # bridge.dial_permissions over the dial plan
        self._waiters: dict[tuple[str, str], list[asyncio.Future[bool]]] = defaultdict(list)
        self._pair_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.outbox = Outbox(self.deliver)

    # ------------------------------------------------------------------ lookups

    async def get(self, room_id: str) -> Portal | None:
        return await self.table.get_by_room(room_id)

    async def get_by_pair(self, mxid: str, number: str) -> Portal | None:
        return await self.table.get_by_pair(mxid, number)

    async def membership(self, room_id: str, mxid: str, *, as_number: str | None = None) -> str | None:
        """``mxid``'s membership in the room as seen by the room's ghost (or the bot), None if unknown."""
        if as_number is None:
            portal = await self.get(room_id)
            as_number = portal.number if portal else None
        intent = self.ghosts.intent(self.ghosts.mxid_for(as_number)) if as_number else self.az.bot_intent()
        try:
            # ensure_joined=False: IntentAPI would otherwise try to JOIN the room just to look.
            content = await intent.get_state_event(  # type: ignore[call-arg]
                RoomID(room_id), EventType.ROOM_MEMBER, mxid, ensure_joined=False
            )
        except MNotFound:
            return None
        except MatrixRequestError as e:
            log.debug("membership of %s in %s unknown: %s", mxid, room_id, e)
            return None
        value = content.get("membership") if isinstance(content, dict) else getattr(content, "membership", None)
        if isinstance(value, Membership):
            return value.value
        return str(value) if value is not None else None

    async def is_joined(self, room_id: str, mxid: str) -> bool:
        return await self.membership(room_id, mxid) == "join"

    # ------------------------------------------------------------------ membership waiters

    async def wait_joined(self, room_id: str, mxid: str, timeout: float) -> bool:
        """True once ``mxid`` has joined ``room_id`` (False on timeout, or if they decline/leave first).
        Resolved by membership events arriving through the appservice; never call it from a CallHandler
        method for the same room (the room's events are processed in order, so it would wait on itself)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        key = (room_id, mxid)
        self._waiters[key].append(fut)
        try:
            async with asyncio.timeout(timeout):
                # Register first, then check: a join that lands in between still resolves the future.
                if await self.is_joined(room_id, mxid):
                    return True
                return await fut
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters:
                    del self._waiters[key]

    def on_membership(self, room_id: str, user_id: str, membership: str) -> None:
        """Feed every membership event here (from the appservice, in room order)."""
        if membership not in ("join", "leave", "ban"):
            return
        for fut in self._waiters.pop((room_id, user_id), []):
            if not fut.done():
                fut.set_result(membership == "join")

    # ------------------------------------------------------------------ ghost invites

    async def handle_ghost_invite(self, room_id: str, inviter: str, ghost_mxid: str,
                                  content: dict[str, Any]) -> None:
        """A user invited a ghost: accept (and store the portal) or decline with a reason."""
        number = self.ghosts.number_from_mxid(ghost_mxid)
        if number is None:
            return
        intent = self.ghosts.intent(ghost_mxid)
        reason = await self._invite_refusal(room_id, inviter, number)
        if reason:
            log.info("ghost %s declines invite to %s from %s: %s", ghost_mxid, room_id, inviter, reason)
            await self._decline(intent, room_id, reason)
            return
        intent = await self.ghosts.intent_for(number)
        await intent.join_room(RoomID(room_id))
        if not content.get("is_direct"):
            others = await self._other_real_members(intent, room_id, inviter)
            if others:
                log.info("ghost %s leaves %s: not a direct chat (%d other users)", ghost_mxid, room_id, others)
                await intent.leave_room(RoomID(room_id), reason="Phone numbers can only be bridged in "
                                        "direct chats: start a direct chat with this number")
                return
        await self.table.put(room_id, inviter, number)
        log.info("portal %s stored for %s <-> +%s", room_id, inviter, number)

    async def _invite_refusal(self, room_id: str, inviter: str, number: str) -> str | None:
        if not self.permissions.can_use(inviter):
            return NOT_ALLOWED
        if number == UNKNOWN_NUMBER:
            return "This user stands for withheld caller IDs and cannot be called"
        # the inviter's own dial permissions (as for their calls and the bot's dial), else the dial plan
        reason = self.dial_rules.check(inviter, self.permissions.level(inviter), number)
        if reason:
            return reason
        existing = await self.get(room_id)
        if existing and existing.number != number:
            return f"This room is already connected to +{existing.number}"
        return None

    async def _decline(self, intent: IntentAPI, room_id: str, reason: str) -> None:
        try:
            await intent.leave_room(RoomID(room_id), reason=reason)
        except MatrixRequestError as e:
            log.warning("could not decline invite to %s as %s: %s", room_id, intent.mxid, e)

    async def _other_real_members(self, intent: IntentAPI, room_id: str, inviter: str) -> int:
        members = await intent.get_joined_members(RoomID(room_id), ensure_joined=False)  # type: ignore[call-arg]
        return sum(
            1 for m in members
            if m != inviter and not self.ghosts.is_ghost(m) and m != self.config.bot_mxid
        )

    async def on_ghost_left(self, room_id: str, ghost_mxid: str) -> None:
        """The ghost was kicked or left: the room is no longer a portal."""
        portal = await self.get(room_id)
        if portal and self.ghosts.mxid_for(portal.number) == ghost_mxid:
            await self.table.delete(room_id)
            log.info("portal %s removed: %s left", room_id, ghost_mxid)

    # ------------------------------------------------------------------ inbound calls / bot dial

    async def get_or_create_portal(self, mxid: str, number: str | None, *, caller_name: str | None = None) -> Portal:
        portal, _ = await self.ensure_portal(mxid, number, caller_name=caller_name)
        return portal

    async def ensure_portal(self, mxid: str, number: str | None, *,
                            caller_name: str | None = None) -> tuple[Portal, bool]:
        """The portal for (mxid, number), reused if the user is still in it (or invited), else a new DM
        created by the ghost with the user invited. Returns (portal, created)."""
        number = number or UNKNOWN_NUMBER
        # One lock per pair (kept: there are only as many as portals) so an inbound call and a bot `dial`
        # racing for the same pair cannot create two rooms.
        lock = self._pair_locks.setdefault((mxid, number), asyncio.Lock())
        async with lock:
            intent = await self.ghosts.intent_for(number, caller_name)
            existing = await self.table.get_by_pair(mxid, number)
            if existing:
                ghost_in = await self.membership(existing.room_id, str(intent.mxid), as_number=number)
                user_in = await self.membership(existing.room_id, mxid, as_number=number)
                if ghost_in == "join" and user_in in ("join", "invite"):
                    return existing, False
                log.info("portal %s for %s <-> +%s is stale (ghost %s, user %s); creating a new one",
                         existing.room_id, mxid, number, ghost_in, user_in)
            room_id = await intent.create_room(
                preset=RoomCreatePreset.TRUSTED_PRIVATE, is_direct=True, invitees=[UserID(mxid)]
            )
            await self._mark_direct(intent, mxid, room_id)
            portal = await self.table.put(room_id, mxid, number)
            log.info("created portal %s for %s <-> +%s", room_id, mxid, number)
            return portal, True

    async def _mark_direct(self, intent: IntentAPI, mxid: str, room_id: str) -> None:
        """Record the room in the ghost's m.direct account data, as clients do for their own DMs."""
        try:
            direct = dict(await intent.get_account_data(EventType.DIRECT))
        except MNotFound:
            direct = {}
        except MatrixRequestError as e:
            log.warning("could not read m.direct of %s: %s", intent.mxid, e)
            direct = {}
        rooms = [r for r in direct.get(mxid, []) if r != room_id]
        direct[mxid] = [*rooms, room_id]
        await intent.set_account_data(EventType.DIRECT, direct)

    # ------------------------------------------------------------------ sending as the ghost

    def send_call_event(self, room_id: str, number: str | None, event_type: str,
                        content: dict[str, Any]) -> OutboxItem:
        """Queue an m.call.* event from the number's ghost in the room's outbox; returns at once."""
        return self.outbox.enqueue(room_id, event_type, content, sender=self.ghosts.mxid_for(number))

    def send_notice(self, room_id: str, number: str | None, text: str) -> OutboxItem:
        """Queue an m.notice from the number's ghost in the room's outbox; returns at once."""
        return self.outbox.enqueue(room_id, str(EventType.ROOM_MESSAGE), _notice(text),
                                   sender=self.ghosts.mxid_for(number))

    def send_bot_notice(self, room_id: str, text: str) -> OutboxItem:
        """Queue an m.notice from the bridge bot in the room's outbox; returns at once."""
        return self.outbox.enqueue(room_id, str(EventType.ROOM_MESSAGE), _notice(text), sender=self.config.bot_mxid)

    async def deliver(self, item: OutboxItem) -> str:
        """The outbox's send function: one attempt, as the item's sender (a ghost or the bot), under the item's
        transaction ID."""
        number = self.ghosts.number_from_mxid(item.sender)
        intent = await self.ghosts.intent_for(number) if number is not None else self.az.bot_intent()
        etype = EventType.find(item.event_type, t_class=EventType.Class.MESSAGE)
        event_id = await intent.send_message_event(RoomID(item.room_id), etype, cast(Any, item.content),
                                                   txn_id=item.txn_id)
        return str(event_id)

    async def send_audio(self, room_id: str, number: str | None, data: bytes, *, filename: str, mimetype: str,
                         duration_ms: int, body: str) -> str:
        """Upload an audio file as the ghost and post it as m.audio (e.g. a failed call's announcement)."""
        intent = await self.ghosts.intent_for(number)
        url = await intent.upload_media(data, mime_type=mimetype, filename=filename)
        content = {
            "msgtype": "m.audio", "body": body, "filename": filename, "url": str(url),
            "info": {"mimetype": mimetype, "size": len(data), "duration": duration_ms},
        }
        event_id = await intent.send_message_event(RoomID(room_id), EventType.ROOM_MESSAGE, cast(Any, content))
        return str(event_id)


def _notice(text: str) -> dict[str, Any]:
    return {"msgtype": "m.notice", "body": text}
