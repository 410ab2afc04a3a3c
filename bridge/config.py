"""Typed bridge configuration loaded from YAML.

Every validation error is a :class:`ConfigError` whose text names the dotted key and says how to fix it, e.g.
``config error: sip.trunk.proxy: 'foo' is not a SIP URI (expected e.g. sip:trunk.example.net:5060)``.
The loader is explicit (one function per section) rather than reflective, so each key's rule is readable here.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridge.config_env import EnvOverrideError, apply_env_overrides
from bridge.config_upgrade import Upgrade, UpgradeError, upgrade_text

PLACEHOLDER_TOKENS = frozenset({"", "generate", "changeme", "CHANGE_ME"})

_SIP_URI_RE = re.compile(
    r"^sips?:(?:[^@\s]+@)?(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?(?:;[^\s]*)?$"
)
_SERVER_NAME_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
_USER_ID_RE = re.compile(r"^@[^:\s]+:\S+$")
_DIGITS_RE = re.compile(r"^[0-9]+$")

class ConfigError(ValueError):
    """A config problem; ``str()`` is the one-line message printed by the CLI."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config error: {key}: {problem}" if key else f"config error: {problem}")


# --------------------------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class HomeserverConfig:
    address: str = "http://127.0.0.1:8008"
    domain: str = "example.org"
    verify_ssl: bool = True


@dataclass(frozen=True)
class AppserviceConfig:
    address: str = "http://127.0.0.1:29350"
    hostname: str = "127.0.0.1"
    port: int = 29350
    id: str = "sip"
    bot_username: str = "sipbot"
    bot_displayname: str = "SIP bridge"
    as_token: str = "generate"
    hs_token: str = "generate"
    database: str = "sqlite:matrix-sip-bridge.db"

    def __repr__(self) -> str:  # never leak tokens through a repr in a log line
        return f"AppserviceConfig(address={self.address!r}, id={self.id!r}, bot_username={self.bot_username!r})"


@dataclass(frozen=True)
class LimitsConfig:
    """Limits on calls Matrix users place (bridge.limits)."""

    attempts_per_minute: int = 10
    concurrent_calls: int = 3
    total_concurrent_calls: int = 50


EARLY_MEDIA_MODES = ("off", "announce", "connect")


@dataclass(frozen=True)
class CallerId:
    """What the bridge asserts to the trunk for one Matrix user's outbound calls (bridge.caller_ids)."""

    number: str | None = None  # E.164 digits (no '+') the admin assigned to the user; None: none asserted
    withhold: bool = False  # send Privacy: id (the trunk must not show the number to the callee)


SHARED_TRUNK_MODES = ("user", "admin", "none")


@dataclass(frozen=True)
class AccountsConfig:
    """Per-user SIP accounts (bridge.accounts; calls/accounts.py)."""

    encryption_key: str = "generate"  # placeholder: no key, logins are refused
    previous_keys: tuple[str, ...] = ()  # accepted for decryption; rows are re-encrypted with encryption_key
    shared_trunk: str = "user"  # who may call through sip.trunk without an account: user | admin | none
    register_expires: int = 600
    login_timeout_s: float = 35.0

    @property
    def key_configured(self) -> bool:
        return self.encryption_key not in PLACEHOLDER_TOKENS

    def __repr__(self) -> str:  # never leak keys through a repr in a log line
        return f"AccountsConfig(shared_trunk={self.shared_trunk!r}, key_configured={self.key_configured})"


@dataclass(frozen=True)
class DialPermissionRule:
    """One entry of bridge.dial_permissions; None = inherit from the less specific entry / the global setting."""

    allowed: tuple[str, ...] | None = None
    blocked: tuple[str, ...] | None = None
    concurrent_calls: int | None = None


@dataclass(frozen=True)
class BridgeConfig:
    username_template: str = "sip_{number}"
    displayname_template: str = "{name}"  # falls back to {formatted} when the caller sent no name
    unknown_caller_name: str = "Unknown caller"
    # None in the file means "only the homeserver's own users"; the loader fills that in.
    permissions: Mapping[str, str] = field(default_factory=dict)
    invite_lifetime_ms: int = 60000
    ring_timeout_s: int = 60
    failure_notices: bool = True
    early_media: str = "announce"  # off | announce | connect (calls/early_media.py)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    homeserver_timeout_s: float = 10.0
    caller_ids: Mapping[str, CallerId] = field(default_factory=dict)  # Matrix user ID -> caller ID
    accounts: AccountsConfig = field(default_factory=AccountsConfig)
    # "@user:server", a permission level (user | admin) or "*" -> rule; call/dial_permissions.py
    dial_permissions: Mapping[str, DialPermissionRule] = field(default_factory=dict)


@dataclass(frozen=True)
class SipListen:
    transport: str = "udp"
    host: str = "127.0.0.1"
    port: int = 5060


@dataclass(frozen=True)
class SipTrunkConfig:
    proxy: str = "sip:127.0.0.1:5080"
    domain: str | None = None
    from_user: str = "bridge"
    from_domain: str | None = None
    auth_username: str | None = None
    auth_password: str | None = None
    register: bool = False
    register_expires: int = 3600
    identity_header: str = "none"  # none | pai | ppi: how outbound INVITEs carry the caller's number
    transport: str = "auto"  # auto (from the proxy URI) | udp | tcp | tls; folded into `proxy` by the loader

    def __repr__(self) -> str:
        return f"SipTrunkConfig(proxy={self.proxy!r}, from_user={self.from_user!r}, register={self.register})"


@dataclass(frozen=True)
class InboundAccount:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"InboundAccount(username={self.username!r})"


@dataclass(frozen=True)
class InboundRoute:
    users: tuple[str, ...]
    number: str | None = None  # exact E.164 digits
    prefix: str | None = None  # digit prefix


@dataclass(frozen=True)
class RateLimitConfig:
    per_source_per_second: float = 5.0
    burst: int = 10


@dataclass(frozen=True)
class SipInboundConfig:
    trusted_sources: tuple[str, ...] = ("127.0.0.1/32",)
    accounts: tuple[InboundAccount, ...] = ()
    realm: str | None = None
    routes: tuple[InboundRoute, ...] = ()
    default_route: tuple[str, ...] = ()
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(s, strict=False) for s in self.trusted_sources)


