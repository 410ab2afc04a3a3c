"""Requests from the phone inside an established dialog: re-INVITE / UPDATE (hold, codec change), INFO, OPTIONS,
and the transfer requests REFER and NOTIFY (handed to ``on_transfer_request``, calls/transfer.py; 501 without).

BYE never gets here for handling: the SIP core answers it and reports the end through on_terminated.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from ..logs import CallLogger
from ..media.call_media import CallMedia
from ..sip.sdp import SdpError
from ..sip.server import ServerInvite, ServerRequest

SDP = [("Content-Type", "application/sdp")]


if TYPE_CHECKING:
    from .call_state import CallStateWriter
    from .caller_id import CallerIdAnnouncer
    from .phone_hold import PhoneHold

OnTransferRequest = Callable[[ServerRequest], Awaitable[None]]


class DialogParty(Protocol):
    """What a call session (inbound or outbound) brings to its dialog's requests."""

    media: CallMedia
    clog: CallLogger
    phone_hold: PhoneHold
    caller_id: CallerIdAnnouncer | None
    on_transfer_request: OnTransferRequest | None
    state: CallStateWriter

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> Any: ...


async def serve_in_dialog(party: DialogParty, req: ServerRequest | ServerInvite) -> None:
    """A request inside a call's dialog: re-INVITE/UPDATE (hold, codec, caller ID), REFER/NOTIFY (transfer)."""
    await answer_in_dialog(party.media, req, party.clog, party.phone_hold.phone_renegotiated,
                           on_transfer_request=party.on_transfer_request)
    if req.request.method in ("INVITE", "UPDATE"):
        party.spawn(party.state.save(), "save-call-state")  # a target refresh: recovery must BYE the new one
    if party.caller_id is not None:
        await party.caller_id.from_request(req)


async def answer_in_dialog(
    media: CallMedia, req: ServerRequest | ServerInvite, log: CallLogger,
    on_renegotiated: Callable[[], None] | None = None, *, on_transfer_request: OnTransferRequest | None = None,
) -> None:
    """``on_renegotiated`` runs once the phone's offer was answered 200 (calls/phone_hold.py tells Matrix);
    ``on_transfer_request`` takes REFER/NOTIFY (calls/transfer.py)."""
    method = req.request.method
    if method in ("REFER", "NOTIFY") and on_transfer_request is not None and isinstance(req, ServerRequest):
        await on_transfer_request(req)
        return
    if method == "BYE":
        return
    if method in ("INVITE", "UPDATE"):
        body = req.request.body
        if not body:
            if isinstance(req, ServerInvite):
                # Offerless re-INVITE: we offer in the 200, the answer comes in the ACK (RFC 3261 14.2).
                await req.respond(200, body=media.sip_offer(), headers=SDP)
                ack = await req.wait_ack(timeout=32)
                if ack is not None and ack.body:
                    try:
                        media.apply_sip_answer(ack.body)
                    except SdpError as exc:
                        log.warning("re-INVITE: unusable SDP answer in the ACK: %s", exc)
            else:
                await req.respond(200)
            return
        try:
            answer = media.answer_sip_offer(body)
        except SdpError as exc:
            log.info("%s with unacceptable SDP (%s) -> 488", method, exc)
            await req.respond(488, "Not Acceptable Here")
            return
        log.info("%s from the phone answered (hold/codec change applied)", method)
        await req.respond(200, body=answer, headers=SDP)
        if on_renegotiated is not None:
            on_renegotiated()
        return
    if method in ("INFO", "OPTIONS"):
        await req.respond(200)
        return
    await req.respond(501, "Not Implemented")
