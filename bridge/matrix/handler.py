"""The interface between the Matrix side and the call driver (``bridge/calls.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class CallEvent:
    """An ``m.call.*`` event from a real (non-bridge) user in a portal room."""

    room_id: str
    event_id: str
    sender: str
    type: str  # e.g. "m.call.invite"
    content: dict[str, Any]
    ts: int  # origin_server_ts, ms
    # unsigned.age (ms) when the homeserver sent it: how old the event was when pushed, on the homeserver's own
    # clock (so it is immune to clock skew, unlike now - ts). None when absent.
    age: int | None = None


class CallHandler(Protocol):
    """Implemented by the call driver. Both methods are awaited inside the room's ordered worker, and the
    appservice transaction is acknowledged only after they return: return promptly (start long work as
    tasks) and never wait there for a later event of the same room (e.g. ``Portals.wait_joined``)."""

    async def on_call_event(self, evt: CallEvent) -> None:
        """An m.call.* event from a non-ghost user in a portal room, in room order."""

    async def on_member_change(self, room_id: str, user_id: str, membership: str) -> None:
        """join / leave / ban (also invite) of a real user in a portal room, in room order."""


class NullCallHandler:
    """Placeholder until the call driver is attached (events are dropped)."""

    async def on_call_event(self, evt: CallEvent) -> None:
        return None

    async def on_member_change(self, room_id: str, user_id: str, membership: str) -> None:
        return None