@dataclass(frozen=True)
class SessionTimerConfig:
    """RFC 4028 session timers (sip.session_timer)."""

    enabled: bool = True
    expires_s: int = 1800
    min_se_s: int = 90


@dataclass(frozen=True)
class SipDnsConfig:
    nameservers: tuple[str, ...] = ()  # "ip" or "ip:port"; empty: /etc/resolv.conf
    timeout_s: float = 3.0


@dataclass(frozen=True)
class SipConfig:
    listen: tuple[SipListen, ...] = (SipListen(),)
    advertised_host: str | None = None
    advertised_port: int | None = None
    user_agent: str = "matrix-sip-bridge"
    t1_ms: int = 500
    t2_ms: int = 4000
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None  # PEM CA bundle trusted for TLS peers instead of the system store
    tls_verify: bool = True
    tcp_idle_timeout_s: float = 60.0
    max_connections: int = 512
    max_connections_per_source: int = 32
    session_timer: SessionTimerConfig = field(default_factory=SessionTimerConfig)
    prack: str = "supported"  # RFC 3262 100rel: off | supported | required
    trunk: SipTrunkConfig = field(default_factory=SipTrunkConfig)
    inbound: SipInboundConfig = field(default_factory=SipInboundConfig)
    dns: SipDnsConfig = field(default_factory=SipDnsConfig)


@dataclass(frozen=True)
class DialplanConfig:
    default_country_code: str = "1"
    national_prefix: str = ""
    national_number_length: int = 10
    international_prefixes: tuple[str, ...] = ("011", "00")
    allowed: tuple[str, ...] = (".*",)
    blocked: tuple[str, ...] = (r"^1900\d*$",)


@dataclass(frozen=True)
class IceServer:
    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def __repr__(self) -> str:
        return f"IceServer(urls={self.urls!r})"


@dataclass(frozen=True)
class MediaConfig:
    rtp_host: str = "127.0.0.1"
    advertised_ip: str | None = None
    port_start: int = 16384
    port_end: int = 16484
    codecs: tuple[str, ...] = ("PCMU", "PCMA", "G722")
    ice_servers: tuple[IceServer, ...] = ()
    ice_host_addresses: tuple[str, ...] = ()  # empty: every interface (aioice's default)
    ice_timeout_s: float = 30.0  # a WebRTC leg not connected this long after negotiation has failed
    rtp_source: str = "signalling"  # strict | signalling | any: who may send the SIP-side RTP
    rtp_latch_packets: int = 4  # consistent packets before a NATed source (signalling mode) is taken
    srtp: str = "off"  # off | optional | required: SDES-SRTP on the SIP leg (sip/sdp_crypto.py)
    rtcp_interval_s: float = 5.0  # SIP-leg RTCP report interval (RFC 3550 minimum); 0 = no RTCP
    workers: int | None = None  # media worker processes; None: "auto" (one per core); 0: media in the bridge process
    backend: str = "embedded"  # embedded (aiortc + RTP in the bridge) | rtpengine (media.rtpengine.nodes)
    rtpengine: RtpengineConfig | None = None  # set when backend is rtpengine


@dataclass(frozen=True)
class RtpengineNodeConfig:
    url: str  # ng control endpoint, udp:HOST:PORT
    weight: int = 1


@dataclass(frozen=True)
class RtpengineConfig:
    nodes: tuple[RtpengineNodeConfig, ...]
    timeout_s: float = 1.0  # one ng request's deadline; a silent node is taken out of rotation
    retry_after_s: float = 30.0  # a failed node gets new calls again after this long
    call_id_prefix: str = "mxsb-"  # ng call-ids; orphans with it are deleted at startup


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    format: str = "text"
    loggers: Mapping[str, str] = field(default_factory=dict)  # logger name -> level, e.g. {"bridge.sip": "DEBUG"}
    file: str | None = None  # also write to this file (resolved against the config file's directory), rotating
    file_max_mb: float = 10.0
    file_backups: int = 5


@dataclass(frozen=True)
class MetricsConfig:
    """The observability listener: /metrics (Prometheus, off by default), /health and /ready (on by default)."""

    enabled: bool = False  # serve /metrics
    health: bool = True  # serve /health and /ready
    listen_address: str = "127.0.0.1"
    listen_port: int = 29351  # 0: any free port (logged)
    homeserver_check_interval_s: float = 5.0
    homeserver_check_timeout_s: float = 2.0

    @property
    def listener(self) -> bool:
        return self.enabled or self.health


@dataclass(frozen=True)
class ProvisioningConfig:
    """The provisioning API (bridge/matrix/provisioning.py) on the appservice listener."""

    enabled: bool = True
    prefix: str = "/_matrix/provision"
    shared_secret: str = "generate"  # a placeholder: only users' own Matrix access tokens are accepted

    @property
    def secret(self) -> str | None:
        """The shared secret, None while it is a placeholder."""
        return None if self.shared_secret in PLACEHOLDER_TOKENS else self.shared_secret

    def __repr__(self) -> str:  # never leak the secret through a repr in a log line
        return f"ProvisioningConfig(enabled={self.enabled!r}, prefix={self.prefix!r})"


