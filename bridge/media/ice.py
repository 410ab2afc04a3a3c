"""Which local addresses the WebRTC leg offers as ICE host candidates (``media.ice_host_addresses``).

aioice gathers on every interface except loopback and has no per-connection setting, so this is a
process-wide choice made once at start-up by the composition root. Useful on multi-homed hosts (keep
ICE off internal networks) and for a loopback-only demo or test stack.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import aioice.ice


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Offer only ``addresses`` as host candidates (IPv4 and/or IPv6 literals). Empty: aioice's default."""
    if not addresses:
        return
    parsed = [ipaddress.ip_address(a) for a in addresses]  # validated by the config already
    ipv4 = [str(a) for a in parsed if a.version == 4]
    ipv6 = [str(a) for a in parsed if a.version == 6]

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return (ipv4 if use_ipv4 else []) + (ipv6 if use_ipv6 else [])

    aioice.ice.get_host_addresses = host_addresses
