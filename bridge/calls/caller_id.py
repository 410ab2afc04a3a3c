"""Caller ID on a call in progress: who the phone side is, as a trusted SIP hop asserts it (P-Asserted-Identity),
told to the Matrix party with MSC3086 ``m.call.asserted_identity`` once per change; and what outbound INVITEs
assert about the Matrix caller (bridge.caller_ids + sip.trunk.identity_header).

Trust: an identity header is read only from a message whose source is trusted: an inbound INVITE or in-dialog
request from sip.inbound.trusted_sources, or a response to our INVITE when the trunk proxy is such a source.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..call.identity import (
    ASSERTED_IDENTITY_TYPES,
    Identity,
    asserted_identity_content,
    identity_for,
    outbound_identity_headers,
    privacy_withholds_id,
)
from ..config import CallerId, DialplanConfig
from ..logs import CallLogger
from ..sip.headers import Headers, split_list
from ..sip.message import NameAddr, Response, SipParseError
from ..sip.server import ServerInvite, ServerRequest


@dataclass
class CallerIdSettings:
    identity_header: str = "none"  # sip.trunk.identity_header: none | pai | ppi
    caller_ids: Mapping[str, CallerId] = field(default_factory=dict)  # bridge.caller_ids
    identity_domain: str = "localhost"  # host part of the asserted sip: URI (the trunk's From domain)
    trunk_trusted: bool = False  # the trunk proxy is a trusted source: believe PAI in its responses
    ghost_mxid: Callable[[str], str | None] = lambda _number: None  # the Matrix ID standing for a number

    def outbound_headers(self, mxid: str) -> list[tuple[str, str]]:
        return outbound_identity_headers(self.identity_header, self.caller_ids.get(mxid), self.identity_domain)


def asserted_identity(headers: Headers, plan: DialplanConfig) -> Identity | None:
    """The identity a trusted message's P-Asserted-Identity names (None if absent, withheld or not a number)."""
    if privacy_withholds_id(headers.get("Privacy")):
        return None
    for line in headers.get_all("P-Asserted-Identity"):
        for value in split_list(line):
            try:
                addr = NameAddr.parse(value)
            except (SipParseError, ValueError):
                continue
            identity = identity_for(addr.uri.user, addr.display, plan)
            if identity is not None:
                return identity
    return None


@dataclass
class CallerIdContext:
    """What one call needs to announce the phone side's identity: built by the manager per call."""

    settings: CallerIdSettings
    plan: DialplanConfig
    trusted: Callable[[str], bool]  # is this source host trusted to assert identities?
    initial: Identity | None = None  # what the INVITE asserted (inbound calls)


class CallerIdAnnouncer:
    """Sends MSC3086 asserted identity events for one call, each identity once."""

    def __init__(self, ctx: CallerIdContext, *, call_id: str, party_id: str, format_number: Callable[[str], str],
                 send: Callable[[str, dict[str, Any]], Awaitable[Any]], log: CallLogger) -> None:
        self.ctx = ctx
        self.call_id = call_id
        self.party_id = party_id
        self.format_number = format_number
        self.send = send
        self.log = log
        self.current: Identity | None = None

    async def announce(self, identity: Identity | None) -> None:
        if identity is None or identity == self.current:
            return
        self.current = identity
        mxid = self.ctx.settings.ghost_mxid(identity.number)
        content = asserted_identity_content(self.call_id, self.party_id, mxid,
                                            identity.name or self.format_number(identity.number))
        self.log.info("phone side asserted as +%s", identity.number)
        for event_type in ASSERTED_IDENTITY_TYPES:
            await self.send(event_type, content)

    async def from_response(self, resp: Response) -> None:
        """The trunk's answer to our INVITE: believed only from a trusted source. Where the SIP core records the
        address a response came from (``Response.source``), that address decides; else the trunk proxy's."""
        source = getattr(resp, "source", None)
        trusted = self.ctx.trusted(source[0]) if source else self.ctx.settings.trunk_trusted
        if trusted:
            await self.announce(asserted_identity(resp.headers, self.ctx.plan))

    async def from_request(self, req: ServerRequest | ServerInvite) -> None:
        """An in-dialog re-INVITE or UPDATE, which may assert a new identity (e.g. after a transfer)."""
        if req.request.method in ("INVITE", "UPDATE") and self.ctx.trusted(req.source.addr[0]):
            await self.announce(asserted_identity(req.request.headers, self.ctx.plan))
