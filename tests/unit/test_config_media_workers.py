"""media.workers: "auto" (one worker per core) by default, 0 for media in the bridge process, N workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.app import media_factory, media_settings
from bridge.config import ConfigError, load_config, parse_config
from bridge.media.factory import InProcessMedia, WorkerMedia

EXAMPLE = Path(__file__).resolve().parents[2] / "bridge" / "example-config.yaml"
DOMAIN = {"homeserver": {"domain": "example.org"}}


def test_workers_default_to_auto_in_code_and_example() -> None:
    for cfg in (parse_config(DOMAIN), load_config(EXAMPLE)):
        assert cfg.media.workers is None
        factory = media_factory(cfg, media_settings(cfg))
        assert isinstance(factory, WorkerMedia) and len(factory.pool.workers) == len(os.sched_getaffinity(0))


def test_zero_workers_keeps_media_in_the_bridge_process() -> None:
    cfg = parse_config({**DOMAIN, "media": {"workers": 0}})
    assert isinstance(media_factory(cfg, media_settings(cfg)), InProcessMedia)


def test_a_worker_count_is_taken_as_given() -> None:
    cfg = parse_config({**DOMAIN, "media": {"workers": 3}})
    factory = media_factory(cfg, media_settings(cfg))
    assert isinstance(factory, WorkerMedia) and len(factory.pool.workers) == 3


@pytest.mark.parametrize("value", ["many", -1, 1.5, True])
def test_bad_worker_count_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"media\.workers"):
        parse_config({**DOMAIN, "media": {"workers": value}})
