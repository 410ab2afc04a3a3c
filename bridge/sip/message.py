"""SIP messages (RFC 3261 sections 7, 18.3, 20): parsing, serializing, stream framing.

Pure code, no I/O. `parse_message` and `StreamFramer.feed` never raise anything but `SipParseError`
for bytes read from the network.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bridge.sip.headers import (
    COMPACT,
    KNOWN_NAMES,
    LIST_HEADERS,
    Headers,
    canonical_name,
    format_params,
    parse_params,
    split_list,
)
from bridge.sip.parse_error import SipParseError
from bridge.sip.uri import SipUri, parse_hostport

__all__ = [
    "COMPACT",
    "LIST_HEADERS",
    "MAX_HEADERS",
    "MAX_LINE",
    "Headers",
    "NameAddr",
    "Request",
    "Response",
    "SipParseError",
    "StreamFramer",
    "Via",
    "parse_cseq",
    "parse_message",
    "reason_phrase",
    "split_list",
]

SIP_VERSION = "SIP/2.0"
_T = TypeVar("_T")
MAX_HEADERS = 256
MAX_LINE = 8192  # one (unfolded) header line; far above any sane header
MAX_CSEQ = 2**31 - 1  # RFC 3261 section 8.1.1.5

_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_DISPLAY_BAD = re.compile(r'["<>,;\\\x00-\x1f\x7f]')
_VIA_RE = re.compile(r"([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/;]+)\s+(.+)", re.S)

_REASONS: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}
_CLASS_REASONS = {1: "Provisional", 2: "Success", 3: "Redirection", 4: "Client Error", 5: "Server Error"}


def reason_phrase(status: int) -> str:
    """The standard reason phrase for a status code (a generic one for unknown codes)."""
    return _REASONS.get(status) or _CLASS_REASONS.get(status // 100, "Global Failure")


def _quote(text: str) -> str:
    # CR/LF cannot be represented in a quoted-string at all; replace them rather than inject headers.
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
    return f'"{text}"'


def _unquote(text: str, start: int) -> tuple[str, int]:
    """Read the quoted-string starting at text[start] == '"'; returns (unescaped value, index after)."""
    end = text.find('"', start + 1)
    if end > 0 and text.find("\\", start + 1, end) < 0:
        return text[start + 1 : end], end + 1  # common case: no escapes
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            if i + 1 >= n:
                break
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    raise SipParseError("unterminated quoted string")


@dataclass
class Via:
    transport: str  # "UDP", "TCP", "TLS"
    host: str  # IPv6 without brackets
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)  # branch, received, rport (None when bare)

    @classmethod
    def parse(cls, value: str) -> Via:
        """Parse ONE via-parm (use Headers.get_all("Via") to split comma-joined values)."""
        m = _VIA_RE.fullmatch(value.strip())
        if m is None:
            raise SipParseError(f"malformed Via {value[:100]!r}")
        proto, version, transport, rest = m.groups()
        if proto.upper() != "SIP" or version != "2.0":
            raise SipParseError(f"unsupported Via protocol {proto}/{version}")
        if not _TOKEN.fullmatch(transport):
            raise SipParseError(f"bad Via transport {transport[:30]!r}")
        sent_by, semi, param_text = rest.partition(";")
        sent_by = "".join(sent_by.split())  # "host : port" is legal (COLON = SWS ":" SWS)
        host, port = parse_hostport(sent_by, value)
        return cls(transport.upper(), host, port, parse_params(param_text) if semi else {})

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {host}{port}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def copy(self) -> Via:
        return Via(self.transport, self.host, self.port, dict(self.params))

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value filled in by the server side, None when absent or bare."""
        value = self.params.get("rport")
        return int(value) if value and value.isdigit() and len(value) <= 5 else None


