"""Glare between a user's outbound call and the same number's inbound call (rules in call/glare.py).

Both checks run in the synchronous step that registers a new call with the manager, so whichever call is
registered second sees the first: exactly one of the two checks finds the pair, whatever the arrival order.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..call.glare import resolve_glare, same_pair
from ..call.inbound import InState
from ..call.outbound import OutState
from .inbound import InboundSession
from .outbound import OutboundSession

_RINGING_OUT = (OutState.DIALING, OutState.RINGING)
_RINGING_IN = (InState.WAITING_JOIN, InState.RINGING)


def ringing_inbound(inbound: Iterable[InboundSession], user: str, number: str | None,
                    room_id: str) -> InboundSession | None:
    """An unanswered inbound call from ``number`` to ``user`` (in ``room_id`` once its portal is known)."""
    for inc in inbound:
        if inc.machine.state in _RINGING_IN and same_pair(user, number, inc.callee, inc.caller_number) and (
                inc.room_id is None or inc.room_id == room_id):
            return inc
    return None


def ringing_outbound(outbound: Iterable[OutboundSession], callee: str,
                     caller_number: str | None) -> OutboundSession | None:
    """An unanswered outbound call by ``callee`` to ``caller_number``."""
    for out in outbound:
        if out.machine.state in _RINGING_OUT and same_pair(out.sender, out.number, callee, caller_number):
            return out
    return None


def new_outbound_wins(rival: InboundSession, call_id: str) -> bool:
    """A new outbound call (the user's invite ``call_id``) meets a ringing inbound call. When the new call wins,
    the inbound one is ended here (486 + hangup); when it loses, the caller refuses the invite."""
    if resolve_glare(call_id, rival.call_id).outbound_wins:
        rival.log.info("glare with outbound call %s: it has the lesser call_id, ending this inbound call", call_id)
        rival.post(rival.machine.glare_lost)
        return True
    rival.log.info("glare with outbound call %s: this inbound call has the lesser call_id and proceeds", call_id)
    return False


def new_inbound_wins(rival: OutboundSession, inbound: InboundSession) -> bool:
    """A new inbound call meets a ringing outbound call. When the new call wins, the outbound one is ended
    here (CANCEL + reject); when it loses, the caller drops the inbound branch."""
    if resolve_glare(rival.call_id, inbound.call_id).inbound_wins:
        rival.log.info("glare with inbound call %s (%s): it has the lesser call_id, ending this outbound call",
                       inbound.call_id, inbound.sip_call_id)
        rival.post(rival.machine.glare_lost)
        return True
    rival.log.info("glare with inbound call %s (%s): this outbound call has the lesser call_id and proceeds",
                   inbound.call_id, inbound.sip_call_id)
    return False
