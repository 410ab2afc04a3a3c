"""``media.backend: rtpengine``: the call's media runs in an rtpengine node; the bridge only rewrites SDP.

Same facade as :class:`bridge.media.call_media.CallMedia` (the call driver cannot tell them apart). rtpengine
does ICE + DTLS-SRTP (UDP/TLS/RTP/SAVPF, rtcp-mux) towards Matrix, plain RTP/AVP towards SIP, transcoding
(Opus <-> PCMU ...) where the two sides share no codec, and passes RFC 4733 telephone-event through.

ng tags: the Matrix leg is tag ``matrix``, the SIP leg tag ``sip``; the ng call-id is ours (prefix + random,
one per media pair, so forked inbound branches never share state). An offer from a side carries that side's
tag as from-tag; re-offers (hold / resume, either side) reuse the same call-id and tags.

Where the driver's API is synchronous (``apply_sip_answer``, ``answer_sip_offer`` on a re-INVITE) the ng
request runs as a task the next asynchronous step awaits; a failure there is logged and reported through
``on_failure`` once the call is up, as the embedded backend does for its own media failures.

Not available here: recording early audio (``early_media: announce`` is turned off at startup), RTCP
statistics and DTMF digits in ``stats()`` (rtpengine's ``query`` gives packet counts only).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from bridge.sip import sdp as sip_sdp

from .call_media import CallMedia, MediaStats
from .errors import MediaError
from .rtpengine_ng import NgClient, NgError, NgTimeout
from .rtpengine_nodes import NodePool, NodeSpec
from .rtpengine_sdp import (
    ANSWER_DIRECTION,
    audio_direction,
    bump_origin,
    first_codec,
    origin,
    set_direction,
    set_origin,
    set_setup,
    setup_role,
)
from .settings import MediaSettings

log = logging.getLogger(__name__)

TAG_MATRIX = "matrix"
TAG_SIP = "sip"
_REPLACE = ["origin", "session-connection"]
# what rtpengine writes into SDP going to the Matrix client (browser WebRTC rules) and to the SIP side
TO_WEBRTC: dict[str, Any] = {
    "ICE": "force", "transport-protocol": "UDP/TLS/RTP/SAVPF", "rtcp-mux": ["require"], "SDES": ["off"],
    "flags": ["generate-mid", "inject-DTMF"], "replace": _REPLACE,
}
TO_SIP: dict[str, Any] = {
    "ICE": "remove", "DTLS": "off", "SDES": ["off"], "transport-protocol": "RTP/AVP", "rtcp-mux": ["demux"],
    "flags": ["inject-DTMF"], "replace": _REPLACE,
}
# an offerless INVITE: rtpengine needs an offer from the SIP side before the phone's is known (see below)
_PLACEHOLDER_PORT = 9  # discard: nothing is sent there once the phone's real SDP arrives in the ACK


@dataclass
class RtpengineSettings:
    nodes: list[NodeSpec]
    timeout_s: float = 1.0
    """Deadline of one ng request (retransmitted twice within it); a node silent for this long is failed."""
    retry_after_s: float = 30.0
    """How long a failed node gets no new calls before it is tried again."""
    call_id_prefix: str = "mxsb-"
    """ng call-ids start with this: at startup every call on a node with this prefix is an orphan of an earlier
    run of this bridge and is deleted. Bridges sharing nodes need distinct prefixes."""


class RtpengineBackend:
    """The bridge-wide part: one ng socket, the node pool, and a factory for per-call media."""

    def __init__(self, settings: RtpengineSettings, media: MediaSettings) -> None:
        self.settings = settings
        self.media = media
        self.pool = NodePool(settings.nodes, retry_after_s=settings.retry_after_s)
        self.ng = NgClient(timeout_s=settings.timeout_s)
        self.active: dict[str, NodeSpec] = {}  # ng call-id -> node, for the calls of this process

    async def start(self) -> None:
        await self.ng.open()
        await self.delete_orphans()

    async def delete_orphans(self) -> int:
        """Crash recovery: delete every call with our prefix still on a node (this bridge has no call yet)."""
        deleted = 0
        for node in self.pool.nodes:
            try:
                reply = await self.ng.request(node.address, {"command": "list", "limit": 100000})
            except NgError as exc:
                log.warning("rtpengine node %s: cannot list calls at startup: %s", node.url, exc)
                continue
            for call_id in reply.get("calls") or []:
                if isinstance(call_id, str) and call_id.startswith(self.settings.call_id_prefix) \
                        and call_id not in self.active:
                    try:
                        await self.ng.request(node.address, {"command": "delete", "call-id": call_id})
                        deleted += 1
                    except NgError as exc:
                        log.warning("rtpengine node %s: cannot delete orphan call %s: %s", node.url, call_id, exc)
        if deleted:
            log.info("deleted %d orphaned rtpengine calls of an earlier run", deleted)
        return deleted

    def new_media(self, log: logging.LoggerAdapter[Any] | logging.Logger) -> RtpengineCallMedia:
        return RtpengineCallMedia(self, log=log)

    def factory(self, log: logging.LoggerAdapter[Any] | logging.Logger) -> CallMedia:
        """For CallManager(media_factory=...): duck-typed as the CallMedia facade (the unit test
        test_rtpengine_media_has_the_call_media_api keeps the two method sets equal)."""
        return cast("CallMedia", self.new_media(log))

    def new(self, settings: MediaSettings, ports: Any, log: logging.LoggerAdapter[Any] | logging.Logger) -> CallMedia:
        """media.factory.MediaFactory: rtpengine allocates the ports, the settings were given at start."""
        return self.factory(log)

    async def stop(self) -> None:
        await self.close()

    async def close(self) -> None:
        self.ng.close()


class RtpLegView:
    """What the driver (and tests) read from the embedded RTP leg, mirrored from rtpengine's negotiation."""

    def __init__(self) -> None:
        self.hold = False
        self.payload_type: int | None = None

    def leave_far_end(self) -> None:
        raise MediaError("moving the call to a new far end is not available with media.backend: rtpengine")


