"""The real bridge process (``python -m bridge -c cfg``) with its homeserver unreachable: it waits for it with
one clear log line per attempt (no traceback), and SIGTERM/SIGINT stop it within seconds with status 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.harness.bridge_stack import StackPlan
from tests.harness.synapse import free_port

REPO = Path(__file__).resolve().parents[2]


# bridge.app.run() with a shutdown that never finishes (a stand-in for a call that will not end).
SLOW_STOP = """
import asyncio, sys
import bridge.app as app
from bridge.config import load_config

async def never_done(self):
    await asyncio.sleep(3600)

app.Bridge.stop = never_done
sys.exit(asyncio.run(app.run(load_config(sys.argv[1]))))
"""


def start_bridge_process(tmp_path: Path, *, code: str | None = None) -> subprocess.Popen[str]:
    plan = StackPlan(tmp_path)
    plan.homeserver_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    data = plan.config_dict()
    data["logging"]["level"] = "INFO"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(data))
    argv = ["-c", code, str(cfg)] if code is not None else ["-m", "bridge", "-c", str(cfg)]
    return subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


class Output:
    """Collects the process's output lines in a thread (no blocking reads in the test)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        self.thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self.thread.start()

    def wait_for(self, needle: str, count: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in list(self.lines) if needle in line]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"wanted {count} lines with {needle!r}; got:\n" + "".join(self.lines))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_unreachable_homeserver_is_retried_with_one_line_per_attempt_and_a_signal_stops_it(
    tmp_path: Path, sig: signal.Signals
) -> None:
    proc = start_bridge_process(tmp_path)
    output = Output(proc)
    try:
        attempts = output.wait_for("not reachable", 2, timeout=60)  # back-off 1 s, then 2 s
        assert "attempt 1" in attempts[0] and "attempt 2" in attempts[1]
        assert all(len(line) < 400 for line in attempts)
        sent = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=10)
        took = time.monotonic() - sent
        output.thread.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    everything = "".join(output.lines)
    assert proc.returncode == 0, everything
    assert took < 5, f"stopped {took:.1f}s after the signal"
    assert "Traceback" not in everything, everything
    assert "shutting down" in everything


def test_a_second_signal_exits_at_once_while_the_shutdown_hangs(tmp_path: Path) -> None:
    proc = start_bridge_process(tmp_path, code=SLOW_STOP)
    output = Output(proc)
    try:
        output.wait_for("not reachable", 1, timeout=60)
        proc.send_signal(signal.SIGTERM)
        output.wait_for("shutting down", 1, timeout=10)
        time.sleep(0.5)
        assert proc.poll() is None  # the (stand-in) shutdown is still running
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output.thread.join(5)
    everything = "".join(output.lines)
    assert proc.returncode == 1, everything
    assert took < 2, f"exited {took:.1f}s after the second signal"
    assert "exiting at once" in everything and "Traceback" not in everything
