"""The container entrypoint (docker/entrypoint.sh) and health check (docker/healthcheck.py), run without Docker.

The entrypoint's paths and user are environment settings with the image's values as defaults, so these tests
run the same script with DATA_DIR in a temp dir. As root (as on the development machine) they take the image's
path: /data is chowned to an unprivileged uid (a throwaway uid with no account) and setpriv drops to it; a
setpriv wrapper on PATH records its arguments and adds one capability (CAP_DAC_READ_SEARCH) so that the
unprivileged uid can reach this test run's interpreter and temp dir under /root. Not as root, the script must
skip the chown and the drop.
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
sys.path.insert(0, str(REPO / "docker"))
import healthcheck  # noqa: E402

AS_ROOT = os.geteuid() == 0
TARGET_UID = 54321 if AS_ROOT else os.getuid()
TARGET_GID = 54322 if AS_ROOT else os.getgid()
SETPRIV = shutil.which("setpriv")


def env_for(tmp_path: Path, data: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "setpriv"
    wrapper.write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$*" >> "$SETPRIV_LOG"\n'
        f'exec {SETPRIV} --inh-caps=+dac_read_search --ambient-caps=+dac_read_search "$@"\n'
    )
    wrapper.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SETPRIV_LOG": str(tmp_path / "setpriv.log"),
        "DATA_DIR": str(data),
        "BRIDGE_UID": str(TARGET_UID),
        "BRIDGE_GID": str(TARGET_GID),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
    }


def entrypoint(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    if AS_ROOT and SETPRIV is None:
        pytest.skip("setpriv (util-linux) is not installed")
    data = tmp_path / "data"
    data.mkdir()
    return data


def test_entrypoint_first_run_writes_the_example_config_and_exits_saying_what_to_do(tmp_path: Path,
                                                                                     data: Path) -> None:
    (data / "copied-in-as-root.txt").write_text("x")  # an admin's file: must become the bridge user's
    result = entrypoint(env_for(tmp_path, data))
    assert result.returncode == 1, result.stderr
    config = data / "config.yaml"
    assert config.read_text() == (REPO / "bridge" / "example-config.yaml").read_text()
    msg = result.stderr
    assert f"example config was written to {config}" in msg
    assert "homeserver.address" in msg and "appservice.hostname" in msg and "run the image with -g" in msg
    for path in (data, config, data / "copied-in-as-root.txt"):
        assert (path.stat().st_uid, path.stat().st_gid) == (TARGET_UID, TARGET_GID), path
    log = tmp_path / "setpriv.log"
    if AS_ROOT:
        assert log.read_text().splitlines() == [
            f"--reuid={TARGET_UID} --regid={TARGET_GID} --clear-groups -- sh {ENTRYPOINT}"]
    else:
        assert not log.exists(), "not root: the entrypoint must not try to drop privileges"

    # Running it again never overwrites the admin's edits.
    config.write_text(config.read_text().replace('domain: "example.org"', 'domain: "edited.test"'))
    assert entrypoint(env_for(tmp_path, data), "--check-config").returncode == 1  # placeholders: not ready yet
    assert 'domain: "edited.test"' in config.read_text()


def test_entrypoint_generate_registration_writes_files_owned_by_the_bridge_user(tmp_path: Path, data: Path) -> None:
    env = env_for(tmp_path, data)
    assert entrypoint(env).returncode == 1
    if AS_ROOT:
        os.chown(data / "config.yaml", 0, 0)  # edited as root on the host, as the issue describes
    result = entrypoint(env, "-g")
    assert result.returncode == 0, result.stderr
    registration = data / "registration.yaml"
    assert (registration.stat().st_uid, registration.stat().st_gid) == (TARGET_UID, TARGET_GID)
    tokens = yaml.safe_load(registration.read_text())
    config = yaml.safe_load((data / "config.yaml").read_text())
    assert config["appservice"]["as_token"] == tokens["as_token"] != "generate"
    assert entrypoint(env, "--check-config").returncode == 0


@pytest.fixture
def free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_entrypoint_with_a_generated_config_starts_the_bridge_as_the_bridge_user(
        tmp_path: Path, data: Path, free_tcp_port: int) -> None:
    env = env_for(tmp_path, data)
    assert entrypoint(env).returncode == 1
    config = data / "config.yaml"
    # Nothing listens on the homeserver port; free local ports for the bridge's own listeners.
    text = config.read_text().replace("port: 29350", f"port: {free_tcp_port}")
    text = text.replace('address: "http://127.0.0.1:8008"', 'address: "http://127.0.0.1:9"')
    text = text.replace("{transport: udp, host: 127.0.0.1, port: 5060}", "{transport: udp, host: 127.0.0.1, port: 0}")
    config.write_text(text)
    assert entrypoint(env, "-g").returncode == 0
    log_path = tmp_path / "bridge.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while "appservice listening on" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        # Every step exec'd: the process started is now the bridge itself, running as the bridge user.
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(TARGET_UID)] * 4
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:5] == [b"-m", b"bridge", b"-c", str(config).encode()]
        # SIGTERM (what tini forwards on `docker stop`) reaches the bridge itself and ends it within seconds.
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_entrypoint_runs_a_command_instead_of_the_bridge(tmp_path: Path, data: Path) -> None:
    result = entrypoint(env_for(tmp_path, data), "sh", "-c", "id -u; pwd")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(TARGET_UID), str(data)]
    assert not (data / "config.yaml").exists()


# ---------------------------------------------------------------------------------------------- health check

class _Handler(http.server.BaseHTTPRequestHandler):
    status = 401

    def do_POST(self) -> None:
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _config_with_port(tmp_path: Path, port: int, hostname: str = "0.0.0.0") -> Path:
    text = (REPO / "bridge" / "example-config.yaml").read_text()
    text = text.replace("port: 29350", f"port: {port}").replace('hostname: "127.0.0.1"', f'hostname: "{hostname}"')
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_healthcheck_is_healthy_when_the_appservice_port_refuses_a_request_without_token(
        tmp_path: Path, http_server: http.server.HTTPServer) -> None:
    port = http_server.server_address[1]
    _Handler.status = 401
    ok, message = healthcheck.check(str(_config_with_port(tmp_path, int(port))))
    assert ok, message
    _Handler.status = 200  # something else answering there is not the bridge
    ok, message = healthcheck.check(str(_config_with_port(tmp_path, int(port))))
    assert not ok and "expected 401" in message


def test_healthcheck_is_unhealthy_when_nothing_listens(tmp_path: Path, free_tcp_port: int) -> None:
    ok, message = healthcheck.check(str(_config_with_port(tmp_path, free_tcp_port, "127.0.0.1")))
    assert not ok and f"127.0.0.1:{free_tcp_port}" in message


def test_healthcheck_maps_wildcard_listen_addresses_to_loopback() -> None:
    assert healthcheck.ping_url("0.0.0.0", 29350) == "http://127.0.0.1:29350/_matrix/app/v1/ping"
    assert healthcheck.ping_url("::", 29350) == "http://[::1]:29350/_matrix/app/v1/ping"
    assert healthcheck.ping_url("10.0.0.5", 1) == "http://10.0.0.5:1/_matrix/app/v1/ping"
