"""``CallMedia`` whose media runs in a worker process (``media.workers``), with the same facade for calls/.

The SIP-side SDP work is pure and the call driver expects it at once (``sip_offer``, ``apply_sip_answer``,
``answer_sip_offer`` ... return synchronously), so it runs here with the very code of ``CallMedia`` (this class
inherits it) and its outcome is authoritative: the SDP the phone sees, the negotiated codec and direction, the
port (allocated here, so quarantine and the call-state record keep working; the worker only binds it). The
outcome of each such step (our offer, the ``Negotiated`` result) is sent to the worker, in order, which applies
it to its own ``CallMedia`` to configure the RTP leg and the relay. The WebRTC side (aiortc) is asynchronous
anyway and runs only in the worker.

Counters (``stats()``) are the last ones the worker pushed (every second, and with a failure and the close).
A phone-to-phone relay after a Matrix user transfers (calls/matrix_transfer.py) uses ``RtpBridge`` in the
bridge process; a transfer the phone asks for (REFER) keeps this call's media in its worker.
"""

from __future__ import annotations

import logging
from typing import Any

from bridge.sip import sdp as sip_sdp
from bridge.sip.sdp_crypto import SrtpKeys

from . import webrtc_leg
from .call_media import CallMedia, MediaStats
from .dtmf import digit_to_event
from .early_audio import EarlyAudioRecorder
from .errors import MediaError
from .ports import QUARANTINE_S, PortAllocator
from .rtp_leg import RtpLeg
from .settings import MediaSettings
from .worker_ipc import MediaView
from .worker_pool import WorkerPool

WORKER_CRASHED = "media_worker_crashed"


class _ForwardingRtpLeg(RtpLeg):
    """The bridge-side copy of the RTP leg: its negotiated values are read by calls/ (transfer: the payload
    type); ``leave_far_end`` must reach the worker's real leg."""

    forward: Any = None
    view: MediaView | None = None  # the worker's leg, as last reported

    @property
    def latched(self) -> bool:
        return self.view.latched if self.view is not None else super().latched

    @property
    def remote(self) -> tuple[str, int] | None:
        return self.view.remote if self.view is not None else super().remote

    def leave_far_end(self) -> None:
        super().leave_far_end()
        if self.forward is not None:
            self.forward("leave_far_end")


