"""Run Kamailio (record-routing proxy + digest registrar) on free loopback ports for tests.

The configuration is the reference one from `tests/harness/kamailio.cfg` (a copy of
/work/shared/sip-peers/kamailio/kamailio.cfg) with the listen port and the relay target (the far-end UAS
for domain `peer.test`) rewritten, written into the test's tmp_path.

    kam = KamailioProcess(tmp_path, relay_to=("127.0.0.1", sipp.port))
    await kam.start()
    ... send to kam.address (UDP and TCP on the same port) ...
    await kam.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from pathlib import Path

from tests.harness.sipp import free_port

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
REFERENCE_CFG = Path(__file__).parent / "kamailio.cfg"


def render_config(reference: str, *, port: int, relay_to: tuple[str, int]) -> str:
    cfg = reference.replace("udp:127.0.0.1:5060", f"udp:127.0.0.1:{port}")
    cfg = cfg.replace("tcp:127.0.0.1:5060", f"tcp:127.0.0.1:{port}")
    cfg = cfg.replace('"sip:127.0.0.1:5080"', f'"sip:{relay_to[0]}:{relay_to[1]}"')
    # let tests ask for a 2 s binding so a refresh happens quickly (Kamailio's default minimum is 60 s)
    cfg = cfg.replace('modparam("usrloc", "db_mode", 0)',
                      'modparam("usrloc", "db_mode", 0)\nmodparam("registrar", "min_expires", 1)')
    if f":{port}" not in cfg or f":{relay_to[1]}" not in cfg:
        raise RuntimeError("reference kamailio.cfg changed: cannot rewrite its ports")
    return cfg


class KamailioProcess:
    def __init__(self, workdir: str | os.PathLike[str], *, relay_to: tuple[str, int] = ("127.0.0.1", 9),
                 port: int | None = None, reference: Path = REFERENCE_CFG) -> None:
        self.workdir = Path(workdir) / "kamailio"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(socket.SOCK_DGRAM)
        self.relay_to = relay_to
        self.config_path = self.workdir / "kamailio.cfg"
        self.config_path.write_text(render_config(reference.read_text(), port=self.port, relay_to=relay_to))
        self.pid_file = self.workdir / "kamailio.pid"
        self.log_path = self.workdir / "kamailio.log"
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def start(self, timeout: float = 15.0) -> None:
        out = self.log_path.open("wb")
        try:
            # -DD: stay in the foreground (children still fork); -E: log to stderr; small memory pools
            self._proc = await asyncio.create_subprocess_exec(
                KAMAILIO, "-f", str(self.config_path), "-P", str(self.pid_file), "-w", str(self.workdir),
                "-E", "-DD", "-m", "32", "-M", "8", stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
        finally:
            out.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                raise RuntimeError(f"kamailio exited ({self._proc.returncode}):\n{self.log[-5000:]}")
            if await self._answers_options():
                return
            await asyncio.sleep(0.1)
        await self.stop()
        raise RuntimeError(f"kamailio did not come up:\n{self.log[-5000:]}")

    async def _answers_options(self) -> bool:
        """Kamailio is ready when it answers an OPTIONS for itself over UDP."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind(("127.0.0.1", 0))
            lport = sock.getsockname()[1]
            msg = (f"OPTIONS sip:127.0.0.1:{self.port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKprobe{lport}\r\n"
                   f"From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1:{self.port}>\r\n"
                   f"Call-ID: probe-{lport}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
            await loop.sock_sendto(sock, msg.encode(), ("127.0.0.1", self.port))
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.5)
            return data.startswith(b"SIP/2.0 200")
        except (TimeoutError, OSError):
            return False
        finally:
            sock.close()

    async def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        # the whole process group: kamailio's forked children must go too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
