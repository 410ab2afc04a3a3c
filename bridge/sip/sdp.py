"""SDP (RFC 4566) parsing/printing and the audio offer/answer rules of RFC 3264 used by the bridge.

Pure code. `SessionDescription.parse` raises only `SdpError` for any input; `negotiate_answer` raises
`SdpError` when no audio stream can be accepted (the caller answers 488).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

__all__ = [
    "DIRECTIONS",
    "STATIC_PAYLOADS",
    "Codec",
    "MediaDescription",
    "Negotiated",
    "Origin",
    "SdpError",
    "SessionDescription",
    "build_offer",
    "negotiate_answer",
    "read_answer",
]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
RTP_PROTOS = ("RTP/AVP", "RTP/AVPF")  # plain RTP; SRTP ones are added by sdp_crypto when enabled
DEFAULT_PTIME = 20
MAX_LINES = 2048

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+")
_NON_WS = re.compile(r"[^\s]+")
_BAD_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class SdpError(ValueError):
    """Unusable SDP: malformed, too large, or nothing acceptable in an offer/answer."""


@dataclass
class Codec:
    payload_type: int
    name: str  # encoding name as written ("PCMU", "opus", "telephone-event")
    clock_rate: int  # the SDP rate: G722 says 8000 although it samples at 16 kHz (RFC 3551)
    channels: int = 1
    fmtp: str | None = None

    @property
    def rtpmap(self) -> str:
        suffix = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.name}/{self.clock_rate}{suffix}"

    def same_format(self, other: Codec) -> bool:
        """Same encoding (name case-insensitively, clock rate, channels), whatever the payload types."""
        return (
            self.name.lower() == other.name.lower()
            and self.clock_rate == other.clock_rate
            and self.channels == other.channels
        )


# RFC 3551 table 4 (audio), used when an m= line lists a static type without a=rtpmap.
STATIC_PAYLOADS: dict[int, Codec] = {
    0: Codec(0, "PCMU", 8000),
    3: Codec(3, "GSM", 8000),
    4: Codec(4, "G723", 8000),
    5: Codec(5, "DVI4", 8000),
    6: Codec(6, "DVI4", 16000),
    7: Codec(7, "LPC", 8000),
    8: Codec(8, "PCMA", 8000),
    9: Codec(9, "G722", 8000),
    10: Codec(10, "L16", 44100, 2),
    11: Codec(11, "L16", 44100),
    12: Codec(12, "QCELP", 8000),
    13: Codec(13, "CN", 8000),
    14: Codec(14, "MPA", 90000),
    15: Codec(15, "G728", 8000),
    16: Codec(16, "DVI4", 11025),
    17: Codec(17, "DVI4", 22050),
    18: Codec(18, "G729", 8000),
}


def _int(text: str, what: str, maximum: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) > maximum:
        raise SdpError(f"bad {what} {text[:30]!r}")
    return int(text)


def _address_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


@dataclass
class Origin:
    username: str = "-"
    session_id: int = 0
    session_version: int = 0
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    @classmethod
    def parse(cls, value: str) -> Origin:
        parts = value.split()  # lenient about doubled or trailing spaces, as phones send them
        if len(parts) != 6:
            raise SdpError(f"malformed o= line {value[:100]!r}")
        user, sid, sver, nettype, addrtype, address = parts
        return cls(
            user,
            _int(sid, "o= session id", 2**64 - 1),
            _int(sver, "o= session version", 2**64 - 1),
            nettype,
            addrtype,
            address,
        )

    def __str__(self) -> str:
        return f"{self.username} {self.session_id} {self.session_version} {self.nettype} {self.addrtype} {self.address}"


def _parse_connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6") or not parts[2]:
        raise SdpError(f"malformed c= line {value[:100]!r}")
    return parts[2]


def _parse_bandwidth(value: str) -> tuple[str, int]:
    bwtype, colon, amount = value.partition(":")
    if not colon or not _TOKEN.fullmatch(bwtype):
        raise SdpError(f"malformed b= line {value[:100]!r}")
    return bwtype, _int(amount, "bandwidth", 2**32 - 1)


def _parse_attribute(value: str) -> tuple[str, str | None]:
    name, colon, rest = value.partition(":")
    if not _TOKEN.fullmatch(name):
        raise SdpError(f"bad attribute name in a={value[:100]!r}")
    return name, rest if colon else None


@dataclass
class MediaDescription:
    kind: str  # "audio", "video", "application", ...
    port: int
    proto: str  # "RTP/AVP", "UDP/TLS/RTP/SAVPF", ...
    formats: list[str]  # payload types as text, or other format tokens
    connection: str | None = None  # media-level c= address
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    bandwidths: list[tuple[str, int]] = field(default_factory=list)
    port_count: int | None = None  # m=audio 5000/2
    # Session-level direction attribute, filled in by SessionDescription.parse, for `direction`.
    session_direction: str | None = field(default=None, compare=False, repr=False)

    def attribute(self, name: str) -> str | None:
        """Value of the first a=name[:value] (None if absent or valueless)."""
        for key, value in self.attributes:
            if key == name:
                return value
        return None

    def has_attribute(self, name: str) -> bool:
        return any(key == name for key, _ in self.attributes)

    def attribute_values(self, name: str) -> list[str]:
        return [v for k, v in self.attributes if k == name and v is not None]

    @property
    def direction(self) -> str:
        """Media-level direction attribute, else the session-level one, else sendrecv."""
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                return key
        return self.session_direction or "sendrecv"

    @property
    def codecs(self) -> list[Codec]:
        """The formats in m= order as codecs (a=rtpmap / a=fmtp, static defaults); unknown ones skipped."""
        rtpmaps: dict[int, Codec] = {}
        fmtps: dict[int, str] = {}
        for key, value in self.attributes:
            if value is None or key not in ("rtpmap", "fmtp"):
                continue
            pt_text, _, rest = value.partition(" ")
            if not (pt_text.isascii() and pt_text.isdigit()) or len(pt_text) > 3 or int(pt_text) > 127:
                continue
            pt = int(pt_text)
            if key == "fmtp":
                fmtps.setdefault(pt, rest.strip())
                continue
            enc = rest.strip().split("/")
            if len(enc) not in (2, 3) or not enc[0]:
                continue
            rate = enc[1]
            chans = enc[2] if len(enc) == 3 else "1"
            if not (rate.isascii() and rate.isdigit() and chans.isascii() and chans.isdigit()):
                continue
            if len(rate) > 7 or len(chans) > 3:
                continue
            rtpmaps.setdefault(pt, Codec(pt, enc[0], int(rate), int(chans)))
        out: list[Codec] = []
        for fmt in self.formats:
            if not (fmt.isascii() and fmt.isdigit()) or len(fmt) > 3 or int(fmt) > 127:
                continue
            pt = int(fmt)
            known = rtpmaps.get(pt) or STATIC_PAYLOADS.get(pt)
            if known is None:
                continue
            out.append(Codec(pt, known.name, known.clock_rate, known.channels, fmtps.get(pt)))
        return out

    @property
    def ptime(self) -> int | None:
        value = self.attribute("ptime")
        if value is None:
            return None
        value = value.strip()
        if not (value.isascii() and value.isdigit()) or len(value) > 4 or int(value) == 0:
            return None
        return int(value)

    @property
    def telephone_event(self) -> Codec | None:
        """The RFC 4733 telephone-event format (the 8000 Hz one when there are several)."""
        return self.telephone_event_for(8000) or next(
            (c for c in self.codecs if c.name.lower() == "telephone-event"), None
        )

    def telephone_event_for(self, clock_rate: int) -> Codec | None:
        """The telephone-event format with that clock rate: RFC 4733 events use the audio codec's clock."""
        for codec in self.codecs:
            if codec.name.lower() == "telephone-event" and codec.clock_rate == clock_rate:
                return codec
        return None

    def serialize_lines(self) -> list[str]:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        lines = [f"m={self.kind} {port} {self.proto} {' '.join(self.formats)}"]
        if self.connection is not None:
            lines.append(f"c=IN {_address_type(self.connection)} {self.connection}")
        lines += (f"b={t}:{v}" for t, v in self.bandwidths)
        lines += (f"a={k}" if v is None else f"a={k}:{v}" for k, v in self.attributes)
        return lines


