"""HTTP Digest authentication as used by SIP (RFC 2617, RFC 7616, RFC 3261 section 22).

Client side: `parse_challenge` + `build_authorization` answer a 401/407. Server side:
`make_challenge` + `verify_authorization` check the credentials of requests sent to the bridge.
Pure code; passwords never appear in reprs or error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.sip.parse_error import SipParseError

__all__ = [
    "ALGORITHMS",
    "Challenge",
    "Credentials",
    "DigestError",
    "build_authorization",
    "make_challenge",
    "parse_authorization",
    "parse_challenge",
    "verify_authorization",
]

# Digest algorithm name (upper-case, without "-sess") -> hashlib name.
ALGORITHMS: dict[str, str] = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}
MAX_HEADER = 8192


class DigestError(SipParseError):
    """A challenge or authorization that cannot be used (malformed, unsupported algorithm or qop)."""


@dataclass
class Credentials:
    username: str
    password: str = field(repr=False)
    realm: str | None = None  # None: answer any realm; else only challenges for this realm


@dataclass
class Challenge:
    realm: str
    nonce: str
    scheme: str = "Digest"
    opaque: str | None = None
    algorithm: str = "MD5"  # "MD5" | "MD5-sess" | "SHA-256" | "SHA-256-sess" | ...
    qop: list[str] = field(default_factory=list)  # e.g. ["auth", "auth-int"]; empty: RFC 2069 style
    stale: bool = False


def _parse_auth_params(text: str) -> dict[str, str]:
    """Parse `a=token, b="quoted, \\"x\\""` into {a: value} with quotes removed (names lower-case)."""
    params: dict[str, str] = {}
    i = 0
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            raise DigestError(f"auth parameter without '=' in {text[:80]!r}")
        name = text[i:eq].strip().lower()
        if not name or any(c in name for c in ' \t,"'):
            raise DigestError(f"bad auth parameter name in {text[:80]!r}")
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            out: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise DigestError("unterminated quoted string in auth parameters")
                ch = text[i]
                if ch == "\\" and i + 1 < n:
                    out.append(text[i + 1])
                    i += 2
                elif ch == '"':
                    i += 1
                    break
                else:
                    out.append(ch)
                    i += 1
            value = "".join(out)
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] != ",":
                raise DigestError(f"junk after quoted auth parameter in {text[:80]!r}")
        else:
            comma = text.find(",", i)
            end = n if comma < 0 else comma
            value = text[i:end].strip()
            i = end
        params[name] = value
    return params


def _split_scheme(value: str) -> tuple[str, dict[str, str]]:
    if len(value) > MAX_HEADER:
        raise DigestError("authentication header too long")
    text = value.strip()
    scheme, _, rest = text.partition(" ")
    if not scheme:
        raise DigestError("empty authentication header")
    if scheme.lower() != "digest":
        raise DigestError(f"unsupported authentication scheme {scheme[:30]!r}")
    return "Digest", _parse_auth_params(rest)


def parse_challenge(header_value: str) -> Challenge:
    """Parse a WWW-Authenticate / Proxy-Authenticate value. Raises DigestError (a SipParseError)."""
    scheme, p = _split_scheme(header_value)
    if "realm" not in p or "nonce" not in p:
        raise DigestError("digest challenge without realm or nonce")
    qop = [q.strip() for q in p["qop"].split(",") if q.strip()] if "qop" in p else []
    return Challenge(
        realm=p["realm"],
        nonce=p["nonce"],
        scheme=scheme,
        opaque=p.get("opaque"),
        algorithm=p.get("algorithm", "MD5"),
        qop=qop,
        stale=p.get("stale", "").lower() == "true",
    )


def _hasher(algorithm: str) -> tuple[Callable[[str | bytes], str], bool]:
    """(hex digest function, is -sess) for a digest algorithm name."""
    name = algorithm.upper()
    sess = name.endswith("-SESS")
    base = name[:-5] if sess else name
    hash_name = ALGORITHMS.get(base)
    if hash_name is None:
        raise DigestError(f"unsupported digest algorithm {algorithm[:30]!r}")
    try:
        hashlib.new(hash_name)
    except ValueError as exc:  # e.g. SHA-512-256 missing from this OpenSSL build
        raise DigestError(f"digest algorithm {algorithm} not available here") from exc

    def h(data: str | bytes) -> str:
        return hashlib.new(hash_name, data.encode("utf-8") if isinstance(data, str) else data).hexdigest()

    return h, sess


def _response(
    h: Callable[[str | bytes], str],
    sess: bool,
    *,
    username: str,
    realm: str,
    password: str,
    nonce: str,
    cnonce: str,
    nc: str,
    qop: str | None,
    method: str,
    uri: str,
    body: bytes = b"",
) -> str:
    ha1 = h(f"{username}:{realm}:{password}")
    if sess:
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    if qop == "auth-int":
        body_hash = h(body)
        ha2 = h(f"{method}:{uri}:{body_hash}")
    else:
        ha2 = h(f"{method}:{uri}")
    if qop:
        return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return h(f"{ha1}:{nonce}:{ha2}")


def _quote(value: str) -> str:
    if any(c in value for c in "\r\n\x00"):
        raise DigestError("CR, LF or NUL in an authentication parameter")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_authorization(
    ch: Challenge,
    *,
    method: str,
    uri: str,
    credentials: Credentials,
    nc: int = 1,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The Authorization / Proxy-Authorization value answering `ch` for a request.

    Prefers qop=auth, then auth-int (hashing `body`), then the RFC 2069 form when no qop was offered.
    `nc` must grow by one for each request reusing the same nonce. Raises DigestError.
    """
    if credentials.realm is not None and credentials.realm != ch.realm:
        raise DigestError(f"no credentials for realm {ch.realm!r}")
    h, sess = _hasher(ch.algorithm)
    if "auth" in ch.qop:
        qop: str | None = "auth"
    elif "auth-int" in ch.qop:
        qop = "auth-int"
    elif ch.qop:
        raise DigestError(f"unsupported qop {ch.qop!r}")
    else:
        qop = None
    if cnonce is None:
        cnonce = secrets.token_hex(8)
    nc_text = f"{nc:08x}"
    response = _response(
        h,
        sess,
        username=credentials.username,
        realm=ch.realm,
        password=credentials.password,
        nonce=ch.nonce,
        cnonce=cnonce,
        nc=nc_text,
        qop=qop,
        method=method,
        uri=uri,
        body=body,
    )
    parts = [
        f"username={_quote(credentials.username)}",
        f"realm={_quote(ch.realm)}",
        f"nonce={_quote(ch.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={ch.algorithm}",
    ]
    if qop is not None or sess:
        parts.append(f"cnonce={_quote(cnonce)}")
    if qop is not None:
        parts += (f"qop={qop}", f"nc={nc_text}")
    if ch.opaque is not None:
        parts.append(f"opaque={_quote(ch.opaque)}")
    return "Digest " + ", ".join(parts)


