"""State machine of a SIP -> Matrix call (a phone calls a Matrix user). Pure: no I/O.

The bridge is the Matrix caller here: several devices may answer, the first answer wins and is
selected with m.call.select_answer; later answers are ignored.
"""

from __future__ import annotations

import enum

from .actions import (
    Action,
    Finish,
    Renegotiate,
    SendMatrixEnding,
    SendMatrixInvite,
    SendSelectAnswer,
    SendSipBye,
    SendSipResponse,
    StartMedia,
)
from .glare import GLARE_REASON
from .reasons import (
    SIP_FOR_MATRIX_REJECT,
    SIP_FOR_NO_ANSWER,
    MatrixEnding,
    matrix_hangup_before_answer_to_sip,
    media_failure_reason,
)

HOMESERVER_RETRY_AFTER_S = 30  # Retry-After on a 503 for an unreachable homeserver: outages last a while


class InState(enum.Enum):
    WAITING_JOIN = "waiting_join"  # portal room exists / was created; the user has not joined yet
    RINGING = "ringing"  # m.call.invite sent, 180 sent
    CONNECTED = "connected"  # an answer was selected, SIP 200 sent
    ENDED = "ended"


class InboundCall:
    def __init__(self, *, callee: str) -> None:
        self.callee = callee
        self.state = InState.WAITING_JOIN
        self.selected_party: str | None = None
        self.end_reason: str | None = None

    @property
    def ended(self) -> bool:
        return self.state is InState.ENDED

    @property
    def invite_sent(self) -> bool:
        return self.state in (InState.RINGING, InState.CONNECTED)

    def _finish(self, reason: str, *actions: Action) -> list[Action]:
        self.state = InState.ENDED
        self.end_reason = reason
        return [*actions, Finish(reason)]

    def _hangup(self, reason: str) -> SendMatrixEnding:
        return SendMatrixEnding(MatrixEnding("hangup", reason))

    # --- Matrix side ---
    def user_joined(self) -> list[Action]:
        if self.state is InState.WAITING_JOIN:
            self.state = InState.RINGING
            return [SendMatrixInvite(), SendSipResponse(180, "Ringing")]
        return []

    def matrix_answer(self, sender: str, party_id: str | None) -> list[Action]:
        if self.state is not InState.RINGING or sender != self.callee or party_id is None:
            return []  # late answers from other devices are ignored: they see our select_answer
        self.state = InState.CONNECTED
        self.selected_party = party_id
        return [SendSelectAnswer(party_id), SendSipResponse(200, "OK"), StartMedia()]

    def matrix_reject(self, sender: str) -> list[Action]:
        if self.state is not InState.RINGING or sender != self.callee:
            return []
        status, phrase = SIP_FOR_MATRIX_REJECT
        return self._finish("matrix_reject", SendSipResponse(status, phrase))

    def matrix_hangup(self, sender: str, party_id: str | None, reason: str) -> list[Action]:
        if self.ended or sender != self.callee:
            return []
        if self.state is InState.CONNECTED:
            if party_id is not None and party_id != self.selected_party:
                return []  # a device that lost the race hanging up does not end the call
            return self._finish(f"matrix_{reason}", SendSipBye())
        if self.state is InState.RINGING:
            status, phrase = matrix_hangup_before_answer_to_sip(reason)
            return self._finish(f"matrix_{reason}", SendSipResponse(status, phrase))
        return []

    def matrix_negotiate(self, sender: str, party_id: str | None, sdp_type: str, sdp: str) -> list[Action]:
        """m.call.negotiate from the answering device: an offer while connected (hold / resume) is renegotiated."""
        if self.state is not InState.CONNECTED or sender != self.callee or sdp_type != "offer":
            return []
        if party_id is not None and party_id != self.selected_party:
            return []  # a device that lost the race has no say over the media
        return [Renegotiate(sdp)]

    def answered_elsewhere(self) -> list[Action]:
        """Another Matrix user rung for the same SIP call answered first: stop ringing this one.

        Also valid once this branch's own answer was accepted, when the other user won the race to the SIP 200.
        """
        if self.ended:
            return []
        extra = [self._hangup("user_hangup")] if self.invite_sent else []
        return self._finish("answered_elsewhere", *extra)

    def user_left(self) -> list[Action]:
        if self.ended:
            return []
        if self.state is InState.CONNECTED:
            return self._finish("callee_left", SendSipBye(), self._hangup("user_hangup"))
        status, phrase = SIP_FOR_NO_ANSWER
        extra = [self._hangup("user_hangup")] if self.invite_sent else []
        return self._finish("callee_left", SendSipResponse(status, phrase), *extra)

    def lifetime_expired(self) -> list[Action]:
        """Nobody answered the Matrix invite in time (or nobody joined the room before the ring timeout)."""
        if self.state not in (InState.WAITING_JOIN, InState.RINGING):
            return []
        status, phrase = SIP_FOR_NO_ANSWER
        extra = [self._hangup("invite_timeout")] if self.invite_sent else []
        return self._finish("invite_timeout", SendSipResponse(status, phrase), *extra)

    def homeserver_unreachable(self) -> list[Action]:
        """A homeserver step of ringing (portal room, membership check, the invite itself) did not finish in
        time. The caller is told to try again later. When the invite was being sent it was withdrawn, but an
        attempt already on the wire may still land when a hung homeserver recovers: a hangup follows it through
        the outbox, so no device rings for a call that is over (clients ignore hangups of calls they never saw)."""
        if self.state not in (InState.WAITING_JOIN, InState.RINGING):
            return []
        extra = [self._hangup("unknown_error")] if self.invite_sent else []
        return self._finish("homeserver_unreachable", SendSipResponse(
            503, "Service Unavailable", retry_after_s=HOMESERVER_RETRY_AFTER_S), *extra)

    def glare_lost(self) -> list[Action]:
        """The callee called this number at the same time and that call won glare (call/glare.py): 486 to the
        phone, and m.call.hangup for the ghost's invite if it went out."""
        if self.state not in (InState.WAITING_JOIN, InState.RINGING):
            return []
        extra = [self._hangup(GLARE_REASON)] if self.invite_sent else []
        return self._finish("glare_lost", SendSipResponse(486, "Busy Here"), *extra)

    def transfer_ended(self, *, ok: bool, bye: bool = True) -> list[Action]:
        """The callee transferred the phone elsewhere (m.call.replaces -> REFER); see OutboundCall."""
        if self.state is not InState.CONNECTED:
            return []
        ending = self._hangup("user_hangup" if ok else "unknown_error")
        reason = "transferred" if ok else "transfer_failed"
        return self._finish(reason, SendSipBye(), ending) if bye else self._finish(reason, ending)

    # --- SIP side ---
    def sip_cancelled(self) -> list[Action]:
        """CANCEL from the caller (the core already answered 200 + 487)."""
        if self.state not in (InState.WAITING_JOIN, InState.RINGING):
            return []
        extra = [self._hangup("user_hangup")] if self.invite_sent else []
        return self._finish("sip_cancel", *extra)

    def sip_bye(self) -> list[Action]:
        if self.state is not InState.CONNECTED:
            return []
        return self._finish("sip_bye", self._hangup("user_hangup"))

    def sip_dialog_lost(self) -> list[Action]:
        """No ACK for our 200 (timer H) or the transport died: the core ended the dialog."""
        if self.state is not InState.CONNECTED:
            return []
        return self._finish("sip_dialog_lost", self._hangup("unknown_error"))

    def media_failed(self, *, media_seen: bool) -> list[Action]:
        if self.ended:
            return []
        reason = media_failure_reason(media_seen)
        if self.state is InState.CONNECTED:
            return self._finish(reason, SendSipBye(), self._hangup(reason))
        return self._finish(reason, SendSipResponse(500, "Server Internal Error"), *(
            [self._hangup(reason)] if self.invite_sent else []))

    def shutdown(self) -> list[Action]:
        if self.ended:
            return []
        if self.state is InState.CONNECTED:
            return self._finish("bridge_shutdown", SendSipBye(), self._hangup("unknown_error"))
        extra = [self._hangup("unknown_error")] if self.invite_sent else []
        return self._finish("bridge_shutdown", SendSipResponse(503, "Service Unavailable"), *extra)
