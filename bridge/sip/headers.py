"""SIP header names and the ordered, case-insensitive header multi-map (RFC 3261 sections 7.3 and 20)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from bridge.sip.parse_error import SipParseError

__all__ = ["COMPACT", "KNOWN_NAMES", "LIST_HEADERS", "Headers", "canonical_name", "parse_params", "split_list"]

# RFC 3261 section 7.3.3 and later RFCs' compact forms.
COMPACT: dict[str, str] = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "u": "Allow-Events",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
}

KNOWN_NAMES = (
    "Accept Accept-Contact Accept-Encoding Accept-Language Alert-Info Allow Allow-Events Authentication-Info "
    "Authorization Call-ID Call-Info Contact Content-Disposition Content-Encoding Content-Language "
    "Content-Length Content-Type CSeq Date Diversion Error-Info Event Expires From History-Info Identity "
    "In-Reply-To Max-Forwards MIME-Version Min-Expires Min-SE Organization P-Asserted-Identity "
    "P-Preferred-Identity Path Priority Privacy Proxy-Authenticate Proxy-Authorization Proxy-Require RAck "
    "Reason Record-Route Refer-To Referred-By Reject-Contact Replaces Reply-To Request-Disposition Require "
    "Retry-After Route RSeq Security-Client Security-Server Security-Verify Server Service-Route "
    "Session-Expires Subject Subscription-State Supported Timestamp To Unsupported User-Agent Via Warning "
    "WWW-Authenticate"
).split()

# lower-case name (full or compact) -> (canonical spelling, lower-case key)
_CANONICAL: dict[str, tuple[str, str]] = {n.lower(): (n, n.lower()) for n in KNOWN_NAMES}
_CANONICAL.update({c: (full, full.lower()) for c, full in COMPACT.items()})

# Headers whose values are comma-separated lists (RFC 3261 section 7.3.1). Deliberately NOT the
# authentication headers or Date, whose values contain commas that are not list separators.
LIST_HEADERS = frozenset(
    "accept accept-contact accept-encoding accept-language alert-info allow allow-events call-info contact "
    "content-encoding content-language diversion error-info history-info in-reply-to p-asserted-identity "
    "p-preferred-identity path proxy-require reason record-route reject-contact require route "
    "security-client security-server security-verify service-route supported unsupported via warning".split()
)

_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")


def canonical_name(name: str) -> tuple[str, str]:
    """(canonical spelling, lower-case key) of a header name; compact forms map to the full name.

    Raises SipParseError for a name that is not a token.
    """
    low = name.lower()
    known = _CANONICAL.get(low)
    if known is not None:
        return known
    if not _TOKEN.fullmatch(name):
        raise SipParseError(f"bad header name {name[:60]!r}")
    return name, low


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas inside quotes and <...>."""
    if "," not in value:
        value = value.strip()
        return [value] if value else []
    items: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quote:
            if ch == "\\":
                i += 1  # quoted-pair: skip the escaped character
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif in_angle:
            if ch == ">":
                in_angle = False
        elif ch == "<":
            in_angle = True
        elif ch == ",":
            item = value[start:i].strip()
            if item:
                items.append(item)
            start = i + 1
        i += 1
    item = value[start:].strip()
    if item:
        items.append(item)
    return items


def _split_semicolons(text: str) -> list[str]:
    if '"' not in text:
        return text.split(";")
    parts: list[str] = []
    start = 0
    in_quote = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == ";":
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quote:
        raise SipParseError("unterminated quoted string in parameters")
    parts.append(text[start:])
    return parts


def parse_params(text: str) -> dict[str, str | None]:
    """Parse `a=1;b;c="x;y"` (the text after the first ';') into {name.lower(): value or None}.

    Quoted values are kept with their quotes so they print back unchanged.
    """
    params: dict[str, str | None] = {}
    for part in _split_semicolons(text):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not name:
            if eq or part.strip():
                raise SipParseError(f"parameter without a name in {text[:100]!r}")
            continue  # tolerate ";;" and a trailing ";"
        if not _TOKEN.fullmatch(name):
            raise SipParseError(f"bad parameter name {name[:60]!r}")
        params[name.lower()] = value.strip() if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _check_field(name: str, value: str) -> None:
    # Guards against header injection from our own code (e.g. a Matrix display name with a newline).
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"header {name} value contains CR, LF or NUL")


class Headers:
    """Ordered multi-map of header fields with case-insensitive names.

    Names are stored in canonical spelling (compact forms expanded); values are the raw text.
    """

    __slots__ = ("_keys", "_names", "_values")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._names: list[str] = []
        self._keys: list[str] = []
        self._values: list[str] = []
        for name, value in items:
            self.add(name, value)

    @classmethod
    def _from_parsed(cls, names: list[str], keys: list[str], values: list[str]) -> Headers:
        """Build from the parser's already validated lists, without copying or re-checking."""
        h = cls.__new__(cls)
        h._names, h._keys, h._values = names, keys, values
        return h

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of that header (raw, not split), or default."""
        key = canonical_name(name)[1]
        keys = self._keys
        for i in range(len(keys)):
            if keys[i] == key:
                return self._values[i]
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of that header, in order; list headers' comma-joined values are split."""
        key = canonical_name(name)[1]
        values = [v for k, v in zip(self._keys, self._values, strict=True) if k == key]
        if key in LIST_HEADERS:
            return [item for v in values for item in split_list(v)]
        return values

    def first_item(self, name: str) -> str | None:
        """First element of a list header (e.g. the top Via even when several are comma-joined)."""
        value = self.get(name)
        if value is None:
            return None
        items = split_list(value)
        return items[0] if items else None

    def add(self, name: str, value: str) -> None:
        canon, key = canonical_name(name)
        _check_field(canon, value)
        self._names.append(canon)
        self._keys.append(key)
        self._values.append(value.strip())

    def prepend(self, name: str, value: str) -> None:
        """Insert before the first header of that name (or at the top if there is none): the new top Via."""
        canon, key = canonical_name(name)
        _check_field(canon, value)
        pos = self._keys.index(key) if key in self._keys else 0
        self._names.insert(pos, canon)
        self._keys.insert(pos, key)
        self._values.insert(pos, value.strip())

    def set(self, name: str, value: str) -> None:
        """Replace every header of that name by one, at the position of the first (appended if absent)."""
        canon, key = canonical_name(name)
        _check_field(canon, value)
        if key not in self._keys:
            self.add(canon, value)
            return
        pos = self._keys.index(key)
        self._remove_key(key, keep=pos)
        self._names[pos] = canon
        self._values[pos] = value.strip()

    def remove(self, name: str) -> None:
        self._remove_key(canonical_name(name)[1], keep=-1)

    def _remove_key(self, key: str, keep: int) -> None:
        for i in range(len(self._keys) - 1, -1, -1):
            if self._keys[i] == key and i != keep:
                del self._names[i], self._keys[i], self._values[i]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            return canonical_name(name)[1] in self._keys
        except SipParseError:
            return False

    def items(self) -> list[tuple[str, str]]:
        return list(zip(self._names, self._values, strict=True))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._keys)

    def copy(self) -> Headers:
        return Headers._from_parsed(list(self._names), list(self._keys), list(self._values))

    def without(self, name: str) -> Headers:
        """A copy without that header."""
        h = self.copy()
        h.remove(name)
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._keys == other._keys and self._values == other._values

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"
