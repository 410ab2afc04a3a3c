"""The one-command demo (scripts/demo.py, run by scripts/demo.sh after setup): it must place both calls with
audio, say so in its summary, exit 0, and leave no process behind; on failure it must say which step failed.
Audio counts only if each side hears the other's tone: a silent direction must fail the demo. The SIP messages
and Matrix call events must be printed in the order they happened.

The demo's helpers (config editing, SIP ladder, timeline) are checked here too, loaded from scripts/ by path."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from datetime import datetime
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
sys.path.insert(0, str(REPO / "scripts"))  # demo_timeline and demo import their siblings by name
demo_timeline = _load("demo_timeline")
demo = _load("demo")


def run_demo(workdir: Path | None, *args: str, timeout: float = 240.0,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    where = ["--dir", str(workdir)] if workdir is not None else []
    return subprocess.run([sys.executable, str(DEMO), *where, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


_LINE = re.compile(r"^\[\s*(?P<t>\d+\.\d)s\]\s+(?P<text>.*)$")


def timeline(out: str) -> list[tuple[float, str]]:
    """(seconds, text) of every timestamped line of the demo's output, in printed order."""
    return [(float(m.group("t")), m.group("text")) for m in map(_LINE.match, out.splitlines()) if m]


def index_of(lines: list[tuple[float, str]], text: str, start: int = 0) -> int:
    return next(i for i in range(start, len(lines)) if text in lines[i][1])


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
    assert "phone -> bridge: INVITE sip:18005550100@127.0.0.1" in out
    assert out.count("200 OK (BYE)") == 2
    assert "Matrix -> SIP: " in out and "SIP -> Matrix: " in out
    # Each side heard the other's tone (not just packets): 1000/800 Hz from the phones, 440 Hz from Matrix.
    assert "Matrix heard the phone's 1000 Hz tone" in out and "Matrix heard the phone's 800 Hz tone" in out
    assert out.count("the phone heard Matrix's 440 Hz tone") == 4  # per call, and in the summary
    # The ladder is printed in the order things happened: times never go back, and cause precedes effect.
    lines = timeline(out)
    times = [t for t, _ in lines]
    assert times == sorted(times), "\n".join(f"{t:5.1f} {x}" for t, x in lines)
    call1 = index_of(lines, "== Call 1")
    order1 = ["Matrix  @demo -> bridge: m.call.invite", "SIP     bridge -> trunk: INVITE sip:15551234567",
              "trunk -> bridge: 100 Trying (INVITE)", "trunk -> bridge: 180 Ringing (INVITE)",
              "trunk -> bridge: 200 OK (INVITE)", "Matrix  bridge -> @demo: m.call.answer",
              "Matrix  @demo -> bridge: m.call.hangup", "SIP     bridge -> trunk: BYE", "trunk -> bridge: 200 OK (BYE)"]
    positions = [index_of(lines, text, call1) for text in order1]
    assert positions == sorted(positions), list(zip(order1, positions, strict=True))
    call2 = index_of(lines, "== Call 2")
    order2 = ["SIP     phone -> bridge: INVITE sip:18005550100", "Matrix  bridge -> @demo: m.call.invite",
              "Matrix  @demo -> bridge: m.call.answer", "SIP     bridge -> phone: 200 OK (INVITE)",
              "SIP     phone -> bridge: BYE", "Matrix  bridge -> @demo: m.call.hangup"]
    positions = [index_of(lines, text, call2) for text in order2]
    assert positions == sorted(positions), list(zip(order2, positions, strict=True))
    # The admin path was used: -g wrote real tokens, the bridge logged its start in the demo dir.
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    assert config["appservice"]["as_token"] not in ("generate", "") and config["homeserver"]["domain"] == "demo.test"
    assert (workdir / "registration.yaml").is_file()
    assert "bridge running" in (workdir / "bridge.log").read_text()
    assert "all demo processes stopped" in out
    assert wait_no_processes(workdir) == []


