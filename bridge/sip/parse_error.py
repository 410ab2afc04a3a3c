"""The one exception the SIP parsers raise for anything malformed read from the network."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.sip.message import Request


class SipParseError(ValueError):
    """Malformed SIP text.

    `partial` is set by `parse_message` when the request line and the Via/From/To/Call-ID/CSeq
    headers could be read, so the transport can still answer 400 Bad Request.
    """

    def __init__(self, message: str, *, partial: Request | None = None) -> None:
        super().__init__(message)
        self.partial = partial
