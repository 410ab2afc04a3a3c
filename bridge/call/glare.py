"""Glare: the Matrix user calls a number while that number calls them, in the same portal. Pure: no I/O.

The VoIP spec resolves glare by keeping the call with the lexicographically lesser call_id and aborting the
greater. For the bridge the two calls are its outbound leg (the user's m.call.invite, our SIP INVITE to the
trunk) and its inbound leg (the phone's INVITE, our ghost's m.call.invite). The loser is ended on both sides:
a losing outbound call gets CANCEL towards SIP and m.call.reject (version 0: m.call.hangup) towards Matrix; a
losing inbound call gets 486 Busy Here towards SIP and m.call.hangup for the ghost's invite if it was sent.
"""

from __future__ import annotations

from dataclasses import dataclass

GLARE_REASON = "replaced"  # matrix-js-sdk's CallErrorCode.Replaced: the call was superseded by the other one


@dataclass(frozen=True)
class GlareVerdict:
    outbound_wins: bool

    @property
    def inbound_wins(self) -> bool:
        return not self.outbound_wins


def resolve_glare(outbound_call_id: str, inbound_call_id: str) -> GlareVerdict:
    """The lesser call_id wins (byte-wise comparison, as the spec's lexicographical order over its ASCII grammar)."""
    return GlareVerdict(outbound_wins=outbound_call_id.encode() < inbound_call_id.encode())


def same_pair(outbound_user: str, outbound_number: str | None, inbound_callee: str,
              inbound_caller: str | None) -> bool:
    """Is this a user calling a number that is calling them (the same portal: one portal per user and number)?"""
    return bool(outbound_number) and outbound_user == inbound_callee and outbound_number == inbound_caller
