"""The durable record of one bridged call: what a restarted bridge needs to end it on both sides.

Written by the call driver as the call changes (INVITE sent or received, answered) and deleted when
the call has ended; read by crash recovery. Plain data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Direction = Literal["outbound", "inbound"]  # outbound = Matrix user calls a number
# Where the SIP leg stands: an INVITE we sent still ringing, an INVITE we received not yet answered
# finally, or a confirmed dialog. Each has its own snapshot in ``sip`` (bridge.sip.dialog_state).
SipPhase = Literal["invite_sent", "invite_received", "dialog"]


@dataclass(frozen=True)
class CallRecord:
    call_id: str  # Matrix call_id
    direction: Direction
    sip_call_id: str
    sip_phase: SipPhase
    sip: dict[str, Any] = field(default_factory=dict)  # DialogState / PendingInviteState / ReceivedInviteState
    room_id: str | None = None  # None until the portal is known (inbound)
    mxid: str | None = None  # the portal's Matrix user
    number: str | None = None  # the portal's phone number; None = withheld
    party_id: str = ""  # our party_id on the Matrix leg
    version: str = "1"  # the Matrix leg's version ("0" or "1"), as text
    answered: bool = False  # the Matrix leg was answered (outbound: we sent m.call.answer)
    rtp_port: int | None = None
    updated_ts: int = 0  # ms since the epoch
