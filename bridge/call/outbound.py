"""State machine of a Matrix -> SIP call (the Matrix user calls a phone). Pure: no I/O.

The I/O layer feeds it what happened on either side and performs the returned actions in order.
"""

from __future__ import annotations

import enum

from .actions import (
    Action,
    Finish,
    Renegotiate,
    SendMatrixAnswer,
    SendMatrixEnding,
    SendSipBye,
    SendSipCancel,
    StartMedia,
)
from .glare import GLARE_REASON
from .reasons import (
    EndKind,
    MatrixEnding,
    lifetime_expired_to_matrix,
    media_failure_reason,
    sip_failure_to_matrix,
    transport_failure_to_matrix,
)


class OutState(enum.Enum):
    DIALING = "dialing"  # INVITE sent, nothing heard yet
    RINGING = "ringing"  # a provisional response arrived (CANCEL is now possible)
    ANSWERED = "answered"  # SIP 200 ACKed, m.call.answer sent
    ENDED = "ended"


class OutboundCall:
    """One Matrix -> SIP call. ``version`` is the Matrix invite's (0 or "1"); ``caller_party`` its party_id."""

    def __init__(self, *, version: object, caller_party: str | None) -> None:
        self.version = version
        self.caller_party = caller_party
        self.state = OutState.DIALING
        self.end_reason: str | None = None

    @property
    def ended(self) -> bool:
        return self.state is OutState.ENDED

    def _finish(self, reason: str, *actions: Action) -> list[Action]:
        self.state = OutState.ENDED
        self.end_reason = reason
        return [*actions, Finish(reason)]

    def _from_caller(self, party_id: str | None) -> bool:
        # Version 0 senders have no party_id; otherwise only the inviting device may end the call.
        return self.caller_party is None or party_id is None or party_id == self.caller_party

    # --- SIP side ---
    def sip_provisional(self, status: int) -> list[Action]:
        if self.state is OutState.DIALING and 100 <= status < 200:
            self.state = OutState.RINGING
        return []

    def sip_answered(self) -> list[Action]:
        if self.state in (OutState.DIALING, OutState.RINGING):
            self.state = OutState.ANSWERED
            return [SendMatrixAnswer(), StartMedia()]
        return []

    def sip_failed(self, status: int, phrase: str) -> list[Action]:
        if self.state not in (OutState.DIALING, OutState.RINGING):
            return []
        ending = sip_failure_to_matrix(status, self.version)
        return self._finish(f"sip_{status}", SendMatrixEnding(ending, status, phrase))

    def sip_no_response(self, *, timeout: bool) -> list[Action]:
        if self.state not in (OutState.DIALING, OutState.RINGING):
            return []
        ending = transport_failure_to_matrix(self.version, timeout=timeout)
        return self._finish("sip_timeout" if timeout else "sip_transport_error", SendMatrixEnding(ending))

    def sip_bye(self) -> list[Action]:
        if self.state is OutState.ANSWERED:
            return self._finish("sip_bye", SendMatrixEnding(MatrixEnding("hangup", "user_hangup")))
        return []

    def sip_dialog_lost(self) -> list[Action]:
        """The dialog died without a BYE (e.g. transport failure): tell Matrix."""
        if self.state is OutState.ANSWERED:
            return self._finish("sip_dialog_lost", SendMatrixEnding(MatrixEnding("hangup", "unknown_error")))
        return []

    # --- Matrix side ---
    def matrix_hangup(self, party_id: str | None, reason: str) -> list[Action]:
        if self.ended or not self._from_caller(party_id):
            return []
        if self.state is OutState.ANSWERED:
            return self._finish(f"matrix_{reason}", SendSipBye())
        return self._finish(f"matrix_{reason}", SendSipCancel())

    def matrix_negotiate(self, party_id: str | None, sdp_type: str, sdp: str) -> list[Action]:
        """m.call.negotiate from the caller: an offer while connected (hold / resume) is renegotiated.

        Answers (to offers we never send) and offers before the SIP answer are ignored.
        """
        if self.state is not OutState.ANSWERED or sdp_type != "offer" or not self._from_caller(party_id):
            return []
        return [Renegotiate(sdp)]

    def caller_left(self) -> list[Action]:
        if self.ended:
            return []
        return self._finish("caller_left", SendSipBye() if self.state is OutState.ANSWERED else SendSipCancel())

    def matrix_select_answer(self, party_id: str | None, selected: str, our_party: str) -> list[Action]:
        """The caller picked an answer; if it is not ours, another device/bridge won: leave quietly."""
        if self.ended or not self._from_caller(party_id) or selected == our_party:
            return []
        if self.state is OutState.ANSWERED:
            return self._finish("answered_elsewhere", SendSipBye())
        return self._finish("answered_elsewhere", SendSipCancel())

    def lifetime_expired(self) -> list[Action]:
        if self.state not in (OutState.DIALING, OutState.RINGING):
            return []
        ending = SendMatrixEnding(lifetime_expired_to_matrix(self.version))
        return self._finish("invite_timeout", SendSipCancel(), ending)

    def media_failed(self, *, media_seen: bool) -> list[Action]:
        if self.ended:
            return []
        reason = media_failure_reason(media_seen)
        ending = SendMatrixEnding(MatrixEnding("hangup", reason))
        sip = SendSipBye() if self.state is OutState.ANSWERED else SendSipCancel()
        return self._finish(reason, sip, ending)

    def glare_lost(self) -> list[Action]:
        """The number called this user at the same time and that call won glare (call/glare.py): CANCEL the
        INVITE and refuse the user's invite (m.call.reject; m.call.hangup for version 0)."""
        if self.state not in (OutState.DIALING, OutState.RINGING):
            return []
        kind: EndKind = "reject" if self.version != 0 else "hangup"
        return self._finish("glare_lost", SendSipCancel(), SendMatrixEnding(MatrixEnding(kind, GLARE_REASON)))

    def transfer_ended(self, *, ok: bool, bye: bool = True) -> list[Action]:
        """The Matrix user transferred the phone elsewhere (m.call.replaces -> REFER): whether or not it worked,
        the Matrix side is over (the client already ended it): hang up in Matrix, and BYE the phone unless the
        bridge keeps its dialog (``bye=False``: connected to the target by the bridge itself)."""
        if self.state is not OutState.ANSWERED:
            return []
        ending = SendMatrixEnding(MatrixEnding("hangup", "user_hangup" if ok else "unknown_error"))
        reason = "transferred" if ok else "transfer_failed"
        return self._finish(reason, SendSipBye(), ending) if bye else self._finish(reason, ending)

    def shutdown(self) -> list[Action]:
        """The bridge is stopping: end both sides cleanly."""
        if self.ended:
            return []
        sip = SendSipBye() if self.state is OutState.ANSWERED else SendSipCancel()
        return self._finish("bridge_shutdown", sip, SendMatrixEnding(MatrixEnding("hangup", "unknown_error")))