@dataclass
class NameAddr:
    """From/To/Contact/Route/Record-Route/P-Asserted-Identity value: [display] <uri> *(;param)."""

    uri: SipUri
    display: str | None = None  # unescaped; "" for an explicit empty quoted name
    params: dict[str, str | None] = field(default_factory=dict)  # tag, expires, q, ...

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        v = value.strip()
        if v == "*":
            raise SipParseError("wildcard Contact '*' is not an address")
        display: str | None = None
        if v.startswith('"'):
            display, end = _unquote(v, 0)
            rest = v[end:].lstrip()
            if not rest.startswith("<"):
                raise SipParseError(f"quoted display name without <uri> in {v[:100]!r}")
        else:
            lt = v.find("<")
            if lt < 0:
                # addr-spec form: parameters after the URI belong to the header (RFC 3261 section 20.10)
                uri_text, semi, param_text = v.partition(";")
                return cls(SipUri.parse(uri_text), None, parse_params(param_text) if semi else {})
            token_display = " ".join(v[:lt].split())
            if token_display:
                # RFC 3261 wants tokens here, but phones send unquoted UTF-8 names: accept anything
                # that cannot confuse the header's structure.
                if _DISPLAY_BAD.search(token_display):
                    raise SipParseError(f"bad display name in {v[:100]!r}")
                display = token_display
            rest = v[lt:]
        gt = rest.find(">")
        if gt < 0:
            raise SipParseError(f"unterminated <uri> in {v[:100]!r}")
        uri = SipUri.parse(rest[1:gt])
        after = rest[gt + 1 :].strip()
        if not after:
            return cls(uri, display, {})
        if not after.startswith(";"):
            raise SipParseError(f"junk after <uri> in {v[:100]!r}")
        return cls(uri, display, parse_params(after[1:]))

    def __str__(self) -> str:
        prefix = "" if self.display is None else _quote(self.display) + " "
        return f"{prefix}<{self.uri}>{format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def copy(self) -> NameAddr:
        return NameAddr(self.uri.copy(), self.display, dict(self.params))


def _parse_top_via(value: str) -> Via:
    """The first via-parm of a (possibly comma-joined) Via header value."""
    items = split_list(value) if "," in value else [value]
    if not items:
        raise SipParseError("empty Via header")
    return Via.parse(items[0])


def parse_cseq(value: str) -> tuple[int, str]:
    """ "101 INVITE" -> (101, "INVITE")."""
    parts = value.split()
    if len(parts) != 2:
        raise SipParseError(f"malformed CSeq {value[:60]!r}")
    number, method = parts
    if not (number.isascii() and number.isdigit()) or len(number) > 10 or int(number) > MAX_CSEQ:
        raise SipParseError(f"bad CSeq number {number[:20]!r}")
    if not _TOKEN.fullmatch(method):
        raise SipParseError(f"bad CSeq method {method[:30]!r}")
    return int(number), method


