"""A real DNS server for tests: dnsmasq in the foreground on a free loopback port, serving only the records
given (no upstream, no /etc/hosts), stopped at the end."""

from __future__ import annotations

import asyncio
import getpass
import shutil
import socket
from pathlib import Path

import dns.asyncresolver
import dns.nameserver

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dnsmasq:
    """`records` are dnsmasq options without the leading dashes, e.g. "srv-host=_sip._udp.x,a.x,5060,10,50"."""

    def __init__(self, workdir: Path, records: list[str], *, ttl: int = 60) -> None:
        self.workdir = workdir
        self.records = records
        self.ttl = ttl
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Dnsmasq:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            self.port = _free_port()
            self.proc = await asyncio.create_subprocess_exec(
                DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-daemon",
                f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                f"--pid-file={self.workdir / 'dnsmasq.pid'}", f"--user={getpass.getuser()}",
                f"--local-ttl={self.ttl}", "--log-queries", f"--log-facility={self.workdir / 'dnsmasq.log'}",
                *(f"--{record}" for record in self.records),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            if await self._ready():
                return self
            await self.stop()
        raise RuntimeError(f"dnsmasq did not start: {self.log()}")

    async def _ready(self) -> bool:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", self.port)]
        for _ in range(50):
            if self.proc is None or self.proc.returncode is not None:
                return False
            try:
                await resolver.resolve("ready.invalid", "A", lifetime=0.2, raise_on_no_answer=False)
                return True
            except dns.resolver.NoNameservers:
                return True  # REFUSED: it answers
            except Exception:
                await asyncio.sleep(0.05)
        return False

    def log(self) -> str:
        path = self.workdir / "dnsmasq.log"
        return path.read_text() if path.exists() else ""

    def queries(self, name: str) -> int:
        """How many queries for `name` (any type) dnsmasq logged."""
        return sum(1 for line in self.log().splitlines() if "query[" in line and f" {name} from" in line)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.proc = None
