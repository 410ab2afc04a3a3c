"""The Dockerfile builds, and the built image bootstraps /data as the README says (needs a Docker engine).

Where `docker info` fails (as on the development machine, which has no engine) every test here is reported as
SKIPPED with the reason, never as passed: run `pytest -rs` to see it. tests/unit/test_docker_entrypoint.py runs
the image's entrypoint script without Docker.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`docker info` failed: {e}"
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker engine (`docker info` exited {info.returncode}: {last}); the image was NOT built"
    return None


pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    reason = _docker_unavailable()
    if reason is not None:
        pytest.skip(reason)
    tag = f"matrix-sip-bridge-test:{uuid.uuid4().hex[:12]}"
    build = subprocess.run(["docker", "build", "-t", tag, str(REPO)], capture_output=True, text=True, timeout=1700)
    assert build.returncode == 0, f"docker build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    yield tag
    subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120)


def docker_run(image: str, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "run", "--rm", "-v", f"{data}:/data", image, *args],
                          capture_output=True, text=True, timeout=120)


def test_image_bootstraps_data_then_generates_the_registration_as_uid_1000(image: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    first = docker_run(image, data)
    assert first.returncode == 1 and "example config was written to /data/config.yaml" in first.stderr, first
    assert (data / "config.yaml").stat().st_uid == 1000
    second = docker_run(image, data, "-g")
    assert second.returncode == 0, second
    assert (data / "registration.yaml").stat().st_uid == 1000
    assert docker_run(image, data, "--check-config").returncode == 0
    inspect = subprocess.run(["docker", "image", "inspect", "-f", "{{json .Config.Healthcheck}}", image],
                             capture_output=True, text=True, timeout=60)
    assert "healthcheck.py" in inspect.stdout