def _parse_media_line(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"malformed m= line {value[:100]!r}")
    kind, port_text, proto, *formats = parts
    if not _TOKEN.fullmatch(kind) or not _NON_WS.fullmatch(proto):
        raise SdpError(f"malformed m= line {value[:100]!r}")
    port_text, slash, count_text = port_text.partition("/")
    port = _int(port_text, "m= port", 65535)
    count = _int(count_text, "m= port count", 65535) if slash else None
    return MediaDescription(kind, port, proto, formats, port_count=count)


@dataclass
class SessionDescription:
    origin: Origin = field(default_factory=Origin)
    session_name: str = "-"
    connection: str | None = None  # session-level c= address
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    timing: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])
    bandwidths: list[tuple[str, int]] = field(default_factory=list)
    version: int = 0

    @property
    def direction(self) -> str | None:
        """Session-level direction attribute, if any."""
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                return key
        return None

    def connection_for(self, media: MediaDescription) -> str | None:
        """The address a stream's media goes to: media-level c= else session-level c=."""
        return media.connection if media.connection is not None else self.connection

    @classmethod
    def parse(cls, data: str | bytes, *, max_size: int = 16384, max_media: int = 16) -> SessionDescription:
        try:
            return cls._parse(data, max_size, max_media)
        except SdpError:
            raise
        except Exception as exc:  # a parser bug must surface as "bad SDP" (488), not crash the call
            raise SdpError(f"malformed SDP ({type(exc).__name__})") from exc

    @classmethod
    def _parse(cls, data: str | bytes, max_size: int, max_media: int) -> SessionDescription:
        if len(data) > max_size:
            raise SdpError(f"SDP larger than {max_size} bytes")
        if isinstance(data, bytes):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SdpError("SDP is not UTF-8") from exc
        else:
            text = data
        lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            raise SdpError("empty SDP")
        if len(lines) > MAX_LINES:
            raise SdpError("too many SDP lines")
        if lines[0] != "v=0":
            raise SdpError(f"SDP must start with v=0, got {lines[0][:40]!r}")
        sdp = cls(timing=[])
        origin_seen = False
        current: MediaDescription | None = None
        for line in lines[1:]:
            if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
                raise SdpError(f"malformed SDP line {line[:60]!r}")
            if _BAD_CHARS.search(line):
                raise SdpError("control character in SDP")
            kind, value = line[0], line[2:]
            if kind == "m":
                if len(sdp.media) >= max_media:
                    raise SdpError(f"more than {max_media} media descriptions")
                current = _parse_media_line(value)
                sdp.media.append(current)
            elif kind == "a":
                attr = _parse_attribute(value)
                (current.attributes if current is not None else sdp.attributes).append(attr)
            elif kind == "c":
                address = _parse_connection(value)
                if current is not None:
                    current.connection = address
                else:
                    sdp.connection = address
            elif kind == "b":
                bw = _parse_bandwidth(value)
                (current.bandwidths if current is not None else sdp.bandwidths).append(bw)
            elif current is not None:
                continue  # i=, k= in a media section: not used by the bridge
            elif kind == "o":
                if origin_seen:
                    raise SdpError("duplicate o= line")
                sdp.origin = Origin.parse(value)
                origin_seen = True
            elif kind == "s":
                sdp.session_name = value
            elif kind == "t":
                start, _, stop = value.strip().partition(" ")
                sdp.timing.append((_int(start, "t= start", 2**64 - 1), _int(stop, "t= stop", 2**64 - 1)))
            elif kind == "v":
                raise SdpError("duplicate v= line")
            # i= u= e= p= z= k= r= at session level are informational: ignored
        if not origin_seen:
            raise SdpError("SDP without o= line")
        if not sdp.timing:
            sdp.timing = [(0, 0)]
        session_direction = sdp.direction
        for media in sdp.media:
            media.session_direction = session_direction
        return sdp

    def serialize(self) -> str:
        lines = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name or '-'}"]
        if self.connection is not None:
            lines.append(f"c=IN {_address_type(self.connection)} {self.connection}")
        lines += (f"b={t}:{v}" for t, v in self.bandwidths)
        lines += (f"t={start} {stop}" for start, stop in self.timing or [(0, 0)])
        lines += (f"a={k}" if v is None else f"a={k}:{v}" for k, v in self.attributes)
        for media in self.media:
            lines += media.serialize_lines()
        lines.append("")
        return "\r\n".join(lines)


