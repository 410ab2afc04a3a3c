"""Run sipp (sip-tester) as a real SIP peer in tests and benchmarks, on free loopback ports.

    sipp = SippProcess(SCENARIOS / "uas_486.xml", workdir=tmp_path)
    await sipp.start()                 # sipp is listening on 127.0.0.1:sipp.port
    ... point the code under test at sipp.address ...
    assert await sipp.wait() == 0, sipp.report()

As a UAC pass `remote=(host, port)`; sipp then places `calls` calls (`-m`) at `rate` calls/s (`-r`).
sipp's exit code is 0 only when every call completed its scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

SIPP = shutil.which("sipp") or "/usr/bin/sipp"

TRANSPORT_SOCKETS = {"u1": socket.SOCK_DGRAM, "un": socket.SOCK_DGRAM, "t1": socket.SOCK_STREAM,
                     "tn": socket.SOCK_STREAM, "l1": socket.SOCK_STREAM, "ln": socket.SOCK_STREAM}


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port that is free for both UDP and TCP right now (the kernel picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, kind) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        try:
            with socket.socket(family, other) as s2:
                s2.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found")


def free_port_pair(host: str = "127.0.0.1") -> int:
    """An even UDP port whose successors (+1..+3) are free too: sipp's media port (RTP/RTCP, video)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        base = free_port(socket.SOCK_DGRAM, host) & ~1
        socks: list[socket.socket] = []
        try:
            for off in range(4):
                s = socket.socket(family, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, base + off))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free media port range found")


class SippProcess:
    """One sipp process; every file it writes goes to `workdir` (a temp dir when not given)."""

    def __init__(self, scenario_path: str | os.PathLike[str], *, local_port: int | None = None,
                 remote: tuple[str, int] | None = None, transport: str = "u1",
                 extra_args: Sequence[str] = (), timeout: float = 30.0, host: str = "127.0.0.1",
                 calls: int = 1, rate: float | None = None, service: str = "bridge",
                 rtp_echo: bool = False, trace: bool = True, workdir: str | os.PathLike[str] | None = None) -> None:
        self.scenario_path = Path(scenario_path).resolve()  # sipp runs in workdir
        self.host = host
        self.transport = transport
        self.port = local_port or free_port(TRANSPORT_SOCKETS.get(transport, socket.SOCK_DGRAM), host)
        self.remote = remote
        self.extra_args = list(extra_args)
        self.timeout = timeout
        self.calls = calls
        self.rate = rate
        self.service = service
        self.rtp_echo = rtp_echo
        self.trace = trace  # message/log traces (off for load tests: sipp spends its time writing them)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="sipp-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        stem = f"{self.scenario_path.stem}-{self.port}"
        self.message_file = self.workdir / f"{stem}-messages.log"
        self.error_file = self.workdir / f"{stem}-errors.log"
        self.log_file = self.workdir / f"{stem}-logs.log"
        self.stat_file = self.workdir / f"{stem}-stats.csv"
        self.stdout_file = self.workdir / f"{stem}-stdout.log"
        self.media_port = free_port_pair(host)
        self.returncode: int | None = None
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def uri_host(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [SIPP]
        if self.remote is not None:
            rhost, rport = self.remote
            cmd.append(f"[{rhost}]:{rport}" if ":" in rhost else f"{rhost}:{rport}")
        cmd += ["-sf", str(self.scenario_path), "-i", self.host, "-p", str(self.port), "-t", self.transport,
                "-m", str(self.calls), "-s", self.service, "-mp", str(self.media_port),
                "-timeout", f"{self.timeout:g}s", "-timeout_error", "-nostdin",
                "-trace_err", "-error_file", str(self.error_file),
                "-trace_stat", "-stf", str(self.stat_file)]
        if self.trace:
            cmd += ["-trace_msg", "-message_file", str(self.message_file),
                    "-trace_logs", "-log_file", str(self.log_file)]
        if self.rate is not None:
            cmd += ["-r", f"{self.rate:g}"]
        if self.rtp_echo:
            cmd.append("-rtp_echo")
        return cmd + self.extra_args

    async def start(self) -> None:
        """Start sipp; as a UAS, returns once it is listening."""
        out = self.stdout_file.open("wb")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(), stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                cwd=self.workdir)
        finally:
            out.close()
        if self.remote is None:
            await self._wait_listening()

    async def _wait_listening(self, limit: float = 10.0) -> None:
        kind = TRANSPORT_SOCKETS.get(self.transport, socket.SOCK_DGRAM)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                raise RuntimeError(f"sipp exited early ({self._proc.returncode}):\n{self.report()}")
            with socket.socket(family, kind) as probe:
                try:
                    probe.bind((self.host, self.port))
                except OSError:
                    return  # sipp holds the port
            await asyncio.sleep(0.05)
        raise RuntimeError(f"sipp did not bind {self.port}:\n{self.report()}")

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for sipp to finish; kills it after `timeout` (default: scenario timeout + 30 s)."""
        assert self._proc is not None, "start() first"
        try:
            self.returncode = await asyncio.wait_for(self._proc.wait(), timeout or self.timeout + 30)
        except TimeoutError:
            self.kill()
            self.returncode = await self._proc.wait()
        return self.returncode

    def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def aclose(self) -> None:
        self.kill()
        if self._proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._proc.wait(), 5)

    @staticmethod
    def _read(path: Path, limit: int = 20000) -> str:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text if len(text) <= limit else "...\n" + text[-limit:]

    @property
    def messages(self) -> str:
        return self._read(self.message_file, 200000)

    @property
    def logs(self) -> str:
        return self._read(self.log_file, 200000)

    @property
    def errors(self) -> str:
        return self._read(self.error_file)

    @property
    def stdout(self) -> str:
        return self._read(self.stdout_file)

    def report(self) -> str:
        """Everything useful for an assertion message."""
        return (f"cmd: {' '.join(self.command())}\nexit: {self.returncode}\n--- errors\n{self.errors}\n"
                f"--- logs\n{self._read(self.log_file, 4000)}\n--- messages\n{self._read(self.message_file, 8000)}\n"
                f"--- stdout\n{self._read(self.stdout_file, 3000)}")

    def cleanup(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
