"""Hold / resume from Matrix on a connected call: m.call.negotiate offer -> WebRTC answer -> SIP re-INVITE.

The WebRTC part runs in the call's worker (quick, and ordered with the call's other events). The re-INVITE
runs as a task the session owns, one at a time in arrival order, so a phone slow to answer it never delays
a hangup; when the call ends the session cancels it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..call.hold import sip_direction_for_matrix_offer
from ..logs import CallLogger
from ..media.call_media import CallMedia
from ..media.errors import MediaError
from ..sip.dialog import Dialog
from ..sip.errors import SipTimeout, SipTransportError
from ..sip.extensions import glare_retry_delay
from ..sip.sdp import SdpError


class Renegotiator:
    def __init__(self, media: CallMedia, log: CallLogger) -> None:
        self.media = media
        self.log = log
        self._sip_lock = asyncio.Lock()

    async def matrix_offer(self, offer_sdp: str, send_answer: Callable[[str], Awaitable[None]]) -> str | None:
        """Apply the Matrix re-offer and send our answer; return the SIP direction to re-INVITE with (None when
        the offer was unusable: the call goes on as it was)."""
        try:
            answer, direction = await self.media.renegotiate_webrtc(offer_sdp)
        except MediaError as exc:
            self.log.warning("m.call.negotiate offer not applied: %s", exc)
            return None
        await send_answer(answer)
        sip_direction = sip_direction_for_matrix_offer(direction)
        self.log.info("Matrix renegotiated (%s): re-INVITE with a=%s", direction, sip_direction)
        return sip_direction

    async def reinvite(self, dialog: Dialog | None, direction: str) -> None:
        """Re-INVITE the phone; a refusal or timeout keeps the call up with the previous SIP media."""
        async with self._sip_lock:
            if dialog is None or dialog.state == "terminated":
                return
            for attempt in (1, 2):
                try:
                    resp = await dialog.reinvite(self.media.sip_reoffer(direction))
                except (SipTimeout, SipTransportError) as exc:
                    self.log.warning("re-INVITE (a=%s) got no final response: %s; call kept", direction, exc)
                    return
                except MediaError as exc:
                    self.log.warning("cannot build the re-INVITE offer: %s", exc)
                    return
                if 200 <= resp.status < 300:
                    try:
                        self.media.apply_sip_answer(resp.body)
                    except (SdpError, MediaError) as exc:
                        self.log.warning("re-INVITE 2xx with unusable SDP: %s; call kept", exc)
                    else:
                        self.log.info("re-INVITE (a=%s) accepted", direction)
                    return
                if resp.status == 491 and attempt == 1:
                    # RFC 3261 14.1: 2.1-4 s when the Call-ID is ours, else 0-2 s
                    await asyncio.sleep(glare_retry_delay(dialog))
                    continue
                self.log.warning("re-INVITE (a=%s) refused: %d %s; call kept", direction, resp.status, resp.reason)
                return
