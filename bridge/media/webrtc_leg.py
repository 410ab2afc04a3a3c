"""The WebRTC (Matrix side) leg: one aiortc RTCPeerConnection per call.

Two aiortc 1.16 internals are used, both behind :data:`AIORTC_INTERNALS_OK`:

* **RTP tap** - ``RTCDtlsTransport._handle_rtp_data(data, arrival_time_ms)`` receives every
  SRTP-decrypted RTP packet before aiortc routes it to a receiver. We shadow it with an
  instance attribute (never patching the class) so that, for this one connection,
  telephone-event packets (which aiortc's router would drop, and whose forced decoding
  kills the decoder thread) and, in passthrough, G.711/G.722 packets (decoding them would
  be wasted CPU) are consumed by the bridge; everything else goes to aiortc unchanged.
* **pre-encoded send** - ``RTCRtpSender._next_encoded_frame`` hands an ``av.Packet`` coming
  out of the track to the codec's ``pack()`` instead of encoding it, so the outgoing track
  can carry SIP payloads untouched (this one is also what aiortc's MediaPlayer(decode=False)
  relies on).

When the check fails (another aiortc version) the bridge transcodes and drops DTMF from
Matrix with one warning.

On top of these, when :data:`webrtc_fastpath.FASTPATH_OK` holds, :attr:`WebRtcLeg.direct` sends the relay's
payloads straight to the ICE socket and the ICE sockets hand decrypted audio to the tap in their datagram callback
(no aiortc queue, task or decoder thread per packet; see webrtc_fastpath.py). The pre-encoded send through
:class:`RelayTrack` is then unused, and kept as the fallback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiortc
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame, Packet

from .codecs import aiortc_capability
from .errors import MediaError
from .rtcp_feed import ReceiverReportFeed
from .rtp_packet import build_rtp, is_rtcp
from .settings import IceServer
from .webrtc_fastpath import FASTPATH_OK, DirectSender, install_receive, stop_decoder_thread
from .webrtc_rtcp import WebrtcRtcp

AIORTC_INTERNALS_OK = (
    aiortc.__version__.startswith("1.16.")
    and callable(getattr(RTCDtlsTransport, "_handle_rtp_data", None))
    and callable(getattr(RTCRtpSender, "_next_encoded_frame", None))
)

RtpTap = Callable[[bytes], bool]
"""Gets each decrypted RTP datagram from the Matrix side; returns True when it consumed it."""


class RelayTrack(MediaStreamTrack):
    """Outgoing audio fed by the relay: ``AudioFrame`` (aiortc encodes) or ``Packet`` (sent as is).

    Bounded: when the WebRTC side stalls the oldest item is dropped, never the newest.
    """

    kind = "audio"

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self._queue: asyncio.Queue[AudioFrame | Packet] = asyncio.Queue(maxsize=max(1, capacity))
        self.dropped = 0
        self.paused = False
        """True while the Matrix party put us on hold (it does not want our audio): items are discarded."""

    def push(self, item: AudioFrame | Packet) -> None:
        if self.paused:
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    async def recv(self) -> AudioFrame | Packet:
        return await self._queue.get()


class RtpInjector:
    """Sends extra packets (RFC 4733 events) inside the stream of aiortc's audio sender.

    They must share its SSRC and sequence space, so ``RTCDtlsTransport._send_rtp`` (plain RTP
    in, SRTP out) is shadowed for this connection: every later packet of our SSRC is renumbered
    by the count of injected ones. Costs one slice per outgoing packet once a digit was sent.
    """

    def __init__(
        self, transport: RTCDtlsTransport, ssrc: int, *, log: logging.Logger | logging.LoggerAdapter[Any]
    ) -> None:
        self.log = log
        self._original: Callable[[bytes], Awaitable[None]] = transport._send_rtp
        self._ssrc = ssrc.to_bytes(4, "big")
        self._offset = 0
        self.last_seq: int | None = None
        self.last_timestamp: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        transport._send_rtp = self._send  # type: ignore[method-assign]

    async def _send(self, data: bytes) -> None:
        if len(data) >= 12 and not is_rtcp(data) and data[8:12] == self._ssrc:
            seq = (int.from_bytes(data[2:4], "big") + self._offset) & 0xFFFF
            if self._offset:
                data = data[:2] + seq.to_bytes(2, "big") + data[4:]
            self.last_seq = seq
            self.last_timestamp = int.from_bytes(data[4:8], "big")
        await self._original(data)

    def inject(self, payload_type: int, marker: bool, timestamp: int, payload: bytes) -> bool:
        """Queue one packet right after the last one sent; False before the stream started."""
        if self.last_seq is None:
            return False
        self._offset += 1
        self.last_seq = (self.last_seq + 1) & 0xFFFF
        packet = build_rtp(payload_type, marker, self.last_seq, timestamp, int.from_bytes(self._ssrc, "big"), payload)
        task = asyncio.get_running_loop().create_task(self._send_injected(packet))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _send_injected(self, packet: bytes) -> None:
        try:
            await self._original(packet)
        except ConnectionError:
            self.log.debug("WebRTC transport closed: injected packet dropped")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def rtc_configuration(servers: list[IceServer]) -> RTCConfiguration:
    # An explicit (possibly empty) list: aiortc falls back to a public STUN server otherwise.
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers]
    )


class WebRtcLeg:
    def __init__(
        self,
        ice_servers: list[IceServer],
        *,
        log: logging.Logger | logging.LoggerAdapter[Any],
        queue_packets: int,
    ) -> None:
        self.log = log
        self.pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self.outgoing = RelayTrack(queue_packets)
        self.remote_track: MediaStreamTrack | None = None
        self.remote_track_ready = asyncio.Event()
        self.on_remote_track: Callable[[MediaStreamTrack], None] | None = None
        self.on_failure: Callable[[str], None] | None = None
        self._transceiver: RTCRtpTransceiver | None = None
        self._tap: RtpTap | None = None
        self.injector: RtpInjector | DirectSender | None = None
        """Set when the aiortc internals are usable: adds packets to our outgoing stream."""
        self.direct: DirectSender | None = None
        """Set when the fast path is usable (webrtc_fastpath.py): sends encoded payloads straight to the socket,
        and every audio packet from Matrix reaches the RTP tap (nothing is decoded by aiortc)."""
        self.rtcp: WebrtcRtcp | None = None
        """With the fast path: our RTCP on this connection instead of aiortc's loops (webrtc_rtcp.py)."""
        self._original_rtp_handler: Callable[..., Awaitable[None]] | None = None
        self._pending_candidates: list[dict[str, Any]] = []
        self._closed = False
        self.pc.on("track", self._track_received)
        self.pc.on("connectionstatechange", self._connection_state_changed)

    # -- events ---------------------------------------------------------------------------
    def _track_received(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self.remote_track is not None:
            return
        self.remote_track = track
        self.remote_track_ready.set()
        if self.on_remote_track is not None:
            self.on_remote_track(track)

    def _connection_state_changed(self) -> None:
        state = self.pc.connectionState
        self.log.info("WebRTC connection state: %s", state)
        if state == "failed" and not self._closed and self.on_failure is not None:
            self.on_failure("ice_failed")

    # -- negotiation ------------------------------------------------------------------------
    def _prepare(self, codecs: list[str]) -> None:
        if self._transceiver is None:
            self._transceiver = self.pc.addTransceiver(self.outgoing, direction="sendrecv")
            self._install_hooks()
        if codecs:
            self._transceiver.setCodecPreferences([aiortc_capability(name) for name in codecs])

    def set_rtp_tap(self, tap: RtpTap | None) -> None:
        self._tap = tap

    def _install_hooks(self) -> None:
        """Shadow two methods of this connection's DTLS transport (instance attributes only)."""
        if not AIORTC_INTERNALS_OK:
            self.log.warning("aiortc %s: no RTP tap (no passthrough, no DTMF)", aiortc.__version__)
            return
        assert self._transceiver is not None
        transport = self._transceiver.receiver.transport
        original: Callable[..., Awaitable[None]] = transport._handle_rtp_data  # bound method of this instance

        async def tapped(data: bytes, arrival_time_ms: int) -> None:
            tap = self._tap
            if tap is not None:
                try:
                    if tap(data):
                        return
                except Exception:
                    self.log.exception("RTP tap failed")
            await original(data, arrival_time_ms=arrival_time_ms)

        transport._handle_rtp_data = tapped  # type: ignore[method-assign]
        self._original_rtp_handler = original
        if FASTPATH_OK:
            self.direct = DirectSender(self._transceiver.sender, track=self.outgoing, log=self.log)
            self.injector = self.direct
            stop_decoder_thread(self._transceiver.receiver)
            self.rtcp = WebrtcRtcp(self._transceiver.sender, self._transceiver.receiver, self.direct, log=self.log)
            self.rtcp.replace_aiortc_loops()
        else:
            self.injector = RtpInjector(transport, self._transceiver.sender._ssrc, log=self.log)

    def _install_fast_receive(self) -> None:
        """After gathering (setLocalDescription): audio from Matrix goes to the tap without aiortc's queue."""
        if self.direct is None or self._transceiver is None or self._original_rtp_handler is None:
            return
        install_receive(self._transceiver.receiver.transport, self, self._original_rtp_handler, log=self.log,
                        rtcp=self.rtcp.on_srtcp if self.rtcp is not None else None)

    async def answer(self, offer_sdp: str, codecs: list[str]) -> str:
        """Apply the remote offer and return our answer SDP (holding all our candidates)."""
        self._prepare(codecs)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except (ValueError, aiortc.exceptions.InternalError, aiortc.exceptions.OperationError) as exc:
            raise MediaError(f"unusable WebRTC offer: {exc}") from exc
        await self._apply_pending_candidates()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._install_fast_receive()
        return self.pc.localDescription.sdp

    async def reanswer(self, offer_sdp: str) -> str:
        """Answer a new remote offer (renegotiation) on the live connection.

        The transceiver, its codec preferences, the ICE/DTLS transports and the hooks on them stay as they
        are: aiortc matches the offer's m-line to our transceiver by mid and keeps a connected DTLS session.
        """
        if self._transceiver is None or self.pc.remoteDescription is None:
            raise MediaError("renegotiation before the first offer/answer exchange")
        if self.pc.signalingState != "stable":
            raise MediaError(f"renegotiation in signaling state {self.pc.signalingState}")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except (ValueError, aiortc.exceptions.InternalError, aiortc.exceptions.OperationError) as exc:
            raise MediaError(f"unusable WebRTC re-offer: {exc}") from exc
        return self.pc.localDescription.sdp

    async def reoffer(self, direction: str) -> str:
        """Offer a new ``direction`` on the live connection (hold / resume from the phone); the answer goes to
        :meth:`accept_reanswer`. Transports, codecs and hooks stay as they are (same as :meth:`reanswer`)."""
        if self._transceiver is None or self.pc.remoteDescription is None:
            raise MediaError("renegotiation before the first offer/answer exchange")
        if self.pc.signalingState != "stable":
            raise MediaError(f"re-offer in signaling state {self.pc.signalingState}")
        self._transceiver.direction = direction
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept_reanswer(self, answer_sdp: str) -> None:
        if self.pc.signalingState != "have-local-offer":
            raise MediaError(f"answer in signaling state {self.pc.signalingState}")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        except (ValueError, aiortc.exceptions.InternalError, aiortc.exceptions.OperationError) as exc:
            raise MediaError(f"unusable WebRTC re-answer: {exc}") from exc

    def rollback_offer(self, direction: str | None = None) -> bool:
        """Withdraw our pending re-offer (glare, we are the polite side): back to ``stable`` with the current
        descriptions. aiortc 1.16 has no ``rollback``; a local offer on a live connection only changed the
        pending local description and the signalling state, so those two are restored. False when not possible."""
        if self.pc.signalingState != "have-local-offer" or not AIORTC_INTERNALS_OK:
            return False
        pc: Any = self.pc
        try:
            pc._RTCPeerConnection__pendingLocalDescription = None
            pc._RTCPeerConnection__setSignalingState("stable")
        except AttributeError:
            return False
        if direction is not None and self._transceiver is not None:
            self._transceiver.direction = direction
        return True

    def receiver_report_feed(self, clock_rate: int) -> ReceiverReportFeed | None:
        """Statistics feed for the tapped (passthrough) stream, so aiortc still sends RTCP RRs for it."""
        if self._transceiver is None or not AIORTC_INTERNALS_OK:
            return None
        return ReceiverReportFeed.for_receiver(self._transceiver.receiver, clock_rate)

    @property
    def current_direction(self) -> str | None:
        """The audio direction agreed by the last completed exchange (ours), None before one."""
        return self._transceiver.currentDirection if self._transceiver is not None else None

    async def offer(self, codecs: list[str]) -> str:
        self._prepare(codecs)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self._install_fast_receive()
        return self.pc.localDescription.sdp

    async def accept_answer(self, answer_sdp: str) -> None:
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        except (ValueError, aiortc.exceptions.InternalError, aiortc.exceptions.OperationError) as exc:
            raise MediaError(f"unusable WebRTC answer: {exc}") from exc
        await self._apply_pending_candidates()

    async def add_candidates(self, candidates: list[dict[str, Any]]) -> None:
        if self.pc.remoteDescription is None:
            self._pending_candidates.extend(candidates)  # applied once the remote description is set
            return
        for item in candidates:
            await self._add_candidate(item)

    async def _apply_pending_candidates(self) -> None:
        pending, self._pending_candidates = self._pending_candidates, []
        for item in pending:
            await self._add_candidate(item)

    async def _add_candidate(self, item: dict[str, Any]) -> None:
        try:
            text = item.get("candidate") if isinstance(item, dict) else None
            if not isinstance(text, str):
                raise ValueError("no candidate string")
            if text == "":
                await self.pc.addIceCandidate(None)  # end-of-candidates
                return
            candidate = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
            mid = item.get("sdpMid")
            index = item.get("sdpMLineIndex")
            candidate.sdpMid = mid if isinstance(mid, str) else None
            candidate.sdpMLineIndex = index if isinstance(index, int) else None
            if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
                candidate.sdpMLineIndex = 0
            await self.pc.addIceCandidate(candidate)
        except Exception as exc:  # any malformed candidate from the network: log and carry on
            self.log.info("ignoring unusable ICE candidate %r: %s", item, exc)

    @property
    def connection_state(self) -> str:
        return str(self.pc.connectionState)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._tap = None
        if self.injector is not None:
            await self.injector.close()
        await self.pc.close()
        self.outgoing.stop()