class RemoteCallMedia(CallMedia):
    def __init__(self, settings: MediaSettings, ports: PortAllocator, pool: WorkerPool, *,
                 log: logging.LoggerAdapter[Any] | logging.Logger) -> None:
        super().__init__(settings, ports, log=log)
        shadow = _ForwardingRtpLeg(
            log=log, ptime=settings.ptime, jitter_ms=settings.jitter_ms, queue_packets=settings.queue_packets,
            source_mode=settings.rtp_source, latch_packets=settings.rtp_latch_packets,
        )
        shadow.forward = self._send
        self._rtp = self._relay.rtp = self._shadow = shadow
        self._worker, self._key = pool.place(self)
        self._lost = False
        self._stats = MediaStats()
        self._webrtc_state = "new"
        self._pending_reoffer = False
        self._sent_ids: dict[str, str] = {}

    @property
    def worker_index(self) -> int:
        return self._worker.index

    # -- talking to the worker -------------------------------------------------------------------
    def _ids(self) -> dict[str, str]:
        extra = getattr(self.log, "extra", None) or {}
        return {k: str(v) for k, v in extra.items() if k in ("call_id", "sip_call_id")}

    def _sync_ids(self) -> None:
        # the driver learns the SIP Call-ID during the call: the worker's log lines must carry it too
        ids = self._ids()
        if ids != self._sent_ids:
            self._sent_ids = ids
            self._worker.send(self._key, "ids", (ids,))

    def _send(self, method: str, *args: Any) -> None:
        if not self._lost and not self._closed:
            self._sync_ids()
            self._worker.send(self._key, method, args)

    async def _call(self, method: str, *args: Any) -> Any:
        if self._lost:
            raise MediaError("the call's media worker crashed")
        self._sync_ids()
        return await self._worker.request(self._key, method, args)

    # -- what the worker reports (WorkerCallListener) ----------------------------------------------
    def worker_failure(self, reason: str, stats: MediaStats | None) -> None:
        if stats is not None:
            self._stats = stats
        self._failed(reason)

    def worker_dtmf(self, digit: str, direction: str) -> None:
        self._dtmf(digit, direction)

    def worker_view(self, view: MediaView) -> None:
        self._stats = view.stats
        self._webrtc_state = view.webrtc_state
        self._shadow.view = view

    def worker_lost(self) -> None:
        self._lost = True
        self.log.error("the media worker of this call died: ending the call")
        self._failed(WORKER_CRASHED)

    # -- SIP leg: computed here (authoritative), repeated in the worker ------------------------------
    async def open_rtp(self) -> tuple[str, int]:
        if self._port is not None:
            return self.settings.sdp_address, self._port
        for _ in range(self.ports.capacity):
            port = self.ports.allocate()
            try:
                await self._call("open_rtp", port)
            except MediaError as exc:
                self.ports.release(port)
                if self._lost:
                    raise
                self.log.debug("RTP port %s unavailable in the worker: %s", port, exc)
                continue
            self._port = port
            return self.settings.sdp_address, port
        raise MediaError("no bindable RTP port in the configured range")

    def sip_offer(self) -> bytes:
        sdp = super().sip_offer()
        self._send("set_sip_offer", self._sip_offer)
        return sdp

    def sip_reoffer(self, direction: str) -> bytes:
        sdp = super().sip_reoffer(direction)
        self._send("set_sip_offer", self._sip_offer)
        return sdp

    def set_signalling_peer(self, ip: str | None) -> None:
        super().set_signalling_peer(ip)
        self._send("set_signalling_peer", ip)

    def _apply_negotiated(self, negotiated: sip_sdp.Negotiated) -> None:
        # apply_sip_answer / answer_sip_offer ran here (raising here on unusable SDP); the worker applies this
        # outcome as it is rather than negotiating again, so whatever the negotiation drew (the o= session id,
        # keys) is the same on both sides
        super()._apply_negotiated(negotiated)
        self._send("apply_negotiated", negotiated)

    def _set_srtp(self, keys: SrtpKeys | None) -> None:
        """SDES-SRTP (media.srtp) keys negotiated here, after ``_apply_negotiated``: the worker's RTP leg must
        use these very keys (they travel only over the private socketpair, never logged)."""
        super()._set_srtp(keys)
        self._send("set_srtp", keys)

    def record_early_audio(self, max_seconds: float = 30.0) -> bool:
        ok = super().record_early_audio(max_seconds)
        if ok:
            self._send("record_early_audio", max_seconds)
        return ok

    def take_early_audio(self) -> EarlyAudioRecorder | None:
        """Stops the recording; what was recorded stays in the worker (see :meth:`collect_early_audio`)."""
        super().take_early_audio()
        self._send("take_early_audio")
        return None

    async def collect_early_audio(self) -> EarlyAudioRecorder | None:
        super().take_early_audio()
        try:
            recorder: EarlyAudioRecorder | None = await self._call("collect_early_audio")
        except MediaError:
            return None
        return recorder

    # -- WebRTC leg: only in the worker --------------------------------------------------------------
    async def set_webrtc_offer(self, sdp: str) -> None:
        await super().set_webrtc_offer(sdp)  # validates here
        await self._call("set_webrtc_offer", sdp)

    async def create_webrtc_answer(self) -> str:
        answer: str = await self._call("create_webrtc_answer")
        return answer

    async def renegotiate_webrtc(self, offer_sdp: str) -> tuple[str, str]:
        answer: tuple[str, str] = await self._call("renegotiate_webrtc", offer_sdp)
        return answer

    async def reoffer_webrtc(self, direction: str) -> str:
        offer: str = await self._call("reoffer_webrtc", direction)
        self._pending_reoffer = True
        return offer

    async def apply_webrtc_reanswer(self, answer_sdp: str) -> str:
        self._pending_reoffer = False
        direction: str = await self._call("apply_webrtc_reanswer", answer_sdp)
        return direction

    def rollback_webrtc_offer(self, direction: str | None) -> bool:
        # the worker's leg is in have-local-offer exactly while a re-offer of ours awaits its answer
        possible = self._pending_reoffer and webrtc_leg.AIORTC_INTERNALS_OK
        self._pending_reoffer = False
        if possible:
            self._send("rollback_webrtc_offer", direction)
        return possible

    async def create_webrtc_offer(self) -> str:
        offer: str = await self._call("create_webrtc_offer")
        return offer

    async def set_webrtc_answer(self, sdp: str) -> None:
        await self._call("set_webrtc_answer", sdp)

    async def add_webrtc_candidates(self, candidates: list[dict[str, Any]]) -> None:
        await self._call("add_webrtc_candidates", candidates)

    # -- running -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._closed:
            return
        self._send("start")

    def set_hold(self, on_hold: bool) -> None:
        self._send("set_hold", on_hold)

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        digit_to_event(digit)  # a non-digit raises DtmfError here, as in-process
        self._send("send_dtmf", digit, duration_ms)

    @property
    def webrtc_connection_state(self) -> str:
        return self._webrtc_state

    def stats(self) -> MediaStats:
        return self._stats

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._lost:
            try:
                final = await self._worker.request(self._key, "close")
            except (MediaError, TimeoutError) as exc:
                self.log.warning("media worker did not close the call's media: %s", exc)
            else:
                if isinstance(final, MediaStats):
                    self._stats = final
        self._worker.calls.pop(self._key, None)
        if self._port is not None:
            if self._lost:
                # the phone may still stream at it: no new call gets it before that stream gave up
                self.ports.quarantine(self._port, QUARANTINE_S)
            self.ports.release(self._port)
            self._port = None
