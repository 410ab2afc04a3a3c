"""SIP, SIPS and tel URIs (RFC 3261 section 19.1, RFC 3966), parsed into fields and printed back."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bridge.sip.parse_error import SipParseError

__all__ = ["SipUri", "SipUriError", "parse_hostport"]

SCHEMES = ("sip", "sips", "tel")
DEFAULT_PORT = 5060
DEFAULT_TLS_PORT = 5061
MAX_URI_LENGTH = 4096

# Characters that can never appear unescaped in a URI (they delimit it inside headers) plus anything
# non-ASCII: RFC 3261 URIs are ASCII, everything else must be %-escaped.
_FORBIDDEN = re.compile(r'[^\x21-\x7e]|[<>"]')
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?\.?")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
_TEL_NUMBER = re.compile(r"[0-9A-Fa-f*#+().\-pPwW]+")


class SipUriError(SipParseError):
    """A URI that is not a well-formed sip:, sips: or tel: URI."""


def _parse_params(text: str, uri: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for part in text.split(";"):
        if not part:
            continue  # tolerate ";;" and a trailing ";" as seen from some phones
        name, eq, value = part.partition("=")
        if not name:
            raise SipUriError(f"empty URI parameter name in {uri!r}")
        params[name.lower()] = value if eq else None
    return params


def _parse_headers(text: str, uri: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for part in text.split("&"):
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not name or not eq:
            raise SipUriError(f"URI header without name=value in {uri!r}")
        headers[name] = value
    return headers


def parse_hostport(text: str, uri: str) -> tuple[str, int | None]:
    """Split "host", "host:port" or "[v6]:port"; `uri` is the whole text, for error messages."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipUriError(f"unterminated IPv6 reference in {uri!r}")
        host = text[1:end]
        if not _IPV6.fullmatch(host):
            raise SipUriError(f"bad IPv6 address in {uri!r}")
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise SipUriError(f"junk after IPv6 reference in {uri!r}")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
        if not _HOSTNAME.fullmatch(host):
            raise SipUriError(f"bad host in {uri!r}")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
        raise SipUriError(f"bad port in {uri!r}")
    port = int(port_text)
    if port > 65535:
        raise SipUriError(f"port out of range in {uri!r}")
    return host, port


@dataclass
class SipUri:
    scheme: str = "sip"  # "sip" | "sips" | "tel"
    user: str | None = None  # for tel: the number (global "+..." or local)
    password: str | None = None
    host: str = ""  # IPv6 stored WITHOUT brackets; str() adds them. Empty for tel.
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)  # ;transport=tcp;lr  (keys lower-case)
    headers: dict[str, str] = field(default_factory=dict)  # ?Subject=x

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Parse a URI; escapes (%xx) are kept as written so the text round-trips."""
        uri = text.strip()
        if len(uri) > MAX_URI_LENGTH:
            raise SipUriError("URI too long")
        if not uri:
            raise SipUriError("empty URI")
        if _FORBIDDEN.search(uri):
            raise SipUriError(f"URI contains a forbidden character: {uri[:100]!r}")
        scheme, colon, rest = uri.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in SCHEMES:
            raise SipUriError(f"unsupported URI scheme in {uri[:100]!r}")
        if scheme == "tel":
            number, _, param_text = rest.partition(";")
            if not _TEL_NUMBER.fullmatch(number):
                raise SipUriError(f"bad tel number in {uri!r}")
            return cls(scheme="tel", user=number, params=_parse_params(param_text, uri))

        # The user part may hold ';' and '?' but '@' appears nowhere after it, so split there first.
        user: str | None = None
        password: str | None = None
        at = rest.rfind("@")
        if at >= 0:
            userinfo = rest[:at]
            rest = rest[at + 1 :]
            user, colon, pw = userinfo.partition(":")
            if not user:
                raise SipUriError(f"empty user part in {uri!r}")
            password = pw if colon else None
        rest, qmark, header_text = rest.partition("?")
        hostport, _, param_text = rest.partition(";")
        host, port = parse_hostport(hostport, uri)
        return cls(
            scheme=scheme,
            user=user,
            password=password,
            host=host,
            port=port,
            params=_parse_params(param_text, uri) if param_text else {},
            headers=_parse_headers(header_text, uri) if qmark else {},
        )

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.scheme == "tel":
            parts.append(self.user or "")
        else:
            if self.user is not None:
                parts.append(self.user)
                if self.password is not None:
                    parts += (":", self.password)
                parts.append("@")
            parts.append(f"[{self.host}]" if ":" in self.host else self.host)
            if self.port is not None:
                parts += (":", str(self.port))
        for name, value in self.params.items():
            parts += (";", name) if value is None else (";", name, "=", value)
        if self.headers:
            parts += ("?", "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(parts)

    @property
    def transport(self) -> str:
        """The transport name "udp", "tcp" or "tls": transport= param, else TLS for sips, UDP for sip."""
        if self.scheme == "sips":
            return "tls"
        value = self.params.get("transport")
        return value.lower() if value else "udp"

    def host_port(self) -> tuple[str, int]:
        """Host (no brackets) and port, defaulting to 5060, or 5061 for sips / transport=tls."""
        if self.scheme == "tel":
            raise SipUriError("a tel URI has no host to send to")
        if self.port is not None:
            return self.host, self.port
        return self.host, DEFAULT_TLS_PORT if self.transport == "tls" else DEFAULT_PORT

    @property
    def aor(self) -> str:
        """Address of record text, scheme:user@host, without port, parameters or headers."""
        if self.scheme == "tel":
            return f"tel:{self.user}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}:{self.user}@{host}" if self.user is not None else f"{self.scheme}:{host}"

    def copy(self) -> SipUri:
        return SipUri(
            self.scheme, self.user, self.password, self.host, self.port, dict(self.params), dict(self.headers)
        )
