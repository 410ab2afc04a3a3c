"""The signalling-security keys: defaults, validation naming the key, and their way into SipSettings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.app import sip_settings
from bridge.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "bridge" / "example-config.yaml"


def example_with(**sip: Any) -> dict[str, Any]:
    data = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    data["sip"].update(sip)
    return data


def test_tcp_limits_default_and_reach_the_sip_core() -> None:
    settings = sip_settings(load_config(EXAMPLE))
    assert settings.tcp_idle_timeout == 60
    assert settings.max_connections == 512
    assert settings.max_connections_per_source == 32


def test_trusted_hosts_are_the_trusted_sources_and_the_trunk_host() -> None:
    data = example_with(inbound={"trusted_sources": ["192.0.2.0/24"]}, trunk={"proxy": "sip:sbc.carrier.example:5060"})
    settings = sip_settings(parse_config(data))
    assert settings.trusted_hosts == ("192.0.2.0/24", "sbc.carrier.example")


def test_tcp_limit_keys_are_set_and_validated() -> None:
    settings = sip_settings(parse_config(example_with(tcp_idle_timeout_s=5, max_connections=10,
                                                      max_connections_per_source=2)))
    assert (settings.tcp_idle_timeout, settings.max_connections, settings.max_connections_per_source) == (5, 10, 2)
    with pytest.raises(ConfigError, match=r"sip\.max_connections_per_source"):
        parse_config(example_with(max_connections_per_source=0))
    with pytest.raises(ConfigError, match=r"sip\.tcp_idle_timeout_s"):
        parse_config(example_with(tcp_idle_timeout_s=-1))
