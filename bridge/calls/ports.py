"""What the call driver needs from its neighbours, as protocols (the composition root adapts them).

Keeping these narrow lets the driver be read without the Matrix or SIP internals, and keeps the
direction of flow: matrix/ -> calls/ -> sip/ + media/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..call.record import CallRecord
from ..media.call_media import MediaStats


@dataclass(frozen=True)
class PortalInfo:
    room_id: str
    mxid: str  # the Matrix user of the portal
    number: str | None  # E.164 digits of the phone side; None = withheld ("Unknown caller")


class MatrixUnavailable(Exception):
    """The homeserver did not take an event (or answer a request) in time; the event was withdrawn."""


class MatrixPort(Protocol):
    """Sends return as soon as the event is queued: an outbox delivers each room's events in order, retrying
    while the homeserver is down, so a call never waits on homeserver health. With ``deliver_within`` the call
    waits for delivery and raises MatrixUnavailable after that many seconds (the event is then never sent).
    Both return the event's transaction ID (stable across retries)."""

    async def portal_for_room(self, room_id: str) -> PortalInfo | None: ...

    async def send_call_event(self, portal: PortalInfo, event_type: str, content: dict[str, Any], *,
                              deliver_within: float | None = None) -> str: ...

    async def send_notice(self, portal: PortalInfo, text: str, *, deliver_within: float | None = None) -> str: ...

    async def send_audio(self, portal: PortalInfo, data: bytes, *, filename: str, mimetype: str, duration_ms: int,
                         body: str) -> None:
        """Upload ``data`` to the homeserver's media repository and post it as an m.audio message (as the ghost)."""
        ...

    async def portal_for_inbound(self, mxid: str, number: str | None, caller_name: str | None) -> PortalInfo: ...

    async def is_joined(self, room_id: str, mxid: str) -> bool: ...

    async def wait_joined(self, room_id: str, mxid: str, timeout: float) -> bool: ...

    def can_dial(self, mxid: str) -> bool: ...

    def format_number(self, number: str | None) -> str: ...

    def number_for_ghost(self, mxid: str) -> str | None:
        """E.164 digits of a ghost's Matrix ID (a transfer target), None for anyone else."""
        ...


class CallLogPort(Protocol):
    async def call_started(
        self, *, call_id: str, party_id: str, sip_call_id: str, room_id: str, direction: str, number: str | None,
        mxid: str,
    ) -> bool:
        """Write the call's row; True if it was written now. False if the call_id was already in the log (an
        earlier call or a replay) or the write failed: an outbound call is then never dialled."""
        ...

    async def call_answered(self, call_id: str) -> None: ...

    async def call_ended(self, call_id: str, reason: str) -> None: ...


class CallStatePort(Protocol):
    """Durable per-call state for crash recovery (bridge.call.record). Implementations log their own
    failures and never raise: a database problem must not end a call."""

    async def save(self, record: CallRecord) -> None: ...

    async def delete(self, call_id: str) -> None: ...


class CallStateStore(CallStatePort, Protocol):
    """What crash recovery reads at start: every record a previous process left."""

    async def all(self) -> list[CallRecord]: ...


class CallObserver(Protocol):
    """Moments the metrics time (bridge.metrics.Metrics implements this). Cheap, synchronous, never raising."""

    def sip_progress(self, call_id: str) -> None:
        """Outbound: a 180/183 (not 100) arrived; the first one ends the post-dial delay."""

    def sip_answered(self, call_id: str) -> None:
        """Outbound: the SIP 2xx arrived (answer latency runs until m.call.answer is sent)."""

    def matrix_answered(self, call_id: str) -> None:
        """Inbound: an m.call.answer arrived (answer latency runs until the SIP 200 is sent)."""

    def call_refused(self, limit: str) -> None:
        """A call was refused by a limit: sip_source_rate, user_attempts, user_concurrency, total_concurrency."""

    def media_closed(self, stats: MediaStats) -> None:
        """A call's media plane closed; ``stats`` are its final counters."""


class NullObserver:
    def sip_progress(self, call_id: str) -> None:
        pass

    def sip_answered(self, call_id: str) -> None:
        pass

    def matrix_answered(self, call_id: str) -> None:
        pass

    def call_refused(self, limit: str) -> None:
        pass

    def media_closed(self, stats: MediaStats) -> None:
        pass
