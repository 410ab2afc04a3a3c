"""REFER (RFC 3515) pieces: Refer-To and Replaces (RFC 3891) parsing, message/sipfrag bodies, and the REFER and
NOTIFY requests of a transfer sent inside a dialog.

The implicit subscription a REFER creates is reported with NOTIFY (Event: refer) carrying a sipfrag status line:
"SIP/2.0 100 Trying" while the new call is set up (Subscription-State: active), then its final status line
(Subscription-State: terminated;reason=noresource).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from bridge.sip.dialog import Dialog
from bridge.sip.message import NameAddr, Response, SipParseError
from bridge.sip.uri import SipUri

SIPFRAG = "message/sipfrag;version=2.0"


class ReferError(ValueError):
    """A REFER we cannot act on (answered 400)."""


@dataclass(frozen=True)
class Replaces:
    """The dialog an attended transfer's new INVITE replaces (RFC 3891)."""

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Replaces:
        call_id, *params = [p.strip() for p in text.split(";")]
        values: dict[str, str | None] = {}
        for param in params:
            name, eq, value = param.partition("=")
            values[name.strip().lower()] = value.strip() if eq else None
        to_tag, from_tag = values.get("to-tag"), values.get("from-tag")
        if not call_id or not to_tag or not from_tag:
            raise ReferError(f"Replaces needs a Call-ID, to-tag and from-tag: {text!r}")
        return cls(call_id, to_tag, from_tag, "early-only" in values)

    def header(self) -> str:
        """The value of a Replaces header field."""
        text = f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}"
        return f"{text};early-only" if self.early_only else text

    def uri_header(self) -> str:
        """Escaped for a Refer-To URI's ?Replaces= header."""
        return quote(self.header(), safe="")


@dataclass(frozen=True)
class ReferTarget:
    uri: SipUri  # without URI headers
    replaces: Replaces | None

    @property
    def user(self) -> str:
        return self.uri.user or ""


def parse_refer_to(value: str | None) -> ReferTarget:
    """The REFER's Refer-To (also its compact form, r): a sip/sips URI, possibly with ?Replaces=..."""
    if not value:
        raise ReferError("REFER without Refer-To")
    try:
        uri = NameAddr.parse(value.strip()).uri
    except (SipParseError, ValueError) as exc:
        raise ReferError(f"unreadable Refer-To {value!r}: {exc}") from exc
    if uri.scheme not in ("sip", "sips"):
        raise ReferError(f"Refer-To is not a SIP URI: {value!r}")
    replaces = None
    for name, text in uri.headers.items():
        if name.lower() == "replaces":
            replaces = Replaces.parse(unquote(text))
    target = uri.copy()
    target.headers.clear()
    return ReferTarget(target, replaces)


def parse_sipfrag(body: bytes) -> tuple[int, str] | None:
    """The status line of a message/sipfrag NOTIFY body, or None when it holds none."""
    line = body.split(b"\n", 1)[0].strip().decode("utf-8", "replace")
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if version.upper() != "SIP/2.0" or len(code) != 3 or not code.isdigit():
        return None
    return int(code), reason.strip()


def is_refer_event(event: str | None) -> bool:
    """Event: refer (possibly with ;id=...), the package of a REFER's implicit subscription."""
    return bool(event) and str(event).split(";", 1)[0].strip().lower() == "refer"


def sipfrag(status: int, reason: str) -> bytes:
    """A message/sipfrag body holding just a status line (RFC 3420)."""
    return f"SIP/2.0 {status} {reason}\r\n".encode()


async def notify_refer(dialog: Dialog, status: int, reason: str, *, final: bool) -> Response:
    """Report the referred call's progress to the referrer."""
    state = "terminated;reason=noresource" if final else "active;expires=60"
    return await dialog.request("NOTIFY", body=sipfrag(status, reason), content_type=SIPFRAG,
                                headers=[("Event", "refer"), ("Subscription-State", state)])


async def send_refer(dialog: Dialog, refer_to: str, *, referred_by: str | None = None) -> Response:
    """Ask the peer to call ``refer_to`` (a URI) instead: returns the REFER's final response (202 = accepted)."""
    headers = [("Refer-To", f"<{refer_to}>")]
    if referred_by:
        headers.append(("Referred-By", f"<{referred_by}>"))
    return await dialog.request("REFER", headers=headers)
