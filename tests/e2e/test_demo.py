"""The one-command demo (scripts/demo.py, run by scripts/demo.sh after setup): it must place both calls with
audio, say so in its summary, exit 0, and leave no process behind; on failure it must say which step failed.

The demo's helpers (config editing, SIP ladder) are checked here too, loaded from scripts/ by path."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo.py"


def _load(name: str) -> ModuleType:
    full_name = f"scripts_{name}"  # scripts/ is not a package; dataclasses need the module registered
    spec = importlib.util.spec_from_file_location(full_name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[full_name] = module
    spec.loader.exec_module(module)
    return module


demo_config = _load("demo_config")
demo_sip = _load("demo_sip")


def run_demo(workdir: Path, *args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEMO), "--dir", str(workdir), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def processes_using(path: Path) -> list[str]:
    """Live processes whose command line or working directory mentions ``path`` (sipp, Synapse, the bridge)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
            state = next((ln for ln in (proc / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:
            continue
        if "zombie" in state:
            continue
        if str(path) in cmdline or cwd.startswith(str(path)):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def wait_no_processes(path: Path, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := processes_using(path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_demo_bridges_both_call_directions_with_audio_and_stops_every_process(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = run_demo(workdir)
    out = result.stdout
    assert result.returncode == 0, f"demo failed:\n{out}\n--- stderr\n{result.stderr}"
    assert "DEMO OK: Matrix -> SIP and SIP -> Matrix calls connected with audio both ways" in out
    # Both calls went through real SIP signalling, set up and torn down.
    assert "bridge -> trunk: INVITE sip:15551234567@127.0.0.1" in out
    assert "trunk -> bridge: 100 Trying (INVITE), 180 Ringing (INVITE), 200 OK (INVITE)" in out
    assert "phone -> bridge: INVITE sip:18005550100@127.0.0.1" in out
    assert out.count("200 OK (BYE)") == 2
    assert "Matrix -> SIP: " in out and "SIP -> Matrix: " in out
    assert "1000 Hz tone" in out and "800 Hz tone" in out
    # The admin path was used: -g wrote real tokens, the bridge logged its start in the demo dir.
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    assert config["appservice"]["as_token"] not in ("generate", "") and config["homeserver"]["domain"] == "demo.test"
    assert (workdir / "registration.yaml").is_file()
    assert "bridge running" in (workdir / "bridge.log").read_text()
    assert "all demo processes stopped" in out
    assert wait_no_processes(workdir) == []


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_demo_out_of_time_names_the_failed_step_and_leaves_no_process(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = run_demo(workdir, "--timeout", "3", timeout=100)
    assert result.returncode == 1, result.stdout
    assert "DEMO FAILED during '" in result.stdout
    assert "DEMO OK" not in result.stdout
    assert wait_no_processes(workdir) == []


EXAMPLE = """\
sip:
  # listeners
  listen:
    - {transport: udp, host: 127.0.0.1, port: 5060}
  # trunk settings
  trunk:
    proxy: "sip:127.0.0.1:5080"  # outbound proxy
    domain: null
bridge:
  permissions:
    "example.org": "user"
  # lifetime
  invite_lifetime_ms: 60000
"""


def test_config_edit_replaces_nested_and_block_values_and_keeps_other_comments() -> None:
    text = demo_config.edit_config(EXAMPLE, {
        "sip.listen": [{"transport": "udp", "host": "127.0.0.1", "port": 4000}],
        "sip.trunk.proxy": "sip:127.0.0.1:4001",
        "bridge.permissions": {"demo.test": "user"},
    })
    data = yaml.safe_load(text)
    assert data["sip"]["listen"] == [{"transport": "udp", "host": "127.0.0.1", "port": 4000}]
    assert data["sip"]["trunk"] == {"proxy": "sip:127.0.0.1:4001", "domain": None}
    assert data["bridge"] == {"permissions": {"demo.test": "user"}, "invite_lifetime_ms": 60000}
    assert "# trunk settings" in text and "# lifetime" in text and "example.org" not in text


def test_config_edit_refuses_a_key_the_example_does_not_have() -> None:
    with pytest.raises(demo_config.ConfigEditError, match=r"sip\.trunk\.nope"):
        demo_config.edit_config(EXAMPLE, {"sip.trunk.nope": 1})


def test_demo_config_from_the_real_example_is_accepted_by_the_bridge(tmp_path: Path) -> None:
    from bridge.config import parse_config

    path = demo_config.write_config(REPO / "bridge" / "example-config.yaml", tmp_path / "config.yaml", {
        "homeserver.domain": "demo.test",
        "sip.listen": [{"transport": "udp", "host": "127.0.0.1", "port": 4000}],
        "sip.inbound.routes": [{"number": "18005550100", "users": ["@demo:demo.test"]}],
    })
    config = parse_config(yaml.safe_load(path.read_text()))
    assert config.homeserver.domain == "demo.test"
    assert config.sip.listen[0].port == 4000 and config.sip.inbound.routes[0].number == "18005550100"


TRACE = """\
----------------------------------------------- 2026-11-22 04:29:07.210818
UDP message received [728] bytes :

INVITE sip:15551234567@127.0.0.1 SIP/2.0
CSeq: 1 INVITE

----------------------------------------------- 2026-11-22 04:29:07.211000
UDP message sent (300 bytes):

SIP/2.0 100 Trying
CSeq: 1 INVITE

----------------------------------------------- 2026-11-22 04:29:07.212000
UDP message sent (300 bytes):

SIP/2.0 200 OK
CSeq: 1 INVITE

----------------------------------------------- 2026-11-22 04:29:07.213000
UDP message received [300] bytes :

ACK sip:trunk@127.0.0.1 SIP/2.0
CSeq: 1 ACK
"""


def test_sip_ladder_groups_sipp_trace_by_direction() -> None:
    lines = demo_sip.describe(demo_sip.ladder(TRACE), "trunk")
    assert lines == [
        "bridge -> trunk: INVITE sip:15551234567@127.0.0.1",
        "trunk -> bridge: 100 Trying (INVITE), 200 OK (INVITE)",
        "bridge -> trunk: ACK",
    ]
