"""Config upgrades on real files: an old config (a renamed key, a missing new key) still starts and is rewritten
with the admin's values and comments kept and the new key's example comment added; --check-config and
--no-update never write; a file that cannot be written is reported once; secrets from the environment stay out."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import bridge.__main__ as cli_main
from bridge import config_upgrade
from bridge.config import Config, ConfigError, load_config, load_config_upgrade
from bridge.config_upgrade import upgrade_text, write_upgrade

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "bridge" / "example-config.yaml"
RENAMES = {"bridge.ring_timeout_old": "bridge.ring_timeout_s"}
ICE_COMMENT = "  # Seconds a call's WebRTC leg may take to connect (ICE + DTLS) before the call ends with ice_failed.\n"


def old_config_text() -> str:
    """The example as an admin of an older release has it: own comments and values, real tokens, a key under its
    old name (ring_timeout_old) and without a key added since (media.ice_timeout_s)."""
    text = EXAMPLE.read_text()
    assert ICE_COMMENT in text
    replacements = [
        (ICE_COMMENT + "  ice_timeout_s: 30\n", ""),
        ("  ring_timeout_s: 60\n", "  # ours: the front desk needs longer\n  ring_timeout_old: 45  # seconds\n"),
        ('  as_token: "generate"\n', '  as_token: "AS-real-token"\n'),
        ('  hs_token: "generate"\n', '  hs_token: "HS-real-token"\n'),
        ('    proxy: "sip:127.0.0.1:5080"\n',
         "    # admin: our carrier\n    proxy: 'sip:192.0.2.10:5060'  # primary\n"),
        ('  domain: "example.org"\n', '  domain: "corp.example"\n'),
    ]
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr(config_upgrade, "RENAMES", dict(RENAMES))
    return RENAMES


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(old_config_text())
    path.chmod(0o600)
    return path


def test_old_config_with_renamed_and_missing_key_loads_and_validates(old_file: Path, renames: Any) -> None:
    with pytest.raises(ConfigError, match=r"bridge\.ring_timeout_old: unknown key"):
        load_config_upgrade(old_file, {}, renames={})  # without the rename it is an unknown key, as before
    config, upgrade = load_config_upgrade(old_file, {})
    assert config.bridge.ring_timeout_s == 45
    assert config.media.ice_timeout_s == 30
    assert config.sip.trunk.proxy == "sip:192.0.2.10:5060"
    assert upgrade.changes == ["moved bridge.ring_timeout_old to bridge.ring_timeout_s",
                               "added media.ice_timeout_s = 30"]
    assert old_file.read_text() == old_config_text()  # loading never writes


def test_start_rewrites_the_file_keeping_admin_values_and_comments_and_adding_the_example_comment(
        old_file: Path, renames: Any) -> None:
    _, upgrade = load_config_upgrade(old_file, {})
    backup = write_upgrade(old_file, upgrade)
    text = old_file.read_text()
    assert "  # ours: the front desk needs longer\n  ring_timeout_s: 45  # seconds\n" in text
    assert "ring_timeout_old" not in text
    assert "    # admin: our carrier\n    proxy: 'sip:192.0.2.10:5060'  # primary\n" in text
    assert ICE_COMMENT + "  ice_timeout_s: 30\n" in text
    # Every other line is as the admin had it: the new file is the old one plus the two lines of the new key.
    expected = old_config_text().replace("ring_timeout_old", "ring_timeout_s").replace(
        "  ice_host_addresses: []\n", "  ice_host_addresses: []\n" + ICE_COMMENT + "  ice_timeout_s: 30\n")
    assert text == expected
    assert backup is not None and backup.read_text() == old_config_text()
    assert stat.S_IMODE(old_file.stat().st_mode) == 0o600 and stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert not [p for p in old_file.parent.iterdir() if p.name.endswith(".tmp")]
    # The rewritten file validates to the same config and needs no further upgrade.
    config, again = load_config_upgrade(old_file, {})
    assert not again.changed
    assert config.bridge.ring_timeout_s == 45 and config.homeserver.domain == "corp.example"


def test_a_current_config_is_never_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(EXAMPLE.read_text())
    _, upgrade = load_config_upgrade(path, {})
    assert not upgrade.changed and upgrade.text == EXAMPLE.read_text()


def test_unknown_keys_stay_errors_and_are_kept_in_the_file(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("  failure_notices: true\n", "  failure_notices: true\n  colour: blue\n")
    text = text.replace(ICE_COMMENT + "  ice_timeout_s: 30\n", "")
    up = upgrade_text(text)
    assert "  colour: blue\n" in up.text and "ice_timeout_s: 30" in up.text
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"^config error: bridge.colour: unknown key"):
        load_config(path, {})


def test_free_form_mappings_are_not_filled_from_the_example() -> None:
    text = EXAMPLE.read_text().replace("  permissions: null\n", '  permissions:\n    "corp.example": admin\n')
    up = upgrade_text(text, example=EXAMPLE.read_text().replace(
        "  permissions: null\n", '  permissions: {}\n'))
    assert not up.changed


def test_a_missing_section_is_added_whole_with_its_comments() -> None:
    example = EXAMPLE.read_text()
    start = example.index("\nlogging:\n")
    up = upgrade_text(example[:start + 1])
    assert up.changes == ["added logging"]
    assert up.text == example


def test_renamed_key_into_a_new_section_and_onto_a_set_key(renames: Any) -> None:
    text = EXAMPLE.read_text().replace("  ring_timeout_s: 60\n", "  ring_timeout_s: 60\n  ring_timeout_old: 5\n")
    up = upgrade_text(text, renames=RENAMES)
    assert up.changes == ["removed bridge.ring_timeout_old (renamed to bridge.ring_timeout_s, which is already set)"]
    assert "ring_timeout_old" not in up.text and "  ring_timeout_s: 60\n" in up.text
    up = upgrade_text(EXAMPLE.read_text(), renames={"logging.level": "extra.logging_level"})
    assert "moved logging.level to extra.logging_level" in up.changes
    assert yaml.safe_load(up.text)["extra"] == {"logging_level": "INFO"}


def test_env_secrets_are_never_written_to_the_file(old_file: Path, renames: Any) -> None:
    env = {"MATRIX_SIP_BRIDGE_SIP_TRUNK_AUTH_PASSWORD": "env-only-secret",
           "MATRIX_SIP_BRIDGE_SIP_TRUNK_AUTH_USERNAME": "env-user",
           "MATRIX_SIP_BRIDGE_APPSERVICE_AS_TOKEN": "env-as-token"}
    config, upgrade = load_config_upgrade(old_file, env)
    assert config.sip.trunk.auth_password == "env-only-secret" and config.appservice.as_token == "env-as-token"
    write_upgrade(old_file, upgrade)
    written = old_file.read_text() + Path(str(old_file) + ".bak").read_text()
    assert "env-only-secret" not in written and "env-user" not in written and "env-as-token" not in written
    assert "  as_token: \"AS-real-token\"\n" in old_file.read_text()


# --------------------------------------------------------------------------------------------- start path (main)


@pytest.fixture
def fake_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Config]]:
    """main() up to the composition root: app.run is replaced by a recorder, so nothing binds a port."""
    from bridge import app

    started: list[Config] = []

    async def fake_run(config: Config) -> None:
        started.append(config)
        await asyncio.sleep(0)

    monkeypatch.setattr(app, "run", fake_run)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield started
    root.handlers[:] = handlers
    root.setLevel(level)


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The bridge's own log lines (main() sets up logging to stderr), without the timestamp."""
    return [line.split(" ", 2)[2] for line in capsys.readouterr().err.splitlines() if line[:2] == "20"]


