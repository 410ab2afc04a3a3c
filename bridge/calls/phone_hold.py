"""Hold / resume from the phone, told to Matrix: the bridge's own m.call.negotiate offers.

in_dialog.py answers the phone's re-INVITE / UPDATE at once (RFC 3264 directions) and reports our new SIP
direction here. When it changes what Matrix should see, the bridge renegotiates the live WebRTC connection:
an ``m.call.negotiate`` offer with the phone's direction (call/hold.py), then the Matrix client's negotiate
answer is applied. One negotiation at a time; a phone that changes its mind meanwhile is caught up afterwards
(the latest wish wins, intermediate ones are skipped).

Glare (MSC2746 "Politeness": the callee is polite). A Matrix offer arriving while ours waits for its answer:
for Matrix -> SIP calls the bridge is the callee, withdraws its offer and answers the Matrix one (its answer
carries the phone's direction anyway, because the transceiver keeps it); for SIP -> Matrix calls the bridge is
the caller and the Matrix offer is dropped (matrix-js-sdk, polite there, rolls back and answers ours).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..call.hold import matrix_direction_for_phone
from ..logs import CallLogger
from ..media.call_media import CallMedia
from ..media.errors import MediaError

ANSWER_TIMEOUT_S = 10.0


class PhoneHold:
    def __init__(
        self,
        media: CallMedia,
        log: CallLogger,
        *,
        send_offer: Callable[[str], Awaitable[None]],
        spawn: Callable[[Any, str], asyncio.Task[Any]],
        polite: bool,
        enabled: bool = True,
    ) -> None:
        self.media = media
        self.log = log
        self._send_offer = send_offer
        self._spawn = spawn
        self.polite = polite
        self.enabled = enabled
        """False for a version 0 (legacy) Matrix call: m.call.negotiate does not exist there."""
        self.told = "sendrecv"
        """The direction of our last offer Matrix answered. Our answers to Matrix offers carry the phone's wish
        too: the transceiver keeps the direction we last offered."""
        self._wanted = "sendrecv"
        self._answer: asyncio.Future[str] | None = None
        self._running: asyncio.Task[Any] | None = None

    def phone_renegotiated(self) -> None:
        """in_dialog.py answered a phone re-INVITE / UPDATE: tell Matrix when the direction changed."""
        self._wanted = matrix_direction_for_phone(self.media.sip_direction)
        if not self.enabled:
            return
        if self._wanted != self.told and (self._running is None or self._running.done()):
            self._running = self._spawn(self._sync(), "webrtc-reoffer")

    @property
    def offer_pending(self) -> bool:
        return self._answer is not None and not self._answer.done()

    def matrix_answer(self, sdp: str) -> None:
        """The Matrix party's m.call.negotiate answer (answers we did not ask for are ignored)."""
        if self.offer_pending:
            assert self._answer is not None
            self._answer.set_result(sdp)
        else:
            self.log.info("m.call.negotiate answer without a pending offer of ours: ignored")

    def matrix_offer_arrived(self) -> bool:
        """A Matrix m.call.negotiate offer is about to be applied. True when it may be (no glare, or we are
        polite and withdrew ours); False when it must be dropped (we are the impolite caller)."""
        if not self.offer_pending:
            return True
        if not self.polite:
            self.log.info("negotiate glare: we are the caller (impolite), the Matrix offer is dropped")
            return False
        if not self.media.rollback_webrtc_offer(None):
            self.log.warning("negotiate glare: cannot withdraw our offer; the Matrix offer is dropped")
            return False
        assert self._answer is not None
        self._answer.cancel()
        # our answer to the Matrix offer carries the phone's direction: the transceiver keeps it
        self.told = self._wanted
        self.log.info("negotiate glare: we are the callee (polite), our offer withdrawn")
        return True

    async def _sync(self) -> None:
        for _ in range(4):  # bounded: a phone flapping hold/resume is caught up a few times, then left
            want = self._wanted
            if want == self.told:
                return
            loop = asyncio.get_running_loop()
            self._answer = loop.create_future()
            try:
                offer = await self.media.reoffer_webrtc(want)
                await self._send_offer(offer)
                self.log.info("phone renegotiated: m.call.negotiate offer (%s) sent to Matrix", want)
                async with asyncio.timeout(ANSWER_TIMEOUT_S):
                    answer = await self._answer
                await self.media.apply_webrtc_reanswer(answer)
                self.told = want
            except asyncio.CancelledError:
                if self._answer.cancelled() and not _current_cancelling():
                    continue  # glare: our offer was withdrawn, the Matrix one answered; check again
                raise
            except TimeoutError:
                self.log.warning("no m.call.negotiate answer from Matrix within %.0f s", ANSWER_TIMEOUT_S)
                self.media.rollback_webrtc_offer(self.told)
                return
            except MediaError as exc:
                self.log.warning("phone hold not told to Matrix: %s", exc)
                self.media.rollback_webrtc_offer(self.told)
                return
            finally:
                self._answer = None


def _current_cancelling() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0