class RtpengineCallMedia:
    far_end_replaceable = False
    """A REFER is refused (501): after a re-offer with the new far end's SDP, rtpengine 10.5 kept forwarding to
    and accepting from the old one in our tests (strict-source and endpoint-learning off did not help)."""

    def __init__(self, backend: RtpengineBackend, *, log: logging.LoggerAdapter[Any] | logging.Logger) -> None:
        self.backend = backend
        self.settings: MediaSettings = backend.media
        self.log = log
        self.on_failure: Callable[[str], None] | None = None
        self.on_dtmf: Callable[[str, str], None] | None = None
        self.ng_call_id = backend.settings.call_id_prefix + secrets.token_hex(8)
        self.node: NodeSpec | None = None
        self._leg = RtpLegView()
        self._sip_direction = "sendrecv"
        self._sip_codec: str | None = None
        self._webrtc_codec: str | None = None
        self._sip_sdp_out: str | None = None  # last SDP we gave the SIP side (rtpengine's)
        self._sip_origin: tuple[str, int] | None = None  # o= of our SIP SDPs: one session id, version + 1 each
        self._sip_sdp_in: str | None = None  # last SDP the phone gave us
        self._webrtc_sdp_out: str | None = None
        self._webrtc_sdp_in: str | None = None  # the Matrix client's last SDP
        self._webrtc_offer: str | None = None
        self._sip_offer_in: str | None = None  # inbound: the INVITE's offer until Matrix answers
        self._offerless = False
        # what the next SIP answer answers: "matrix" (an offer rtpengine wrote from the Matrix side's: INVITE,
        # Matrix hold/resume) or "phone" (our SDP offered on the phone's behalf: offerless INVITE / re-INVITE)
        self._sip_answer_to = "matrix"
        self._final_sip: bytes | None = None
        self._pending: asyncio.Task[None] | None = None
        self._webrtc_answer: str | None = None
        self._dtls_role: str | None = None  # rtpengine's DTLS role towards Matrix once negotiated
        self._webrtc_reoffer: str | None = None  # rtpengine's WebRTC SDP for the phone's last re-offer
        self._matrix_receives = True
        self._blocked: dict[str, bool] = {TAG_MATRIX: False, TAG_SIP: False}
        self._started = False
        self._closed = False
        self._failure_reported = False
        self._ice_timer: asyncio.Task[None] | None = None
        self._stats = MediaStats()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- ng plumbing ----------------------------------------------------------------------------
    async def _ng(self, command: str, **fields: Any) -> dict[str, Any]:
        if self.node is None:
            raise MediaError("no rtpengine node chosen yet")
        message = {"command": command, "call-id": self.ng_call_id, **fields}
        try:
            reply = await self.backend.ng.request(self.node.address, message)
        except NgTimeout as exc:
            self.backend.pool.failed(self.node)
            raise MediaError(str(exc)) from exc
        except NgError as exc:
            raise MediaError(str(exc)) from exc
        return reply

    async def _first_offer(self, **fields: Any) -> dict[str, Any]:
        """The call's first offer picks its node: a node that does not answer in time is failed and the next one
        (by weight) is tried; the call stays on the node that answered."""
        errors = []
        for node in self.backend.pool.candidates():
            self.node = node
            try:
                reply = await self._ng("offer", **fields)
            except MediaError as exc:
                errors.append(f"{node.url}: {exc}")
                self.log.warning("rtpengine node %s failed for a new call: %s", node.url, exc)
                continue
            self.backend.pool.succeeded(node)
            self.backend.active[self.ng_call_id] = node
            self.log.info("media on rtpengine node %s (ng call-id %s)", node.url, self.ng_call_id)
            return reply
        self.node = None
        raise MediaError("no rtpengine node answered: " + "; ".join(errors))

    def _spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"rtpengine-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _settle(self) -> None:
        """Wait for the ng request a synchronous call started; its error surfaces here."""
        task, self._pending = self._pending, None
        if task is not None:
            await task

    def _chain(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        previous = self._pending

        async def run() -> None:
            if previous is not None:
                await previous
            await coro

        self._pending = self._spawn(run(), what)
        self._pending.add_done_callback(lambda t: self._report(t, what))

    def _report(self, task: asyncio.Task[Any], what: str) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._started:
            self.log.warning("rtpengine %s failed: %s", what, exc)
            self._failed("ice_failed")

    def _emit_sip(self, sdp: str) -> str:
        """Our next SIP SDP: rtpengine writes a fresh o= per offer; RFC 3264 8 wants one session id with the
        version bumped by one per changed SDP, so the o= line is ours."""
        if self._sip_origin is None:
            self._sip_origin = origin(sdp) or ("1", 1)
        else:
            self._sip_origin = (self._sip_origin[0], self._sip_origin[1] + 1)
        self._sip_sdp_out = set_origin(sdp, *self._sip_origin)
        return self._sip_sdp_out

    # -- SIP leg ----------------------------------------------------------------------------------
    async def open_rtp(self) -> tuple[str, int]:
        """No local socket: the SIP-side media address is the node's, known once rtpengine wrote an SDP for the
        SIP side (outbound: after prepare_sip_offer); (sdp_address, 0) before that."""
        return self._sip_media() or (self.settings.sdp_address, 0)

    def _sip_media(self) -> tuple[str, int] | None:
        if self._sip_sdp_out is None:
            return None
        try:
            ours = sip_sdp.SessionDescription.parse(self._sip_sdp_out)
            address = ours.connection_for(ours.media[0]) if ours.media else None
        except sip_sdp.SdpError:
            return None
        return (address, ours.media[0].port) if address else None

    async def prepare_sip_offer(self, webrtc_offer: str) -> None:
        """Outbound: the Matrix offer goes through rtpengine, which writes the SIP INVITE's offer."""
        if self._sip_sdp_out is not None:
            return
        self._webrtc_offer = self._webrtc_sdp_in = webrtc_offer
        self._sip_answer_to = "matrix"
        codecs = [c.upper() for c in self.settings.codecs]
        reply = await self._first_offer(
            **{"from-tag": TAG_MATRIX, "sdp": webrtc_offer, **TO_SIP,
               "codec": {"mask": ["all"], "transcode": [*codecs, "telephone-event"]}})
        self._emit_sip(reply["sdp"])

    def sip_offer(self) -> bytes:
        if self._sip_sdp_out is None:
            raise MediaError("rtpengine backend: prepare_sip_offer() first")
        if self._sip_sdp_in is not None:  # in a dialog already (offerless re-INVITE): our current SDP again
            self._emit_sip(self._sip_sdp_out)
            self._sip_answer_to = "phone"
        return self._sip_sdp_out.encode()

    def sip_reoffer(self, direction: str) -> bytes:
        """The re-INVITE offer rtpengine wrote from the Matrix re-offer, with the SIP direction asked for."""
        if direction not in sip_sdp.DIRECTIONS:
            raise MediaError(f"bad SDP direction {direction!r}")
        if self._sip_sdp_out is None:
            raise MediaError("no SIP session to re-offer")
        return self._emit_sip(set_direction(self._sip_sdp_out, direction)).encode()

    def set_signalling_peer(self, ip: str | None) -> None:
        """rtpengine learns the far end's RTP source itself (symmetric RTP)."""

    def next_sip_origin(self) -> tuple[int | None, int]:
        """The o= for an SDP towards the phone from another media source (calls/matrix_transfer.py moves the
        phone onto the bridge's own relay): same session id, next version."""
        if self._sip_origin is None or not self._sip_origin[0].isdigit():
            return None, 1
        self._sip_origin = (self._sip_origin[0], self._sip_origin[1] + 1)
        return int(self._sip_origin[0]), self._sip_origin[1]

    def sip_offer_for_offerless(self) -> bytes:
        """Offerless INVITE: our offer is rtpengine's answer to a placeholder SIP offer; it is produced once the
        Matrix side answered (:meth:`final_sip_sdp`), and the phone's answer in the ACK updates rtpengine."""
        self._offerless = True
        self._sip_answer_to = "phone"
        return b""

    def final_sip_sdp(self) -> bytes | None:
        """Inbound: the SDP for the SIP 200 once Matrix answered (rtpengine writes it only then)."""
        return self._final_sip

    def apply_sip_answer(self, sdp: bytes) -> None:
        text = sdp.decode("utf-8", "replace")
        if self._sip_sdp_out is None:
            raise MediaError("apply_sip_answer() without an SIP offer")
        negotiated = sip_sdp.read_answer(sip_sdp.SessionDescription.parse(self._sip_sdp_out),
                                         sip_sdp.SessionDescription.parse(sdp))  # SdpError for an unusable one
        if text == self._sip_sdp_in:
            return  # the 200 repeating the 183's SDP
        self._sip_sdp_in = text
        self._note_sip(negotiated)
        if self._sip_answer_to == "phone":
            self._chain(self._phone_sdp(text), "phone-answer")
        else:
            self._chain(self._sip_answered(text), "answer")

    async def _sip_answered(self, sdp: str) -> None:
        reply = await self._ng("answer", **{"from-tag": TAG_MATRIX, "to-tag": TAG_SIP, "sdp": sdp, **TO_WEBRTC})
        if self._webrtc_answer is None:
            self._webrtc_answer = reply["sdp"]
        await self._apply_blocks()

    async def _phone_sdp(self, sdp: str) -> None:
        """The phone's answer to an SDP we offered on its behalf (offerless INVITE: rtpengine first heard a
        placeholder; offerless re-INVITE): told to rtpengine as a re-offer from the SIP side, answered with the
        Matrix client's SDP as it stands."""
        assert self._webrtc_sdp_in is not None
        await self._ng("offer", **{"from-tag": TAG_SIP, "to-tag": TAG_MATRIX, "sdp": sdp, **TO_WEBRTC})
        await self._ng("answer", **{"from-tag": TAG_SIP, "to-tag": TAG_MATRIX, "sdp": self._webrtc_sdp_in,
                                    **TO_SIP})

    def _note_sip(self, negotiated: sip_sdp.Negotiated) -> None:
        self._sip_codec = negotiated.codec.name.upper()
        self._sip_direction = negotiated.direction
        self._leg.hold = negotiated.on_hold
        self._leg.payload_type = negotiated.codec.payload_type
        self.log.info("SIP media via rtpengine: %s, our direction %s", self._sip_codec, negotiated.direction)

    def record_early_audio(self, max_seconds: float = 30.0) -> bool:
        """Early audio is not recorded: the bridge never sees the media (early_media announce is off)."""
        return False

    def take_early_audio(self) -> None:
        return None

    @property
    def srtp_suite(self) -> str | None:
        return None  # media.srtp is refused with this backend (bridge/config.py): the SIP side is RTP/AVP

    async def collect_early_audio(self) -> None:
        return None  # rtpengine carries the audio: nothing was recorded (early_media announce is off with it)

    def answer_sip_offer(self, sdp: bytes) -> bytes:
        offer = sip_sdp.SessionDescription.parse(sdp)
        text = sdp.decode("utf-8", "replace")
        # the same checks as the embedded backend (SdpError -> 488), with a throwaway answer
        _answer, negotiated = sip_sdp.negotiate_answer(
            offer, address="127.0.0.1", port=9, supported=self._supported(), telephone_event=True)
        if self._sip_sdp_out is None:  # the INVITE: rtpengine answers once Matrix did (final_sip_sdp)
            self._sip_offer_in = self._sip_sdp_in = text
            self._note_sip(negotiated)
            return b""
        # a re-INVITE / UPDATE from the phone (hold, resume, refresh): our answer keeps rtpengine's address and
        # codecs with the RFC 3264 direction; rtpengine hears the phone's new SDP as a re-offer from the SIP side
        self._sip_sdp_in = text
        self._note_sip(negotiated)
        ours = self._emit_sip(set_direction(self._sip_sdp_out, negotiated.direction))
        matrix_sdp = self._webrtc_sdp_in or ""
        self._chain(self._phone_reoffer(text, matrix_sdp, ANSWER_DIRECTION[audio_direction(text)]), "phone-reoffer")
        return ours.encode()

    async def _phone_reoffer(self, sdp: str, matrix_sdp: str, matrix_direction: str) -> None:
        reply = await self._ng("offer", **{"from-tag": TAG_SIP, "to-tag": TAG_MATRIX, "sdp": sdp, **TO_WEBRTC})
        self._webrtc_reoffer = reply["sdp"]
        await self._ng("answer", **{"from-tag": TAG_SIP, "to-tag": TAG_MATRIX,
                                    "sdp": set_direction(matrix_sdp, matrix_direction), **TO_SIP})
        await self._apply_blocks()

    def _supported(self) -> list[sip_sdp.Codec]:
        static = {"PCMU": 0, "PCMA": 8, "G722": 9}
        return [sip_sdp.Codec(payload_type=static[c.upper()], name=c.upper(), clock_rate=8000)
                for c in self.settings.codecs if c.upper() in static]

    # -- WebRTC leg -------------------------------------------------------------------------------
    async def set_webrtc_offer(self, sdp: str) -> None:
        await self.prepare_sip_offer(sdp)

    async def create_webrtc_answer(self) -> str:
        await self._settle()
        if self._webrtc_answer is None:
            raise MediaError("create_webrtc_answer() before the SIP answer")
        self._webrtc_sdp_out = self._webrtc_answer
        self._dtls_role = setup_role(self._webrtc_answer)
        self._webrtc_codec = first_codec(self._webrtc_answer)
        return self._webrtc_answer

    async def create_webrtc_offer(self) -> str:
        if self._offerless:
            sdp = _placeholder_sip_offer(self.settings)
            self._sip_offer_in = sdp
        elif self._sip_offer_in is None:
            raise MediaError("create_webrtc_offer() without the SIP offer")
        else:
            sdp = self._sip_offer_in
        reply = await self._first_offer(
            **{"from-tag": TAG_SIP, "sdp": sdp, **TO_WEBRTC, "codec": {"transcode": ["opus", "telephone-event"]}})
        self._webrtc_sdp_out = reply["sdp"]
        return self._webrtc_sdp_out

    async def set_webrtc_answer(self, sdp: str) -> None:
        self._webrtc_sdp_in = sdp
        self._webrtc_codec = first_codec(sdp)
        self._dtls_role = {"active": "passive", "passive": "active"}.get(setup_role(sdp) or "")
        reply = await self._ng("answer", **{"from-tag": TAG_SIP, "to-tag": TAG_MATRIX, "sdp": sdp, **TO_SIP})
        self._final_sip = self._emit_sip(reply["sdp"]).encode()
        if self._offerless:
            self._sip_sdp_in = None  # the phone's answer comes in the ACK
        elif self._sip_sdp_out is not None:
            self._sip_codec = first_codec(self._sip_sdp_out) or self._sip_codec

    async def renegotiate_webrtc(self, offer_sdp: str) -> tuple[str, str]:
        """A Matrix re-offer (hold / resume): rtpengine writes the SIP re-offer (see sip_reoffer); Matrix gets
        our last SDP to it with the RFC 3264 answer direction (ICE and DTLS go on unchanged)."""
        await self._settle()
        if self._webrtc_sdp_out is None:
            raise MediaError("m.call.negotiate before the call was connected")
        direction = audio_direction(offer_sdp)
        self._webrtc_sdp_in = offer_sdp
        from_tag, to_tag = TAG_MATRIX, TAG_SIP
        reply = await self._ng("offer", **{"from-tag": from_tag, "to-tag": to_tag, "sdp": offer_sdp, **TO_SIP})
        self._sip_sdp_out = reply["sdp"]  # sip_reoffer() sends it
        self._sip_answer_to = "matrix"
        self._matrix_receives = direction in ("sendrecv", "recvonly")
        answer = set_direction(bump_origin(self._webrtc_sdp_out), ANSWER_DIRECTION[direction])
        if self._dtls_role in ("active", "passive"):
            answer = set_setup(answer, self._dtls_role)  # keep the DTLS role (our first SDP may have been an offer)
        self._webrtc_sdp_out = answer
        await self._apply_blocks()
        self.log.info("WebRTC renegotiated through rtpengine: Matrix offer %s", direction)
        return answer, direction

    @property
    def sip_direction(self) -> str:
        return self._sip_direction

    async def reoffer_webrtc(self, direction: str) -> str:
        """Bridge-initiated m.call.negotiate offer (the phone held / resumed): rtpengine's WebRTC re-offer."""
        await self._settle()
        offer = self._webrtc_reoffer or self._webrtc_sdp_out
        if offer is None:
            raise MediaError("no WebRTC session to re-offer")
        return set_direction(bump_origin(offer), direction)

    async def apply_webrtc_reanswer(self, answer_sdp: str) -> str:
        self._webrtc_sdp_in = answer_sdp
        current = ANSWER_DIRECTION[audio_direction(answer_sdp)]
        self._matrix_receives = current in ("sendrecv", "sendonly")
        await self._ng("answer", **{"from-tag": TAG_SIP, "to-tag": TAG_MATRIX, "sdp": answer_sdp, **TO_SIP})
        await self._apply_blocks()
        return current

    def rollback_webrtc_offer(self, direction: str | None) -> bool:
        return True  # our re-offers are applied only with the answer: nothing to withdraw

    async def add_webrtc_candidates(self, candidates: list[dict[str, Any]]) -> None:
        """Trickled Matrix candidates reach rtpengine as a trickle ICE SDP fragment (RFC 8840, ng flag
        ``fragment``); the Matrix tag is the side they belong to."""
        sdp = self._webrtc_sdp_in
        if not candidates or sdp is None or self.node is None:
            return
        if self._webrtc_offer is not None:
            # Matrix offered: rtpengine is the controlled ICE agent and learns the client's addresses from its
            # checks (peer-reflexive). A fragment before the answer would be taken as a re-offer (rtpengine
            # 10.5 then drops rtcp-mux from its answer), so none is sent.
            return
        ice = [line for line in sdp.replace("\r\n", "\n").split("\n")
               if line.startswith(("a=ice-ufrag:", "a=ice-pwd:"))]
        lines = [*ice[:2]]
        for cand in candidates:
            text = str(cand.get("candidate") or "")
            if not text:
                continue
            mid = cand.get("sdpMid")
            lines.append(f"a=mid:{mid}" if mid is not None else "a=mid:0")
            lines.append("a=" + text.removeprefix("a="))
        try:
            await self._ng("offer", **{"from-tag": TAG_MATRIX, "to-tag": TAG_SIP, "sdp": "\r\n".join(lines) + "\r\n",
                                       "flags": ["fragment"]})
        except MediaError as exc:
            self.log.info("rtpengine did not take trickled candidates (%s): left to ICE checks", exc)

    # -- media gating (hold) --------------------------------------------------------------------
    async def _apply_blocks(self) -> None:
        """Nothing to the phone while our SIP direction does not send; nothing to Matrix while it does not
        receive. rtpengine's ``block media`` drops what a tag sends."""
        want = {TAG_MATRIX: self._leg.hold, TAG_SIP: not self._matrix_receives}
        for tag, block in want.items():
            if self._blocked[tag] != block:
                await self._ng("block media" if block else "unblock media", **{"from-tag": tag})
                self._blocked[tag] = block

    # -- running ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._closed or self._started:
            return
        self._started = True
        if self.settings.ice_timeout_s > 0:
            self._ice_timer = self._spawn(self._check_connected(), "ice-check")

    async def _check_connected(self) -> None:
        """Poll ``query`` (1/s) until media from the Matrix client arrived: that is "connected" for the driver;
        none within ice_timeout_s is an ICE/DTLS failure, as with embedded media."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.ice_timeout_s
        while loop.time() < deadline:
            await asyncio.sleep(min(1.0, max(0.0, deadline - loop.time())))
            try:
                await self._refresh_stats()
            except MediaError as exc:
                self.log.warning("rtpengine query failed: %s", exc)
                self._failed("ice_failed")
                return
            if self._stats.webrtc_frames_in > 0:
                return
        self.log.warning("no media from Matrix through rtpengine after %.0f s", self.settings.ice_timeout_s)
        self._failed("ice_timeout")

    def set_hold(self, on_hold: bool) -> None:
        self._leg.hold = on_hold
        if self._started:
            self._spawn(self._apply_blocks(), "hold")

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """A key press towards SIP: rtpengine injects RFC 4733 events into the Matrix side's stream."""
        if len(digit) != 1 or digit.upper() not in "0123456789*#ABCD":
            from .dtmf import DtmfError
            raise DtmfError(f"not a DTMF digit: {digit!r}")

        async def play() -> None:
            try:
                await self._ng("play DTMF", **{"from-tag": TAG_MATRIX, "code": digit, "duration": duration_ms})
            except MediaError as exc:
                self.log.warning("rtpengine play DTMF failed: %s", exc)

        self._spawn(play(), "dtmf")

    def _failed(self, reason: str) -> None:
        if self._failure_reported or self._closed:
            return
        self._failure_reported = True
        if self.on_failure is not None:
            self.on_failure(reason)

    @property
    def rtp_port(self) -> int | None:
        """rtpengine's SIP-side port of this call (None before it wrote one)."""
        media = self._sip_media()
        return media[1] if media else None

    @property
    def rtp_leg(self) -> RtpLegView:
        return self._leg

    @property
    def webrtc_connection_state(self) -> str:
        return "connected" if self._stats.webrtc_frames_in > 0 else ("new" if not self._closed else "closed")

    def stats(self) -> MediaStats:
        self._stats.codec_sip = self._sip_codec
        self._stats.codec_webrtc = self._webrtc_codec
        self._stats.passthrough = self._sip_codec is not None and self._sip_codec == self._webrtc_codec
        return self._stats

    async def refresh_stats(self) -> MediaStats:
        """Counters from rtpengine's ``query`` (packets/bytes per side)."""
        await self._refresh_stats()
        return self.stats()

    async def _refresh_stats(self) -> None:
        reply = await self._ng("query")
        tags = reply.get("tags") or {}
        self._stats.webrtc_frames_in = _packets(tags.get(TAG_MATRIX))
        self._stats.rtp_packets_in = _packets(tags.get(TAG_SIP))
        self._stats.rtp_bytes_in = _packets(tags.get(TAG_SIP), "bytes")
        self._stats.rtp_packets_out = self._stats.webrtc_frames_out = 0
        totals = reply.get("totals") or {}
        rtp = totals.get("RTP") or {}
        self._stats.malformed = int(rtp.get("errors") or 0)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True  # no failure reports from here on
        if self._ice_timer is not None:
            self._ice_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.node is not None:
            try:
                await self._refresh_stats()
            except MediaError as exc:
                self.log.debug("rtpengine query at close failed: %s", exc)
            try:
                await self._ng("delete")  # always: the node holds the ports until told (or its own timeout)
            except MediaError as exc:
                self.log.warning("rtpengine delete of %s failed: %s (the node times the call out)",
                                 self.ng_call_id, exc)
            self.backend.active.pop(self.ng_call_id, None)


def _packets(tag: Any, key: str = "packets") -> int:
    """Sum of a tag's per-stream received counters in a ``query`` reply."""
    total = 0
    if not isinstance(tag, dict):
        return 0
    for media in tag.get("medias") or []:
        for stream in media.get("streams") or []:
            stats = stream.get("stats") or {}
            total += int(stats.get(key) or 0)
    return total


def _placeholder_sip_offer(settings: MediaSettings) -> str:
    """What rtpengine hears as the phone's offer for an offerless INVITE: the configured codecs on a discard
    port, replaced by the phone's real SDP from the ACK."""
    static = {"PCMU": 0, "PCMA": 8, "G722": 9}
    pts = [str(static[c.upper()]) for c in settings.codecs if c.upper() in static]
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio {_PLACEHOLDER_PORT} RTP/AVP {' '.join(pts)} 101"]
    lines += [f"a=rtpmap:{static[c.upper()]} {c.upper()}/8000" for c in settings.codecs if c.upper() in static]
    lines += ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=sendrecv"]
    return "\r\n".join(lines) + "\r\n"
