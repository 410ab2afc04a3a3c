"""Which sources may make the UA look up and contact a host they name.

A host name found in a received message (Contact, Record-Route, Via) is resolved and contacted only when the
message came from a trusted source: an address in `SipSettings.trusted_hosts` (IP or CIDR) or one a configured
host name there resolves to (the trunk). Anybody else's names are never resolved: responses go to the source
address (RFC 3261 18.2.2 with RFC 3581), and requests in a dialog with such a peer go to where its INVITE came
from. IP literals cost no look-up, but a dialog still uses them only as the RFC says (its Contact), never a
host named by a packet that matched nothing of ours.
"""

from __future__ import annotations

import ipaddress

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustPolicy:
    def __init__(self, trusted_hosts: tuple[str, ...] | list[str]) -> None:
        self.networks: list[IpNetwork] = []
        self.names: set[str] = set()
        for entry in trusted_hosts:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.names.add(entry.lower())
        self._ips: set[str] = set()  # what trusted names resolved to

    def note_resolved(self, name: str, ip: str) -> None:
        if name.lower() in self.names:
            self._ips.add(ip)

    def is_trusted(self, ip: str) -> bool:
        if ip in self._ips:
            return True
        try:
            addr = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return False
        return any(addr in net for net in self.networks)
