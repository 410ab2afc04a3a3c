"""What crash recovery does to a call the previous process left open: pure decisions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .record import CallRecord

CRASH_REASON = "bridge_crash"  # call-log end reason of a call ended by recovery
SIP_FINAL_STATUS = 480  # a ringing inbound INVITE: "Temporarily Unavailable" (the callee can be tried again)
MATRIX_REASON = "unknown_error"

SipAction = Literal["bye", "cancel", "respond", "none"]
_SIP_ACTION: dict[str, SipAction] = {"dialog": "bye", "invite_sent": "cancel", "invite_received": "respond"}


@dataclass(frozen=True)
class RecoveryPlan:
    sip: SipAction
    matrix_event: str | None  # "m.call.hangup" / "m.call.reject"; None when there is no room to tell
    matrix_content_reason: str | None  # the reason field of that event


def plan_recovery(record: CallRecord) -> RecoveryPlan:
    """BYE a dialog, CANCEL an INVITE we sent, answer an INVITE we received; hang up the Matrix leg, except a
    version "1" Matrix invite not yet answered by us, which is rejected (Element ignores a callee's hangup
    before answer)."""
    sip = _SIP_ACTION.get(record.sip_phase, "none")
    if record.room_id is None:
        return RecoveryPlan(sip, None, None)
    if record.direction == "outbound" and not record.answered and record.version != "0":
        return RecoveryPlan(sip, "m.call.reject", MATRIX_REASON)
    return RecoveryPlan(sip, "m.call.hangup", MATRIX_REASON)
