"""A phone connected to another phone by the bridge itself: what is left of a Matrix user's call after they
transferred it (m.call.replaces) to a number and the trunk refused to do the transfer (REFER answered
403/405/501). The bridge calls the target through the trunk, re-INVITEs the phone onto a second RTP port and
relays RTP between the two (media/rtp_bridge.py). When either phone hangs up, the other gets a BYE.

Not recovered after a crash: the Matrix call's record is gone once the user has left, and these calls hold no
record of their own (both phones notice the silence and hang up; the RTP ports are freed at restart).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..logs import CallLogger
from ..media.rtp_bridge import RtpBridge
from ..sip.dialog import Dialog
from ..sip.server import ServerInvite, ServerRequest


class SipToSipCall:
    def __init__(self, media: RtpBridge, log: CallLogger, on_finished: Callable[[SipToSipCall], None]) -> None:
        self.media = media
        self.log = log
        self.dialogs: list[Dialog] = []
        self._on_finished = on_finished
        self._ending: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()

    def attach(self, *dialogs: Dialog) -> None:
        self.dialogs = list(dialogs)
        for dialog in dialogs:
            dialog.on_terminated = self._dialog_ended
            dialog.on_request = self._in_dialog
        self.media.start()
        self.log.info("phone bridged to phone: %s", ", ".join(d.call_id for d in dialogs))

    async def _in_dialog(self, req: ServerRequest | ServerInvite) -> None:
        method = req.request.method
        if method == "BYE":
            return  # answered by the core, reported through on_terminated
        if isinstance(req, ServerInvite):
            await req.respond(488, "Not Acceptable Here")  # no renegotiation between two phones (yet)
        else:
            # a bodyless UPDATE is a session refresh (RFC 4028): keep the call up
            refresh = method == "UPDATE" and not req.request.body
            await req.respond(200 if method in ("OPTIONS", "INFO") or refresh else 501)

    def _dialog_ended(self, reason: str) -> None:
        if self._ending is None:
            self.log.info("phone-to-phone call ended (%s)", reason)
            self._ending = asyncio.create_task(self._end(), name="sip-to-sip-end")

    async def stop(self) -> None:
        if self._ending is None:
            self._ending = asyncio.create_task(self._end(), name="sip-to-sip-end")
        await asyncio.shield(self._ending)

    async def _end(self) -> None:
        try:
            for dialog in self.dialogs:
                if dialog.state != "terminated":
                    try:
                        async with asyncio.timeout(10):
                            await dialog.bye()
                    except TimeoutError:
                        self.log.info("BYE to %s got no answer", dialog.call_id)
            await self.media.close()
        finally:
            self.finished.set()
            self._on_finished(self)
