"""Early media on Matrix -> SIP calls: what the bridge does with a 18x carrying SDP (``bridge.early_media``).

* ``off``: nothing; the RTP leg waits for the 200.
* ``announce`` (default): the RTP leg is configured from the 183's SDP (it latches as usual) and its audio is
  recorded. When the call then fails (4xx-6xx) the recording is posted to the portal as an m.audio message (WAV)
  next to the failure notice; a 200 discards it. The Matrix call is answered only by the 200.
* ``connect``: the Matrix call is answered on the 183 (m.call.answer built from the 183's SDP), so the caller
  hears the prompts live. Element then shows the call as connected. A later 200 only updates the SIP media; a
  failure hangs the Matrix call up (m.call.hangup: a reject would be ignored on an answered call).

Nothing here ever sends a SIP 200: the bridge is the UAC, and the SIP transaction is still ringing until
the far end answers. A Matrix hangup during early media is a CANCEL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..logs import CallLogger
from ..media.call_media import CallMedia
from ..media.errors import MediaError
from ..sip.message import Response
from ..sip.sdp import SdpError

MIN_ANNOUNCEMENT_MS = 300  # shorter recordings are noise, not an announcement
MAX_ANNOUNCEMENT_S = 30.0


def has_sdp(resp: Response) -> bool:
    ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    return bool(resp.body) and ctype == "application/sdp"


class EarlyMedia:
    def __init__(self, mode: str, media: CallMedia, log: CallLogger,
                 connect_matrix: Callable[[bytes], Awaitable[None]]) -> None:
        self.mode = mode
        self.media = media
        self.log = log
        self._connect_matrix = connect_matrix
        self.sdp_applied = False
        self.answered = False

    async def provisional(self, resp: Response) -> None:
        """A 101-199 response to our INVITE (runs in the call's worker, in order with the rest)."""
        if self.mode == "off" or self.sdp_applied or self.answered or not has_sdp(resp):
            return
        if self.mode == "connect":
            self.sdp_applied = True
            self.log.info("early media (%d): answering the Matrix call so the prompts are heard", resp.status)
            await self._connect_matrix(resp.body)
            return
        try:
            self.media.apply_sip_answer(resp.body)
        except (SdpError, MediaError) as exc:
            self.log.info("early media SDP in %d not usable: %s", resp.status, exc)
            return
        self.sdp_applied = True
        if self.media.record_early_audio(MAX_ANNOUNCEMENT_S):
            self.log.info("early media (%d): recording it in case the call fails", resp.status)

    def sip_answered(self) -> None:
        self.answered = True
        self.media.take_early_audio()  # billed call: the announcement is of no interest

    async def announcement(self, post: Callable[[bytes, int], Awaitable[None]]) -> None:
        """The call failed: post what was recorded (if it is long enough to be an announcement)."""
        recorder = await self.media.collect_early_audio()
        if recorder is None or recorder.duration_ms < MIN_ANNOUNCEMENT_MS:
            return
        data = recorder.wav()
        self.log.info("posting the early media announcement (%d ms, %d bytes)", recorder.duration_ms, len(data))
        await post(data, recorder.duration_ms)