def _new_session_id() -> int:
    return secrets.randbits(62)


def _audio_attributes(codec: Codec, event: Codec | None, *, ptime: int, direction: str) -> list[tuple[str, str | None]]:
    attrs: list[tuple[str, str | None]] = [("rtpmap", f"{codec.payload_type} {codec.rtpmap}")]
    if codec.fmtp:
        attrs.append(("fmtp", f"{codec.payload_type} {codec.fmtp}"))
    if event is not None:
        attrs.append(("rtpmap", f"{event.payload_type} {event.rtpmap}"))
        attrs.append(("fmtp", f"{event.payload_type} {event.fmtp or '0-16'}"))
    attrs += [("ptime", str(ptime)), (direction, None)]
    return attrs


def build_offer(
    address: str,
    port: int,
    codecs: list[Codec],
    *,
    telephone_event_pt: int | None = 101,
    direction: str = "sendrecv",
    ptime: int = DEFAULT_PTIME,
    session_id: int | None = None,
    version: int = 1,
) -> SessionDescription:
    """One audio stream offering `codecs` in preference order (+ RFC 4733 events unless pt is None).

    For a re-INVITE pass the same session_id and a higher version.
    """
    if not codecs:
        raise SdpError("an offer needs at least one codec")
    if direction not in DIRECTIONS:
        raise SdpError(f"bad direction {direction!r}")
    payload_types = [c.payload_type for c in codecs]
    if telephone_event_pt is not None:
        payload_types.append(telephone_event_pt)
    if len(set(payload_types)) != len(payload_types) or not all(0 <= pt <= 127 for pt in payload_types):
        raise SdpError(f"payload types must be distinct and 0-127: {payload_types}")
    attrs: list[tuple[str, str | None]] = []
    formats: list[str] = []
    for codec in codecs:
        formats.append(str(codec.payload_type))
        attrs.append(("rtpmap", f"{codec.payload_type} {codec.rtpmap}"))
        if codec.fmtp:
            attrs.append(("fmtp", f"{codec.payload_type} {codec.fmtp}"))
    if telephone_event_pt is not None:
        formats.append(str(telephone_event_pt))
        attrs += [("rtpmap", f"{telephone_event_pt} telephone-event/8000"), ("fmtp", f"{telephone_event_pt} 0-16")]
        if any(c.clock_rate == 48000 for c in codecs):  # RFC 4733: events on the clock of the codec (Opus)
            pt48 = next(pt for pt in (110, 102, 103, 104, 105) if pt not in payload_types)
            formats.append(str(pt48))
            attrs += [("rtpmap", f"{pt48} telephone-event/48000"), ("fmtp", f"{pt48} 0-16")]
    attrs += [("ptime", str(ptime)), (direction, None)]
    sid = _new_session_id() if session_id is None else session_id
    return SessionDescription(
        origin=Origin("-", sid, version, "IN", _address_type(address), address),
        session_name="-",
        connection=address,
        media=[MediaDescription("audio", port, "RTP/AVP", formats, attributes=attrs)],
    )


