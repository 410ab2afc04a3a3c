"""`python -m bridge -c config.yaml` as a real process against a real Synapse: -g, start, ping, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.harness.synapse import SynapseServer, free_port

ROOT = Path(__file__).resolve().parents[2]
SERVER = "cli.test"


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_generated_registration_works_and_the_bridge_runs_until_sigterm(
    synapse_factory: Callable[..., SynapseServer], tmp_path: Path
) -> None:
    port = free_port()
    config_text = (ROOT / "bridge" / "example-config.yaml").read_text()
    data = yaml.safe_load(config_text)
    cfg = tmp_path / "config.yaml"
    # Start from the example file (comments and all) and only point it at loopback test ports.
    config_text = (config_text
                   .replace('domain: "example.org"', f'domain: "{SERVER}"')
                   .replace('"example.org": "user"', f'"{SERVER}": "user"')
                   .replace("http://127.0.0.1:29350", f"http://127.0.0.1:{port}")
                   .replace("port: 29350", f"port: {port}")
                   .replace("{transport: udp, host: 127.0.0.1, port: 5060}",
                            f"{{transport: udp, host: 127.0.0.1, port: {_free_udp_port()}}}")
                   .replace(data["appservice"]["database"], f"sqlite:{tmp_path / 'bridge.db'}"))
    cfg.write_text(config_text)
    reg = tmp_path / "registration.yaml"
    gen = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bridge", "-c", str(cfg), "-g", "-r",
                                                   str(reg)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert gen.returncode == 0, gen.stderr
    hs = await asyncio.to_thread(synapse_factory, [reg], server_name=SERVER)
    cfg.write_text(cfg.read_text().replace('address: "http://127.0.0.1:8008"', f'address: "{hs.url}"'))
    as_token = yaml.safe_load(cfg.read_text())["appservice"]["as_token"]
    log_path = tmp_path / "bridge.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "bridge", "-c", str(cfg)], cwd=tmp_path, stdout=log_file,
            stderr=subprocess.STDOUT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
    try:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                async with http.post(f"{hs.url}/_matrix/client/v1/appservice/sip/ping",
                                     json={"transaction_id": "cli"},
                                     headers={"Authorization": f"Bearer {as_token}"}) as resp:
                    if resp.status == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"bridge never answered Synapse's ping:\n{log_path.read_text()[-3000:]}")
                await asyncio.sleep(0.3)
            # The bot was registered with its display name from the config.
            async with http.get(f"{hs.url}/_matrix/client/v3/profile/@sipbot:{SERVER}") as resp:
                assert (await resp.json()).get("displayname") == "SIP bridge"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
