"""Settings of the SIP user agent (listen addresses, timers, TLS)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.sip.session_timer import SessionTimerSettings

TRANSPORTS = ("udp", "tcp", "tls")


@dataclass
class ListenAddress:
    transport: str  # "udp" | "tcp" | "tls"
    host: str
    port: int  # 0 = ephemeral (tests)

    def __post_init__(self) -> None:
        self.transport = self.transport.lower()
        if self.transport not in TRANSPORTS:
            raise ValueError(f"listen transport must be one of {TRANSPORTS}, got {self.transport!r}")


@dataclass
class SipSettings:
    listen: list[ListenAddress] = field(default_factory=lambda: [ListenAddress("udp", "127.0.0.1", 5060)])
    advertised_host: str | None = None  # public address for Via/Contact behind NAT
    advertised_port: int | None = None
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    user_agent: str = "matrix-sip-bridge"
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    tls_cafile: str | None = None
    tls_verify: bool = True
    max_message_size: int = 65535
    trying_delay: float = 0.2  # INVITE server sends 100 if the application has not answered within this
    connect_timeout: float = 10.0  # TCP/TLS connect
    udp_receive_buffer: int = 4 * 1024 * 1024  # SO_RCVBUF for UDP listeners (kernel caps it at rmem_max)
    # TCP/TLS: a connection with no bytes in either direction for this long is closed (unless a dialog or a
    # transaction still uses it); also the TLS handshake deadline. 0 = never.
    tcp_idle_timeout: float = 60.0
    max_connections: int = 512  # accepted TCP/TLS connections in total; more are refused
    max_connections_per_source: int = 32  # accepted TCP/TLS connections per untrusted source IP
    # Sources (IP, CIDR or host name, e.g. the trunk) whose messages may name hosts we then resolve and contact
    # (Contact/Record-Route of their requests). Names from anybody else are never looked up.
    trusted_hosts: tuple[str, ...] = ()
    # live server transactions per untrusted source IP (trusted_hosts are exempt); more are dropped unanswered
    max_server_transactions_per_source: int = 256
    # RFC 4028 session timers (off unless given: the bridge's config turns them on)
    session_timer: SessionTimerSettings = field(default_factory=lambda: SessionTimerSettings(enabled=False))
    # RFC 3262 reliable provisional responses: "off" (Require: 100rel refused with 420), "supported" (used when
    # the peer requires it), "required" (our INVITEs require it; as UAS used whenever the peer supports it)
    prack: str = "off"
