"""media.rtp_source / media.rtp_latch_packets: secure by default, validated, reaching the media settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.app import media_settings
from bridge.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "bridge" / "example-config.yaml"

DOMAIN = {"homeserver": {"domain": "example.org"}}


def test_rtp_source_defaults_to_signalling_with_four_packet_latch_in_code_and_example() -> None:
    for cfg in (parse_config(DOMAIN), load_config(EXAMPLE)):
        assert (cfg.media.rtp_source, cfg.media.rtp_latch_packets) == ("signalling", 4)


def test_rtp_source_settings_reach_the_media_plane() -> None:
    cfg = parse_config({**DOMAIN, "media": {"rtp_source": "Strict", "rtp_latch_packets": 6}})
    settings = media_settings(cfg)
    assert (settings.rtp_source, settings.rtp_latch_packets) == ("strict", 6)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("rtp_source", "nat", r"media\.rtp_source: 'nat' is not one of strict, signalling, any"),
        ("rtp_latch_packets", 0, r"media\.rtp_latch_packets"),
        ("rtp_latch_packets", 51, r"media\.rtp_latch_packets"),
    ],
)
def test_bad_rtp_source_settings_name_the_key(key: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config({**DOMAIN, "media": {key: value}})
