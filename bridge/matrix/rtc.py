"""MatrixRTC (Element Call) calls started in a portal room: the bridge only speaks legacy 1:1 VoIP (m.call.*).

Rather than let the user's client ring into silence, the ghost declines the ring (MSC4310: an
``org.matrix.msc4310.rtc.decline`` referencing the ``rtc.notification``) so clients stop ringing, and posts ONE
notice per call start telling the user to place a legacy voice call. A call "starts" when the first real member
joins the room's RTC session (a non-empty ``call.member`` / ``rtc.member`` state event) or when a ring arrives
while nobody is in it; it ends when every member state is empty again.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)

MEMBER_TYPES = frozenset({"org.matrix.msc3401.call.member", "m.rtc.member"})
NOTIFICATION_TYPES = frozenset({"org.matrix.msc4075.rtc.notification", "m.rtc.notification",
                                "org.matrix.msc4075.call.notify", "m.call.notify"})
RTC_TYPES = MEMBER_TYPES | NOTIFICATION_TYPES
DECLINE_TYPE = "org.matrix.msc4310.rtc.decline"
NOTICE = ("This chat is bridged to a phone number, which cannot join Element Call (MatrixRTC) calls. "
          "To call it, start a legacy voice call: see the bridge's README for the Element setting that "
          "makes legacy calls available.")
MAX_MEMBERS_PER_ROOM = 64  # bounds the per-room session state a misbehaving client could grow


class RtcSender(Protocol):
    """What RtcCalls needs from Portals: sending as the room's ghost (queued in the outbox, which retries)."""

    def send_call_event(self, room_id: str, number: str | None, event_type: str, content: dict[str, Any]) -> Any: ...

    def send_notice(self, room_id: str, number: str | None, text: str) -> Any: ...


def _is_membership(content: dict[str, Any]) -> bool:
    """A non-empty member state: per-device (MSC4143) content, or the legacy {"memberships": [...]} form."""
    if not content:
        return False
    memberships = content.get("memberships")
    if "memberships" in content:
        return isinstance(memberships, list) and bool(memberships)
    return True


class RtcCalls:
    def __init__(self, sender: RtcSender) -> None:
        self.sender = sender
        self._members: dict[str, set[str]] = {}  # room -> state keys currently in the RTC session
        self._noticed: set[str] = set()  # rooms told about the current call start

    async def on_event(self, evt: dict[str, Any], number: str | None) -> None:
        """An RTC event from a real user in a portal room (the dispatcher checked both), in room order."""
        room_id: str = evt["room_id"]
        etype: str = evt["type"]
        content = evt.get("content")
        if not isinstance(content, dict):
            return
        if etype in MEMBER_TYPES:
            state_key = evt.get("state_key")
            if not isinstance(state_key, str):
                return
            members = self._members.setdefault(room_id, set())
            if _is_membership(content):
                if len(members) < MAX_MEMBERS_PER_ROOM:
                    members.add(state_key)
                await self._notice_once(room_id, number)
            else:
                members.discard(state_key)
                if not members:  # the call is over: the next one gets its own notice
                    self._members.pop(room_id, None)
                    self._noticed.discard(room_id)
            return
        event_id = evt.get("event_id")
        if isinstance(event_id, str):
            await self._decline(room_id, number, event_id, etype)
        await self._notice_once(room_id, number)

    async def _decline(self, room_id: str, number: str | None, event_id: str, etype: str) -> None:
        content = {"m.relates_to": {"rel_type": "m.reference", "event_id": event_id},
                   "reason": "This phone number can only take legacy voice calls"}
        try:
            self.sender.send_call_event(room_id, number, DECLINE_TYPE, content)
            log.info("declined MatrixRTC ring %s (%s) in portal %s", event_id, etype, room_id)
        except Exception as e:  # a failed decline must not stop the notice
            log.warning("could not decline MatrixRTC ring %s in %s: %r", event_id, room_id, e)

    async def _notice_once(self, room_id: str, number: str | None) -> None:
        if room_id in self._noticed:
            return
        self._noticed.add(room_id)
        self.sender.send_notice(room_id, number, NOTICE)
