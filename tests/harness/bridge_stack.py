"""The whole product on loopback, for end-to-end tests and the demo.

Synapse (real, SQLite) + the bridge (in this process, real config parsing, its own registration) + a
SIP "trunk" port for sipp + Matrix users. Ports are picked free at start.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridge.app import Bridge
from bridge.config import Config, build_registration, parse_config
from tests.harness.synapse import SynapseServer

SERVER_NAME = "bridge.test"


def free_udp_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def stable_port(host: str = "127.0.0.1") -> int:
    """A port free for UDP and TCP, below the kernel's ephemeral range (32768-60999).

    The stack keeps its SIP and trunk ports for a whole session while the processes behind them come and go; a port
    from the ephemeral range could meanwhile be taken by any client socket (aiortc's ICE, a resolver), and the next
    sipp on it would fail to bind. The RTP ranges use 20000-39000, so these come from 10000-19999.
    """
    import random
    import socket

    for _ in range(200):
        port = random.randrange(10000, 20000)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                udp.bind((host, port))
                tcp.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


def free_rtp_range(size: int = 40) -> tuple[int, int]:
    """A port range for the bridge's RTP sockets, away from the ephemeral range other tests use."""
    import random
    import socket

    for _ in range(50):
        start = random.randrange(20000, 30000, 2)
        ok = True
        for port in range(start, start + size):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return start, start + size
    raise RuntimeError("no free RTP port range")


@dataclass
class StackPlan:
    """Ports and tokens chosen before Synapse starts (it reads the registration only at start)."""

    tmp: Path
    as_port: int = field(default_factory=stable_port)
    sip_port: int = field(default_factory=stable_port)
    trunk_port: int = field(default_factory=stable_port)
    as_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    hs_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    rtp_range: tuple[int, int] = field(default_factory=free_rtp_range)
    homeserver_url: str = "http://127.0.0.1:8008"
    sink: Any = None  # tests: what answers the appservice port while no bridge runs

    def config_dict(self, overrides: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "homeserver": {"address": self.homeserver_url, "domain": SERVER_NAME},
            "appservice": {
                "address": f"http://127.0.0.1:{self.as_port}", "hostname": "127.0.0.1", "port": self.as_port,
                "as_token": self.as_token, "hs_token": self.hs_token,
                "database": f"sqlite:{self.tmp / 'bridge.db'}",
            },
            "bridge": {"permissions": {SERVER_NAME: "user"}, "invite_lifetime_ms": 60000, "ring_timeout_s": 30},
            "sip": {
                "listen": [{"transport": "udp", "host": "127.0.0.1", "port": self.sip_port}],
                "t1_ms": 100, "t2_ms": 1000,
                "trunk": {"proxy": f"sip:127.0.0.1:{self.trunk_port}", "from_user": "bridge"},
                "inbound": {"trusted_sources": ["127.0.0.1/32"], "routes": [], "default_route": []},
            },
            # loopback ICE in the bridge process is patched by tests/conftest.py; media workers need the key
            "media": {"rtp_host": "127.0.0.1", "port_start": self.rtp_range[0], "port_end": self.rtp_range[1],
                      "ice_host_addresses": ["127.0.0.1"]},
            "logging": {"level": "DEBUG"},
            # a free port: tests (and engineers) run bridges side by side; tests that scrape it read bridge.monitoring
            "metrics": {"listen_port": 0},
        }
        if overrides:
            overrides(data)
        return data

    def config(self, overrides: Callable[[dict[str, Any]], None] | None = None) -> Config:
        return parse_config(self.config_dict(overrides))

    def write_registration(self) -> Path:
        path = self.tmp / "registration.yaml"
        reg = build_registration(self.config(), self.as_token, self.hs_token)
        path.write_text(yaml.safe_dump(reg, sort_keys=False))
        return path


async def start_bridge(plan: StackPlan, synapse: SynapseServer,
                       overrides: Callable[[dict[str, Any]], None] | None = None) -> Bridge:
    plan.homeserver_url = synapse.url
    bridge = Bridge(plan.config(overrides))
    await bridge.start()
    return bridge
