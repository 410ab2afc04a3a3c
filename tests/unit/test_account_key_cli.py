"""The account encryption key from the CLI: -g fills the "generate" placeholder (once: a second -g must not
replace it, stored passwords would be lost), --generate-account-key does only that, and never overwrites a key."""

from __future__ import annotations

from pathlib import Path

import yaml

from bridge.db.credential_cipher import parse_key
from tests.unit.test_config_cli import EXAMPLE, cli


def key_of(cfg: Path) -> str:
    return str(yaml.safe_load(cfg.read_text())["bridge"]["accounts"]["encryption_key"])


def test_g_writes_an_account_key_once_and_keeps_it_on_the_next_g(tmp_path: Path) -> None:
    cfg, reg = tmp_path / "config.yaml", tmp_path / "registration.yaml"
    cfg.write_text(EXAMPLE.read_text())
    assert cli("-c", str(cfg), "-g", "-r", str(reg), cwd=tmp_path).returncode == 0
    key = key_of(cfg)
    assert len(parse_key(key)) == 32
    assert cfg.read_text().count("\n") == EXAMPLE.read_text().count("\n")  # comments and layout kept
    assert cli("-c", str(cfg), "-g", "-r", str(reg), cwd=tmp_path).returncode == 0
    assert key_of(cfg) == key


def test_generate_account_key_fills_only_the_placeholder_and_refuses_to_replace_a_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(EXAMPLE.read_text())
    r = cli("-c", str(cfg), "--generate-account-key", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    key = key_of(cfg)
    assert len(parse_key(key)) == 32
    assert yaml.safe_load(cfg.read_text())["appservice"]["as_token"] == "generate"  # tokens untouched
    again = cli("-c", str(cfg), "--generate-account-key", cwd=tmp_path)
    assert again.returncode == 1 and "previous_keys" in again.stderr
    assert key_of(cfg) == key


def test_the_key_can_come_from_the_environment_alone(tmp_path: Path) -> None:
    from bridge.config import load_config
    from bridge.db.credential_cipher import generate_key

    cfg = tmp_path / "config.yaml"
    cfg.write_text(EXAMPLE.read_text().replace('encryption_key: "generate"', 'encryption_key: ""'))
    key = generate_key()
    config = load_config(cfg, {"MATRIX_SIP_BRIDGE_BRIDGE_ACCOUNTS_ENCRYPTION_KEY": key})
    assert config.bridge.accounts.key_configured and config.bridge.accounts.encryption_key == key
    assert not load_config(cfg, {}).bridge.accounts.key_configured
