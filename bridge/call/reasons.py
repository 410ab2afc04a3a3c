"""Translation tables between SIP final responses and Matrix call endings, both directions.

Kept in one place so every mapping is a table row with a unit test (see DESIGN.md
"Mappings that are easy to get wrong").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EndKind = Literal["hangup", "reject"]


@dataclass(frozen=True)
class MatrixEnding:
    """How a Matrix call ends: the event to send, its reason, and an optional notice for the room."""

    kind: EndKind
    reason: str | None
    notice: str | None = None  # sentence for an m.notice, with {number} and {status} placeholders


# SIP failure classes, checked in order: (statuses, matrix reason, notice template or None).
_SIP_FAILURES: tuple[tuple[frozenset[int], str, str | None], ...] = (
    (frozenset({486, 600}), "user_busy", None),  # busy shows as busy in the client: no notice
    (frozenset({603}), "user_hangup", "{number} declined the call: {status}"),
    (frozenset({404, 484, 604}), "unknown_error", "{number} is not reachable: {status}"),
    (frozenset({408, 480}), "invite_timeout", "{number} did not answer: {status}"),
    (frozenset({403, 401, 407}), "unknown_error", "The phone network refused the call to {number}: {status}"),
)


def sip_failure_to_matrix(status: int, version: object) -> MatrixEnding:
    """The Matrix ending for a SIP final failure to our outbound INVITE.

    Before the Matrix caller has an answer, Element ignores an m.call.hangup from the callee, so a
    version "1" invite is always refused with m.call.reject (carrying the reason, which matrix-js-sdk
    reads: user_busy shows as busy); a version 0 invite gets m.call.hangup with the reason.
    """
    reason = "unknown_error"
    notice: str | None = "The call to {number} failed: {status}"
    for statuses, matrix_reason, template in _SIP_FAILURES:
        if status in statuses:
            reason, notice = matrix_reason, template
            break
    kind: EndKind = "hangup" if version == 0 else "reject"
    # A plain decline is what m.call.reject means on its own; other reasons ride along.
    if status == 603 and kind == "reject":
        return MatrixEnding("reject", None, notice)
    return MatrixEnding(kind, reason, notice)


def transport_failure_to_matrix(version: object, *, timeout: bool) -> MatrixEnding:
    """No final response at all: timer B (no answer from the trunk) or a transport error."""
    kind: EndKind = "hangup" if version == 0 else "reject"
    if timeout:
        return MatrixEnding(kind, "unknown_error", "The phone network did not respond for {number}")
    return MatrixEnding(kind, "unknown_error", "The phone network could not be reached for {number}")


def lifetime_expired_to_matrix(version: object) -> MatrixEnding:
    """The Matrix invite's lifetime ran out while the phone still rang."""
    kind: EndKind = "hangup" if version == 0 else "reject"
    return MatrixEnding(kind, "invite_timeout", "{number} did not answer")


# Inbound (SIP caller, Matrix callee): how a Matrix refusal before answer is told to SIP.
SIP_FOR_MATRIX_REJECT = (603, "Decline")
SIP_FOR_NO_ANSWER = (480, "Temporarily Unavailable")


def matrix_hangup_before_answer_to_sip(reason: str | None) -> tuple[int, str]:
    """The SIP final response for an m.call.hangup from the callee before any answer."""
    if reason == "user_busy":
        return 486, "Busy Here"
    return SIP_FOR_NO_ANSWER


def media_failure_reason(media_seen: bool) -> str:
    """ice_timeout if media had flowed before the failure, else ice_failed (spec: m.call.hangup)."""
    return "ice_timeout" if media_seen else "ice_failed"


def aggregate_fork_finals(statuses: list[int]) -> tuple[int, str]:
    """The one SIP final for an INVITE that rang several Matrix users and none answered.

    Any decline wins (someone chose not to take it), then busy, else nobody answered.
    """
    if 603 in statuses:
        return SIP_FOR_MATRIX_REJECT
    if 486 in statuses:
        return 486, "Busy Here"
    if statuses and all(s == 503 for s in statuses):
        return 503, "Service Unavailable"
    if statuses and all(s >= 500 for s in statuses):
        return 500, "Server Internal Error"
    return SIP_FOR_NO_ANSWER
