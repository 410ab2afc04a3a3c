"""Validation of incoming ``m.call.*`` event content into typed values.

The bridge never trusts event content: anything that does not fit the spec becomes an
``InvalidCallEvent`` with a one-line reason, which the caller logs and drops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

Version = Literal[0, "1"]

# VoIP IDs follow the opaque identifier grammar (spec: "Grammar for VoIP IDs"); we are lenient on
# length but strict on the character set so IDs are safe to log and store.
_VOIP_ID = re.compile(r"^[0-9A-Za-z._~-]{1,255}$")
MAX_SDP_BYTES = 64 * 1024
MAX_CANDIDATES = 128


class InvalidCallEvent(ValueError):
    """The content of an m.call.* event does not follow the spec."""


@dataclass(frozen=True)
class Candidate:
    candidate: str  # "" marks end-of-candidates
    sdp_mid: str | None
    sdp_mline_index: int | None

    @property
    def is_end(self) -> bool:
        return self.candidate == ""

    def as_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "sdpMid": self.sdp_mid, "sdpMLineIndex": self.sdp_mline_index}


@dataclass(frozen=True)
class CallEventBase:
    call_id: str
    party_id: str | None  # None for version 0 senders, which have no party_id
    version: Version


@dataclass(frozen=True)
class Invite(CallEventBase):
    offer_sdp: str
    lifetime_ms: int
    invitee: str | None = None
    dtmf: bool = False
    # The declared version when it is not one we implement (0, "1", or 1 which the spec names as "1");
    # kept as a short repr so the invite can be refused before dialling (invite_checks.py).
    unsupported_version: str | None = None


@dataclass(frozen=True)
class Candidates(CallEventBase):
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class Answer(CallEventBase):
    answer_sdp: str
    dtmf: bool = False


@dataclass(frozen=True)
class SelectAnswer(CallEventBase):
    selected_party_id: str = ""


@dataclass(frozen=True)
class Reject(CallEventBase):
    reason: str | None = None


@dataclass(frozen=True)
class Hangup(CallEventBase):
    reason: str = "user_hangup"


@dataclass(frozen=True)
class Negotiate(CallEventBase):
    sdp_type: str = "offer"
    sdp: str = ""
    lifetime_ms: int | None = None


CallEventValue = Invite | Candidates | Answer | SelectAnswer | Reject | Hangup | Negotiate

HANGUP_REASONS = frozenset(
    {"ice_timeout", "ice_failed", "invite_timeout", "user_hangup", "user_media_failed", "user_busy", "unknown_error"}
)


def normalize_version(raw: object) -> Version:
    """``0`` (int) is the legacy protocol; anything else is treated as ``"1"`` (spec: Versions)."""
    return 0 if raw == 0 and not isinstance(raw, bool) else "1"


def unsupported_version(raw: object) -> str | None:
    """None for a version the bridge implements, else a short repr of what was declared (safe to log)."""
    if raw == "1" or (type(raw) is int and raw in (0, 1)):
        return None
    return repr(raw)[:24]


def _voip_id(content: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = content.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _VOIP_ID.match(value):
        raise InvalidCallEvent(f"{key} missing or not a valid VoIP ID")
    return value


def _sdp(value: object, key: str, expected_type: str) -> str:
    if not isinstance(value, dict):
        raise InvalidCallEvent(f"{key} must be an object with type and sdp")
    if value.get("type") != expected_type:
        raise InvalidCallEvent(f"{key}.type must be {expected_type!r}")
    sdp = value.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise InvalidCallEvent(f"{key}.sdp must be a non-empty string")
    if len(sdp.encode("utf-8", "replace")) > MAX_SDP_BYTES:
        raise InvalidCallEvent(f"{key}.sdp is larger than {MAX_SDP_BYTES} bytes")
    return sdp


def _dtmf(content: dict[str, Any]) -> bool:
    caps = content.get("capabilities")
    return isinstance(caps, dict) and caps.get("m.call.dtmf") is True


def _base(content: dict[str, Any]) -> tuple[str, str | None, Version]:
    call_id = _voip_id(content, "call_id")
    assert call_id is not None
    version = normalize_version(content.get("version"))
    # Version "1" requires party_id, but an old client claiming "1" without it would otherwise be
    # unusable; treat a missing party_id as None (matches any party), a malformed one as invalid.
    party_id = _voip_id(content, "party_id", required=False)
    return call_id, party_id, version


def parse_call_event(event_type: str, content: object) -> CallEventValue:
    """Parse the content of an ``m.call.*`` event; raise ``InvalidCallEvent`` on anything malformed."""
    if not isinstance(content, dict):
        raise InvalidCallEvent("content is not an object")
    call_id, party_id, version = _base(content)
    if event_type == "m.call.invite":
        lifetime = content.get("lifetime")
        if version == 0 and lifetime is None:
            lifetime = 60000  # version 0 had lifetime too, but be forgiving
        if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0:
            raise InvalidCallEvent("lifetime must be a positive integer (milliseconds)")
        invitee = content.get("invitee")
        if invitee is not None and not isinstance(invitee, str):
            raise InvalidCallEvent("invitee must be a user ID string")
        return Invite(
            call_id, party_id, version, offer_sdp=_sdp(content.get("offer"), "offer", "offer"),
            lifetime_ms=min(lifetime, 24 * 3600 * 1000), invitee=invitee, dtmf=_dtmf(content),
            unsupported_version=unsupported_version(content.get("version")),
        )
    if event_type == "m.call.candidates":
        raw = content.get("candidates")
        if not isinstance(raw, list) or len(raw) > MAX_CANDIDATES:
            raise InvalidCallEvent(f"candidates must be a list of at most {MAX_CANDIDATES} objects")
        parsed: list[Candidate] = []
        for item in raw:
            if not isinstance(item, dict) or not isinstance(item.get("candidate"), str):
                raise InvalidCallEvent("each candidate needs a string 'candidate'")
            mid = item.get("sdpMid")
            index = item.get("sdpMLineIndex")
            if mid is not None and not isinstance(mid, str):
                raise InvalidCallEvent("sdpMid must be a string")
            if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
                raise InvalidCallEvent("sdpMLineIndex must be a non-negative integer")
            parsed.append(Candidate(item["candidate"], mid, index))
        return Candidates(call_id, party_id, version, candidates=tuple(parsed))
    if event_type == "m.call.answer":
        return Answer(call_id, party_id, version, answer_sdp=_sdp(content.get("answer"), "answer", "answer"),
                      dtmf=_dtmf(content))
    if event_type == "m.call.select_answer":
        selected = _voip_id(content, "selected_party_id")
        assert selected is not None
        return SelectAnswer(call_id, party_id, version, selected_party_id=selected)
    if event_type == "m.call.reject":
        reason = content.get("reason")
        return Reject(call_id, party_id, version, reason=reason if isinstance(reason, str) else None)
    if event_type == "m.call.hangup":
        reason = content.get("reason")
        # A missing reason means user_hangup (version 0 had none); an unknown one is kept as
        # unknown_error rather than rejected, so the call still ends.
        if reason is None:
            reason = "user_hangup"
        elif reason not in HANGUP_REASONS:
            reason = "unknown_error"
        return Hangup(call_id, party_id, version, reason=reason)
    if event_type == "m.call.negotiate":
        desc = content.get("description")
        if not isinstance(desc, dict) or desc.get("type") not in ("offer", "answer"):
            raise InvalidCallEvent("description must be an offer or answer")
        sdp = _sdp(desc, "description", desc["type"])
        lifetime = content.get("lifetime")
        return Negotiate(call_id, party_id, version, sdp_type=desc["type"], sdp=sdp,
                         lifetime_ms=lifetime if isinstance(lifetime, int) and lifetime > 0 else None)
    raise InvalidCallEvent(f"unsupported call event type {event_type}")


@dataclass
class OutgoingContent:
    """Builders for the content of events the bridge sends (always version "1" with a party_id)."""

    call_id: str
    party_id: str
    extra: dict[str, Any] = field(default_factory=dict)

    def _base(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "party_id": self.party_id, "version": "1"}

    def invite(self, sdp: str, *, lifetime_ms: int, invitee: str | None, dtmf: bool = True) -> dict[str, Any]:
        content = self._base() | {"offer": {"type": "offer", "sdp": sdp}, "lifetime": lifetime_ms,
                                  "capabilities": {"m.call.dtmf": dtmf}}
        if invitee:
            content["invitee"] = invitee
        return content

    def answer(self, sdp: str, *, dtmf: bool = True) -> dict[str, Any]:
        return self._base() | {"answer": {"type": "answer", "sdp": sdp}, "capabilities": {"m.call.dtmf": dtmf}}

    def end_of_candidates(self) -> dict[str, Any]:
        return self._base() | {"candidates": [{"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}]}

    def select_answer(self, selected_party_id: str) -> dict[str, Any]:
        return self._base() | {"selected_party_id": selected_party_id}

    def hangup(self, reason: str) -> dict[str, Any]:
        return self._base() | {"reason": reason}

    def asserted_identity(self, display_name: str, user_id: str | None = None) -> dict[str, Any]:
        """MSC3086: who the other end of this call is now (after a transfer the far end made)."""
        identity = {"display_name": display_name} | ({"id": user_id} if user_id else {})
        return self._base() | {"asserted_identity": identity}

    def negotiate(self, sdp_type: str, sdp: str, *, lifetime_ms: int = 30000) -> dict[str, Any]:
        """m.call.negotiate (MSC2746): lifetime is required by the schema, also on an answer."""
        return self._base() | {"description": {"type": sdp_type, "sdp": sdp}, "lifetime": lifetime_ms}

    def reject(self, reason: str | None = None) -> dict[str, Any]:
        content = self._base()
        if reason:
            content["reason"] = reason
        return content
