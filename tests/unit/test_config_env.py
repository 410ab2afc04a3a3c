"""MATRIX_SIP_BRIDGE_<SECTION>_<KEY> environment overrides, resolved against the example config's keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import ConfigError, load_config
from bridge.config_env import apply_env_overrides, example_tree, resolve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "bridge" / "example-config.yaml"


@pytest.mark.parametrize(("name", "path"), [
    ("APPSERVICE_AS_TOKEN", ["appservice", "as_token"]),
    ("SIP_TRUNK_AUTH_PASSWORD", ["sip", "trunk", "auth_password"]),
    ("SIP_TRUNK_PROXY", ["sip", "trunk", "proxy"]),
    ("HOMESERVER_VERIFY_SSL", ["homeserver", "verify_ssl"]),
    ("BRIDGE_PERMISSIONS", ["bridge", "permissions"]),
    ("MEDIA_PORT_START", ["media", "port_start"]),
])
def test_variable_names_resolve_to_key_paths_with_underscores_in_key_names(name: str, path: list[str]) -> None:
    assert resolve(name, example_tree())[0] == path


def test_overrides_take_yaml_values_but_keep_strings_as_written() -> None:
    config = load_config(EXAMPLE, {
        "MATRIX_SIP_BRIDGE_APPSERVICE_AS_TOKEN": "0123",  # would be the integer 123 as YAML
        "MATRIX_SIP_BRIDGE_APPSERVICE_HS_TOKEN": "yes",  # would be True as YAML
        "MATRIX_SIP_BRIDGE_APPSERVICE_PORT": "31000",
        "MATRIX_SIP_BRIDGE_HOMESERVER_VERIFY_SSL": "false",
        "MATRIX_SIP_BRIDGE_BRIDGE_PERMISSIONS": '{"*": user}',
        "MATRIX_SIP_BRIDGE_SIP_TRUNK_AUTH_PASSWORD": "pa ss: #word",
    })
    assert (config.appservice.as_token, config.appservice.hs_token) == ("0123", "yes")
    assert config.appservice.port == 31000
    assert config.homeserver.verify_ssl is False
    assert config.bridge.permissions == {"*": "user"}
    assert config.sip.trunk.auth_password == "pa ss: #word"


def test_a_variable_naming_no_key_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^config error: MATRIX_SIP_BRIDGE_SIP_TRUNK_PASWORD: names no config key"):
        load_config(EXAMPLE, {"MATRIX_SIP_BRIDGE_SIP_TRUNK_PASWORD": "x"})


def test_overrides_create_missing_sections_and_leave_the_input_untouched() -> None:
    data = {"homeserver": {"domain": "a.test"}}
    out = apply_env_overrides(data, {"MATRIX_SIP_BRIDGE_SIP_TRUNK_FROM_USER": "alice"})
    assert out["sip"] == {"trunk": {"from_user": "alice"}}
    assert data == {"homeserver": {"domain": "a.test"}}


def test_check_config_sees_tokens_given_only_in_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(EXAMPLE.read_text())  # placeholder tokens in the file
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
           "MATRIX_SIP_BRIDGE_APPSERVICE_AS_TOKEN": "a" * 32, "MATRIX_SIP_BRIDGE_APPSERVICE_HS_TOKEN": "b" * 32}
    r = subprocess.run([sys.executable, "-m", "bridge", "-c", str(cfg), "--check-config"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "a" * 32 not in r.stdout + r.stderr
