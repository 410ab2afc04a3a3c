"""The CLI as a subprocess: --check-config exit codes, -g writing tokens into both files, --help."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "bridge" / "example-config.yaml"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_check_config_exits_1_with_placeholder_tokens_and_says_to_run_g(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(EXAMPLE.read_text())
    r = cli("-c", str(cfg), "--check-config", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("config error: appservice.as_token: is a placeholder")
    assert "-g" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_check_config_exits_1_naming_the_bad_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(EXAMPLE.read_text().replace('proxy: "sip:127.0.0.1:5080"', 'proxy: "foo"'))
    r = cli("-c", str(cfg), "--check-config", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip() == ("config error: sip.trunk.proxy: 'foo' is not a SIP URI "
                                "(expected e.g. sip:trunk.example.net:5060)")


def test_generate_registration_writes_same_fresh_tokens_to_both_files(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    reg = tmp_path / "registration.yaml"
    cfg.write_text(EXAMPLE.read_text())
    r = cli("-c", str(cfg), "-g", "-r", str(reg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    registration = yaml.safe_load(reg.read_text())
    config = yaml.safe_load(cfg.read_text())
    assert registration["as_token"] == config["appservice"]["as_token"]
    assert registration["hs_token"] == config["appservice"]["hs_token"]
    assert registration["as_token"] != registration["hs_token"]
    assert len(registration["as_token"]) >= 40
    assert registration["sender_localpart"] == "sipbot"
    assert registration["url"] == "http://127.0.0.1:29350"
    assert registration["namespaces"]["users"][0] == {"regex": r"@sip_.+:example\.org", "exclusive": True}
    # Comments and every other line are preserved.
    assert cfg.read_text().count("\n") == EXAMPLE.read_text().count("\n")
    assert "# Copy to config.yaml" in cfg.read_text()
    r2 = cli("-c", str(cfg), "--check-config", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    # Running -g again rotates the tokens.
    assert cli("-c", str(cfg), "-g", "-r", str(reg), cwd=tmp_path).returncode == 0
    assert yaml.safe_load(reg.read_text())["as_token"] != registration["as_token"]


def test_generate_registration_refuses_invalid_config_and_touches_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    bad = EXAMPLE.read_text().replace("port: 29350", "port: 99999")
    cfg.write_text(bad)
    r = cli("-c", str(cfg), "-g", "-r", str(tmp_path / "reg.yaml"), cwd=tmp_path)
    assert r.returncode == 1
    assert "appservice.port" in r.stderr
    assert cfg.read_text() == bad
    assert not (tmp_path / "reg.yaml").exists()


def test_run_with_placeholder_tokens_refuses_to_start(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(EXAMPLE.read_text())
    r = cli("-c", str(cfg), cwd=tmp_path)
    assert r.returncode == 1
    assert "placeholder" in r.stderr and "-g" in r.stderr


def test_missing_config_file_is_a_one_line_error(tmp_path: Path) -> None:
    r = cli("-c", str(tmp_path / "nope.yaml"), "--check-config", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("config error: cannot read")


def test_help_lists_every_option(tmp_path: Path) -> None:
    r = cli("--help", cwd=tmp_path)
    assert r.returncode == 0
    for opt in ("--config", "--generate-registration", "--registration", "--check-config"):
        assert opt in r.stdout


def test_example_writes_the_packaged_example_once_and_never_overwrites(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    r = cli("-c", str(cfg), "-e", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert cfg.read_text() == EXAMPLE.read_text()
    cfg.write_text("# the admin's own edits\n")
    r = cli("-c", str(cfg), "-e", cwd=tmp_path)
    assert r.returncode == 1
    assert "not overwriting" in r.stderr
    assert cfg.read_text() == "# the admin's own edits\n"


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    r = cli("--version", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.strip() == f"python -m bridge {importlib.metadata.version('matrix-sip-bridge')}"
