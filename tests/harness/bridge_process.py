"""The bridge as a real process (`python -m bridge -c config.yaml`), for tests that kill it.

    proc = BridgeProcess(plan.config_dict(overrides), tmp_path)
    await proc.start()          # returns once the bridge logged that it is running
    proc.kill9()                # no shutdown code runs
    await proc.start()          # same config, same database
    await proc.terminate()      # SIGTERM, the graceful path

The config comes from tests.harness.bridge_stack.StackPlan.config_dict; each run logs to its own file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "bridge running"


class BridgeProcess:
    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.config_path = workdir / "bridge-config.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.monotonic() of the last spawn

    @property
    def log_path(self) -> Path:
        return self.workdir / f"bridge-run{self.runs}.log"

    @property
    def db_path(self) -> str:
        return str(self.config["appservice"]["database"]).removeprefix("sqlite:")

    def log_text(self, limit: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return ""

    async def start(self, timeout: float = 30.0, *, wait_ready: bool = True) -> None:
        self.runs += 1
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log_path.open("wb") as log_file:
            self.started_at = time.monotonic()
            self.proc = await asyncio.to_thread(
                subprocess.Popen, [sys.executable, "-m", "bridge", "-c", str(self.config_path)], cwd=ROOT,
                stdout=log_file, stderr=subprocess.STDOUT, env=env)
        if not wait_ready:
            return
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.log_text(limit=10**7):
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited with {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"bridge not ready after {timeout}s:\n{self.log_text()}")
            await asyncio.sleep(0.05)

    def rewrite_config(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Change the config for the next start (same database unless `change` says otherwise)."""
        change(self.config)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "bridge is not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def terminate(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return await asyncio.to_thread(self.proc.wait, 10)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the bridge's SQLite DB (WAL readers do not block the running bridge)."""
        with sqlite3.connect(self.db_path) as db:
            return list(db.execute(sql, args).fetchall())