@dataclass
class Negotiated:
    codec: Codec  # with the payload type to send with
    telephone_event_pt: int | None
    remote_address: str
    remote_port: int
    direction: str  # OUR direction: "sendrecv" | "sendonly" | "recvonly" | "inactive"
    ptime: int
    media_index: int = 0  # which m= line carries the call's audio
    remote_rtcp: tuple[str, int] | None = None  # the far end's a=rtcp (RFC 3605); None: its RTP port + 1

    @property
    def on_hold(self) -> bool:
        """True when we must not send media (remote hold, c=0.0.0.0 or inactive/recvonly for us)."""
        return self.direction in ("recvonly", "inactive")


_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
_CAN = {"sendrecv": (True, True), "sendonly": (True, False), "recvonly": (False, True), "inactive": (False, False)}


def _direction_of(send: bool, recv: bool) -> str:
    return {(True, True): "sendrecv", (True, False): "sendonly", (False, True): "recvonly"}.get(
        (send, recv), "inactive"
    )


def _is_hold_address(address: str | None) -> bool:
    return address in ("0.0.0.0", "::")


def rtcp_address(media: MediaDescription, rtp_address: str) -> tuple[str, int] | None:
    """RFC 3605 a=rtcp:port [IN IP4 address]; None when absent or malformed."""
    value = media.attribute("rtcp")
    if not value:
        return None
    parts = value.split()
    if not parts[0].isdigit() or not 0 < int(parts[0]) < 65536:
        return None
    address = parts[3] if len(parts) >= 4 and parts[1] == "IN" else rtp_address
    return address, int(parts[0])


