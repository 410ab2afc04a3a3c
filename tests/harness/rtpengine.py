"""Run Debian's rtpengine daemon on free loopback ports for tests (userspace forwarding only).

    node = RtpengineProcess(tmp_path)
    node.start()          # blocks until the ng port answers a ping
    ... media.rtpengine.nodes: [{url: node.url}] ...
    node.stop()

Synchronous on purpose: session fixtures outlive pytest-asyncio's per-test event loops.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from bridge.media.rtpengine_ng import decode, encode

RTPENGINE = shutil.which("rtpengine") or "/usr/bin/rtpengine"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_range(size: int) -> tuple[int, int]:
    """``size`` consecutive free UDP ports (even start) above the range the bridge's own tests draw from."""
    for _ in range(100):
        start = random.randrange(30000, 39000, 2)
        ok = True
        for port in range(start, start + size):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return start, start + size - 1
    raise RuntimeError("no free port range for rtpengine")


def ng_ping(port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        cookie = f"h{random.randrange(1 << 30)}"
        sock.sendto(cookie.encode() + b" " + encode({"command": "ping"}), ("127.0.0.1", port))
        try:
            data, _ = sock.recvfrom(65535)
        except OSError:
            return False
    head, _, body = data.partition(b" ")
    return head.decode() == cookie and decode(body).get("result") == "pong"


class RtpengineProcess:
    def __init__(self, workdir: str | os.PathLike[str], *, ports: int = 200, threads: int = 2) -> None:
        self.workdir = Path(workdir) / f"rtpengine-{os.getpid()}-{random.randrange(1 << 20)}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ng_port = free_udp_port()
        self.cli_port = free_tcp_port()  # rtpengine's CLI listens on 127.0.0.1:2224 unless told
        self.port_min, self.port_max = free_port_range(ports)
        self.threads = threads
        self.log_path = self.workdir / "rtpengine.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"udp:127.0.0.1:{self.ng_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        return [
            RTPENGINE, "--config-file=none", "--foreground", "--log-stderr", "--log-level=6",
            "--table=-1",  # no kernel forwarding: the xt_RTPENGINE module is not loaded here (userspace only)
            "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{self.ng_port}",
            f"--listen-cli=127.0.0.1:{self.cli_port}",
            f"--port-min={self.port_min}", f"--port-max={self.port_max}",
            f"--num-threads={self.threads}", "--delete-delay=0", "--timeout=60",
            f"--pidfile={self.workdir / 'rtpengine.pid'}",
        ]

    def start(self, timeout: float = 10.0) -> None:
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                      start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"rtpengine exited {self._proc.returncode}: {self.log()[-2000:]}")
            if ng_ping(self.ng_port, 0.2):
                return
        self.stop()
        raise RuntimeError(f"rtpengine did not answer ng ping within {timeout}s: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon so far (/proc/<pid>/stat)."""
        assert self._proc is not None
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
