"""A real Synapse homeserver for tests: loopback only, SQLite, no federation, rate limits off.

Usage (async)::

    async with synapse(tmp_path, appservice_registrations=[reg_path]) as hs:
        user_id, token = await register_user(hs, "alice")

Usage (pytest, see ``tests/conftest.py``)::

    def test_x(synapse_factory, tmp_path):
        bridge_port = free_port()                            # 1. pick the bridge's port and tokens
        reg = write_appservice_registration(tmp_path / "reg.yaml", as_url=f"http://127.0.0.1:{bridge_port}", ...)
        hs = synapse_factory(appservice_registrations=[reg])  # 2. start Synapse (reads the registration at start)
        ...                                                  # 3. start the bridge on bridge_port

The registration file must exist before Synapse starts: Synapse reads appservice registrations only once.

Start and stop are blocking at heart (a subprocess and an HTTP poll), so there are sync variants
(``start_synapse_sync``, ``stop_synapse_sync``, ``register_user_sync``) usable from sync fixtures of any scope
(no event-loop scope coupling); the async functions run them in a worker thread.

Nothing here touches the network beyond 127.0.0.1: no federation listener, ``trusted_key_servers: []``,
URL previews, metrics and stats reporting off, signing key generated locally with signedjson.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

START_TIMEOUT = 90.0  # generous: 2 cores shared with other test suites; a cold start is ~5-15 s

# Every rc_* knob Synapse 1.16x reads, raised so tests never see 429.
_UNLIMITED = {"per_second": 10000, "burst_count": 100000}
_RATE_LIMITS: dict[str, Any] = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_registration_token_validity": _UNLIMITED,
    "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
    "rc_admin_redaction": _UNLIMITED,
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
    "rc_3pid_validation": _UNLIMITED,
    "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
    "rc_third_party_invite": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_room_creation": _UNLIMITED,
    "rc_reports": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_profile": _UNLIMITED,
}


# Runs Synapse in the child, plus a watchdog: if the test process dies without stopping it (killed by a
# timeout, ^C twice), the child is re-parented and terminates itself instead of lingering on the machine.
_LAUNCHER = """
import os, runpy, signal, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(15)
    os._exit(1)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["synapse.app.homeserver", "-c", sys.argv[1]]
runpy.run_module("synapse.app.homeserver", run_name="__main__", alter_sys=True)
"""


def free_port(host: str = "127.0.0.1") -> int:
    """Bind ``host:0`` and return the port the kernel picked (closed again; tiny reuse race accepted)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class SynapseServer:
    url: str  # e.g. "http://127.0.0.1:41234"
    server_name: str
    base_dir: Path
    registration_secret: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    config_path: Path = field(default_factory=Path)

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"


# The conftest fixture's type: factory(appservice_registrations=(), *, server_name=..., extra_config=None)
SynapseFactory = Callable[..., SynapseServer]


def write_appservice_registration(
    path: Path,
    *,
    as_url: str,
    as_token: str,
    hs_token: str,
    sender_localpart: str = "sipbot",
    user_namespace_regex: str = "@sip_.*",
    alias_namespace_regex: str | None = None,
    as_id: str = "sip",
    rate_limited: bool = False,
) -> Path:
    """Write a minimal appservice registration YAML (for tests that do not use the bridge's -g output)."""
    namespaces: dict[str, Any] = {"users": [{"exclusive": True, "regex": user_namespace_regex}]}
    if alias_namespace_regex:
        namespaces["aliases"] = [{"exclusive": True, "regex": alias_namespace_regex}]
    reg = {
        "id": as_id,
        "url": as_url,
        "as_token": as_token,
        "hs_token": hs_token,
        "sender_localpart": sender_localpart,
        "namespaces": namespaces,
        "rate_limited": rate_limited,
    }
    path.write_text(yaml.safe_dump(reg, sort_keys=False))
    return path


def _write_signing_key(path: Path) -> None:
    from signedjson.key import generate_signing_key, write_signing_keys

    with path.open("w") as f:
        write_signing_keys(f, [generate_signing_key("auto")])