def make_challenge(realm: str, *, algorithm: str = "MD5", qop: bool = True, stale: bool = False) -> tuple[str, str]:
    """(WWW-Authenticate value, nonce) for a new challenge; the caller remembers the nonce."""
    _hasher(algorithm)  # refuse algorithms we could not verify
    nonce = secrets.token_urlsafe(24)
    parts = [f"realm={_quote(realm)}", f"nonce={_quote(nonce)}", f"algorithm={algorithm}"]
    if qop:
        parts.append('qop="auth"')
    if stale:
        parts.append("stale=TRUE")
    return "Digest " + ", ".join(parts), nonce


def parse_authorization(value: str) -> dict[str, str]:
    """Parameters of an Authorization / Proxy-Authorization Digest value (names lower-case, unquoted)."""
    return _split_scheme(value)[1]


def verify_authorization(
    value: str,
    *,
    method: str,
    password_for: Callable[[str, str], str | None],
    nonce_ok: Callable[[str], bool],
    request_uri: str | None = None,
) -> str | None:
    """The authenticated username, or None for anything wrong (malformed, unknown user, bad digest,
    nonce refused by `nonce_ok`, uri parameter != `request_uri` when given).

    `password_for(username, realm)` returns the password or None. Only qop=auth and no-qop are accepted.
    To tell a stale nonce apart (to answer stale=TRUE), check `parse_authorization(value)["nonce"]`.
    """
    try:
        p = parse_authorization(value)
        h, sess = _hasher(p.get("algorithm", "MD5"))
    except DigestError:
        return None
    try:
        username, realm, nonce, uri, response = (p[k] for k in ("username", "realm", "nonce", "uri", "response"))
    except KeyError:
        return None
    qop = p.get("qop")
    if qop not in (None, "auth"):
        return None
    cnonce = p.get("cnonce", "")
    nc = p.get("nc", "")
    if (qop is not None or sess) and not cnonce:
        return None
    if qop is not None and (len(nc) != 8 or any(c not in "0123456789abcdefABCDEF" for c in nc)):
        return None
    if request_uri is not None and uri != request_uri:
        return None
    if not nonce_ok(nonce):
        return None
    password = password_for(username, realm)
    if password is None:
        return None
    expected = _response(
        h,
        sess,
        username=username,
        realm=realm,
        password=password,
        nonce=nonce,
        cnonce=cnonce,
        nc=nc,
        qop=qop,
        method=method,
        uri=uri,
    )
    if not hmac.compare_digest(expected.encode(), response.lower().encode("utf-8", "replace")):
        return None
    return username