def _is_event(codec: Codec) -> bool:
    return codec.name.lower() in ("telephone-event", "cn")


def negotiate_answer(
    offer: SessionDescription,
    *,
    address: str,
    port: int,
    supported: list[Codec],
    telephone_event: bool = True,
    session_id: int | None = None,
    version: int = 1,
    protos: tuple[str, ...] = RTP_PROTOS,
) -> tuple[SessionDescription, Negotiated]:
    """RFC 3264 answer accepting the first audio stream that has a codec we support.

    Among supported codecs the offerer's order wins and its payload type is kept; telephone-event is
    kept with the offer's payload type. Other streams get port 0. Raises SdpError when nothing fits.
    """
    answer_media: list[MediaDescription] = []
    negotiated: Negotiated | None = None
    for index, media in enumerate(offer.media):
        chosen: Codec | None = None
        if negotiated is None and media.kind == "audio" and media.port != 0 and media.proto in protos:
            chosen = next(
                (c for c in media.codecs if not _is_event(c) and any(c.same_format(s) for s in supported)), None
            )
        remote = offer.connection_for(media)
        if chosen is None or remote is None:
            answer_media.append(MediaDescription(media.kind, 0, media.proto, list(media.formats)))
            continue
        event = media.telephone_event_for(chosen.clock_rate) if telephone_event else None
        offered_direction = media.direction
        if _is_hold_address(remote):
            offered_direction = "inactive"  # RFC 2543 hold: nothing may be sent to 0.0.0.0
        our_direction = _ANSWER_DIRECTION[offered_direction]
        ptime = media.ptime or DEFAULT_PTIME
        formats = [str(chosen.payload_type)] + ([str(event.payload_type)] if event else [])
        answer_media.append(
            MediaDescription(
                "audio",
                port,
                media.proto,
                formats,
                attributes=_audio_attributes(chosen, event, ptime=ptime, direction=our_direction),
            )
        )
        negotiated = Negotiated(
            codec=chosen,
            telephone_event_pt=event.payload_type if event else None,
            remote_address=remote,
            remote_port=media.port,
            direction=our_direction,
            ptime=ptime,
            media_index=index,
            remote_rtcp=rtcp_address(media, remote),
        )
    if negotiated is None:
        raise SdpError("no acceptable audio stream in the offer")
    sid = _new_session_id() if session_id is None else session_id
    answer = SessionDescription(
        origin=Origin("-", sid, version, "IN", _address_type(address), address),
        session_name="-",
        connection=address,
        media=answer_media,
    )
    return answer, negotiated


def read_answer(offer: SessionDescription, answer: SessionDescription) -> Negotiated:
    """What the answerer accepted for our offer (UAC side). Raises SdpError if the answer is unusable."""
    if len(answer.media) != len(offer.media):
        raise SdpError(f"answer has {len(answer.media)} media lines, the offer had {len(offer.media)}")
    for index, (ours, theirs) in enumerate(zip(offer.media, answer.media, strict=True)):
        if ours.kind != "audio" or theirs.kind != "audio" or ours.port == 0 or theirs.port == 0:
            continue
        offered = [c for c in ours.codecs if not _is_event(c)]
        codec = next((c for c in theirs.codecs if any(c.same_format(o) for o in offered)), None)
        if codec is None:
            raise SdpError("the answer accepted none of the offered codecs")
        remote = answer.connection_for(theirs)
        if remote is None:
            raise SdpError("the answer has no connection address")
        ours_event = ours.telephone_event_for(codec.clock_rate)
        event = theirs.telephone_event_for(codec.clock_rate) if ours_event is not None else None
        we_send, we_recv = _CAN[ours.direction]
        they_send, they_recv = _CAN[theirs.direction]
        if _is_hold_address(remote):
            they_recv = False
        return Negotiated(
            codec=codec,
            telephone_event_pt=event.payload_type if event else None,
            remote_address=remote,
            remote_port=theirs.port,
            direction=_direction_of(we_send and they_recv, we_recv and they_send),
            ptime=theirs.ptime or ours.ptime or DEFAULT_PTIME,
            media_index=index,
            remote_rtcp=rtcp_address(theirs, remote),
        )
    raise SdpError("the answer accepted no audio stream")
