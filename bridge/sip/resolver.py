"""DNS look-ups for RFC 3263 (NAPTR, SRV, A/AAAA) with dnspython's asyncio resolver and a TTL cache.

Only names from the configuration are looked up here (the trunk proxy): see trust.py for why a name taken
from a received packet is never resolved.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

logger = logging.getLogger(__name__)

NEGATIVE_TTL = 30.0  # an empty or failed answer is remembered this long (the SOA minimum is not worth reading)
MAX_TTL = 3600.0  # a huge TTL must not pin a dead record for days
MAX_CACHED = 256


@dataclass(frozen=True, slots=True)
class NaptrRecord:
    order: int
    preference: int
    flags: str
    service: str
    replacement: str  # without the trailing dot


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # without the trailing dot; "" is RFC 2782's "." (service not available)


Records = list[Any]
QueryFn = Callable[[str, str], Awaitable[tuple[Records, float]]]
"""(name, "NAPTR"|"SRV"|"A"|"AAAA") -> (records, TTL in seconds); an empty list for no data."""


def _name(value: Any) -> str:
    return str(value).rstrip(".").lower()


class DnsResolver:
    """NAPTR/SRV/A/AAAA with a cache that keeps each answer for its TTL.

    `nameservers` are "ip" or "ip:port" ("[v6]:port"); empty means the system's /etc/resolv.conf.
    `query` replaces the network (unit tests)."""

    def __init__(self, nameservers: Sequence[str] = (), *, timeout: float = 3.0, query: QueryFn | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[Records, float]] = OrderedDict()
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._nameservers = tuple(nameservers)
        self._query = query or self._dns_query
        self.queries = 0  # sent to the network (or to `query`): cache hits do not count

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            if self._nameservers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [_nameserver(text) for text in self._nameservers]
            else:
                resolver = dns.asyncresolver.Resolver()  # /etc/resolv.conf
            self._resolver = resolver
        return self._resolver

    async def _dns_query(self, name: str, rdtype: str) -> tuple[Records, float]:
        try:
            resolver = self._get_resolver()
            answer = await resolver.resolve(name, rdtype, lifetime=self.timeout, search=False,
                                            raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.resolver.NoResolverConfiguration,
                dns.exception.Timeout) as exc:
            logger.info("DNS %s %s failed: %s", rdtype, name, exc)
            return [], NEGATIVE_TTL
        if answer.rrset is None:
            return [], NEGATIVE_TTL
        return list(answer.rrset), float(answer.rrset.ttl)

    async def _lookup(self, name: str, rdtype: str) -> Records:
        key = (name.lower().rstrip("."), rdtype)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        self.queries += 1
        records, ttl = await self._query(key[0], rdtype)
        self._cache[key] = (records, now + min(max(ttl, 0.0), MAX_TTL))
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return records

    async def naptr(self, name: str) -> list[NaptrRecord]:
        return [NaptrRecord(int(r.order), int(r.preference), _text(r.flags).lower(), _text(r.service).upper(),
                            _name(r.replacement)) for r in await self._lookup(name, "NAPTR")]

    async def srv(self, name: str) -> list[SrvRecord]:
        return [SrvRecord(int(r.priority), int(r.weight), int(r.port), _name(r.target))
                for r in await self._lookup(name, "SRV")]

    async def addresses(self, name: str) -> list[str]:
        """IPv4 addresses first, then IPv6."""
        out = [str(r.address) for r in await self._lookup(name, "A")]
        out += [str(r.address) for r in await self._lookup(name, "AAAA")]
        return out


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _nameserver(text: str) -> dns.nameserver.Do53Nameserver:
    host, port = parse_nameserver(text)
    return dns.nameserver.Do53Nameserver(host, port)


def parse_nameserver(text: str) -> tuple[str, int]:
    """ "1.2.3.4", "1.2.3.4:5353", "::1" or "[::1]:5353" -> (address, port); ValueError if malformed."""
    import ipaddress

    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad nameserver {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port