@pytest.mark.e2e
@pytest.mark.timeout(200)
@pytest.mark.parametrize(("silent", "missing"), [("phone", "no audio from the phone (+1 555 123 4567)"),
                                                  ("matrix", "no audio from Matrix")])
def test_demo_fails_when_one_direction_is_silent(tmp_path: Path, silent: str, missing: str) -> None:
    """Packets of silence still flow: only listening for the far end's tone can tell."""
    result = run_demo(None, "--silent", silent, timeout=180, env={**os.environ, "TMPDIR": str(tmp_path)})
    out = result.stdout
    assert result.returncode == 1, out
    assert "DEMO OK" not in out
    assert re.search(rf"DEMO FAILED during 'Call 1: .*': {re.escape(missing)}", out), out
    assert out.count("no audio from") == 1, out  # the other direction worked
    kept = re.search(r"demo directory kept \(for its logs\): (\S+)", out)
    assert kept is not None and Path(kept.group(1)).parent == tmp_path, out
    assert wait_no_processes(tmp_path) == []


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


def test_sip_ladder_reads_each_message_with_its_time_from_the_sipp_trace() -> None:
    hops = demo_sip.ladder(TRACE)
    assert [demo_sip.hop_line(hop, "trunk") for hop in hops] == [
        "bridge -> trunk: INVITE sip:15551234567@127.0.0.1",
        "trunk -> bridge: 100 Trying (INVITE)",
        "trunk -> bridge: 200 OK (INVITE)",
        "bridge -> trunk: ACK",
    ]
    start = datetime(2026, 11, 22, 4, 29, 7, 210818).timestamp()
    assert [round(hop.at - start, 6) for hop in hops] == [0.0, 0.000182, 0.001182, 0.002182]


def test_sip_ladder_stops_at_a_message_sipp_is_still_writing() -> None:
    partial = TRACE + "------------------------- 2026-11-22 04:29:08.0\nUDP message sent (9 bytes):\n\nBYE"
    assert len(demo_sip.ladder(partial)) == 4


def test_timeline_prints_a_late_reported_event_in_its_place() -> None:
    printed: list[str] = []
    t0 = time.time() - 10
    tl = demo_timeline.Timeline(t0, hold_s=0.5, out=printed.append)
    reported: list[tuple[float, str]] = [(t0 + 2.0, "SIP 200 OK")]
    tl.watch(lambda: [reported.pop()] if reported else [])
    tl.add(t0 + 3.0, "remark")
    tl.add(time.time(), "too recent to print yet")
    tl.poll()
    tl.flush()
    assert printed == ["[  2.0s] SIP 200 OK", "[  3.0s] remark"]
    tl.flush(everything=True)
    assert printed[-1].endswith("too recent to print yet")


def test_matrix_call_events_are_described_with_time_direction_and_content() -> None:
    events: list[dict[str, object]] = []
    source = demo_timeline.MatrixCallEvents(events, "@demo:demo.test", "@demo", "")
    sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    events += [
        {"type": "m.room.message", "sender": "@demo:demo.test", "origin_server_ts": 1000, "content": {}},
        {"type": "m.call.answer", "sender": "@sip_1555:demo.test", "origin_server_ts": 1500,
         "content": {"call_id": "c", "answer": {"type": "answer", "sdp": sdp}}},
        {"type": "m.call.hangup", "sender": "@demo:demo.test", "origin_server_ts": 2500, "content": {"call_id": "c"}},
    ]
    assert source() == [(1.5, "Matrix  bridge -> @demo: m.call.answer (answer: PCMU)"),
                        (2.5, "Matrix  @demo -> bridge: m.call.hangup (reason user_hangup)")]
    assert source() == []


def test_demo_removes_only_its_own_temp_dir_after_success(tmp_path: Path) -> None:
    for created, code, keep, removed in [(True, 0, False, True), (True, 1, False, False),
                                         (True, 0, True, False), (False, 0, False, False)]:
        workdir = tmp_path / "d"
        workdir.mkdir(exist_ok=True)
        message = demo.finish_workdir(workdir, created=created, code=code, keep=keep)
        assert workdir.exists() is not removed, message
        assert str(workdir) in message
