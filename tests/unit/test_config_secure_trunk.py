"""media.srtp, sip.trunk.transport, sip.tls_ca / tls_verify: defaults, validation, and where they land."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.app import media_settings, sip_settings, trunk_target
from bridge.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "bridge" / "example-config.yaml"
DOMAIN = {"homeserver": {"domain": "example.org"}}


def test_defaults_are_plain_rtp_auto_transport_and_verified_tls_in_code_and_example() -> None:
    for cfg in (parse_config(DOMAIN), load_config(EXAMPLE)):
        assert cfg.media.srtp == "off"
        assert cfg.sip.trunk.transport == "auto" and cfg.sip.tls_verify is True and cfg.sip.tls_ca is None


@pytest.mark.parametrize("value", ["optional", "required", "Required", False])
def test_srtp_modes_reach_the_media_settings(value: object) -> None:
    settings = media_settings(parse_config({**DOMAIN, "media": {"srtp": value}}))
    assert settings.srtp == ("off" if value is False else str(value).lower())


def test_bad_srtp_mode_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"media\.srtp: 'sdes' is not one of off, optional, required"):
        parse_config({**DOMAIN, "media": {"srtp": "sdes"}})


def test_trunk_transport_tls_goes_into_the_proxy_uri_and_a_sips_proxy_dials_sips(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cfg = parse_config({**DOMAIN, "sip": {"tls_ca": str(ca), "tls_verify": True,
                                          "trunk": {"proxy": "sip:trunk.example.net", "transport": "tls"}}})
    assert cfg.sip.trunk.proxy == "sip:trunk.example.net;transport=tls"
    assert trunk_target(cfg).request_uri("123") == "sip:123@trunk.example.net"
    assert (sip_settings(cfg).tls_cafile, sip_settings(cfg).tls_verify) == (str(ca), True)
    sips = parse_config({**DOMAIN, "sip": {"trunk": {"proxy": "sips:trunk.example.net", "transport": "tls"}}})
    assert trunk_target(sips).request_uri("123") == "sips:123@trunk.example.net"


@pytest.mark.parametrize(
    ("sip", "match"),
    [
        ({"trunk": {"proxy": "sips:t.example.net", "transport": "udp"}}, r"sip\.trunk\.transport: udp contradicts"),
        ({"trunk": {"proxy": "sip:t.example.net;transport=tcp", "transport": "tls"}}, r"sip\.trunk\.transport"),
        ({"trunk": {"transport": "sctp"}}, r"sip\.trunk\.transport: 'sctp' is not one of"),
        ({"tls_ca": "/nonexistent/ca.pem"}, r"sip\.tls_ca: file '/nonexistent/ca.pem' does not exist"),
        ({"tls_cert": "/etc/hostname"}, r"sip\.tls_key: tls_cert and tls_key go together"),
    ],
)
def test_bad_secure_trunk_settings_name_the_key(sip: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config({**DOMAIN, "sip": sip})
