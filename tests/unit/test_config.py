"""Config loading: every key's validation names the key; defaults; placeholder tokens; unknown keys."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import (
    Config,
    ConfigError,
    LimitsConfig,
    load_config,
    parse_config,
    replace_tokens,
    user_namespace_regex,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "bridge" / "example-config.yaml"


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def with_value(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(example())
    node = data
    *parents, last = path.split(".")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    node[last] = value
    return data


def test_example_config_loads_with_documented_defaults() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.homeserver.domain == "example.org"
    assert cfg.appservice.port == 29350
    assert cfg.bridge.permissions == {"example.org": "user"}
    assert cfg.sip.listen[0].transport == "udp" and cfg.sip.listen[0].port == 5060
    assert cfg.sip.trunk.proxy == "sip:127.0.0.1:5080"
    assert cfg.dialplan.blocked == (r"^1900\d*$",)
    assert cfg.media.codecs == ("PCMU", "PCMA", "G722")
    assert cfg.bot_mxid == "@sipbot:example.org"
    assert (cfg.bridge.limits.attempts_per_minute, cfg.bridge.limits.concurrent_calls,
            cfg.bridge.limits.total_concurrent_calls) == (10, 3, 50)


def test_minimal_file_gets_safe_defaults_and_local_only_permissions() -> None:
    cfg = parse_config({"homeserver": {"domain": "example.org"}})
    assert isinstance(cfg, Config)
    assert cfg.bridge.permissions == {"example.org": "user"}
    assert cfg.appservice.database.startswith("sqlite:")
    assert cfg.sip.inbound.trusted_sources == ("127.0.0.1/32",)
    assert cfg.homeserver.address == "http://127.0.0.1:8008"
    assert cfg.bridge.limits == LimitsConfig()  # limits apply when the file says nothing


def test_homeserver_domain_is_required() -> None:
    with pytest.raises(ConfigError, match=r"config error: homeserver\.domain: is required"):
        parse_config({})


def test_permissions_default_follows_the_homeserver_domain() -> None:
    cfg = parse_config({"homeserver": {"address": "http://127.0.0.1:8008", "domain": "corp.test"}})
    assert cfg.bridge.permissions == {"corp.test": "user"}


@pytest.mark.parametrize(
    ("path", "value", "key", "fragment"),
    [
        ("homeserver.address", "ftp://x", "homeserver.address", "http(s) URL"),
        ("homeserver.domain", "bad domain", "homeserver.domain", "server name"),
        ("homeserver.verify_ssl", "yes", "homeserver.verify_ssl", "true or false"),
        ("appservice.address", "127.0.0.1:29350", "appservice.address", "http(s) URL"),
        ("appservice.port", 70000, "appservice.port", "too large"),
        ("appservice.port", "80", "appservice.port", "integer"),
        ("appservice.bot_username", "Sip Bot", "appservice.bot_username", "localpart"),
        ("appservice.database", "mysql://x", "appservice.database", "sqlite:"),
        ("bridge.username_template", "sip_user", "bridge.username_template", "{number}"),
        ("bridge.username_template", "SIP_{number}", "bridge.username_template", "lowercase"),
        ("bridge.displayname_template", "{nope}", "bridge.displayname_template", "allowed fields"),
        ("bridge.permissions", {"example.org": "root"}, "bridge.permissions.example.org", "user, admin, none"),
        ("bridge.permissions", {"not a server!": "user"}, "bridge.permissions.not a server!", "server name"),
        ("bridge.permissions", ["example.org"], "bridge.permissions", "mapping"),
        ("bridge.invite_lifetime_ms", 10, "bridge.invite_lifetime_ms", "too small"),
        ("bridge.ring_timeout_s", 100000, "bridge.ring_timeout_s", "too large"),
        ("bridge.failure_notices", 1, "bridge.failure_notices", "true or false"),
        ("bridge.early_media", "ring", "bridge.early_media", "off, announce, connect"),
        ("bridge.limits.attempts_per_minute", 0, "bridge.limits.attempts_per_minute", "too small"),
        ("bridge.limits.concurrent_calls", "2", "bridge.limits.concurrent_calls", "integer"),
        ("bridge.limits.total_concurrent_calls", 0, "bridge.limits.total_concurrent_calls", "too small"),
        ("bridge.limits", {"per_minute": 5}, "bridge.limits.per_minute", "unknown key"),
        ("sip.listen", [], "sip.listen", "at least one"),
        ("sip.listen", [{"transport": "sctp"}], "sip.listen[0].transport", "udp, tcp, tls"),
        ("sip.listen", [{"host": "localhost"}], "sip.listen[0].host", "IP address"),
        ("sip.listen", [{"transport": "tls", "host": "127.0.0.1", "port": 5061}], "sip.tls_cert", "required"),
        ("sip.advertised_port", 0, "sip.advertised_port", "too small"),
        ("sip.t1_ms", 5, "sip.t1_ms", "too small"),
        ("sip.t2_ms", 100, "sip.t2_ms", "too small"),
        ("sip.trunk.proxy", "foo", "sip.trunk.proxy", "is not a SIP URI (expected e.g. sip:trunk.example.net:5060)"),
        ("sip.trunk.register", True, "sip.trunk.auth_username", "register"),
        ("sip.trunk.auth_username", "u", "sip.trunk.auth_password", "required"),
        ("sip.trunk.register_expires", 5, "sip.trunk.register_expires", "too small"),
        ("sip.inbound.trusted_sources", ["10.0.0.300/8"], "sip.inbound.trusted_sources[0]", "IP network"),
        ("sip.inbound.accounts", [{"username": "a"}], "sip.inbound.accounts[0].password", "required"),
        ("sip.inbound.routes", [{"users": ["@a:x.org"]}], "sip.inbound.routes[0]", "exactly one of number or prefix"),
        ("sip.inbound.routes", [{"number": "+1555", "users": ["@a:x.org"]}], "sip.inbound.routes[0].number",
         "digits only"),
        ("sip.inbound.routes", [{"prefix": "1", "users": ["alice"]}], "sip.inbound.routes[0].users[0]",
         "Matrix user ID"),
        ("sip.inbound.default_route", ["bob"], "sip.inbound.default_route[0]", "Matrix user ID"),
        ("sip.inbound.rate_limit", {"burst": 0}, "sip.inbound.rate_limit.burst", "too small"),
        ("sip.session_timer", {"min_se_s": 30}, "sip.session_timer.min_se_s", "too small"),
        ("sip.session_timer", {"min_se_s": 600, "expires_s": 300}, "sip.session_timer.expires_s", "too small"),
        ("sip.prack", "always", "sip.prack", "one of"),
        ("dialplan.default_country_code", "+1", "dialplan.default_country_code", "digits only"),
        ("dialplan.national_prefix", "x", "dialplan.national_prefix", "digits only"),
        ("dialplan.national_number_length", 99, "dialplan.national_number_length", "too large"),
        ("dialplan.international_prefixes", ["+"], "dialplan.international_prefixes[0]", "digits only"),
        ("dialplan.allowed", ["("], "dialplan.allowed[0]", "regular expression"),
        ("dialplan.allowed", [], "dialplan.allowed", "nothing could be dialled"),
        ("dialplan.blocked", ["[0-"], "dialplan.blocked[0]", "regular expression"),
        ("media.rtp_host", "example.org", "media.rtp_host", "IP address"),
        ("media.advertised_ip", "nope", "media.advertised_ip", "IP address"),
        ("media.port_start", 80, "media.port_start", "too small"),
        ("media.port_end", 16385, "media.port_end", "port_start + 2"),
        ("media.codecs", ["GSM"], "media.codecs[0]", "supported codec"),
        ("media.codecs", [], "media.codecs", "at least one codec"),
        ("media.ice_servers", [{"urls": ["http://x"]}], "media.ice_servers[0].urls[0]", "stun:/turn:"),
        ("logging.level", "LOUD", "logging.level", "one of"),
        ("logging.format", "xml", "logging.format", "text, json"),
    ],
)
def test_invalid_value_error_names_the_key(path: str, value: Any, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(with_value(path, value))
    assert exc.value.key == key
    assert str(exc.value).startswith(f"config error: {key}: ")
    assert fragment in str(exc.value)


@pytest.mark.parametrize(
    ("path", "value", "check"),
    [
        ("sip.trunk.proxy", "sips:[::1]:5061;transport=tls", lambda c: c.sip.trunk.proxy.startswith("sips:")),
        ("sip.trunk.proxy", "sip:user@trunk.example.net", lambda c: "@" in c.sip.trunk.proxy),
        ("bridge.permissions", {"*": "none", "@boss:example.org": "admin"},
         lambda c: c.bridge.permissions["@boss:example.org"] == "admin"),
        ("sip.inbound.routes", [{"prefix": "1555", "users": ["@a:x.org"]}],
         lambda c: c.sip.inbound.routes[0].prefix == "1555"),
        ("media.ice_servers", [{"urls": "stun:127.0.0.1:3478"}],
         lambda c: c.media.ice_servers[0].urls == ("stun:127.0.0.1:3478",)),
        ("media.codecs", ["pcma"], lambda c: c.media.codecs == ("PCMA",)),
        ("media.codecs", ["opus", "PCMU"], lambda c: c.media.codecs == ("OPUS", "PCMU")),
        ("logging.level", "debug", lambda c: c.logging.level == "DEBUG"),
        ("sip.advertised_port", 5070, lambda c: c.sip.advertised_port == 5070),
        ("sip.session_timer", {"enabled": False}, lambda c: not c.sip.session_timer.enabled
         and c.sip.session_timer.expires_s == 1800 and c.sip.session_timer.min_se_s == 90),
        ("sip.prack", "Required", lambda c: c.sip.prack == "required"),
        ("sip.inbound.trusted_sources", ["::1/128", "10.0.0.0/8"],
         lambda c: len(c.sip.inbound.trusted_networks) == 2),
    ],
)
def test_valid_values_are_accepted(path: str, value: Any, check: Any) -> None:
    assert check(parse_config(with_value(path, value)))


def test_tls_listener_with_existing_cert_files_is_accepted(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    data = with_value("sip.listen", [{"transport": "tls", "host": "127.0.0.1", "port": 5061}])
    data["sip"]["tls_cert"], data["sip"]["tls_key"] = str(cert), str(key)
    assert parse_config(data).sip.listen[0].transport == "tls"


def test_unknown_key_is_rejected_with_a_suggestion() -> None:
    data = example()
    data["sip"]["trunk"]["proxxy"] = "sip:x"
    with pytest.raises(ConfigError, match=r"sip\.trunk\.proxxy: unknown key \(did you mean 'proxy'\?\)"):
        parse_config(data)


def test_section_that_is_not_a_mapping_is_rejected() -> None:
    with pytest.raises(ConfigError, match="config error: sip: must be a mapping"):
        parse_config({"homeserver": {"domain": "x.org"}, "sip": ["udp"]})


def test_missing_file_and_broken_yaml_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("homeserver: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)


def test_placeholder_tokens_refuse_to_start() -> None:
    cfg = load_config(EXAMPLE)
    with pytest.raises(ConfigError, match=r"appservice\.as_token: is a placeholder; run .* -g"):
        cfg.check_tokens()
    real = parse_config(with_value("appservice.as_token", "a" * 20) | {})
    with pytest.raises(ConfigError, match="hs_token"):
        real.check_tokens()


def test_tokens_are_not_in_reprs() -> None:
    data = with_value("appservice.as_token", "secret-as-token")
    data["appservice"]["hs_token"] = "secret-hs-token"
    data["sip"]["trunk"]["auth_username"] = "u"
    data["sip"]["trunk"]["auth_password"] = "secret-pw"
    text = repr(parse_config(data))
    assert "secret" not in text


def test_replace_tokens_keeps_the_rest_of_the_file() -> None:
    original = EXAMPLE.read_text()
    updated = replace_tokens(original, "AS1", "HS2")
    changed = [(a, b) for a, b in zip(original.splitlines(), updated.splitlines(), strict=True) if a != b]
    assert changed == [('  as_token: "generate"', '  as_token: "AS1"'), ('  hs_token: "generate"', '  hs_token: "HS2"')]
    cfg = parse_config(yaml.safe_load(updated))
    assert (cfg.appservice.as_token, cfg.appservice.hs_token) == ("AS1", "HS2")


def test_replace_tokens_adds_missing_token_keys() -> None:
    text = "homeserver:\n  domain: x.org\nappservice:\n  port: 1234\n\nbridge: {}\n"
    cfg = parse_config(yaml.safe_load(replace_tokens(text, "A", "H")))
    assert (cfg.appservice.as_token, cfg.appservice.hs_token, cfg.appservice.port) == ("A", "H", 1234)
    cfg2 = parse_config(yaml.safe_load(replace_tokens("homeserver:\n  domain: x.org\n", "A", "H")))
    assert cfg2.appservice.as_token == "A"


def test_user_namespace_regex_covers_ghosts_but_not_the_bot() -> None:
    import re

    cfg = load_config(EXAMPLE)
    rx = re.compile(user_namespace_regex(cfg))
    assert rx.fullmatch("@sip_15551234567:example.org")
    assert rx.fullmatch("@sip_unknown:example.org")
    assert not rx.fullmatch("@sipbot:example.org")
    assert not rx.fullmatch("@sip_1:example.org.evil")


def test_media_ice_host_addresses_are_validated_ips() -> None:
    from bridge.config import ConfigError, parse_config

    ok = parse_config({"homeserver": {"domain": "example.org"}, "media": {"ice_host_addresses": ["127.0.0.1", "::1"]}})
    assert ok.media.ice_host_addresses == ("127.0.0.1", "::1")
    import pytest

    with pytest.raises(ConfigError, match=r"media\.ice_host_addresses"):
        parse_config({"homeserver": {"domain": "example.org"}, "media": {"ice_host_addresses": ["eth0"]}})


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:x.db", "sqlite:/etc/bridge/x.db"),
    ("sqlite:///x.db", "sqlite:/etc/bridge/x.db"),
    ("sqlite:data/x.db", "sqlite:/etc/bridge/data/x.db"),
    ("sqlite:////var/lib/x.db", "sqlite:/var/lib/x.db"),
    ("sqlite:/var/lib/x.db", "sqlite:/var/lib/x.db"),
    ("postgres://u:p@db/bridge", "postgres://u:p@db/bridge"),
])
def test_sqlite_paths_resolve_against_the_config_files_directory(url: str, expected: str) -> None:
    config = parse_config(with_value("appservice.database", url), Path("/etc/bridge/config.yaml"))
    assert config.appservice.database == expected


def test_sqlite_url_with_a_host_part_is_an_error_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"appservice\.database: 'sqlite://x' is not a file URL"):
        parse_config(with_value("appservice.database", "sqlite://x"))


@pytest.mark.parametrize("proxy", ["sip:trunk.example.net:99999", "sip:trunk.example.net:0", "sip:u@[::1]:70000"])
def test_sip_uri_with_a_port_out_of_range_is_refused(proxy: str) -> None:
    with pytest.raises(ConfigError, match=r"sip\.trunk\.proxy: .* port \d+ is out of range"):
        parse_config(with_value("sip.trunk.proxy", proxy))


def test_example_config_permits_the_admins_own_domain_once_domain_is_changed() -> None:
    cfg = parse_config(with_value("homeserver.domain", "corp.test"))
    assert cfg.bridge.permissions == {"corp.test": "user"}


@pytest.mark.parametrize(("raw", "mode"), [(False, "off"), ("off", "off"), ("Announce", "announce"),
                                           ("connect", "connect"), (None, "announce")])
def test_early_media_modes_including_yaml_bare_off(raw: Any, mode: str) -> None:
    assert parse_config(with_value("bridge.early_media", raw)).bridge.early_media == mode


def test_early_media_defaults_to_announce_in_the_example() -> None:
    assert load_config(EXAMPLE).bridge.early_media == "announce"


def test_relative_tls_paths_resolve_against_the_config_files_directory(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    for name in ("bridge.pem", "bridge.key"):
        (tmp_path / "certs" / name).write_text("x")
    data = with_value("sip.listen", [{"transport": "tls", "host": "127.0.0.1", "port": 5061}])
    data["sip"]["tls_cert"] = "certs/bridge.pem"
    data["sip"]["tls_key"] = "certs/bridge.key"
    config = parse_config(data, tmp_path / "config.yaml")  # the test runs from another directory
    assert config.sip.tls_cert == (tmp_path / "certs" / "bridge.pem").as_posix()
    assert config.sip.tls_key == (tmp_path / "certs" / "bridge.key").as_posix()