def test_start_writes_the_upgrade_and_logs_each_change(old_file: Path, renames: Any, fake_app: list[Config],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["-c", str(old_file)]) == 0
    assert fake_app[0].bridge.ring_timeout_s == 45
    assert "ring_timeout_s: 45" in old_file.read_text()
    assert log_lines(capsys) == [
        "INFO bridge.config: config upgrade: moved bridge.ring_timeout_old to bridge.ring_timeout_s",
        "INFO bridge.config: config upgrade: added media.ice_timeout_s = 30",
        f"INFO bridge.config: config upgrade: wrote {old_file} (previous version saved as {old_file}.bak)",
    ]


def test_no_update_starts_with_the_upgrade_in_memory_and_leaves_the_file(
        old_file: Path, renames: Any, fake_app: list[Config]) -> None:
    assert cli_main.main(["-c", str(old_file), "--no-update"]) == 0
    assert fake_app[0].bridge.ring_timeout_s == 45 and fake_app[0].media.ice_timeout_s == 30
    assert old_file.read_text() == old_config_text()
    assert not Path(str(old_file) + ".bak").exists()


def test_a_file_that_cannot_be_written_costs_one_warning_and_the_bridge_starts(
        renames: Any, fake_app: list[Config], capsys: pytest.CaptureFixture[str]) -> None:
    # A real permission denial: a root-owned 0644 file in a 0755 directory, written by an unprivileged user.
    # (As root, the test drops its effective uid to nobody for the start; otherwise the modes alone do it.)
    directory = Path(tempfile.mkdtemp(prefix="cfgup-ro-"))
    try:
        path = directory / "config.yaml"
        path.write_text(old_config_text())
        path.chmod(0o644)
        directory.chmod(0o755 if os.geteuid() == 0 else 0o555)
        if os.geteuid() != 0:
            path.chmod(0o444)
        if os.geteuid() == 0:
            os.seteuid(65534)
            try:
                code = cli_main.main(["-c", str(path)])
            finally:
                os.seteuid(0)
        else:
            code = cli_main.main(["-c", str(path)])
        assert code == 0
        assert fake_app[0].bridge.ring_timeout_s == 45  # running with the in-memory upgrade
        assert path.read_text() == old_config_text()
        warnings = [line for line in log_lines(capsys) if not line.startswith("INFO")]
        assert warnings == [f"WARNING bridge.config: config upgrade: cannot write {path} (Permission denied); "
                            "running with the upgraded settings in memory"]
    finally:
        directory.chmod(0o755)
        for p in directory.iterdir():
            p.unlink()
        directory.rmdir()


