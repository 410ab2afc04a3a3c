"""One call's media pair: the facade the call driver uses.

Outbound (Matrix -> SIP): ``open_rtp``, ``set_webrtc_offer``, ``sip_offer`` -> INVITE,
``apply_sip_answer`` (200 OK), ``create_webrtc_answer`` -> m.call.answer, ``start``.
Inbound (SIP -> Matrix): ``open_rtp``, ``answer_sip_offer`` (or ``sip_offer_for_offerless``),
``create_webrtc_offer`` -> m.call.invite, ``set_webrtc_answer``, ``start``.
Hold / resume from Matrix (either direction, once connected): ``renegotiate_webrtc`` -> m.call.negotiate
answer, ``sip_reoffer`` -> re-INVITE, ``apply_sip_answer`` (its 2xx).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.sip import sdp as sip_sdp
from bridge.sip.sdp_crypto import SdesNegotiation, SrtpKeys

from . import webrtc_leg
from .codecs import SIP_CODECS, choose_webrtc_codecs
from .early_audio import EarlyAudioRecorder, recordable
from .errors import MediaError
from .opus_sip import passthrough_blocker
from .ports import PortAllocator
from .relay import Relay, RelayPlan
from .rtp_leg import RtpLeg
from .settings import MediaSettings
from .webrtc_leg import WebRtcLeg
from .webrtc_sdp import SdpRtpmap, add_telephone_event, audio_rtpmaps, find_codec

SIP_TELEPHONE_EVENT_PT = 101
# payload types we add to aiortc's offer for telephone-event (aiortc uses 96, 9, 0, 8)
WEBRTC_TE_PT_8K = 101
WEBRTC_TE_PT_48K = 110


@dataclass
class MediaStats:
    rtp_packets_in: int = 0
    rtp_packets_out: int = 0
    rtp_bytes_in: int = 0
    rtp_bytes_out: int = 0
    rtp_lost: int = 0
    """Incoming RTP sequence numbers the jitter buffer skipped."""
    rtp_jitter_s: float = 0.0
    """RFC 3550 interarrival jitter of the incoming RTP stream, in seconds."""
    webrtc_frames_in: int = 0
    webrtc_frames_out: int = 0
    dropped: int = 0
    malformed: int = 0
    rtp_refused: int = 0
    """SIP-side datagrams (RTP and RTCP) refused because of their source."""
    rtp_refused_sources: int = 0
    rtcp_in: int = 0
    rtcp_out: int = 0
    """RTCP compound packets (SR/RR + SDES, BYE) sent on the SIP leg."""
    far_end_lost: int | None = None
    """Our packets the far end reports lost (cumulative, from its last RTCP receiver report)."""
    far_end_jitter_s: float | None = None
    rtt_s: float | None = None
    """Round-trip time to the SIP far end (RTCP LSR/DLSR), once it reported on one of our sender reports."""
    codec_sip: str | None = None
    codec_webrtc: str | None = None
    passthrough: bool = False
    dtmf: list[tuple[str, str]] = field(default_factory=list)
    """Digits seen, with the side they came from ("matrix" or "sip")."""


class CallMedia:
    def __init__(
        self,
        settings: MediaSettings,
        ports: PortAllocator,
        *,
        log: logging.LoggerAdapter[Any] | logging.Logger,
    ) -> None:
        self.settings = settings
        self.ports = ports
        self.log = log
        self.on_failure: Callable[[str], None] | None = None
        self.on_dtmf: Callable[[str, str], None] | None = None
        self._port: int | None = None
        self._rtp = RtpLeg(
            log=log, ptime=settings.ptime, jitter_ms=settings.jitter_ms, queue_packets=settings.queue_packets,
            source_mode=settings.rtp_source, latch_packets=settings.rtp_latch_packets,
        )
        self._webrtc = WebRtcLeg(settings.ice_servers, log=log, queue_packets=settings.queue_packets)
        self._webrtc.on_failure = self._failed
        self._relay = Relay(self._rtp, self._webrtc, log=log)
        self._relay.on_dtmf = self._dtmf
        self._sip_offer: sip_sdp.SessionDescription | None = None
        self._sdes = SdesNegotiation(settings.srtp)
        # o= of the last SDP we sent on the SIP leg: later ones keep the id and bump the version (RFC 3264 8)
        self._sip_origin: tuple[int, int] | None = None
        self._sip_codec: str | None = None
        self._sip_fmtp: str | None = None  # the phone's a=fmtp for that codec (Opus passthrough depends on it)
        self._sip_direction = "sendrecv"  # ours on the SIP leg, as last negotiated
        self._webrtc_offer: str | None = None
        self._pending_webrtc: tuple[SdpRtpmap, SdpRtpmap | None] | None = None  # WebRTC answer before the SIP one
        self._closed = False
        self._ice_timer: asyncio.TimerHandle | None = None
        self._failure_reported = False
        self._early: EarlyAudioRecorder | None = None

    # -- SIP leg ------------------------------------------------------------------------------
    async def open_rtp(self) -> tuple[str, int]:
        if self._port is not None:
            return self.settings.sdp_address, self._port
        loop = asyncio.get_running_loop()
        for _ in range(self.ports.capacity):
            port = self.ports.allocate()
            try:
                await loop.create_datagram_endpoint(lambda: self._rtp, local_addr=(self.settings.rtp_host, port))
            except OSError as exc:  # taken by another process: try the next one
                self.log.debug("RTP port %s unavailable: %s", port, exc)
                self.ports.release(port)
                continue
            self._port = port
            await self._rtp.open_rtcp(self.settings.rtp_host, port + 1, self.settings.rtcp_interval_s)
            return self.settings.sdp_address, port
        raise MediaError("no bindable RTP port in the configured range")

    def _local(self) -> tuple[str, int]:
        if self._port is None:
            raise MediaError("open_rtp() first")
        return self.settings.sdp_address, self._port

    def _supported(self) -> list[sip_sdp.Codec]:
        codecs = []
        for name in self.settings.codecs:
            spec = SIP_CODECS.get(name.upper())
            if spec is not None:
                codecs.append(sip_sdp.Codec(payload_type=spec.static_pt, name=spec.name, clock_rate=spec.clock_rate,
                                            channels=spec.channels, fmtp=spec.fmtp))
        if not codecs:
            raise MediaError(f"none of the configured codecs {self.settings.codecs} is supported")
        return codecs

    far_end_replaceable = True
    """Can a REFER move this call's SIP side to a new far end (calls/transfer.py)? False with rtpengine."""

    async def prepare_sip_offer(self, webrtc_offer: str) -> None:
        """Before sip_offer() on a Matrix -> SIP call. Nothing to do here; a backend whose SIP offer is written
        from the Matrix one (rtpengine) does its work in it."""

    def final_sip_sdp(self) -> bytes | None:
        """SIP -> Matrix: the SDP for the 200 once the Matrix answer is applied, when it differs from what
        answer_sip_offer() / sip_offer_for_offerless() returned (rtpengine writes it only then). None here."""
        return None

    def sip_offer(self) -> bytes:
        address, port = self._local()
        session_id, version = self._next_origin()
        self._sip_offer = sip_sdp.build_offer(
            address, port, self._supported(), telephone_event_pt=SIP_TELEPHONE_EVENT_PT, ptime=self.settings.ptime,
            session_id=session_id, version=version,
        )
        self._sdes.secure_offer(self._sip_offer.media[0], renew=True)  # a new INVITE: new far end, new keys
        self._sip_origin = (self._sip_offer.origin.session_id, self._sip_offer.origin.session_version)
        return self._sip_offer.serialize().encode()

    def _next_origin(self) -> tuple[int | None, int]:
        if self._sip_origin is None:
            return None, 1  # a new session id is drawn
        session_id, version = self._sip_origin
        return session_id, version + 1

    def sip_reoffer(self, direction: str) -> bytes:
        """Offer for a re-INVITE (hold / resume): same o= session id, version + 1, the current codec first,
        ``a=<direction>``. Apply the 2xx's SDP with :meth:`apply_sip_answer`."""
        if direction not in sip_sdp.DIRECTIONS:
            raise MediaError(f"bad SDP direction {direction!r}")
        address, port = self._local()
        codecs = self._supported()
        current = self._sip_codec
        if current is not None:
            # the codec in use goes first so a compliant answerer keeps it (no transcoding switch on hold)
            codecs.sort(key=lambda c: c.name.upper() != current)
        session_id, version = self._next_origin()
        te_pt = self._rtp.telephone_event_pt
        if te_pt is None or any(c.payload_type == te_pt for c in codecs):
            te_pt = SIP_TELEPHONE_EVENT_PT
        self._sip_offer = sip_sdp.build_offer(
            address, port, codecs, telephone_event_pt=te_pt, direction=direction, ptime=self.settings.ptime,
            session_id=session_id, version=version,
        )
        self._sdes.secure_offer(self._sip_offer.media[0])
        self._sip_origin = (self._sip_offer.origin.session_id, version)
        return self._sip_offer.serialize().encode()

    def set_signalling_peer(self, ip: str | None) -> None:
        """The IP the SIP INVITE (inbound) or its 200 (outbound) came from. In ``rtp_source: signalling`` mode a
        far end behind NAT may send its RTP from there, from another port than its SDP says."""
        self._rtp.set_signalling_peer(ip)

    def next_sip_origin(self) -> tuple[int | None, int]:
        """The o= session id and version for the next SDP towards the phone from another media source (a
        re-INVITE moving the phone's audio elsewhere keeps the session id, RFC 3264 8)."""
        session_id, version = self._next_origin()
        self._sip_origin = (session_id, version) if session_id is not None else None
        return session_id, version

    def sip_offer_for_offerless(self) -> bytes:
        return self.sip_offer()

    def apply_sip_answer(self, sdp: bytes) -> None:
        if self._sip_offer is None:
            raise MediaError("apply_sip_answer() without sip_offer()")
        answer = sip_sdp.SessionDescription.parse(sdp)
        negotiated = sip_sdp.read_answer(self._sip_offer, answer)
        keys = self._sdes.read_answer(answer.media[negotiated.media_index])
        self._apply_negotiated(negotiated)
        self._set_srtp(keys)

    def answer_sip_offer(self, sdp: bytes) -> bytes:
        address, port = self._local()
        offer = sip_sdp.SessionDescription.parse(sdp)
        session_id, version = self._next_origin()
        answer, negotiated = sip_sdp.negotiate_answer(
            offer, address=address, port=port, supported=self._supported(), telephone_event=True,
            session_id=session_id, version=version, protos=self._sdes.accepted_protos(sip_sdp.RTP_PROTOS),
        )
        index = negotiated.media_index
        keys = self._sdes.answer_offer(offer.media[index], answer.media[index])
        self._apply_negotiated(negotiated)
        self._set_srtp(keys)
        self._sip_origin = (answer.origin.session_id, version)
        return answer.serialize().encode()

    def _set_srtp(self, keys: SrtpKeys | None) -> None:
        was = self._rtp.srtp is not None
        self._rtp.set_srtp((keys.suite, keys.local, keys.remote) if keys is not None else None)
        if keys is not None and not was:
            self.log.info("SIP media encrypted: SRTP %s (SDES)", keys.suite)
        elif keys is None and self._sdes.enabled:
            self.log.info("SIP media not encrypted: the peer did not take SRTP (media.srtp %s)", self._sdes.mode)

    @property
    def srtp_suite(self) -> str | None:
        """The SRTP suite protecting the SIP leg, None for plain RTP."""
        return self._rtp.srtp.suite if self._rtp.srtp is not None else None

    def _apply_negotiated(self, negotiated: sip_sdp.Negotiated) -> None:
        codec = negotiated.codec
        if codec.name.upper() not in SIP_CODECS:
            raise sip_sdp.SdpError(f"codec {codec.name} not supported")
        remote: tuple[str, int] | None = (negotiated.remote_address, negotiated.remote_port)
        if negotiated.remote_port == 0 or negotiated.remote_address in ("0.0.0.0", "::"):
            remote = None  # RFC 2543-style hold / disabled stream
        self._rtp.configure(
            payload_type=codec.payload_type,
            clock_rate=codec.clock_rate,
            telephone_event_pt=negotiated.telephone_event_pt,
            remote=remote,
            rtcp=negotiated.remote_rtcp,
        )
        # the direction is ours: no sending when we may only receive
        self._rtp.hold = negotiated.on_hold
        self._sip_direction = negotiated.direction
        previous, self._sip_codec = self._sip_codec, codec.name.upper()
        self._sip_fmtp = codec.fmtp
        self.log.info("SIP media: %s pt %s to %s", self._sip_codec, codec.payload_type, remote)
        plan = self._relay.plan
        if self._pending_webrtc is not None:
            chosen, te = self._pending_webrtc
            self._pending_webrtc = None
            self._plan_webrtc(chosen, te)
        elif plan is not None and previous != self._sip_codec:
            # re-INVITE switched codecs: keep the WebRTC side, transcode from now on
            self._relay.configure(
                RelayPlan(
                    self._sip_codec,
                    plan.webrtc_codec,
                    plan.webrtc_pt,
                    plan.telephone_event_pt,
                    plan.telephone_event_clock,
                    passthrough=self._passthrough(plan.webrtc_codec),
                    sip_fmtp=self._sip_fmtp,
                )
            )

    def _passthrough(self, webrtc_codec: str) -> bool:
        return self._passthrough_ok() and webrtc_codec.upper() == self._sip_codec

    def _passthrough_ok(self) -> bool:
        """The SIP codec may be passed through (Opus: only when the phone's fmtp takes the browser's stream)."""
        if not webrtc_leg.AIORTC_INTERNALS_OK or self._sip_codec is None:
            return False
        if self._sip_codec == "OPUS":
            blocker = passthrough_blocker(self._sip_fmtp)
            if blocker is not None:
                self.log.info("Opus on both legs, transcoded: %s", blocker)
                return False
        return True

    def record_early_audio(self, max_seconds: float = 30.0) -> bool:
        """Keep the SIP leg's audio until the relay starts (early media of a 183, configured with
        :meth:`apply_sip_answer`). False when the codec cannot be recorded."""
        if not recordable(self._sip_codec):
            return False
        assert self._sip_codec is not None
        self._early = EarlyAudioRecorder(self._sip_codec, max_seconds=max_seconds)
        self._relay.early_sink = self._early.feed
        return True

    def take_early_audio(self) -> EarlyAudioRecorder | None:
        """Stop recording early media; the recorder (None if nothing was recorded)."""
        recorder, self._early = self._early, None
        self._relay.early_sink = None
        return recorder if recorder is not None and recorder.packets else None

    async def collect_early_audio(self) -> EarlyAudioRecorder | None:
        """:meth:`take_early_audio` for a caller that wants the recording (it may live in a media worker)."""
        return self.take_early_audio()

    # -- WebRTC leg ---------------------------------------------------------------------------
    async def set_webrtc_offer(self, sdp: str) -> None:
        """Keep the Matrix offer; it is applied in create_webrtc_answer once the SIP codec is
        known (aiortc fixes the codec list at setRemoteDescription). Candidates that arrive
        meanwhile are buffered."""
        codecs = audio_rtpmaps(sdp)
        if not codecs:
            raise MediaError("Matrix offer has no audio codecs")
        self._webrtc_offer = sdp

    async def create_webrtc_answer(self) -> str:
        if self._webrtc_offer is None:
            raise MediaError("create_webrtc_answer() without set_webrtc_offer()")
        offered = audio_rtpmaps(self._webrtc_offer)
        prefs = choose_webrtc_codecs(self._sip_codec, [c.name for c in offered], passthrough_ok=self._passthrough_ok())
        answer = await self._webrtc.answer(self._webrtc_offer, prefs)
        chosen = self._chosen(answer)
        te = find_codec(self._webrtc_offer, "telephone-event", _te_clock(chosen))
        if te is not None:
            answer = add_telephone_event(answer, te.payload_type, te.clock_rate)
        self._plan_webrtc(chosen, te)
        return answer

    async def renegotiate_webrtc(self, offer_sdp: str) -> tuple[str, str]:
        """Apply a new Matrix offer (m.call.negotiate) on the live connection; return (answer SDP, the offer's
        audio direction). While the Matrix party does not receive (sendonly / inactive) no audio is sent to it."""
        offered = audio_rtpmaps(offer_sdp)
        if not offered:
            raise MediaError("Matrix re-offer has no audio codecs")
        direction = audio_direction(offer_sdp)
        answer = await self._webrtc.reanswer(offer_sdp)
        chosen = self._chosen(answer)
        te = find_codec(offer_sdp, "telephone-event", _te_clock(chosen))
        if te is not None:
            answer = add_telephone_event(answer, te.payload_type, te.clock_rate)
        plan = self._relay.plan
        te_pt = te.payload_type if te is not None else None
        if plan is None or (plan.webrtc_codec.upper(), plan.webrtc_pt, plan.telephone_event_pt) != (
            chosen.name.upper(), chosen.payload_type, te_pt
        ):
            self._plan_webrtc(chosen, te)  # only on a change: the relay's codec state survives a plain hold
        self._webrtc.outgoing.paused = direction in ("sendonly", "inactive")
        self.log.info("WebRTC renegotiated: Matrix offer %s, codec %s", direction, chosen.name)
        return answer, direction

    @property
    def sip_direction(self) -> str:
        """Our audio direction on the SIP leg as last negotiated (``recvonly`` while the phone holds with
        ``sendonly``, ``inactive`` for ``a=inactive`` or ``c=0.0.0.0``)."""
        return self._sip_direction

    async def reoffer_webrtc(self, direction: str) -> str:
        """Bridge-initiated m.call.negotiate offer with ``direction`` (hold / resume from the phone)."""
        offer = await self._webrtc.reoffer(direction)
        plan = self._relay.plan
        if plan is not None and plan.telephone_event_pt is not None:
            offer = add_telephone_event(offer, plan.telephone_event_pt, plan.telephone_event_clock)
        return offer

    async def apply_webrtc_reanswer(self, answer_sdp: str) -> str:
        """Apply the Matrix party's m.call.negotiate answer; return the direction now agreed (ours)."""
        await self._webrtc.accept_reanswer(answer_sdp)
        current = self._webrtc.current_direction or "sendrecv"
        self._webrtc.outgoing.paused = current not in ("sendrecv", "sendonly")
        self.log.info("WebRTC renegotiated by the bridge: %s", current)
        return current

    def rollback_webrtc_offer(self, direction: str | None) -> bool:
        """Withdraw our pending re-offer; ``direction`` (if given) is put back on the transceiver."""
        return self._webrtc.rollback_offer(direction)

    async def create_webrtc_offer(self) -> str:
        # offerless INVITE: our SIP offer lists our preferred codec first; bet on it
        expected = self._sip_codec or (self._supported()[0].name if self._sip_offer is not None else None)
        prefs = choose_webrtc_codecs(
            expected, ["opus", "G722", "PCMU", "PCMA"],
            passthrough_ok=self._passthrough_ok() if self._sip_codec else webrtc_leg.AIORTC_INTERNALS_OK,
        )
        if len(prefs) == 1:  # passthrough candidate first, transcoding choices after it
            prefs += [name for name in ("opus", "G722", "PCMU", "PCMA") if name.upper() != prefs[0].upper()]
        offer = await self._webrtc.offer(prefs)
        offer = add_telephone_event(offer, WEBRTC_TE_PT_8K, 8000)
        offer = add_telephone_event(offer, WEBRTC_TE_PT_48K, 48000)
        return offer

    async def set_webrtc_answer(self, sdp: str) -> None:
        await self._webrtc.accept_answer(sdp)
        chosen = self._chosen(sdp)
        te = find_codec(sdp, "telephone-event", _te_clock(chosen))
        self._plan_webrtc(chosen, te)

    def _chosen(self, sdp: str) -> SdpRtpmap:
        known = [c for c in audio_rtpmaps(sdp) if c.name.lower() == "opus" or c.name.upper() in SIP_CODECS]
        if not known:
            raise MediaError("no common audio codec with the Matrix side")
        return known[0]

    def _plan_webrtc(self, chosen: SdpRtpmap, te: SdpRtpmap | None) -> None:
        if self._sip_codec is None:
            # offerless INVITE: the phone's answer (in the ACK) is still to come
            self._pending_webrtc = (chosen, te)
            return
        self._relay.configure(
            RelayPlan(
                sip_codec=self._sip_codec,
                webrtc_codec=chosen.name,
                webrtc_pt=chosen.payload_type,
                telephone_event_pt=te.payload_type if te else None,
                telephone_event_clock=te.clock_rate if te else 8000,
                passthrough=self._passthrough(chosen.name),
                sip_fmtp=self._sip_fmtp,
            )
        )

    async def add_webrtc_candidates(self, candidates: list[dict[str, Any]]) -> None:
        await self._webrtc.add_candidates(candidates)

    # -- running ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._closed:
            return
        self._relay.start()
        if self._ice_timer is None and self.settings.ice_timeout_s > 0:
            loop = asyncio.get_running_loop()
            self._ice_timer = loop.call_later(self.settings.ice_timeout_s, self._check_connected)

    def _check_connected(self) -> None:
        state = self._webrtc.connection_state
        if state != "connected" and not self._closed:
            self.log.warning("WebRTC still %s after %.0f s", state, self.settings.ice_timeout_s)
            self._failed("ice_timeout")

    def set_hold(self, on_hold: bool) -> None:
        self._relay.hold = on_hold

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """Send a key press towards SIP as RFC 4733 (raises DtmfError on a non-digit)."""
        self._rtp.send_dtmf(digit, duration_ms)

    def _failed(self, reason: str) -> None:
        if self._failure_reported or self._closed:
            return  # one report per call: the driver hangs up on the first
        self._failure_reported = True
        if self.on_failure is not None:
            self.on_failure(reason)

    def _dtmf(self, digit: str, direction: str) -> None:
        if self.on_dtmf is not None:
            self.on_dtmf(digit, direction)

    @property
    def rtp_port(self) -> int | None:
        return self._port

    @property
    def rtp_leg(self) -> RtpLeg:
        return self._rtp

    @property
    def webrtc_connection_state(self) -> str:
        return self._webrtc.connection_state

    def stats(self) -> MediaStats:
        plan = self._relay.plan
        rtcp = self._rtp.rtcp
        far = rtcp.far_end if rtcp is not None else None
        return MediaStats(
            rtp_packets_in=self._rtp.packets_in,
            rtp_packets_out=self._rtp.packets_out,
            rtp_bytes_in=self._rtp.bytes_in,
            rtp_bytes_out=self._rtp.bytes_out,
            rtp_lost=self._rtp.jitter.lost,
            rtp_jitter_s=self._rtp.interarrival_jitter,
            webrtc_frames_in=self._relay.webrtc_frames_in,
            webrtc_frames_out=self._relay.webrtc_frames_out,
            dropped=self._rtp.dropped
            + self._relay.dropped
            + self._webrtc.outgoing.dropped
            + self._rtp.jitter.late
            + self._rtp.jitter.lost,
            malformed=self._rtp.malformed,
            rtp_refused=self._rtp.refused,
            rtp_refused_sources=self._rtp.guard.refused_sources,
            rtcp_in=self._rtp.rtcp_in + (rtcp.socket_in if rtcp is not None else 0),
            rtcp_out=rtcp.reports_sent if rtcp is not None else 0,
            far_end_lost=far.packets_lost if far is not None else None,
            far_end_jitter_s=far.jitter_s if far is not None else None,
            rtt_s=far.rtt_s if far is not None else None,
            codec_sip=self._sip_codec,
            codec_webrtc=plan.webrtc_codec if plan else None,
            passthrough=plan.passthrough if plan else False,
            dtmf=list(self._relay.dtmf_digits),
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        guard = self._rtp.guard
        if guard.refused:
            self.log.warning("refused %d RTP/RTCP datagrams from %d sources during the call", guard.refused,
                             guard.refused_sources)
        if self._ice_timer is not None:
            self._ice_timer.cancel()
        await self._relay.close()
        await self._webrtc.close()
        await self._rtp.close()
        if self._port is not None:
            self.ports.release(self._port)
            self._port = None


def audio_direction(sdp: str) -> str:
    """Direction attribute of the first audio m-line (else the session-level one, else sendrecv)."""
    session: str | None = None
    section = "session"  # "session" before the first m=, then "audio" or "other"
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if section == "audio":
                break  # only the first audio m-line counts
            section = "audio" if line.startswith("m=audio ") else "other"
        elif line.startswith("a=") and line[2:] in sip_sdp.DIRECTIONS:
            if section == "audio":
                return line[2:]
            if section == "session":
                session = line[2:]
    return session or "sendrecv"


def _te_clock(codec: SdpRtpmap) -> int:
    # RFC 4733: telephone-event uses the clock of the audio codec it accompanies
    return codec.clock_rate
