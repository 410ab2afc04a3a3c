"""RFC 3263 server location: a SIP URI -> the ordered list of (transport, IP, port) targets to try.

NAPTR (SIP+D2U, SIP+D2T, SIPS+D2T) -> SRV (_sip._udp, _sip._tcp, _sips._tcp; RFC 2782 priority order and
weighted random choice within a priority) -> A/AAAA. A numeric IP or an explicit port skips NAPTR and SRV
(4.1/4.2); a transport= parameter skips NAPTR. The caller tries the targets in order, moving on after a
timeout, a transport failure or a 503 (4.3).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bridge.sip.resolver import NaptrRecord, SrvRecord
from bridge.sip.transport import is_ip_literal
from bridge.sip.uri import DEFAULT_PORT, DEFAULT_TLS_PORT, SipUri

logger = logging.getLogger(__name__)

NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}
MAX_TARGETS = 16  # a zone listing hundreds of records must not make us try them all
DOWN_FOR_S = 60.0  # a target that timed out, refused or answered 503 is tried last for this long


class DnsLookup(Protocol):
    async def naptr(self, name: str) -> list[NaptrRecord]: ...
    async def srv(self, name: str) -> list[SrvRecord]: ...
    async def addresses(self, name: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Target:
    transport: str  # udp | tcp | tls
    host: str  # an IP address
    port: int
    via: str = ""  # the DNS name it came from (logs)


def order_srv(records: list[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782: ascending priority; within one priority a weighted random order (weight 0 records get a
    small chance, placed first in the running sum as the RFC says)."""
    out: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        pool = [r for r in records if r.priority == priority]
        rng.shuffle(pool)  # "any order" (so equal zero weights share the load) ...
        pool.sort(key=lambda r: r.weight != 0)  # ... with the weight 0 ones first
        while pool:
            total = sum(r.weight for r in pool)
            pick = rng.randint(0, total)
            running = 0
            for index, record in enumerate(pool):
                running += record.weight
                if running >= pick:
                    out.append(pool.pop(index))
                    break
    return out


class TargetLocator:
    """Finds the targets of one URI. `fallback` resolves a bare host the A/AAAA way of the OS (getaddrinfo:
    /etc/hosts too) when DNS gave no address for it."""

    def __init__(self, lookup: DnsLookup, *, rng: random.Random | None = None,
                 fallback: Callable[[str], Awaitable[str]] | None = None) -> None:
        self.lookup = lookup
        self.rng = rng or random.Random()
        self.fallback = fallback
        # (transport, ip, port) -> monotonic time until which it is tried last: without this every new call
        # would wait a whole transaction timeout (64 x T1) on a dead primary before failing over
        self._down: dict[tuple[str, str, int], float] = {}

    def note_failure(self, transport: str, host: str, port: int) -> None:
        now = time.monotonic()
        self._down = {key: until for key, until in self._down.items() if until > now}  # stays small
        self._down[(transport, host, port)] = now + DOWN_FOR_S

    def _is_down(self, target: Target) -> bool:
        until = self._down.get((target.transport, target.host, target.port))
        return until is not None and until > time.monotonic()

    @staticmethod
    def applies(uri: SipUri) -> bool:
        """Only a host name without a port needs NAPTR/SRV; everything else the transport resolves itself."""
        return uri.port is None and not is_ip_literal(uri.host)

    async def locate(self, uri: SipUri) -> list[Target]:
        host = uri.host.lower().rstrip(".")
        secure = uri.scheme == "sips"
        if "transport" in uri.params:
            transports = [uri.transport]
            srv_names = [(t, SRV_PREFIX[t] + host) for t in transports if t in SRV_PREFIX]
        else:
            srv_names = await self._from_naptr(host, secure)
            if not srv_names:  # no usable NAPTR: SRV for each transport we speak (4.1)
                srv_names = [("tls", SRV_PREFIX["tls"] + host)] if secure else [
                    ("udp", SRV_PREFIX["udp"] + host), ("tcp", SRV_PREFIX["tcp"] + host)]
        targets: list[Target] = []
        for transport, name in srv_names:
            for record in order_srv([r for r in await self.lookup.srv(name) if r.target], self.rng):
                for ip in await self.lookup.addresses(record.target):
                    targets.append(Target(transport, ip, record.port, record.target))
        if not targets:  # no SRV: the host's own A/AAAA on the default port (4.2)
            transport = uri.transport if "transport" in uri.params or secure else "udp"
            port = DEFAULT_TLS_PORT if transport == "tls" else DEFAULT_PORT
            addresses = await self.lookup.addresses(host)
            if not addresses and self.fallback is not None:
                try:
                    addresses = [await self.fallback(host)]
                except Exception as exc:  # the fallback's own error type (SipTransportError); nothing to try
                    logger.info("cannot resolve %s: %s", host, exc)
            targets = [Target(transport, ip, port, host) for ip in addresses]
        unique = sorted(dict.fromkeys(targets), key=self._is_down)[:MAX_TARGETS]  # stable: RFC order otherwise
        logger.info("RFC 3263 targets for %s: %s", host,
                    ", ".join(f"{t.transport}:{t.host}:{t.port}" for t in unique) or "none")
        return unique

    async def _from_naptr(self, host: str, secure: bool) -> list[tuple[str, str]]:
        records = [r for r in await self.lookup.naptr(host)
                   if r.flags == "s" and r.service in NAPTR_SERVICES and r.replacement
                   and (not secure or NAPTR_SERVICES[r.service] == "tls")]
        records.sort(key=lambda r: (r.order, r.preference))
        return [(NAPTR_SERVICES[r.service], r.replacement) for r in records]


FAILOVER_STATUS = 503  # 4.3: a 503 makes the client try the next target, like a timeout or transport error


def next_hop_uri(request_uri: str, routes: list[str]) -> SipUri:
    """Where an out-of-dialog request goes first: its top Route (the outbound proxy), else its Request-URI."""
    from bridge.sip.message import NameAddr

    return NameAddr.parse(routes[0]).uri if routes else SipUri.parse(request_uri)