@dataclass(frozen=True)
class Config:
    homeserver: HomeserverConfig = field(default_factory=HomeserverConfig)
    appservice: AppserviceConfig = field(default_factory=AppserviceConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    dialplan: DialplanConfig = field(default_factory=DialplanConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    provisioning: ProvisioningConfig = field(default_factory=ProvisioningConfig)
    path: Path | None = None

    @property
    def bot_mxid(self) -> str:
        return f"@{self.appservice.bot_username}:{self.homeserver.domain}"

    def check_tokens(self) -> None:
        """Raise if the appservice tokens are still placeholders (the bridge must not start then)."""
        for key in ("as_token", "hs_token"):
            if getattr(self.appservice, key) in PLACEHOLDER_TOKENS:
                raise ConfigError(
                    f"appservice.{key}",
                    "is a placeholder; run `python -m bridge -c CONFIG -g -r registration.yaml` to generate tokens",
                )


# --------------------------------------------------------------------------------------------- reader


_MISSING: Any = object()


class _Section:
    """Typed access to one mapping of the YAML file; remembers which keys were read to flag unknown ones."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"must be a mapping of keys, got {_kind(data)}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        self.read.add(name)
        if name in self.data and self.data[name] is not None:
            return self.data[name]
        if default is _MISSING:
            raise ConfigError(self.key(name), "is required")
        return default

    def section(self, name: str) -> _Section:
        self.read.add(name)
        return _Section(self.data.get(name), self.key(name))

    def string(self, name: str, default: Any = _MISSING, *, allow_empty: bool = False) -> str:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(self.key(name), f"must be a string, got {_kind(value)}")
        value = str(value)
        if not allow_empty and not value.strip():
            raise ConfigError(self.key(name), "must not be empty")
        return value

    def opt_string(self, name: str) -> str | None:
        if self.data.get(name) is None:
            self.read.add(name)
            return None
        return self.string(name)

    def integer(self, name: str, default: Any = _MISSING, *, lo: int | None = None, hi: int | None = None) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"must be an integer, got {_kind(value)} {value!r}")
        _check_range(self.key(name), value, lo, hi)
        return value

    def number(self, name: str, default: Any = _MISSING, *, lo: float | None = None) -> float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key(name), f"must be a number, got {_kind(value)} {value!r}")
        _check_range(self.key(name), value, lo, None)
        return float(value)

    def boolean(self, name: str, default: Any = _MISSING) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"must be true or false, got {value!r}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value.lower() not in choices:
            raise ConfigError(self.key(name), f"{value!r} is not one of {', '.join(choices)}")
        return value.lower()

    def items(self, name: str, default: Any = _MISSING) -> list[Any]:
        value = self.raw(name, default)
        if not isinstance(value, list):
            raise ConfigError(self.key(name), f"must be a list, got {_kind(value)}")
        return value

    def string_list(self, name: str, default: Any = _MISSING, check: Callable[[str, str], None] | None = None) -> (
        tuple[str, ...]
    ):
        out = []
        for i, item in enumerate(self.items(name, default)):
            key = f"{self.key(name)}[{i}]"
            if isinstance(item, bool) or not isinstance(item, str | int):
                raise ConfigError(key, f"must be a string, got {_kind(item)}")
            if check:
                check(key, str(item))
            out.append(str(item))
        return tuple(out)

    def finish(self) -> None:
        """Unknown keys are errors: a typo silently falling back to a default is worse than a refusal."""
        for name in self.data:
            if name not in self.read:
                close = difflib.get_close_matches(str(name), sorted(self.read), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else " (remove it; see example-config.yaml)"
                raise ConfigError(self.key(str(name)), f"unknown key{hint}")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _check_range(key: str, value: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise ConfigError(key, f"{value} is too small (minimum {lo})")
    if hi is not None and value > hi:
        raise ConfigError(key, f"{value} is too large (maximum {hi})")


def _check_http_url(key: str, value: str) -> None:
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ConfigError(key, f"{value!r} is not an http(s) URL (expected e.g. http://127.0.0.1:8008)")


def _check_sip_uri(key: str, value: str) -> None:
    match = _SIP_URI_RE.match(value)
    if not match:
        raise ConfigError(key, f"{value!r} is not a SIP URI (expected e.g. sip:trunk.example.net:5060)")
    port = re.search(r"(?<=[^:]):(\d{1,5})(?=;|$)", value.split(";", 1)[0])
    if port and not 1 <= int(port.group(1)) <= 65535:
        raise ConfigError(key, f"{value!r}: port {port.group(1)} is out of range (1-65535)")


def sqlite_path(url: str) -> str | None:
    """The file path of a ``sqlite:`` URL, or None for other URLs.

    ``sqlite:x.db`` and, as in mautrix/SQLAlchemy, ``sqlite:///x.db`` name a relative path; ``sqlite:////abs/x.db``
    and ``sqlite:/abs/x.db`` absolute ones. (mautrix's own parser would turn ``sqlite:///x.db`` into ``/x.db``.)
    """
    m = re.match(r"^sqlite3?:(.*)$", url)
    if not m:
        return None
    rest = m.group(1)
    if rest.startswith("///"):
        rest = rest[3:]
    elif rest.startswith("//"):
        raise ValueError("is not a file URL: use sqlite:<path> "
                         "(or sqlite:///<relative path>, sqlite:////<absolute path>)")
    if not rest:
        raise ValueError("names no file (e.g. sqlite:matrix-sip-bridge.db)")
    return rest


def _check_regex(key: str, value: str) -> None:
    try:
        re.compile(value)
    except re.error as e:
        raise ConfigError(key, f"{value!r} is not a valid regular expression ({e})") from None


def _check_cidr(key: str, value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(key, f"{value!r} is not an IP network (expected e.g. 203.0.113.0/24)") from None


def _check_user_id(key: str, value: str) -> None:
    if not _USER_ID_RE.match(value):
        raise ConfigError(key, f"{value!r} is not a Matrix user ID (expected e.g. @alice:example.org)")


def _check_digits(key: str, value: str) -> None:
    if not _DIGITS_RE.match(value):
        raise ConfigError(key, f"{value!r} must be digits only (E.164 without '+', e.g. 15551234567)")


def _check_ip(key: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(key, f"{value!r} is not an IP address (expected e.g. 127.0.0.1 or ::1)") from None


def _check_template(key: str, template: str, fields: tuple[str, ...], required: str | None = None) -> None:
    try:
        template.format(**{f: "x" for f in fields})
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(key, f"bad template {template!r} ({e!r}); allowed fields: "
                          + ", ".join("{" + f + "}" for f in fields)) from None
    if required and "{" + required + "}" not in template:
        raise ConfigError(key, f"must contain {{{required}}} (e.g. sip_{{{required}}})")


# --------------------------------------------------------------------------------------------- sections


def _homeserver(s: _Section) -> HomeserverConfig:
    address = s.string("address", "http://127.0.0.1:8008")
    _check_http_url(s.key("address"), address)
    domain = s.string("domain")  # required: no default can be right, and it decides who may use the bridge
    if not _SERVER_NAME_RE.match(domain):
        raise ConfigError(s.key("domain"), f"{domain!r} is not a server name (expected e.g. example.org)")
    out = HomeserverConfig(address=address.rstrip("/"), domain=domain, verify_ssl=s.boolean("verify_ssl", True))
    s.finish()
    return out


def _appservice(s: _Section) -> AppserviceConfig:
    address = s.string("address", "http://127.0.0.1:29350")
    _check_http_url(s.key("address"), address)
    localpart_re = re.compile(r"^[a-z0-9._=/+-]+$")
    bot = s.string("bot_username", "sipbot")
    if not localpart_re.match(bot):
        raise ConfigError(s.key("bot_username"), f"{bot!r} is not a valid lowercase user localpart (e.g. sipbot)")
    database = s.string("database", "sqlite:matrix-sip-bridge.db")
    if not re.match(r"^(sqlite3?|postgres(ql)?):", database):
        raise ConfigError(s.key("database"), f"{database!r} must start with sqlite: or postgres:// "
                          "(e.g. sqlite:matrix-sip-bridge.db)")
    try:
        file = sqlite_path(database)
    except ValueError as e:
        raise ConfigError(s.key("database"), f"{database!r} {e}") from None
    if file is not None:
        database = f"sqlite:{file}"
    out = AppserviceConfig(
        address=address.rstrip("/"),
        hostname=s.string("hostname", "127.0.0.1"),
        port=s.integer("port", 29350, lo=1, hi=65535),
        id=s.string("id", "sip"),
        bot_username=bot,
        bot_displayname=s.string("bot_displayname", "SIP bridge"),
        as_token=s.string("as_token", "generate", allow_empty=True),
        hs_token=s.string("hs_token", "generate", allow_empty=True),
        database=database,
    )
    s.finish()
    return out


def _bridge(s: _Section, domain: str) -> BridgeConfig:
    username_template = s.string("username_template", "sip_{number}")
    _check_template(s.key("username_template"), username_template, ("number",), required="number")
    if not re.match(r"^[a-z0-9._=/+-]+$", username_template.replace("{number}", "1")):
        raise ConfigError(s.key("username_template"), f"{username_template!r} must give a lowercase localpart")
    displayname_template = s.string("displayname_template", "{name}")
    _check_template(s.key("displayname_template"), displayname_template, ("formatted", "number", "name"))
    perms_raw = s.raw("permissions", None)
    permissions: dict[str, str] = {}
    if perms_raw is None:
        permissions = {domain: "user"}
    elif not isinstance(perms_raw, Mapping):
        raise ConfigError(s.key("permissions"), "must be a mapping like {\"example.org\": user}")
    else:
        for who, level in perms_raw.items():
            key = f"{s.key('permissions')}.{who}"
            who = str(who)
            if who != "*" and not _USER_ID_RE.match(who) and not _SERVER_NAME_RE.match(who):
                raise ConfigError(key, "must be \"*\", a server name (example.org) or a user ID (@alice:example.org)")
            if level not in ("user", "admin", "none"):
                raise ConfigError(key, f"{level!r} is not one of user, admin, none")
            permissions[who] = str(level)
    out = BridgeConfig(
        username_template=username_template,
        displayname_template=displayname_template,
        unknown_caller_name=s.string("unknown_caller_name", "Unknown caller"),
        permissions=permissions,
        invite_lifetime_ms=s.integer("invite_lifetime_ms", 60000, lo=5000, hi=600000),
        ring_timeout_s=s.integer("ring_timeout_s", 60, lo=5, hi=600),
        failure_notices=s.boolean("failure_notices", True),
        early_media=_early_media(s),
        limits=_limits(s.section("limits")),
        homeserver_timeout_s=s.number("homeserver_timeout_s", 10.0, lo=0.5),
        caller_ids=_caller_ids(s),
        accounts=_accounts(s.section("accounts")),
        dial_permissions=_dial_permissions(s),
    )
    s.finish()
    return out


def _check_account_key(key: str, value: str) -> None:
    import base64
    import binascii

    raw = value.strip()
    try:
        decoded = base64.urlsafe_b64decode(raw.replace("+", "-").replace("/", "_") + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 32:
        raise ConfigError(key, "is not a base64 32-byte key; run `python -m bridge -c CONFIG --generate-account-key`")


def _accounts(s: _Section) -> AccountsConfig:
    key = s.string("encryption_key", "generate", allow_empty=True)
    if key not in PLACEHOLDER_TOKENS:
        _check_account_key(s.key("encryption_key"), key)
    out = AccountsConfig(
        encryption_key=key,
        previous_keys=s.string_list("previous_keys", [], check=_check_account_key),
        shared_trunk=s.choice("shared_trunk", "user", SHARED_TRUNK_MODES),
        # low values are for tests: a registrar wanting more answers 423 Min-Expires, which is followed
        register_expires=s.integer("register_expires", 600, lo=5, hi=86400),
        login_timeout_s=s.number("login_timeout_s", 35.0, lo=1.0),
    )
    s.finish()
    return out


def _dial_permissions(s: _Section) -> dict[str, DialPermissionRule]:
    """``dial_permissions: {"user": {blocked: [...]}, "@bob:example.org": {allowed: [...], concurrent_calls: 1}}``"""
    raw = s.raw("dial_permissions", {})
    if not isinstance(raw, Mapping):
        raise ConfigError(s.key("dial_permissions"), 'must be a mapping like {"user": {blocked: ["^44"]}}')
    out: dict[str, DialPermissionRule] = {}
    for who, value in raw.items():
        key = f"{s.key('dial_permissions')}.{who}"
        who = str(who)
        if who not in ("*", "user", "admin") and not _USER_ID_RE.match(who):
            raise ConfigError(key, 'must be "*", a permission level (user, admin) or a user ID (@bob:example.org)')
        entry = _Section(value, key)
        allowed = entry.string_list("allowed", None, check=_check_regex) if entry.data.get("allowed") is not None \
            else None
        entry.read.add("allowed")
        blocked = entry.string_list("blocked", None, check=_check_regex) if entry.data.get("blocked") is not None \
            else None
        entry.read.add("blocked")
        concurrent = entry.integer("concurrent_calls", None, lo=0, hi=10000) \
            if entry.data.get("concurrent_calls") is not None else None
        entry.read.add("concurrent_calls")
        entry.finish()
        out[who] = DialPermissionRule(allowed=allowed, blocked=blocked, concurrent_calls=concurrent)
    return out


def _caller_ids(s: _Section) -> dict[str, CallerId]:
    """``caller_ids: {"@alice:example.org": "+15550001111", "@bob:example.org": {number: ..., withhold: true}}``"""
    raw = s.raw("caller_ids", {})
    if not isinstance(raw, Mapping):
        raise ConfigError(s.key("caller_ids"), 'must be a mapping like {"@alice:example.org": "+15550001111"}')
    out: dict[str, CallerId] = {}
    for who, value in raw.items():
        key = f"{s.key('caller_ids')}.{who}"
        _check_user_id(key, str(who))
        if isinstance(value, str | int) and not isinstance(value, bool):
            entry = _Section({"number": value}, key)
        else:
            entry = _Section(value, key)
        number = entry.opt_string("number")
        if number is not None:
            number = number.strip().removeprefix("+")
            if not re.match(r"^[1-9][0-9]{2,14}$", number):
                raise ConfigError(entry.key("number"), f"{number!r} is not an E.164 number (e.g. +15550001111)")
        out[str(who)] = CallerId(number=number, withhold=entry.boolean("withhold", False))
        entry.finish()
    return out


def _early_media(s: _Section) -> str:
    if s.raw("early_media", "announce") is False:
        return "off"  # YAML 1.1 reads a bare `off` as false
    return s.choice("early_media", "announce", EARLY_MEDIA_MODES)


def _limits(s: _Section) -> LimitsConfig:
    out = LimitsConfig(
        attempts_per_minute=s.integer("attempts_per_minute", 10, lo=1, hi=10000),
        concurrent_calls=s.integer("concurrent_calls", 3, lo=1, hi=10000),
        total_concurrent_calls=s.integer("total_concurrent_calls", 50, lo=1, hi=100000),
    )
    s.finish()
    return out


def _listen(item: Any, key: str) -> SipListen:
    s = _Section(item, key)
    transport = s.choice("transport", "udp", ("udp", "tcp", "tls"))
    host = s.string("host", "127.0.0.1")
    _check_ip(s.key("host"), host)
    out = SipListen(transport=transport, host=host, port=s.integer("port", 5060, lo=0, hi=65535))
    s.finish()
    return out


def _trunk(s: _Section) -> SipTrunkConfig:
    proxy = s.string("proxy", "sip:127.0.0.1:5080")
    _check_sip_uri(s.key("proxy"), proxy)
    out = SipTrunkConfig(
        proxy=proxy,
        domain=s.opt_string("domain"),
        from_user=s.string("from_user", "bridge"),
        from_domain=s.opt_string("from_domain"),
        auth_username=s.opt_string("auth_username"),
        auth_password=s.opt_string("auth_password"),
        register=s.boolean("register", False),
        register_expires=s.integer("register_expires", 3600, lo=60, hi=86400),
        identity_header=s.choice("identity_header", "none", ("none", "pai", "ppi")),
        transport=s.choice("transport", "auto", ("auto", "udp", "tcp", "tls")),
    )
    out = dataclasses.replace(out, proxy=_proxy_with_transport(s, proxy, out.transport))
    if out.register and not out.auth_username:
        raise ConfigError(s.key("auth_username"), "is required when register is true (the registrar's user)")
    if out.auth_username and not out.auth_password:
        raise ConfigError(s.key("auth_password"), "is required when auth_username is set")
    s.finish()
    return out


def _proxy_with_transport(s: _Section, proxy: str, transport: str) -> str:
    """The proxy URI carrying sip.trunk.transport (as ;transport=, which the SIP layer routes by)."""
    if transport == "auto":
        return proxy
    m = re.search(r";transport=([A-Za-z]+)", proxy, re.IGNORECASE)
    current = m.group(1).lower() if m else ("tls" if proxy.lower().startswith("sips:") else None)
    if current is not None:
        if current != transport:
            raise ConfigError(s.key("transport"), f"{transport} contradicts the proxy URI {proxy!r} ({current}); "
                              "set one of them")
        return proxy
    return f"{proxy};transport={transport}"


def _inbound(s: _Section) -> SipInboundConfig:
    accounts = []
    for i, item in enumerate(s.items("accounts", [])):
        a = _Section(item, f"{s.key('accounts')}[{i}]")
        accounts.append(InboundAccount(username=a.string("username"), password=a.string("password")))
        a.finish()
    routes = []
    for i, item in enumerate(s.items("routes", [])):
        r = _Section(item, f"{s.key('routes')}[{i}]")
        number = r.opt_string("number")
        prefix = r.opt_string("prefix")
        if (number is None) == (prefix is None):
            raise ConfigError(r.path, "needs exactly one of number or prefix (e.g. {number: \"15551234567\", "
                              "users: [\"@alice:example.org\"]})")
        _check_digits(r.key("number" if number else "prefix"), number or prefix or "")
        users = r.string_list("users", check=_check_user_id)
        if not users:
            raise ConfigError(r.key("users"), "must list at least one Matrix user ID")
        routes.append(InboundRoute(users=users, number=number, prefix=prefix))
        r.finish()
    rl = s.section("rate_limit")
    rate_limit = RateLimitConfig(
        per_source_per_second=rl.number("per_source_per_second", 5, lo=0.1),
        burst=rl.integer("burst", 10, lo=1),
    )
    rl.finish()
    out = SipInboundConfig(
        trusted_sources=s.string_list("trusted_sources", ["127.0.0.1/32"], check=_check_cidr),
        accounts=tuple(accounts),
        realm=s.opt_string("realm"),
        routes=tuple(routes),
        default_route=s.string_list("default_route", [], check=_check_user_id),
        rate_limit=rate_limit,
    )
    s.finish()
    return out


def _sip(s: _Section) -> SipConfig:
    listen_items = s.items("listen", [{"transport": "udp", "host": "127.0.0.1", "port": 5060}])
    if not listen_items:
        raise ConfigError(s.key("listen"), "must list at least one listener (e.g. {transport: udp, host: "
                          "127.0.0.1, port: 5060})")
    listen = tuple(_listen(item, f"{s.key('listen')}[{i}]") for i, item in enumerate(listen_items))
    tls_cert = s.opt_string("tls_cert")
    tls_key = s.opt_string("tls_key")
    if any(lst.transport == "tls" for lst in listen):
        for name, value in (("tls_cert", tls_cert), ("tls_key", tls_key)):
            if not value:
                raise ConfigError(s.key(name), "is required when a listener uses transport tls (path to a PEM file)")
            if not Path(value).is_file():
                raise ConfigError(s.key(name), f"file {value!r} does not exist")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError(s.key("tls_key" if tls_cert else "tls_cert"), "tls_cert and tls_key go together")
    tls_ca = s.opt_string("tls_ca")
    for name, value in (("tls_cert", tls_cert), ("tls_key", tls_key), ("tls_ca", tls_ca)):
        if value and not Path(value).is_file():
            raise ConfigError(s.key(name), f"file {value!r} does not exist")
    advertised_port = s.raw("advertised_port", None)
    t1 = s.integer("t1_ms", 500, lo=50, hi=10000)
    out = SipConfig(
        listen=listen,
        advertised_host=s.opt_string("advertised_host"),
        advertised_port=None if advertised_port is None else s.integer("advertised_port", lo=1, hi=65535),
        user_agent=s.string("user_agent", "matrix-sip-bridge"),
        t1_ms=t1,
        t2_ms=s.integer("t2_ms", 4000, lo=t1, hi=60000),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        tls_verify=s.boolean("tls_verify", True),
        tcp_idle_timeout_s=s.number("tcp_idle_timeout_s", 60, lo=0),
        max_connections=s.integer("max_connections", 512, lo=1),
        max_connections_per_source=s.integer("max_connections_per_source", 32, lo=1),
        session_timer=_session_timer(s.section("session_timer")),
        prack=s.choice("prack", "supported", ("off", "supported", "required")),
        trunk=_trunk(s.section("trunk")),
        inbound=_inbound(s.section("inbound")),
        dns=_dns(s.section("dns")),
    )
    s.finish()
    return out


def _session_timer(s: _Section) -> SessionTimerConfig:
    min_se = s.integer("min_se_s", 90, lo=90, hi=86400)  # RFC 4028 4: never below 90 s
    out = SessionTimerConfig(
        enabled=s.boolean("enabled", True),
        expires_s=s.integer("expires_s", 1800, lo=min_se, hi=86400),
        min_se_s=min_se,
    )
    s.finish()
    return out


def _dns(s: _Section) -> SipDnsConfig:
    from bridge.sip.resolver import parse_nameserver

    def check(key: str, value: str) -> None:
        try:
            parse_nameserver(value)
        except ValueError:
            raise ConfigError(key, f"{value!r} is not a nameserver address (e.g. 192.0.2.53, 127.0.0.1:5353 "
                              "or [2001:db8::53]:53)") from None

    out = SipDnsConfig(nameservers=s.string_list("nameservers", [], check=check),
                       timeout_s=s.number("timeout_s", 3.0, lo=0.1))
    s.finish()
    return out


def _dialplan(s: _Section) -> DialplanConfig:
    cc = s.string("default_country_code", "1")
    _check_digits(s.key("default_country_code"), cc)
    if len(cc) > 3:
        raise ConfigError(s.key("default_country_code"), f"{cc!r} is longer than 3 digits (e.g. 1, 44, 353)")
    national_prefix = s.string("national_prefix", "", allow_empty=True)
    if national_prefix:
        _check_digits(s.key("national_prefix"), national_prefix)
    out = DialplanConfig(
        default_country_code=cc,
        national_prefix=national_prefix,
        national_number_length=s.integer("national_number_length", 10, lo=0, hi=15),
        international_prefixes=s.string_list("international_prefixes", ["011", "00"], check=_check_digits),
        allowed=s.string_list("allowed", [".*"], check=_check_regex),
        blocked=s.string_list("blocked", [r"^1900\d*$"], check=_check_regex),
    )
    if not out.allowed:
        raise ConfigError(s.key("allowed"), "is empty, so nothing could be dialled; use [\".*\"] to allow all")
    s.finish()
    return out


def _media(s: _Section) -> MediaConfig:
    rtp_host = s.string("rtp_host", "127.0.0.1")
    _check_ip(s.key("rtp_host"), rtp_host)
    advertised_ip = s.opt_string("advertised_ip")
    if advertised_ip:
        _check_ip(s.key("advertised_ip"), advertised_ip)
    start = s.integer("port_start", 16384, lo=1024, hi=65534)
    end = s.integer("port_end", 16484, lo=1025, hi=65535)
    if end - start < 2:
        raise ConfigError(s.key("port_end"), f"{end} must be at least port_start + 2 ({start + 2})")
    known = ("PCMU", "PCMA", "G722", "OPUS")

    def check_codec(key: str, value: str) -> None:
        if value.upper() not in known:
            raise ConfigError(key, f"{value!r} is not a supported codec ({', '.join(known)})")

    codecs = tuple(c.upper() for c in s.string_list("codecs", ["PCMU", "PCMA", "G722"], check=check_codec))
    if not codecs:
        raise ConfigError(s.key("codecs"), "must list at least one codec (e.g. [PCMU, PCMA])")
    ice = []
    for i, item in enumerate(s.items("ice_servers", [])):
        e = _Section(item, f"{s.key('ice_servers')}[{i}]")
        raw_urls = e.raw("urls")
        if isinstance(raw_urls, str):
            urls: tuple[str, ...] = (raw_urls,)
        else:
            urls = e.string_list("urls")
        for j, url in enumerate(urls):
            if not re.match(r"^(stuns?|turns?):\S+$", url):
                raise ConfigError(f"{e.key('urls')}[{j}]", f"{url!r} is not a stun:/turn: URL (e.g. "
                                  "stun:stun.example.org:3478)")
        ice.append(IceServer(urls=urls, username=e.opt_string("username"), credential=e.opt_string("credential")))
        e.finish()
    ice_hosts = tuple(s.string_list("ice_host_addresses", [], check=_check_ip))
    ice_timeout = s.number("ice_timeout_s", 30.0, lo=1)
    rtp_source = s.choice("rtp_source", "signalling", ("strict", "signalling", "any"))
    latch = s.integer("rtp_latch_packets", 4, lo=1, hi=50)
    # YAML 1.1 reads a bare `off` as false
    srtp = "off" if s.raw("srtp", "off") is False else s.choice("srtp", "off", ("off", "optional", "required"))
    rtcp_interval = s.number("rtcp_interval_s", 5.0, lo=0)
    if 0 < rtcp_interval < 1:
        raise ConfigError(s.key("rtcp_interval_s"), f"{rtcp_interval:g} must be 0 (no RTCP) or at least 1 second "
                          "(RFC 3550's minimum is 5)")
    raw_workers = s.raw("workers", "auto")
    if isinstance(raw_workers, str) and raw_workers.lower() != "auto":
        raise ConfigError(s.key("workers"), f'{raw_workers!r}: use "auto" (one per core), 0 (media in the bridge '
                          "process) or a number of worker processes")
    workers = None if isinstance(raw_workers, str) else s.integer("workers", lo=0, hi=256)
    backend = s.choice("backend", "embedded", ("embedded", "rtpengine"))
    rtpengine = _rtpengine(s.section("rtpengine"), required=backend == "rtpengine")
    if backend == "rtpengine" and srtp != "off":
        raise ConfigError(s.key("srtp"), f"{srtp!r} needs media.backend embedded: with rtpengine the SIP side is "
                          "plain RTP/AVP (set srtp to off, or use the embedded backend)")
    out = MediaConfig(rtp_host=rtp_host, advertised_ip=advertised_ip, port_start=start, port_end=end,
                      codecs=codecs, ice_servers=tuple(ice), ice_host_addresses=ice_hosts,
                      ice_timeout_s=ice_timeout, rtp_source=rtp_source, rtp_latch_packets=latch,
                      srtp=srtp, rtcp_interval_s=rtcp_interval, workers=workers,
                      backend=backend, rtpengine=rtpengine if backend == "rtpengine" else None)
    s.finish()
    return out


def _rtpengine(s: _Section, *, required: bool) -> RtpengineConfig:
    from .media.rtpengine_nodes import parse_ng_url

    nodes = []
    for i, item in enumerate(s.items("nodes", [])):
        e = _Section(item, f"{s.key('nodes')}[{i}]")
        url = e.string("url")
        try:
            parse_ng_url(url)
        except ValueError as exc:
            raise ConfigError(e.key("url"), f"{exc} (e.g. udp:127.0.0.1:2223)") from None
        nodes.append(RtpengineNodeConfig(url=url, weight=e.integer("weight", 1, lo=0, hi=1000)))
        e.finish()
    if required and not any(n.weight > 0 for n in nodes):
        raise ConfigError(s.key("nodes"), "media.backend is rtpengine: list at least one node with weight > 0, "
                          'e.g. [{url: "udp:127.0.0.1:2223", weight: 1}]')
    prefix = s.string("call_id_prefix", "mxsb-")
    if not re.match(r"^[A-Za-z0-9._-]{1,32}$", prefix):
        raise ConfigError(s.key("call_id_prefix"), "must be 1-32 letters, digits, '.', '_' or '-'")
    out = RtpengineConfig(nodes=tuple(nodes), timeout_s=s.number("timeout_s", 1.0, lo=0.05),
                          retry_after_s=s.number("retry_after_s", 30.0, lo=0), call_id_prefix=prefix)
    s.finish()
    return out


_LEVELS = ("debug", "info", "warning", "error", "critical")


def _logging(s: _Section) -> LoggingConfig:
    loggers_raw = s.raw("loggers", {})
    if not isinstance(loggers_raw, Mapping):
        raise ConfigError(s.key("loggers"), 'must be a mapping like {"bridge.sip": DEBUG}')
    loggers: dict[str, str] = {}
    for name, level in loggers_raw.items():
        key = f"{s.key('loggers')}.{name}"
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][\w.-]*$", name):
            raise ConfigError(key, "is not a logger name (e.g. bridge.sip, aiortc, mautrix)")
        if not isinstance(level, str) or level.lower() not in _LEVELS:
            raise ConfigError(key, f"{level!r} is not one of {', '.join(lv.upper() for lv in _LEVELS)}")
        loggers[name] = level.upper()
    out = LoggingConfig(
        level=s.choice("level", "INFO", _LEVELS).upper(),
        format=s.choice("format", "text", ("text", "json")),
        loggers=loggers,
        file=s.opt_string("file"),
        file_max_mb=s.number("file_max_mb", 10.0, lo=0.01),
        file_backups=s.integer("file_backups", 5, lo=0, hi=1000),
    )
    s.finish()
    return out


def _metrics(s: _Section) -> MetricsConfig:
    address = s.string("listen_address", "127.0.0.1")
    _check_ip(s.key("listen_address"), address)
    interval = s.number("homeserver_check_interval_s", 5.0, lo=0.5)
    timeout = s.number("homeserver_check_timeout_s", 2.0, lo=0.1)
    if timeout > interval:
        raise ConfigError(s.key("homeserver_check_timeout_s"), f"{timeout} must not exceed "
                          f"homeserver_check_interval_s ({interval})")
    out = MetricsConfig(
        enabled=s.boolean("enabled", False),
        health=s.boolean("health", True),
        listen_address=address,
        listen_port=s.integer("listen_port", 29351, lo=0, hi=65535),
        homeserver_check_interval_s=interval,
        homeserver_check_timeout_s=timeout,
    )
    s.finish()
    return out


def _provisioning(s: _Section) -> ProvisioningConfig:
    prefix = s.string("prefix", "/_matrix/provision").rstrip("/")
    if not re.match(r"^/[A-Za-z0-9._~/-]+$", prefix) or prefix.startswith("/_matrix/app"):
        raise ConfigError(s.key("prefix"), f"{prefix!r} must be a URL path such as /_matrix/provision (not under "
                          "/_matrix/app, which the homeserver uses)")
    secret = s.string("shared_secret", "generate", allow_empty=True)
    if secret not in PLACEHOLDER_TOKENS and len(secret) < 16:
        raise ConfigError(s.key("shared_secret"), "is shorter than 16 characters; use \"generate\" and run -g, or a "
                          "long random string")
    out = ProvisioningConfig(enabled=s.boolean("enabled", True), prefix=prefix, shared_secret=secret)
    s.finish()
    return out


def parse_config(data: Any, path: Path | None = None) -> Config:
    """Validate already-parsed YAML data. Raises :class:`ConfigError`. With ``path`` (the config file), relative
    file paths in it are relative to that file's directory, not to wherever the bridge happens to be started."""
    if path is not None:
        data = _resolve_tls_paths(data, Path(path).resolve().parent)
    root = _Section(data, "")
    homeserver = _homeserver(root.section("homeserver"))
    config = Config(
        homeserver=homeserver,
        appservice=_appservice(root.section("appservice")),
        bridge=_bridge(root.section("bridge"), homeserver.domain),
        sip=_sip(root.section("sip")),
        dialplan=_dialplan(root.section("dialplan")),
        media=_media(root.section("media")),
        logging=_logging(root.section("logging")),
        metrics=_metrics(root.section("metrics")),
        provisioning=_provisioning(root.section("provisioning")),
        path=path,
    )
    root.finish()
    file = sqlite_path(config.appservice.database)
    if path is not None and file is not None and not Path(file).is_absolute():
        # relative to the config file, not to wherever the bridge happens to be started
        resolved = (Path(path).resolve().parent / file).as_posix()
        config = dataclasses.replace(
            config, appservice=dataclasses.replace(config.appservice, database=f"sqlite:{resolved}"))
    if path is not None and config.logging.file and not Path(config.logging.file).is_absolute():
        log_file = (Path(path).resolve().parent / config.logging.file).as_posix()
        config = dataclasses.replace(config, logging=dataclasses.replace(config.logging, file=log_file))
    return config


def _resolve_tls_paths(data: Any, base: Path) -> Any:
    """sip.tls_cert / sip.tls_key / sip.tls_ca made absolute against ``base`` (checked for existence while parsing)."""
    sip = data.get("sip") if isinstance(data, Mapping) else None
    if not isinstance(sip, Mapping):
        return data
    fixed = {key: (base / value).as_posix() for key in ("tls_cert", "tls_key", "tls_ca")
             if isinstance(value := sip.get(key), str) and value and not Path(value).is_absolute()}
    return {**data, "sip": {**sip, **fixed}} if fixed else data


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read a YAML config file, upgrade it in memory against the example (renamed keys, new keys with defaults; see
    config_upgrade.py), apply ``MATRIX_SIP_BRIDGE_*`` environment overrides (``environ``, default ``os.environ``;
    see config_env.py) and validate. Raises :class:`ConfigError` (also for I/O and YAML errors)."""
    return load_config_upgrade(path, environ)[0]


def load_config_upgrade(path: str | Path, environ: Mapping[str, str] | None = None,
                        renames: dict[str, str] | None = None) -> tuple[Config, Upgrade]:
    """:func:`load_config`, also returning the upgrade so a start can write it back (``write_upgrade``). The file
    is never written here: ``--check-config`` and ``-g`` validate exactly what a start would run with."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror} (copy bridge/example-config.yaml there)") from None
    data = _parse_yaml(text, path)
    try:
        upgrade = upgrade_text(text, renames=renames, name=str(path))
    except UpgradeError as e:
        raise ConfigError("", str(e)) from None
    if upgrade.changed:
        # Validate what PyYAML reads from the upgraded text (YAML 1.1, as before: `yes` is still a boolean).
        data = _parse_yaml(upgrade.text, path)
    try:
        data = apply_env_overrides(data, os.environ if environ is None else environ)
    except EnvOverrideError as e:
        raise ConfigError(e.variable, str(e).split(": ", 1)[1]) from None
    return parse_config(data, path), upgrade


def _parse_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None


# --------------------------------------------------------------------------------------------- registration


def user_namespace_regex(config: Config) -> str:
    """Regex covering every ghost localpart the username template can produce (and nothing of the bot)."""
    before, _, after = config.bridge.username_template.partition("{number}")
    return f"@{re.escape(before)}.+{re.escape(after)}:{re.escape(config.homeserver.domain)}"


# Third-party protocols the bridge answers lookups for (bridge/matrix/thirdparty.py): Element's dial pad looks for
# either name in /thirdparty/protocols and resolves a dialled number with /thirdparty/user/<protocol>.
PSTN_PROTOCOLS = ("m.protocol.pstn", "im.vector.protocol.pstn")


def build_registration(config: Config, as_token: str, hs_token: str) -> dict[str, Any]:
    """The appservice registration document the homeserver loads."""
    return {
        "id": config.appservice.id,
        "url": config.appservice.address,
        "as_token": as_token,
        "hs_token": hs_token,
        "sender_localpart": config.appservice.bot_username,
        "rate_limited": False,
        "namespaces": {
            "users": [
                {"regex": user_namespace_regex(config), "exclusive": True},
                {"regex": f"@{re.escape(config.appservice.bot_username)}:"
                          f"{re.escape(config.homeserver.domain)}", "exclusive": True},
            ],
            "aliases": [],
            "rooms": [],
        },
        "protocols": list(PSTN_PROTOCOLS),
    }


def replace_tokens(text: str, as_token: str, hs_token: str) -> str:
    """Rewrite ``as_token``/``hs_token`` inside the top-level ``appservice:`` block, keeping everything else
    (comments, order, formatting) byte-for-byte. Keys missing from the block are appended to it."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if re.match(r"^appservice:\s*(#.*)?$", ln)), None)
    if start is None:
        sep = "" if not text or text.endswith("\n") else "\n"
        return f'{text}{sep}appservice:\n  as_token: "{as_token}"\n  hs_token: "{hs_token}"\n'
    end = len(lines)
    for i in range(start + 1, len(lines)):
        if lines[i].strip() and not lines[i].startswith((" ", "\t", "#")):
            end = i
            break
    tokens = {"as_token": as_token, "hs_token": hs_token}
    done: set[str] = set()
    indent = "  "
    for i in range(start + 1, end):
        m = re.match(r"^(\s+)(as_token|hs_token)(\s*:\s*)([^#\n]*?)(\s*#.*)?(\r?\n)?$", lines[i])
        if m:
            indent = m.group(1)
            lines[i] = f'{m.group(1)}{m.group(2)}{m.group(3)}"{tokens[m.group(2)]}"{m.group(5) or ""}' \
                       f'{m.group(6) or ""}'
            done.add(m.group(2))
        elif re.match(r"^\s+\S", lines[i]) and not lines[i].lstrip().startswith("#"):
            indent = re.match(r"^(\s+)", lines[i]).group(1)  # type: ignore[union-attr]
    missing = [f'{indent}{k}: "{v}"\n' for k, v in tokens.items() if k not in done]
    if missing:
        insert_at = end
        while insert_at > start + 1 and not lines[insert_at - 1].strip():
            insert_at -= 1
        if insert_at > 0 and not lines[insert_at - 1].endswith("\n"):
            lines[insert_at - 1] += "\n"
        lines[insert_at:insert_at] = missing
    return "".join(lines)
