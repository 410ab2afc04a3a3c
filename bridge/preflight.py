"""Start-up checks for settings that would make every call fail, each reported as ONE warning line.

The config validator checks a setting's form; these check it against the machine: no usable ICE host address,
permissions that admit nobody, an RTP port range that cannot be bound, a trunk proxy that does not resolve. None
of them stops the bridge (the admin may be fixing the network while it starts), but each says what to change.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from bridge.config import Config

log = logging.getLogger("bridge.preflight")

RESOLVE_TIMEOUT_S = 5.0
PORTS_TO_TRY = 8


async def run_preflight(config: Config, *,
                        host_addresses: Callable[[bool, bool], Sequence[str]] | None = None) -> list[str]:
    """Run every check; log and return one warning per problem (an empty list: nothing found)."""
    warnings = [w for w in (
        check_ice_addresses(config, host_addresses),
        check_permissions(config),
        check_rtp_ports(config),
        await check_trunk_proxy(config),
    ) if w]
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def _bindable(address: str, port: int = 0) -> OSError | None:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((address, port))
    except OSError as e:
        return e
    return None


def check_ice_addresses(config: Config,
                        host_addresses: Callable[[bool, bool], Sequence[str]] | None = None) -> str | None:
    """The WebRTC leg needs at least one local address to offer as an ICE host candidate."""
    configured = list(config.media.ice_host_addresses)
    if configured:
        usable = [a for a in configured if _bindable(a) is None]
        if not usable:
            return (f"media.ice_host_addresses: none of {', '.join(configured)} is an address of this machine, so "
                    "the WebRTC leg offers no ICE candidates and every call fails with ice_failed; list addresses "
                    "this host has (see `ip addr`), or leave it empty for every non-loopback interface")
        return None
    if host_addresses is None:
        import aioice.ice  # the gathering function restrict_host_addresses may have replaced

        host_addresses = aioice.ice.get_host_addresses
    try:
        found = list(host_addresses(True, True))
    except Exception as e:  # an unusual interface table must not stop the start
        return f"media.ice_host_addresses: could not list this machine's addresses ({e}); calls may fail"
    if not found:
        return ("media.ice_host_addresses: this machine has no non-loopback address for ICE host candidates, so "
                "every call fails with ice_failed; set media.ice_host_addresses (e.g. [\"127.0.0.1\"] for a "
                "loopback-only test) or configure a TURN server in media.ice_servers")
    return None


def check_permissions(config: Config) -> str | None:
    """Warn when no Matrix user of this homeserver could use the bridge."""
    rules = dict(config.bridge.permissions) or {config.homeserver.domain: "user"}
    domain = config.homeserver.domain
    admitted = [who for who, level in rules.items() if level in ("user", "admin")]
    if not admitted:
        return ("bridge.permissions: every entry is \"none\", so nobody can use the bridge; grant your server, "
                f"e.g. {{\"{domain}\": user}}")
    own = [who for who in admitted
           if who == "*" or who == domain or (who.startswith("@") and who.partition(":")[2] == domain)]
    if not own:
        return (f"bridge.permissions: only {', '.join(sorted(admitted))} may use the bridge, none of them on this "
                f"homeserver ({domain}); add e.g. \"{domain}\": user")
    return None


def check_rtp_ports(config: Config) -> str | None:
    """Bind a few even ports of the RTP range on media.rtp_host; warn when none can be bound."""
    m = config.media
    first = m.port_start + (m.port_start % 2)
    ports = list(range(first, m.port_end, 2))
    if len(ports) > PORTS_TO_TRY:
        step = len(ports) / PORTS_TO_TRY
        ports = [ports[int(i * step)] for i in range(PORTS_TO_TRY)]
    errors = []
    for port in ports:
        error = _bindable(m.rtp_host, port)
        if error is None:
            return None
        errors.append(error)
    reason = (errors[0].strerror or str(errors[0])) if errors else "no even port"
    return (f"media.port_start..port_end: none of the {len(ports)} RTP ports tried in {m.port_start}-{m.port_end} "
            f"can be bound on {m.rtp_host} ({reason}), so calls to SIP will fail; pick a free range or fix "
            "media.rtp_host")


async def check_trunk_proxy(config: Config, timeout: float = RESOLVE_TIMEOUT_S) -> str | None:
    """The trunk proxy's host must resolve: A/AAAA as the SIP transport resolves it, or for a domain without a
    port NAPTR/SRV/A/AAAA (RFC 3263) as the UA locates it."""
    from bridge.sip.uri import SipUri

    proxy = config.sip.trunk.proxy
    try:
        uri = SipUri.parse(proxy)
    except ValueError:
        return None  # the validator already accepted it; the SIP layer will say more
    host = uri.host.strip("[]")
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if uri.port is None:
        return await _check_rfc3263(config, uri, timeout)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM), timeout)
    except TimeoutError:
        return f"sip.trunk.proxy: {host!r} did not resolve within {timeout:g}s, so outbound calls will fail"
    except OSError as e:
        return (f"sip.trunk.proxy: {host!r} does not resolve ({e.strerror or e}), so outbound calls will fail; "
                "check the name or use an IP address")
    if not infos:
        return f"sip.trunk.proxy: {host!r} does not resolve, so outbound calls will fail"
    return None


async def _check_rfc3263(config: Config, uri: Any, timeout: float) -> str | None:
    from bridge.sip.resolver import DnsResolver
    from bridge.sip.targets import TargetLocator

    loop = asyncio.get_running_loop()

    async def os_resolve(name: str) -> str:
        infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
        return str(infos[0][4][0])

    dns = config.sip.dns
    locator = TargetLocator(DnsResolver(dns.nameservers, timeout=min(timeout, dns.timeout_s)), fallback=os_resolve)
    try:
        targets = await asyncio.wait_for(locator.locate(uri), 5 * timeout)
    except TimeoutError:
        return f"sip.trunk.proxy: {uri.host!r} did not resolve within {5 * timeout:g}s, so outbound calls will fail"
    if not targets:
        return (f"sip.trunk.proxy: {uri.host!r} does not resolve (no NAPTR, SRV, A or AAAA record), so outbound "
                "calls will fail; check the name, sip.dns.nameservers, or use an IP address")
    return None