class _MessageFields:
    """Typed access to the headers every request and response carries; each raises SipParseError."""

    headers: Headers
    body: bytes

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing {name} header")
        return value

    def _cached(self, key: str, raw: str, parse: Callable[[str], _T]) -> _T:
        # parse_message already parsed these headers to validate them; keep the result for the
        # accessors. The entry is only valid for the very same header string object, so edits
        # through Headers.set()/add() are always seen.
        cache: dict[str, tuple[str, object]] = self.__dict__.setdefault("_parsed", {})
        hit = cache.get(key)
        if hit is not None and hit[0] is raw:
            return hit[1]  # type: ignore[return-value]
        value = parse(raw)
        cache[key] = (raw, value)
        return value

    @property
    def call_id(self) -> str:
        return self._required("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        return self._cached("cseq", self._required("CSeq"), parse_cseq)

    @property
    def vias(self) -> list[Via]:
        vias = [Via.parse(v) for v in self.headers.get_all("Via")]
        if not vias:
            raise SipParseError("missing Via header")
        return vias

    @property
    def top_via(self) -> Via:
        return self._cached("via", self._required("Via"), _parse_top_via).copy()

    @property
    def branch(self) -> str | None:
        return self._cached("via", self._required("Via"), _parse_top_via).branch

    @property
    def from_(self) -> NameAddr:
        """A fresh NameAddr each time: changing it does not change the message."""
        return self._cached("from", self._required("From"), NameAddr.parse).copy()

    @property
    def to(self) -> NameAddr:
        return self._cached("to", self._required("To"), NameAddr.parse).copy()

    @property
    def contact(self) -> NameAddr | None:
        """First Contact address, None when there is none (or it is the REGISTER wildcard '*')."""
        first = self.headers.first_item("Contact")
        if first is None or first == "*":
            return None
        return NameAddr.parse(first)

    @property
    def content_type(self) -> str | None:
        """Media type without parameters, lower-case ("application/sdp"), or None."""
        value = self.headers.get("Content-Type")
        if value is None:
            return None
        return value.partition(";")[0].strip().lower()

    def _serialize(self, start_line: str) -> bytes:
        lines = [start_line]
        body_len = str(len(self.body))
        wrote_length = False
        for name, value in self.headers.items():
            if name == "Content-Length":
                if wrote_length:
                    continue
                value = body_len
                wrote_length = True
            lines.append(f"{name}: {value}")
        if not wrote_length:
            lines.append(f"Content-Length: {body_len}")
        lines += ("", "")
        return "\r\n".join(lines).encode() + self.body

    def _same_content(self, other: _MessageFields) -> bool:
        # Content-Length is regenerated by serialize(), so it takes no part in equality.
        return self.body == other.body and self.headers.without("Content-Length") == other.headers.without(
            "Content-Length"
        )


@dataclass(eq=False)
class Request(_MessageFields):
    method: str
    uri: str  # Request-URI text (SipUri.parse it when needed)
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def serialize(self) -> bytes:
        """Wire form; Content-Length always matches the body."""
        return self._serialize(f"{self.method} {self.uri} {self.version}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (
            self.method == other.method
            and self.uri == other.uri
            and self.version == other.version
            and self._same_content(other)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(eq=False)
class Response(_MessageFields):
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION
    source: tuple[str, int] | None = field(default=None, repr=False)
    """The address it was received from (set by the transaction layer; not part of the message)."""

    def serialize(self) -> bytes:
        """Wire form; Content-Length always matches the body."""
        return self._serialize(f"{self.version} {self.status} {self.reason}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (
            self.status == other.status
            and self.reason == other.reason
            and self.version == other.version
            and self._same_content(other)
        )

    __hash__ = None  # type: ignore[assignment]


def _find_head_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int] | None:
    """(end of the header section, start of the body) at the first empty line, CRLF or bare LF."""
    crlf = data.find(b"\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 3
    return None


def _parse_start_line(line: str) -> Request | Response:
    if line[:4].upper() == "SIP/":
        parts = line.split(" ", 2)
        if len(parts) < 2 or parts[0].upper() != SIP_VERSION:
            raise SipParseError(f"bad status line {line[:100]!r}")
        code = parts[1]
        if len(code) != 3 or not (code.isascii() and code.isdigit()) or not 100 <= int(code) <= 699:
            raise SipParseError(f"bad status code {code[:10]!r}")
        return Response(int(code), parts[2].strip() if len(parts) > 2 else "")
    parts = line.split()
    if len(parts) != 3:
        raise SipParseError(f"bad request line {line[:100]!r}")
    method, uri, version = parts
    if version.upper() != SIP_VERSION:
        raise SipParseError(f"unsupported SIP version {version[:20]!r}")
    if not _TOKEN.fullmatch(method):
        raise SipParseError(f"bad method {method[:30]!r}")
    if ":" not in uri or not uri.isascii():
        raise SipParseError(f"bad Request-URI {uri[:100]!r}")
    return Request(method, uri)


def _parse_header_lines(lines: list[str], short: bool) -> Headers:
    """Header lines (after the start line) into Headers; `short`: no line can exceed MAX_LINE."""
    names: list[str] = []
    keys: list[str] = []
    values: list[str] = []
    canonical = _CANONICAL_LOOKUP
    for line in lines:
        name, colon, value = line.partition(":")
        known = canonical.get(name)  # fast path: a usual spelling, no whitespace, no folding
        if known is None:
            if not line:
                continue
            if line[0] in " \t":
                if not values:
                    raise SipParseError("continuation line before the first header")
                extra = line.strip()
                if extra:
                    values[-1] = f"{values[-1]} {extra}" if values[-1] else extra
                    if len(values[-1]) > MAX_LINE:
                        raise SipParseError("header line too long")
                continue
            if not colon:
                raise SipParseError(f"header line without a colon: {line[:60]!r}")
            known = canonical_name(name.rstrip(" \t"))
        elif not colon:
            raise SipParseError(f"header line without a colon: {line[:60]!r}")
        if not short and len(line) > MAX_LINE:
            raise SipParseError("header line too long")
        names.append(known[0])
        keys.append(known[1])
        values.append(value.strip())
    if len(keys) > MAX_HEADERS:
        raise SipParseError(f"more than {MAX_HEADERS} headers")
    return Headers._from_parsed(names, keys, values)


def _build_canonical_lookup() -> dict[str, tuple[str, str]]:
    # Exact-spelling table for the parser's fast path: usual spellings skip lower() and the token regex.
    lookup: dict[str, tuple[str, str]] = {}
    for name in (*COMPACT, *(c.upper() for c in COMPACT), *KNOWN_NAMES, "Call-Id", "Cseq"):
        for spelling in (name, name.lower()):
            lookup[spelling] = canonical_name(spelling)
    return lookup


_CANONICAL_LOOKUP = _build_canonical_lookup()

_MANDATORY = ("via", "from", "to", "call-id", "cseq")
_SINGLE = ("from", "to", "call-id", "cseq")  # two of these make the dialog/transaction ambiguous


def _parse(data: bytes, max_size: int) -> Request | Response:
    if len(data) > max_size:
        raise SipParseError(f"message larger than {max_size} bytes")
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # keep-alive CRLFs before a message (RFC 5626 section 4.4.1)
    if not data:
        raise SipParseError("empty message")
    bounds = _find_head_end(data)
    head_end, body_start = bounds if bounds is not None else (len(data), len(data))
    try:
        text = data[:head_end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError("header section is not UTF-8") from exc
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if text.endswith("\r"):
            text = text[:-1]
        if "\r" in text:
            raise SipParseError("bare CR in header section")
    if "\x00" in text:
        raise SipParseError("NUL in header section")
    lines = text.split("\n")
    if len(lines) > MAX_HEADERS * 4:
        raise SipParseError("too many header lines")
    msg = _parse_start_line(lines[0])
    headers = _parse_header_lines(lines[1:], len(text) <= MAX_LINE)
    msg.headers = headers

    keys = headers._keys
    for key in _MANDATORY:
        if key not in keys:
            raise SipParseError(f"missing mandatory header {canonical_name(key)[0]}")
    # The top Via must be readable for any reply to be routed back; past this point a request can get a 400.
    msg._cached("via", headers._values[keys.index("via")], _parse_top_via)
    partial = msg if isinstance(msg, Request) else None
    try:
        lengths = {v for k, v in zip(keys, headers._values, strict=True) if k == "content-length"}
        body = data[body_start:]
        if lengths:
            if len(lengths) > 1:
                raise SipParseError("conflicting Content-Length headers")
            length_text = lengths.pop()
            if not (length_text.isascii() and length_text.isdigit()) or len(length_text) > 9:
                raise SipParseError(f"bad Content-Length {length_text[:20]!r}")
            length = int(length_text)
            if len(body) < length:
                raise SipParseError(f"body shorter ({len(body)}) than Content-Length ({length})")
            body = body[:length]
        for key in _SINGLE:
            if keys.count(key) > 1:
                raise SipParseError(f"more than one {canonical_name(key)[0]} header")
        _, cseq_method = msg.cseq
        if isinstance(msg, Request) and cseq_method != msg.method:
            raise SipParseError(f"CSeq method {cseq_method} does not match {msg.method}")
        msg._cached("from", headers._values[keys.index("from")], NameAddr.parse)
        msg._cached("to", headers._values[keys.index("to")], NameAddr.parse)
    except SipParseError as exc:
        exc.partial = partial
        raise
    msg.body = bytes(body)
    return msg


def parse_message(data: bytes, *, max_size: int = 65535) -> Request | Response:
    """Parse one SIP message (a whole UDP datagram or a framed stream message).

    Raises only SipParseError, whatever the bytes. Its `partial` is the request (with an empty body)
    when the request line, a readable top Via and From/To/Call-ID/CSeq were present: answer it with 400.
    """
    try:
        return _parse(data, max_size)
    except SipParseError:
        raise
    except Exception as exc:  # a parser bug must not take down the transport: report it as malformed
        raise SipParseError(f"malformed message ({type(exc).__name__})") from exc


_CONTENT_LENGTH_RE = re.compile(rb"^(?:content-length|l)[ \t]*:(.*)$", re.I | re.M)


class StreamFramer:
    """Cuts a TCP/TLS byte stream into SIP messages by Content-Length (RFC 3261 section 18.3).

    `feed()` returns, in order, every complete message and a SipParseError for each unparsable one.
    CRLF keep-alives between messages are skipped. A message without Content-Length is reported as an
    error and framed as if it had no body. When framing is impossible (oversize message, unreadable
    Content-Length) the framer reports one error, becomes `broken()` and ignores further input: the
    transport must close that connection.
    """

    def __init__(self, max_size: int = 65535) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._broken = False
        # Where to resume looking for the end of the headers, so a peer dribbling bytes does not make
        # every feed() rescan the whole buffer; and the framing of a message waiting for its body.
        self._scan_from = 0
        self._frame: tuple[int, int, bool] | None = None  # (body start, total size, Content-Length missing)

    def broken(self) -> bool:
        return self._broken

    def pending(self) -> int:
        """Bytes held waiting for the rest of a message."""
        return len(self._buffer)

    def _fail(self, reason: str) -> SipParseError:
        self._broken = True
        self._buffer.clear()
        self._frame = None
        return SipParseError(reason)

    def _frame_next(self) -> tuple[int, int, bool] | SipParseError | None:
        """Frame the message at the start of the buffer: None when more bytes are needed."""
        buf = self._buffer
        bounds = _find_head_end(buf, self._scan_from)
        if bounds is None or bounds[0] > self.max_size:
            if len(buf) > self.max_size:
                return self._fail(f"header section larger than {self.max_size} bytes")
            self._scan_from = max(0, len(buf) - 2)  # the blank line may straddle two segments
            return None
        self._scan_from = 0
        head_end, body_start = bounds
        lengths = _CONTENT_LENGTH_RE.findall(bytes(buf[:head_end]))
        if not lengths:
            return body_start, body_start, True
        texts = {v.strip() for v in lengths}
        text = texts.pop()
        if texts or not text.isdigit() or len(text) > 9:
            return self._fail("unreadable Content-Length on a stream")
        total = body_start + int(text)
        if total > self.max_size:
            return self._fail(f"message larger than {self.max_size} bytes")
        return body_start, total, False

    def feed(self, data: bytes) -> list[Request | Response | SipParseError]:
        if self._broken:
            return []
        buf = self._buffer
        buf += data
        out: list[Request | Response | SipParseError] = []
        while buf:
            if self._frame is None:
                skip = 0
                while skip < len(buf) and buf[skip] in (13, 10):
                    skip += 1
                if skip:
                    del buf[:skip]
                    continue
                framed = self._frame_next()
                if isinstance(framed, SipParseError):
                    out.append(framed)
                    break
                if framed is None:
                    break
                self._frame = framed
            _, total, missing = self._frame
            if len(buf) < total:
                break
            self._frame = None
            chunk = bytes(buf[:total])
            del buf[:total]
            try:
                msg = parse_message(chunk, max_size=self.max_size)
            except SipParseError as exc:
                out.append(exc)
                continue
            if missing:
                out.append(
                    SipParseError(
                        "no Content-Length on a stream transport",
                        partial=msg if isinstance(msg, Request) else None,
                    )
                )
                continue
            out.append(msg)
        return out
