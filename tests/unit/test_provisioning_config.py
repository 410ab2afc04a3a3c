"""provisioning.* config keys and -g generating the shared secret (bridge/config.py, bridge/config_secret.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import __main__ as cli
from bridge.config import ConfigError, load_config, parse_config
from bridge.config_secret import replace_provisioning_secret

EXAMPLE = Path(__file__).resolve().parents[2] / "bridge" / "example-config.yaml"


def config_with(**provisioning: Any) -> Any:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["provisioning"].update(provisioning)
    return parse_config(data)


def test_example_defaults_enable_the_api_with_a_placeholder_secret() -> None:
    prov = load_config(EXAMPLE).provisioning
    assert prov.enabled and prov.prefix == "/_matrix/provision"
    assert prov.shared_secret == "generate" and prov.secret is None


def test_a_real_secret_is_used_and_never_in_the_repr() -> None:
    prov = config_with(shared_secret="x" * 40, prefix="/prov/").provisioning
    assert prov.secret == "x" * 40 and prov.prefix == "/prov"
    assert "x" * 40 not in repr(prov)


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("shared_secret", "short", "shorter than 16"),
    ("prefix", "no-slash", "URL path"),
    ("prefix", "/_matrix/app/v1", "URL path"),
    ("enabled", "yes", "true or false"),
])
def test_bad_values_name_the_key(key: str, value: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_with(**{key: value})
    assert err.value.key == f"provisioning.{key}" and fragment in err.value.problem


def test_replace_secret_only_replaces_a_placeholder() -> None:
    text = 'a: 1\nprovisioning:\n  enabled: true\n  shared_secret: "generate"  # keep me\nb: 2\n'
    assert replace_provisioning_secret(text, "NEW") == \
        'a: 1\nprovisioning:\n  enabled: true\n  shared_secret: "NEW"  # keep me\nb: 2\n'
    real = text.replace('"generate"', '"admin-chosen-secret-123"')
    assert replace_provisioning_secret(real, "NEW") == real
    assert replace_provisioning_secret("a: 1\n", "NEW") == "a: 1\n"  # no block: left to the start-up upgrade


def test_generate_registration_writes_a_provisioning_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(EXAMPLE.read_text())
    cli.generate_registration(cfg, tmp_path / "registration.yaml")
    prov = load_config(cfg).provisioning
    assert prov.secret is not None and len(prov.secret) >= 32


def test_an_older_config_without_the_block_is_upgraded_and_g_fills_the_secret(tmp_path: Path) -> None:
    from bridge.config_upgrade import upgrade_text

    text = EXAMPLE.read_text()
    start, end = text.index("\nprovisioning:\n"), text.index("\nmetrics:\n")
    old = text[:start] + text[end:]  # a config written before the provisioning API existed
    assert "provisioning" not in yaml.safe_load(old)
    # a start's upgrade adds the block with the example's defaults
    upgraded = upgrade_text(old)
    assert any("provisioning" in change for change in upgraded.changes)
    assert upgraded.data["provisioning"] == {"enabled": True, "prefix": "/_matrix/provision",
                                             "shared_secret": "generate"}
    # -g on the old file: the block is added and its secret generated in the same run; the old text is kept
    cfg = tmp_path / "config.yaml"
    cfg.write_text(old)
    assert cli.main(["-c", str(cfg), "-g", "-r", str(tmp_path / "registration.yaml")]) == 0
    config = load_config(cfg)
    assert config.provisioning.secret is not None and len(config.provisioning.secret) >= 32
    assert config.appservice.as_token != "generate" and config.bridge.accounts.key_configured
    assert (tmp_path / "config.yaml.bak").read_text() == old
    # a second -g keeps the secret
    secret = config.provisioning.secret
    assert cli.main(["-c", str(cfg), "-g", "-r", str(tmp_path / "registration.yaml")]) == 0
    assert load_config(cfg).provisioning.secret == secret
