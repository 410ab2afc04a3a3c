"""Actions the call state machines ask the I/O layer (bridge/calls/) to perform."""

from __future__ import annotations

from dataclasses import dataclass

from .reasons import MatrixEnding


@dataclass(frozen=True)
class SendSipCancel:
    """CANCEL the outbound INVITE (RFC 3261 9.1)."""


@dataclass(frozen=True)
class SendSipBye:
    """BYE on the confirmed dialog."""


@dataclass(frozen=True)
class SendSipResponse:
    """Final or provisional response to the inbound INVITE (200 carries our RTP SDP)."""

    status: int
    reason: str
    retry_after_s: int | None = None  # a Retry-After header (with 503: when to try again)


@dataclass(frozen=True)
class SendMatrixAnswer:
    """Outbound call answered by SIP: build the WebRTC answer, send m.call.answer + end-of-candidates."""


@dataclass(frozen=True)
class SendMatrixInvite:
    """Inbound call: the user is in the room, send the ghost's m.call.invite + end-of-candidates."""


@dataclass(frozen=True)
class SendSelectAnswer:
    """Inbound call: the first m.call.answer wins; select it and apply its SDP and candidates."""

    party_id: str


@dataclass(frozen=True)
class SendMatrixEnding:
    """End the Matrix side with m.call.hangup or m.call.reject, optionally posting a notice."""

    ending: MatrixEnding
    sip_status: int | None = None
    sip_reason: str | None = None


@dataclass(frozen=True)
class StartMedia:
    """Both legs are negotiated: start relaying audio."""


@dataclass(frozen=True)
class Renegotiate:
    """Connected call, the Matrix party sent an m.call.negotiate offer (hold/resume): apply it to WebRTC,
    answer it with m.call.negotiate, and re-INVITE the phone with the matching direction."""

    offer_sdp: str


@dataclass(frozen=True)
class Finish:
    """The call is over: release media, cancel timers, write the call log."""

    reason: str


Action = (
    SendSipCancel | SendSipBye | SendSipResponse | SendMatrixAnswer | SendMatrixInvite | SendSelectAnswer
    | SendMatrixEnding | StartMedia | Renegotiate | Finish
)
