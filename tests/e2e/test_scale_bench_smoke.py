"""Smoke run of bench/scale_bench.py (one call, one second): the bench still sets up a call through Synapse, the
bridge process and the sipp echo trunk, and reports audio both ways. ~25 s (it starts its own Synapse)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[2]


def test_scale_bench_smoke_run_measures_one_call_with_audio_both_ways(tmp_path: Path) -> None:
    output = tmp_path / "scale.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale_bench.py"), "--calls", "1", "--seconds", "1",
         "--modes", "passthrough", "--no-janus", "--budget", "120", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=140, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(output.read_text())
    bridge = data["systems"]["bridge passthrough"]
    one = next(p for p in bridge["points"] if p["calls"] == 1)
    assert one["connected"] == 1 and one["sent"] > 0
    assert one["to_sip_pct"] >= 99.5 and one["to_matrix_pct"] >= 99.5
    assert bridge["capacity"] == 1