# --------------------------------------------------------------------------------------------- CLI subprocess


def test_check_config_accepts_an_old_file_and_does_not_write_it(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    old = old_config_text().replace("  # ours: the front desk needs longer\n  ring_timeout_old: 45  # seconds\n",
                                    "  ring_timeout_s: 45\n")
    path.write_text(old)
    before = path.stat().st_mtime_ns
    r = subprocess.run([sys.executable, "-m", "bridge", "-c", str(path), "--check-config"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"{path}: OK"
    assert "added media.ice_timeout_s = 30" in r.stdout
    assert path.read_text() == old and path.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.yaml"]


def test_new_keys_land_at_the_example_position_with_comments_next_to_the_right_keys() -> None:
    example = """homeserver:
  # Address comment.
  address: "http://x"
  # New key before domain.
  newkey: 5
  domain: "example.org"
bridge:
  # The new first key.
  first: 1
  sub:
    a: 1
media:
  # A new section.
  newsec:
    # Inner comment.
    inner: 1
"""
    admin = """# my header
homeserver:
  address: "http://mine"  # eol mine
  # my domain comment
  domain: "mine.org"
bridge:
  # admin sub
  sub:
    a: 7
media: {}
"""
    up = upgrade_text(admin, example, renames={})
    assert up.changes == ["added homeserver.newkey = 5", "added bridge.first = 1", "added media.newsec"]
    assert up.text == """# my header
homeserver:
  address: "http://mine"  # eol mine
  # New key before domain.
  newkey: 5
  # my domain comment
  domain: "mine.org"
bridge:
  # The new first key.
  first: 1
  # admin sub
  sub:
    a: 7
media:
  # A new section.
  newsec:
    # Inner comment.
    inner: 1
"""


def test_generate_registration_accepts_an_old_file_and_changes_only_the_tokens(old_file: Path, renames: Any) -> None:
    reg = old_file.parent / "registration.yaml"
    cli_main.generate_registration(old_file, reg)
    text = old_file.read_text()
    tokens = yaml.safe_load(reg.read_text())
    assert f'  as_token: "{tokens["as_token"]}"\n' in text
    secret = yaml.safe_load(text)["provisioning"]["shared_secret"]
    assert len(secret) >= 32  # the placeholder provisioning secret is generated too
    assert text.replace(tokens["as_token"], "AS-real-token").replace(tokens["hs_token"], "HS-real-token") \
        .replace(f'"{secret}"', '"generate"') \
        == old_config_text()  # -g rewrites the token and secret lines only; the upgrade is left to the next start


def test_a_required_key_is_never_filled_from_the_example(tmp_path: Path) -> None:
    # homeserver.domain decides who may use the bridge: the example's "example.org" must not stand in for it.
    text = EXAMPLE.read_text().replace('  domain: "example.org"\n', "")
    assert not upgrade_text(text).changed
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"^config error: homeserver\.domain: is required$"):
        load_config(path, {})
    # a missing section holding it is added without it
    example = EXAMPLE.read_text()
    start, end = example.index("homeserver:\n"), example.index("appservice:\n")
    up = upgrade_text(example[:start] + example[end:])
    assert up.changes == ["added homeserver.address = 'http://127.0.0.1:8008'", "added homeserver.verify_ssl = True"]
    assert "domain" not in yaml.safe_load(up.text)["homeserver"]
    assert "  # Client-server API URL of your homeserver, as reachable from the bridge.\n" in up.text


def test_a_symlinked_config_is_written_through_the_link(tmp_path: Path, renames: Any) -> None:
    real = tmp_path / "real"
    real.mkdir()
    target = real / "config.yaml"
    target.write_text(old_config_text())
    link = tmp_path / "config.yaml"
    link.symlink_to(target)
    _, upgrade = load_config_upgrade(link, {})
    backup = write_upgrade(link, upgrade)
    assert link.is_symlink() and "ring_timeout_s: 45" in target.read_text()
    assert backup == real / "config.yaml.bak"