def build_config(
    base_dir: Path,
    *,
    server_name: str,
    port: int,
    registration_secret: str,
    appservice_registrations: Sequence[Path] = (),
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The homeserver.yaml content (exposed so tests can inspect or tweak it)."""
    config: dict[str, Any] = {
        "server_name": server_name,
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "pid_file": str(base_dir / "homeserver.pid"),
        "report_stats": False,
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(base_dir / "homeserver.db")}},
        "media_store_path": str(base_dir / "media_store"),
        "signing_key_path": str(base_dir / "signing.key"),
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "enable_registration": False,
        "registration_shared_secret": registration_secret,
        "macaroon_secret_key": secrets.token_hex(16),
        "form_secret": secrets.token_hex(16),
        "url_preview_enabled": False,
        "enable_metrics": False,
        "presence": {"enabled": False},  # less background work on a shared 2-core box
        "federation_domain_whitelist": [],  # belt and braces: never talk to another server
        "app_service_config_files": [str(Path(p).resolve()) for p in appservice_registrations],
        **_RATE_LIMITS,
    }
    if extra_config:
        config.update(extra_config)
    return config


def start_synapse_sync(
    base_dir: Path,
    *,
    server_name: str = "bridge.test",
    appservice_registrations: Sequence[Path] = (),
    extra_config: dict[str, Any] | None = None,
    timeout: float = START_TIMEOUT,
) -> SynapseServer:
    """Start Synapse in ``base_dir`` (created if needed) and wait until the client API answers."""
    base_dir.mkdir(parents=True, exist_ok=True)
    for reg in appservice_registrations:
        if not Path(reg).is_file():
            raise FileNotFoundError(f"appservice registration {reg} must exist before Synapse starts")
    port = free_port()
    secret = secrets.token_hex(16)
    config = build_config(
        base_dir,
        server_name=server_name,
        port=port,
        registration_secret=secret,
        appservice_registrations=appservice_registrations,
        extra_config=extra_config,
    )
    _write_signing_key(Path(config["signing_key_path"]))
    config_path = base_dir / "homeserver.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = base_dir / "homeserver.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(config_path)],
            cwd=base_dir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = SynapseServer(
        url=f"http://127.0.0.1:{port}",
        server_name=server_name,
        base_dir=base_dir,
        registration_secret=secret,
        process=process,
        log_path=log_path,
        port=port,
        config_path=config_path,
    )
    try:
        _wait_ready(server, timeout)
    except BaseException:
        stop_synapse_sync(server)
        raise
    log.info("synapse %s ready at %s (pid %d)", server_name, server.url, process.pid)
    return server


def _wait_ready(server: SynapseServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = server.process.poll()
        if code is not None:
            raise RuntimeError(f"synapse exited with {code} during start; log tail:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/_matrix/client/versions", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"synapse not ready after {timeout:.0f}s; log tail:\n{server.log_tail()}")
        time.sleep(0.2)


def stop_synapse_sync(server: SynapseServer, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``. Idempotent."""
    proc = server.process
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("synapse pid %d ignored SIGTERM for %.0fs, killing", proc.pid, timeout)
            proc.kill()
            proc.wait()


def restart_synapse_sync(server: SynapseServer, timeout: float = START_TIMEOUT) -> None:
    """Start a stopped server again: same config, port, database and log file (appended). Waits until ready."""
    if server.process.poll() is None:
        raise RuntimeError("synapse is still running; stop it first")
    with server.log_path.open("ab") as log_file:
        server.process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(server.config_path)],
            cwd=server.base_dir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        _wait_ready(server, timeout)
    except BaseException:
        stop_synapse_sync(server)
        raise


def _register_request(server: SynapseServer, localpart: str, password: str, admin: bool) -> tuple[str, bytes]:
    """Return (url, body) for the shared-secret admin register API (HMAC-SHA1 over nonce/user/pass/admin)."""
    url = f"{server.url}/_synapse/admin/v1/register"
    with urllib.request.urlopen(url, timeout=30) as resp:
        nonce = json.load(resp)["nonce"]
    mac = hmac.new(server.registration_secret.encode(), digestmod=hashlib.sha1)
    for part in (nonce, localpart, password):
        mac.update(part.encode())
        mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    body = {
        "nonce": nonce,
        "username": localpart,
        "password": password,
        "admin": admin,
        "mac": mac.hexdigest(),
    }
    return url, json.dumps(body).encode()


def register_user_sync(
    server: SynapseServer, localpart: str, password: str = "pass", admin: bool = False
) -> tuple[str, str]:
    """Create a user; return ``(user_id, access_token)``."""
    url, body = _register_request(server, localpart, password, admin)
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.load(resp)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"registering {localpart!r} failed: {e.code} {e.read()[:300]!r}") from None
    return str(data["user_id"]), str(data["access_token"])


async def start_synapse(
    base_dir: Path,
    *,
    server_name: str = "bridge.test",
    appservice_registrations: Sequence[Path] = (),
    extra_config: dict[str, Any] | None = None,
) -> SynapseServer:
    return await asyncio.to_thread(
        start_synapse_sync,
        base_dir,
        server_name=server_name,
        appservice_registrations=appservice_registrations,
        extra_config=extra_config,
    )


async def stop_synapse(server: SynapseServer) -> None:
    await asyncio.to_thread(stop_synapse_sync, server)


async def register_user(
    server: SynapseServer, localpart: str, password: str = "pass", admin: bool = False
) -> tuple[str, str]:
    return await asyncio.to_thread(register_user_sync, server, localpart, password, admin)


@contextlib.asynccontextmanager
async def synapse(
    base_dir: Path,
    *,
    server_name: str = "bridge.test",
    appservice_registrations: Sequence[Path] = (),
    extra_config: dict[str, Any] | None = None,
) -> AsyncIterator[SynapseServer]:
    server = await start_synapse(
        base_dir,
        server_name=server_name,
        appservice_registrations=appservice_registrations,
        extra_config=extra_config,
    )
    try:
        yield server
    finally:
        await stop_synapse(server)
