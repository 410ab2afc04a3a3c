"""A scripted Matrix VoIP client that behaves like Element's call stack (matrix-js-sdk), with real aiortc media.

    alice = await MatrixTestClient.login(hs.url, "@alice:bridge.test", "pass")
    await alice.start_sync()
    room_id = await alice.create_dm("@sip_+15551234:bridge.test")
    call = await alice.place_call(room_id, invitee="@sip_+15551234:bridge.test")
    answer = await call.wait_answer()          # applies SDP + candidates, sends m.call.select_answer
    await call.wait_for_tone(660)              # decoded audio from the far end
    await call.hangup()
    await alice.close()                        # closes every call, the /sync task and the HTTP session

Element-like wire behaviour (see /work/shared/DESIGN.md): version "1", party_id = the device id (10 letters,
as matrix-js-sdk does), lifetime 60000, capabilities {"m.call.dtmf": false}, offer/answer SDP without
candidates when trickling, candidates in m.call.candidates batches where end-of-candidates ("") only rides
with other candidates. A caller ignores answers/hangups from parties other than the one it selected.

Loopback only: every RTCPeerConnection uses RTCConfiguration(iceServers=[]) (aiortc would otherwise use a
public STUN server); local candidates come from aioice's host-address lookup, which ``loopback_ice()``
(applied session-wide by tests/conftest.py) replaces with ["127.0.0.1"]; in addition this client drops any
non-loopback candidate it would send or receive, so no packet is ever addressed outside 127.0.0.1/::1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import string
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from tests.harness.tone import AudioReceiver, ToneTrack
from tests.harness.webrtc_dtmf import CHROME_TELEPHONE_EVENTS, DtmfTap, add_telephone_events, telephone_event_pts

log = logging.getLogger(__name__)

Event = dict[str, Any]
EventMatcher = str | Callable[[Event], bool]

CALL_EVENT_TYPES = frozenset(
    {
        "m.call.invite",
        "m.call.candidates",
        "m.call.answer",
        "m.call.select_answer",
        "m.call.hangup",
        "m.call.reject",
        "m.call.negotiate",
    }
)


# ---------------------------------------------------------------------------------------------------------
# Loopback-only ICE (test-only setting)


def _loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else ["::1"]


@contextlib.contextmanager
def loopback_ice() -> Iterator[None]:
    """Make aioice gather host candidates on 127.0.0.1 only (it normally uses every interface but loopback).

    Process-wide while active: it also covers a bridge running in the same process. aiortc calls
    ``aioice.ice.get_host_addresses`` through the module, so patching the module attribute is enough.
    """
    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = _loopback_host_addresses
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # hostnames / mDNS names: never resolve anything off-box


def _candidate_host(candidate_line: str) -> str:
    """Address field of 'candidate:<foundation> <component> <proto> <prio> <addr> <port> typ ...'."""
    parts = candidate_line.removeprefix("a=").removeprefix("candidate:").split()
    return parts[4] if len(parts) > 5 else ""


def _sdp_candidates(sdp: str) -> list[Event]:
    """Candidates in an SDP as Matrix candidate objects, in m-line order."""
    out: list[Event] = []
    mline = -1
    mid: str | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            mline += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=candidate:"):
            out.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": mline})
    return out


def _filter_sdp(sdp: str, *, keep_candidates: bool) -> str:
    """Drop non-loopback candidates (always) and all candidates + end-of-candidates if not keep_candidates."""
    lines = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            if not keep_candidates or not _is_loopback(_candidate_host(line)):
                continue
        elif line.startswith("a=end-of-candidates") and not keep_candidates:
            continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _audio_direction(sdp: str) -> str:
    in_audio = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            if in_audio:
                break
            in_audio = line.startswith("m=audio")
        elif in_audio and line.strip() in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            return line.strip()[2:]
    return "sendrecv"


def _new_call_id() -> str:
    # matrix-js-sdk: Date.now() + 16 random letters/digits
    return str(int(time.time() * 1000)) + "".join(random.choices(string.ascii_letters + string.digits, k=16))


def _random_party_id() -> str:
    return "".join(random.choices(string.ascii_uppercase, k=10))


class MatrixHttpError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:300]}")
        self.status = status
        self.body = body


# ---------------------------------------------------------------------------------------------------------
# Calls


class _Call:
    """What both call directions share: the peer connection, media tasks and the per-call event queue."""

    def __init__(self, client: MatrixTestClient, room_id: str, call_id: str, party_id: str, version: str | int) -> None:
        self.client = client
        self.room_id = room_id
        self.call_id = call_id
        self.own_party_id = party_id
        self.version = version  # what we send
        self.pc: RTCPeerConnection | None = None
        self.track: ToneTrack | None = None
        self.receiver = AudioReceiver()
        self.dtmf: DtmfTap | None = None  # set when the connection exists
        self.sent_sdp: str | None = None  # the offer/answer SDP exactly as sent in the event
        self.connection_states: list[str] = []
        self.remote_party_id: str | None = None  # the party whose candidates we apply
        self.remote_user_id: str | None = None
        self._pending_candidates: dict[str | None, list[Event]] = {}
        self._remote_set = False
        self._telephone_events: tuple[tuple[int, int], ...] = ()  # what our first SDP added; re-offers repeat it
        self._negotiate_answers_seen: set[str] = set()
        self.answer_negotiate = True
        """Answer the other party's m.call.negotiate offers like matrix-js-sdk (False: an old client ignoring them)."""
        self.negotiate_offers: list[Event] = []  # the other party's m.call.negotiate offers, as received
        self._flush_lock = asyncio.Lock()  # candidates go to aiortc in order; "" (end) must stay last
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.log = logging.LoggerAdapter(log, {"call_id": call_id})
        self._spawn(self._process_events())

    # -- plumbing
    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _new_pc(self, tone_hz: float) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = ToneTrack(tone_hz)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._spawn(self.receiver.consume(track))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            self.connection_states.append(pc.connectionState)
            self.log.info("call %s: connection state %s", self.call_id, pc.connectionState)

        self.pc = pc
        return pc

    def _deliver(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.log.warning("call %s: event queue full, dropping %s", self.call_id, event.get("type"))

    async def _process_events(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                if event["type"] == "m.call.candidates":
                    content = event.get("content", {})
                    cands = content.get("candidates")
                    if not isinstance(cands, list):
                        self.log.warning("call %s: candidates event without a list", self.call_id)
                        continue
                    party = content.get("party_id")
                    self._pending_candidates.setdefault(party, []).extend(c for c in cands if isinstance(c, dict))
                    await self._flush_candidates()
                elif event["type"] == "m.call.negotiate":
                    await self._on_negotiate(event)
            except Exception:  # one bad event must not stop the call
                self.log.exception("call %s: failed handling %s", self.call_id, event.get("type"))

    async def _flush_candidates(self) -> None:
        async with self._flush_lock:
            if not self._remote_set or self.pc is None:
                return
            # like matrix-js-sdk: only the chosen party's candidates count
            for cand in self._pending_candidates.pop(self.remote_party_id, []):
                await self._add_candidate(cand)

    async def _add_candidate(self, cand: Event) -> None:
        assert self.pc is not None
        text = cand.get("candidate")
        if not isinstance(text, str):
            self.log.warning("call %s: candidate without a string 'candidate'", self.call_id)
            return
        if text == "":
            await self.pc.addIceCandidate(None)
            return
        if not _is_loopback(_candidate_host(text)):
            self.log.info("call %s: ignoring non-loopback candidate %s", self.call_id, text)
            return
        try:
            ice = candidate_from_sdp(text.removeprefix("candidate:"))
        except (ValueError, IndexError):
            self.log.warning("call %s: malformed candidate %r", self.call_id, text)
            return
        ice.sdpMid = cand.get("sdpMid")
        ice.sdpMLineIndex = cand.get("sdpMLineIndex")
        if ice.sdpMid is None and ice.sdpMLineIndex is None:
            ice.sdpMLineIndex = 0
        await self.pc.addIceCandidate(ice)

    async def _set_remote(self, sdp_type: str, sdp: str) -> None:
        assert self.pc is not None
        await self.pc.setRemoteDescription(
            RTCSessionDescription(sdp=_filter_sdp(sdp, keep_candidates=True), type=sdp_type)
        )
        self._remote_set = True
        if self.dtmf is not None:
            self.dtmf.set_remote_sdp(sdp)
        await self._flush_candidates()

    async def _on_negotiate(self, event: Event) -> None:
        """matrix-js-sdk's onNegotiateReceived for an offer: setRemoteDescription, answer, send the answer as
        m.call.negotiate. On glare the callee (polite) would roll back; aiortc cannot, so an offer arriving while
        ours is pending is ignored (the bridge, as the caller's peer, resolves it)."""
        content = event.get("content", {})
        desc = content.get("description")
        if not isinstance(desc, dict) or desc.get("type") != "offer":
            return  # answers are taken by hold()
        if content.get("party_id") not in (self.remote_party_id, None):
            return
        self.negotiate_offers.append(event)
        if not self.answer_negotiate or self.pc is None:
            return
        if self.pc.signalingState != "stable":
            self.log.info("call %s: negotiate offer in state %s ignored (glare)", self.call_id, self.pc.signalingState)
            return
        await self._set_remote("offer", str(desc.get("sdp", "")))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        sdp = self.pc.localDescription.sdp
        if self._telephone_events:
            sdp = add_telephone_events(sdp, self._telephone_events)
        if self.dtmf is not None:
            self.dtmf.set_local_sdp(sdp)
        answer = self._base_content()
        answer["description"] = {"type": "answer", "sdp": sdp}
        answer["lifetime"] = 30000
        await self.client.send_event(self.room_id, "m.call.negotiate", answer)

    async def receiver_reports(self) -> list[Any]:
        """What RTCP receiver reports about our outbound stream told us (aiortc keeps the latest as a
        ``remote-inbound-rtp`` stat, from reports naming our sender's SSRC): what Chrome shows as RTT / loss."""
        if self.pc is None or not self.pc.getTransceivers():
            return []
        report = await self.pc.getTransceivers()[0].sender.getStats()
        return [stat for stat in report.values() if getattr(stat, "type", None) == "remote-inbound-rtp"]

    @property
    def remote_direction(self) -> str:
        """Audio direction of the other party's current description (``sendonly``/``inactive``: it holds us)."""
        if self.pc is None or self.pc.remoteDescription is None:
            return "sendrecv"
        return _audio_direction(self.pc.remoteDescription.sdp)

    @property
    def held_by_remote(self) -> bool:
        """What matrix-js-sdk's isLocalOnHold() reports: our transceiver's current direction is inactive/recvonly."""
        if self.pc is None or not self.pc.getTransceivers():
            return False
        return self.pc.getTransceivers()[0].currentDirection in ("inactive", "recvonly")

    def _base_content(self) -> Event:
        content: Event = {"call_id": self.call_id, "version": self.version}
        if self.version != 0:
            content["party_id"] = self.own_party_id
        return content

    async def _send_local_sdp(
        self, key: str, event_type: str, extra: Event, trickle: bool, telephone_events: tuple[tuple[int, int], ...]
    ) -> None:
        """Send invite/answer carrying our local SDP, then trickle candidates like matrix-js-sdk."""
        assert self.pc is not None and self.pc.localDescription is not None
        local = self.pc.localDescription
        candidates = [c for c in _sdp_candidates(local.sdp) if _is_loopback(_candidate_host(c["candidate"]))]
        content = self._base_content()
        sdp = _filter_sdp(local.sdp, keep_candidates=not trickle)
        self._telephone_events = telephone_events
        if telephone_events:
            sdp = add_telephone_events(sdp, telephone_events)
        self.sent_sdp = sdp
        if self.dtmf is not None:
            self.dtmf.set_local_sdp(sdp)
        content[key] = {"type": local.type, "sdp": sdp}
        content.update(extra)
        await self.client.send_event(self.room_id, event_type, content)
        if trickle and candidates:
            # end-of-candidates only rides with at least one real candidate, like Element
            batches = [candidates[:-1], candidates[-1:]] if len(candidates) > 1 else [candidates]
            end = {"candidate": "", "sdpMid": candidates[-1]["sdpMid"], "sdpMLineIndex": 0}
            batches[-1] = [*batches[-1], end]
            for batch in batches:
                if batch:
                    cand_content = self._base_content()
                    cand_content["candidates"] = batch
                    await self.client.send_event(self.room_id, "m.call.candidates", cand_content)

    def _from_other_party(self, event: Event) -> bool:
        content = event.get("content", {})
        if content.get("call_id") != self.call_id:
            return False
        if event.get("sender") == self.client.user_id:
            return content.get("party_id") not in (None, self.own_party_id)
        return True

    async def _wait_call_event(self, types: set[str], timeout: float, party: str | None = None) -> Event:
        def match(ev: Event) -> bool:
            if ev.get("type") not in types or not self._from_other_party(ev):
                return False
            return party is None or ev.get("content", {}).get("party_id") in (party, None)

        return await self.client.wait_for_event(self.room_id, match, timeout=timeout)

    # -- public
    @property
    def frames_received(self) -> int:
        return self.receiver.frames_received

    @property
    def connection_state(self) -> str:
        return self.pc.connectionState if self.pc is not None else "new"

    def audio_level(self) -> float:
        """Fraction of received frames that were not silent."""
        return self.receiver.non_silent_fraction()

    def tone_ratio(self, hz: float) -> float:
        """How much of the last ~second of received audio is a tone at ``hz`` (0..1)."""
        return self.receiver.recent_tone_ratio(hz)

    async def wait_for_frames(self, count: int = 50, timeout: float = 20.0) -> None:
        await self._poll(lambda: self.receiver.frames_received >= count, timeout, f"{count} audio frames")

    async def wait_for_tone(
        self, hz: float, timeout: float = 20.0, min_ratio: float = 0.5, min_frames: int = 25
    ) -> None:
        """Wait until at least ``min_frames`` were received and the recent audio is mostly a tone at ``hz``."""
        await self._poll(
            lambda: self.frames_received >= min_frames and self.tone_ratio(hz) >= min_ratio,
            timeout,
            f"{min_frames}+ frames with a {hz} Hz tone",
        )

    async def wait_connection_state(self, state: str, timeout: float = 20.0) -> None:
        await self._poll(lambda: self.connection_state == state, timeout, f"connection state {state}")

    async def _poll(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"call {self.call_id}: no {what} within {timeout}s (frames={self.frames_received}, "
                    f"non_silent={self.receiver.non_silent_frames}, state={self.connection_state})"
                )
            await asyncio.sleep(0.1)

    @property
    def dtmf_received(self) -> list[str]:
        """Digits received as RFC 4733 events (needs telephone-event negotiated)."""
        return self.dtmf.received if self.dtmf is not None else []

    async def send_dtmf(self, digits: str, duration_ms: int = 100, gap_ms: int = 70) -> None:
        """Send digits as RFC 4733 telephone-event inside the WebRTC RTP stream (as Chrome does).

        Needs a connected call whose far end put telephone-event in its SDP; audio pauses while a digit plays.
        """
        if self.dtmf is None:
            raise RuntimeError("call has no media connection yet")
        await self.dtmf.send(digits, duration_ms, gap_ms)

    async def wait_for_dtmf(self, digits: str, timeout: float = 20.0) -> None:
        await self._poll(lambda: "".join(self.dtmf_received) == digits, timeout, f"DTMF {digits!r}")

    async def hangup(self, reason: str | None = "user_hangup") -> None:
        content = self._base_content()
        if reason is not None:
            content["reason"] = reason
        await self.client.send_event(self.room_id, "m.call.hangup", content)

    async def hold(self, on_hold: bool = True, timeout: float = 30.0) -> Event:
        """Hold (or resume) the way Element does: renegotiate with the audio transceiver ``inactive`` (or
        ``sendrecv``), send the offer as m.call.negotiate, wait for the other party's negotiate answer and apply
        it. Returns the answer event. Like Chrome, aiortc stops sending on an inactive transceiver once the
        answer is applied."""
        if self.pc is None or self.pc.signalingState != "stable":
            raise RuntimeError("hold() needs an established call")
        transceiver = self.pc.getTransceivers()[0]
        transceiver.direction = "inactive" if on_hold else "sendrecv"
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        if self._telephone_events:
            sdp = add_telephone_events(sdp, self._telephone_events)
        if self.dtmf is not None:
            self.dtmf.set_local_sdp(sdp)
        self.sent_sdp = sdp
        content = self._base_content()
        content["description"] = {"type": "offer", "sdp": sdp}
        content["lifetime"] = int(timeout * 1000)
        await self.client.send_event(self.room_id, "m.call.negotiate", content)

        def is_answer(ev: Event) -> bool:
            body = ev.get("content", {})
            desc = body.get("description")
            return (
                ev.get("type") == "m.call.negotiate"
                and ev.get("event_id") not in self._negotiate_answers_seen
                and self._from_other_party(ev)
                and body.get("party_id") in (self.remote_party_id, None)
                and isinstance(desc, dict)
                and desc.get("type") == "answer"
            )

        event = await self.client.wait_for_event(self.room_id, is_answer, timeout=timeout)
        self._negotiate_answers_seen.add(str(event.get("event_id")))
        await self._set_remote("answer", str(event["content"]["description"].get("sdp", "")))
        return event

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.client._calls.pop(self.call_id, None)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.track is not None:
            self.track.stop()
        if self.pc is not None:
            await self.pc.close()


class OutgoingCall(_Call):
    """A call we placed (Element as the caller). ``party_id`` is ours."""

    answer_event: Event | None = None

    @property
    def party_id(self) -> str:
        return self.own_party_id

    async def _start(
        self,
        invitee: str | None,
        trickle: bool,
        lifetime: int,
        tone_hz: float,
        codecs: list[str] | None,
        dtmf: bool,
    ) -> None:
        pc = self._new_pc(tone_hz)
        assert self.track is not None
        transceiver = pc.addTransceiver(self.track, direction="sendrecv")
        self.dtmf = DtmfTap(transceiver.sender.transport, self.call_id)
        if codecs is not None:
            wanted = [c.lower() for c in codecs]
            caps = RTCRtpSender.getCapabilities("audio").codecs
            prefs = [c for w in wanted for c in caps if c.mimeType.lower() == f"audio/{w}"]
            if not prefs:
                raise ValueError(f"none of {codecs} is an aiortc audio codec")
            transceiver.setCodecPreferences(prefs)
        await pc.setLocalDescription(await pc.createOffer())  # gathers all candidates (aiortc: no trickle)
        extra: Event = {"lifetime": lifetime}
        if self.version != 0:
            extra["capabilities"] = {"m.call.dtmf": False}
            if invitee is not None:
                extra["invitee"] = invitee
        await self._send_local_sdp(
            "offer", "m.call.invite", extra, trickle, telephone_events=CHROME_TELEPHONE_EVENTS if dtmf else ()
        )

    async def wait_answer(self, timeout: float = 30.0) -> Event:
        """First answer from another party: apply it (+ its candidates), send select_answer for version 1."""
        event = await self._wait_call_event({"m.call.answer"}, timeout)
        content = event["content"]
        self.answer_event = event
        self.remote_party_id = content.get("party_id")
        self.remote_user_id = event.get("sender")
        answer = content.get("answer")
        await self._set_remote("answer", str(answer.get("sdp", "")) if isinstance(answer, dict) else "")
        if self.version != 0:
            select = self._base_content()
            select["selected_party_id"] = self.remote_party_id
            await self.client.send_event(self.room_id, "m.call.select_answer", select)
        return event

    async def wait_hangup_or_reject(self, timeout: float = 30.0) -> Event:
        """The m.call.hangup / m.call.reject ending this call. Before an answer any party's counts (invitee
        rejecting or the bridge hanging up); after it only the selected party's, as matrix-js-sdk does."""
        return await self._wait_call_event({"m.call.hangup", "m.call.reject"}, timeout, self.remote_party_id)


class IncomingCall(_Call):
    """An m.call.invite addressed to us (e.g. the bridge's ghost calling for a SIP->Matrix call).

    ``party_id`` is the caller's (None for a version 0 invite); ours is ``own_party_id``.
    """

    def __init__(self, client: MatrixTestClient, room_id: str, invite: Event) -> None:
        content = invite["content"]
        super().__init__(client, room_id, str(content["call_id"]), client.party_id, "1")
        self.invite = invite
        self.caller_party_id: str | None = content.get("party_id")
        self.remote_party_id = self.caller_party_id
        self.remote_user_id = invite.get("sender")
        offer = content.get("offer")
        self.offer_sdp: str = str(offer.get("sdp", "")) if isinstance(offer, dict) else ""
        self.party_id = self.caller_party_id
        self.invite_version = content.get("version")

    async def answer(self, *, tone_hz: float = 660.0, trickle: bool = True) -> None:
        """Answer with a real connection playing ``tone_hz``; like Chrome, accept the offer's telephone-event."""
        pc = self._new_pc(tone_hz)
        assert self.track is not None
        await self._set_remote("offer", self.offer_sdp)
        pc.addTrack(self.track)  # takes the transceiver the offer's audio m-line created
        self.dtmf = DtmfTap(pc.getTransceivers()[0].sender.transport, self.call_id)
        self.dtmf.set_remote_sdp(self.offer_sdp)
        await pc.setLocalDescription(await pc.createAnswer())
        offered = tuple(telephone_event_pts(self.offer_sdp).items())
        capabilities = {"capabilities": {"m.call.dtmf": False}}
        await self._send_local_sdp("answer", "m.call.answer", capabilities, trickle, telephone_events=offered)

    async def reject(self) -> None:
        """m.call.reject (version 1 invites); for a version 0 invite Element sends a hangup instead."""
        if self.invite_version == 0:
            await self.hangup("user_hangup")
            return
        await self.client.send_event(self.room_id, "m.call.reject", self._base_content())

    async def wait_select_answer(self, timeout: float = 30.0) -> Event:
        return await self._wait_call_event({"m.call.select_answer"}, timeout, self.caller_party_id)

    async def wait_hangup(self, timeout: float = 30.0) -> Event:
        return await self._wait_call_event({"m.call.hangup"}, timeout, self.caller_party_id)


# ---------------------------------------------------------------------------------------------------------
# Client


class MatrixTestClient:
    def __init__(self, hs_url: str, user_id: str, access_token: str, device_id: str) -> None:
        self.hs_url = hs_url.rstrip("/")
        self.user_id = user_id
        self.access_token = access_token
        self.device_id = device_id
        # matrix-js-sdk uses the device id as party_id; Synapse device ids are 10 capital letters.
        self.party_id = device_id if device_id else _random_party_id()
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {access_token}"})
        self.events: list[Event] = []  # every room event seen by /sync, each with "room_id" set
        self.invited_rooms: dict[str, list[Event]] = {}  # room_id -> stripped invite state
        self.joined_rooms: set[str] = set()
        self._cond = asyncio.Condition()
        self._seen_ids: set[str] = set()
        self._calls: dict[str, _Call] = {}
        self._handed_out: set[str] = set()  # call_ids already returned by wait_incoming_call
        self._sync_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._auto_join = False
        self._initial_event_ids: set[str] = set()  # events the first /sync returned (history)
        self.next_batch: str | None = None

    @classmethod
    async def login(cls, hs_url: str, user_id: str, password: str, *, device_id: str | None = None) -> MatrixTestClient:
        body: Event = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
        }
        if device_id:
            body["device_id"] = device_id
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{hs_url.rstrip('/')}/_matrix/client/v3/login", json=body) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise MatrixHttpError("POST", "/login", resp.status, text)
                data = await resp.json()
        return cls(hs_url, str(data["user_id"]), str(data["access_token"]), str(data["device_id"]))

    async def __aenter__(self) -> MatrixTestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- HTTP
    async def request(self, method: str, path: str, body: Event | None = None, **params: str) -> Event:
        url = f"{self.hs_url}/_matrix/client/v3{path}"
        async with self.http.request(method, url, json=body, params=params or None) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise MatrixHttpError(method, path, resp.status, text)
            result: Event = await resp.json()
            return result

    async def download(self, mxc: str) -> bytes:
        """Bytes of an mxc:// URI (authenticated media API, falling back to the legacy one)."""
        server, media_id = mxc.removeprefix("mxc://").split("/", 1)
        for path in (f"/_matrix/client/v1/media/download/{server}/{media_id}",
                     f"/_matrix/media/v3/download/{server}/{media_id}"):
            async with self.http.get(self.hs_url + path) as resp:
                if resp.status == 200:
                    return await resp.read()
        raise MatrixHttpError("GET", f"download {mxc}", 404, "")

    async def send_event(self, room_id: str, event_type: str, content: Event) -> str:
        path = f"/rooms/{quote(room_id)}/send/{quote(event_type)}/{uuid.uuid4().hex}"
        return str((await self.request("PUT", path, content))["event_id"])

    async def send_text(self, room_id: str, body: str) -> str:
        return await self.send_event(room_id, "m.room.message", {"msgtype": "m.text", "body": body})

    async def join(self, room_id: str) -> None:
        await self.request("POST", f"/join/{quote(room_id)}", {})
        self.joined_rooms.add(room_id)

    async def leave(self, room_id: str) -> None:
        await self.request("POST", f"/rooms/{quote(room_id)}/leave", {})
        self.joined_rooms.discard(room_id)

    async def create_dm(self, invitee: str) -> str:
        """A direct chat like Element creates: is_direct invite, trusted_private_chat, m.direct account data."""
        data = await self.request(
            "POST", "/createRoom", {"is_direct": True, "invite": [invitee], "preset": "trusted_private_chat"}
        )
        room_id = str(data["room_id"])
        self.joined_rooms.add(room_id)
        direct_path = f"/user/{quote(self.user_id)}/account_data/m.direct"
        try:
            direct = await self.request("GET", direct_path)
        except MatrixHttpError as e:
            if e.status != 404:
                raise
            direct = {}
        direct.setdefault(invitee, []).append(room_id)
        await self.request("PUT", direct_path, direct)
        return room_id

    # -- sync
    async def start_sync(self, *, auto_join: bool = False) -> None:
        """Run /sync in the background; the first sync has completed when this returns.

        ``auto_join``: join every room we are invited to (Element needs a click; convenient for bridge tests).
        """
        self._auto_join = auto_join
        if self._sync_task is not None:  # already syncing: only the auto_join setting changes
            if auto_join:
                for room_id in list(self.invited_rooms):
                    self._spawn(self._join_quietly(room_id))
            return
        await self._sync_once(timeout_ms=0)
        self._initial_event_ids = {ev["event_id"] for ev in self.events if "event_id" in ev}
        self._sync_task = asyncio.create_task(self._sync_loop(), name=f"sync {self.user_id}")

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self._sync_once(timeout_ms=10000)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # homeserver hiccup: log and retry
                log.warning("%s: /sync failed: %s", self.user_id, e)
                await asyncio.sleep(1)

    async def _sync_once(self, timeout_ms: int) -> None:
        params = {
            "timeout": str(timeout_ms),
            "filter": '{"room":{"timeline":{"limit":200}},"presence":{"not_types":["*"]}}',
        }
        if self.next_batch:
            params["since"] = self.next_batch
        data = await self.request("GET", "/sync", None, **params)
        self.next_batch = data.get("next_batch", self.next_batch)
        rooms = data.get("rooms", {})
        new: list[Event] = []
        for room_id, room in rooms.get("join", {}).items():
            self.joined_rooms.add(room_id)
            self.invited_rooms.pop(room_id, None)
            for section in ("state", "timeline"):
                for ev in room.get(section, {}).get("events", []):
                    event_id = ev.get("event_id")
                    if event_id in self._seen_ids:
                        continue
                    if event_id:
                        self._seen_ids.add(event_id)
                    new.append({**ev, "room_id": room_id})
        for room_id, room in rooms.get("invite", {}).items():
            if room_id not in self.invited_rooms and room_id not in self.joined_rooms:
                self.invited_rooms[room_id] = room.get("invite_state", {}).get("events", [])
                if self._auto_join:
                    self._spawn(self._join_quietly(room_id))
        for room_id in rooms.get("leave", {}):
            self.joined_rooms.discard(room_id)
            self.invited_rooms.pop(room_id, None)
        self.events.extend(new)
        for ev in new:
            content = ev.get("content")
            call_id = content.get("call_id") if isinstance(content, dict) else None
            call = self._calls.get(call_id) if isinstance(call_id, str) else None
            if call is not None and call._from_other_party(ev):
                call._deliver(ev)
        async with self._cond:
            self._cond.notify_all()

    async def _join_quietly(self, room_id: str) -> None:
        try:
            await self.join(room_id)
        except MatrixHttpError as e:
            log.warning("%s: auto-join %s failed: %s", self.user_id, room_id, e)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for call in list(self._calls.values()):
            await call.close()
        tasks = [t for t in (self._sync_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.http.close()

    # -- waiting
    async def wait_for(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait until ``cond()`` is truthy, re-checked after every /sync; return its value."""
        try:
            async with asyncio.timeout(timeout), self._cond:
                while not (result := cond()):
                    await self._cond.wait()
                return result
        except TimeoutError:
            raise TimeoutError(f"{self.user_id}: no {what} within {timeout}s") from None

    async def wait_for_event(self, room_id: str | None, match: EventMatcher, timeout: float = 20.0) -> Event:
        """First event seen so far (or later) in ``room_id`` (any room if None) matching a type or predicate."""
        pred: Callable[[Event], bool] = (lambda ev: ev.get("type") == match) if isinstance(match, str) else match

        def find() -> Event | None:
            for ev in self.events:
                if (room_id is None or ev["room_id"] == room_id) and pred(ev):
                    return ev
            return None

        try:
            result: Event = await self.wait_for(find, timeout, f"event {match!r} in {room_id}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; call events seen there: {self.describe_call_events(room_id)}") from None
        return result

    def describe_call_events(self, room_id: str | None = None) -> str:
        """One line per m.call.* event seen (for timeout messages): type, sender, call_id, party, reason."""
        rows = []
        for ev in self.events:
            if ev.get("type") in CALL_EVENT_TYPES and (room_id is None or ev["room_id"] == room_id):
                c = ev.get("content", {})
                rows.append(
                    f"{ev['type']} from {ev.get('sender')} call={c.get('call_id')} party={c.get('party_id')}"
                    + (f" reason={c['reason']}" if "reason" in c else "")
                )
        return "; ".join(rows) or "none"

    async def wait_for_membership(self, room_id: str, user_id: str, membership: str, timeout: float = 20.0) -> None:
        """Wait until ``user_id``'s latest membership in ``room_id`` is ``membership``."""

        def latest() -> bool:
            state = None
            for ev in self.events:
                if ev["room_id"] == room_id and ev.get("type") == "m.room.member" and ev.get("state_key") == user_id:
                    state = ev.get("content", {}).get("membership")
            return state == membership

        await self.wait_for(latest, timeout, f"{user_id} {membership} in {room_id}")

    async def wait_for_invite(self, timeout: float = 20.0) -> str:
        """A room we are invited to and have not joined yet."""

        def pending() -> str | None:
            return next((r for r in self.invited_rooms if r not in self.joined_rooms), None)

        room_id: str = await self.wait_for(pending, timeout, "room invite")
        return room_id

    # -- calls
    async def place_call(
        self,
        room_id: str,
        invitee: str | None = None,
        *,
        version: str | int = "1",
        trickle: bool = True,
        lifetime: int = 60000,
        tone_hz: float = 440.0,
        codecs: list[str] | None = None,
        dtmf: bool = True,
        call_id: str | None = None,
    ) -> OutgoingCall:
        """Send an Element-like m.call.invite (+ candidates) with a real aiortc offer playing ``tone_hz``.

        ``invitee`` defaults, like Element, to the room's one other member (omitted if there is not exactly one).

        ``version=0`` sends the old form (integer 0, no party_id/invitee/capabilities). ``codecs`` restricts the
        offer, e.g. ["opus"] (forces the bridge to transcode) or ["PCMU"]; default: aiortc's Opus, PCMU, PCMA.
        ``dtmf``: offer telephone-event/48000 (PT 110) and /8000 (PT 126) like Chrome, so send_dtmf() can work.
        ``call_id``: a chosen call_id (glare tests pick one that sorts before or after the bridge's).
        """
        if invitee is None and version != 0:
            invitee = self.other_member(room_id)
        call = OutgoingCall(self, room_id, call_id or _new_call_id(), self.party_id, version)
        self._calls[call.call_id] = call
        try:
            await call._start(invitee, trickle, lifetime, tone_hz, codecs, dtmf)
        except BaseException:
            await call.close()
            raise
        return call

    def _call_over(self, call_id: str) -> bool:
        ending = {"m.call.hangup", "m.call.reject", "m.call.answer", "m.call.select_answer"}
        return any(ev.get("type") in ending and ev.get("content", {}).get("call_id") == call_id for ev in self.events)

    def other_member(self, room_id: str) -> str | None:
        """The one other joined/invited member of a 1:1 room (Element's invitee), None if not exactly one."""
        membership: dict[str, str] = {}
        for ev in self.events:
            if ev["room_id"] == room_id and ev.get("type") == "m.room.member" and isinstance(ev.get("state_key"), str):
                membership[ev["state_key"]] = str(ev.get("content", {}).get("membership"))
        others = [u for u, m in membership.items() if u != self.user_id and m in ("join", "invite")]
        return others[0] if len(others) == 1 else None

    async def wait_incoming_call(
        self,
        room_id: str | None = None,
        timeout: float = 30.0,
        *,
        include_initial_sync: bool = False,
        ringing_only: bool = False,
    ) -> IncomingCall:
        """The next m.call.invite for us (invitee unset or us), not sent by this device, within its lifetime.

        Invites the first /sync returned (history, e.g. from an earlier test with the same user) are skipped
        unless ``include_initial_sync``. ``ringing_only``: also skip calls already answered or ended, as
        matrix-js-sdk does while catching up (off by default: a test may look only after the call ended).
        """
        ended = {"m.call.hangup", "m.call.reject", "m.call.answer", "m.call.select_answer"}

        def finished(call_id: str) -> bool:
            return any(e.get("type") in ended and e.get("content", {}).get("call_id") == call_id for e in self.events)

        def match(ev: Event) -> bool:
            content = ev.get("content", {})
            call_id = content.get("call_id")
            if ev.get("type") != "m.call.invite" or not isinstance(call_id, str) or call_id in self._handed_out:
                return False
            if ev.get("sender") == self.user_id and content.get("party_id") in (None, self.party_id):
                return False
            if content.get("invitee") not in (None, self.user_id):
                return False
            if self._call_over(call_id):
                return False  # like Element: an invite whose call was already hung up/rejected/answered is stale
            if not include_initial_sync and ev.get("event_id") in self._initial_event_ids:
                return False
            lifetime = content.get("lifetime")
            age = ev.get("unsigned", {}).get("age", 0)
            if isinstance(lifetime, int) and isinstance(age, int) and age > lifetime:
                return False
            return not (ringing_only and finished(call_id))

        event = await self.wait_for_event(room_id, match, timeout)
        call = IncomingCall(self, event["room_id"], event)
        self._handed_out.add(call.call_id)
        self._calls[call.call_id] = call
        # candidates that arrived with or right after the invite
        for ev in self.events:
            if ev.get("type") == "m.call.candidates" and call._from_other_party(ev):
                call._deliver(ev)
        return call
