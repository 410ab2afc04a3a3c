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
import re
import shutil
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

from tests.harness.sipp import free_port
from tests.harness.tls_certs import Leaf

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
REFERENCE_CFG = Path(__file__).parent / "kamailio.cfg"
# PBX for per-user SIP accounts: one digest password per user, location lookup, 407 on calls from users
ACCOUNTS_CFG = Path(__file__).parent / "kamailio_accounts.cfg"
KAMCMD = shutil.which("kamcmd") or "/usr/sbin/kamcmd"


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


def render_tls(cfg: str, *, port: int, tls_cfg: Path) -> str:
    """Add a TLS listener on ``port`` (Debian kamailio-tls-modules) configured by the file ``tls_cfg``."""
    anchor = re.search(r"^listen=tcp:\S+$", cfg, re.MULTILINE)
    if anchor is None or "mpath=" not in cfg:
        raise RuntimeError("kamailio.cfg has no tcp listen line or no mpath: cannot add TLS")
    cfg = cfg[:anchor.end()] + f"\nenable_tls=yes\nlisten=tls:127.0.0.1:{port}" + cfg[anchor.end():]
    cfg = re.sub(r'^(mpath=.*)$', lambda m: f'{m.group(1)}\nloadmodule "tls.so"\nmodparam("tls", "config", '
                 f'"{tls_cfg}")', cfg, count=1, flags=re.MULTILINE)
    return cfg


def tls_profile(leaf: Leaf) -> str:
    """Kamailio's tls.cfg: the test certificate for the server side; no client certificates asked or checked
    (the bridge's TLS listener is reached without one, as most PBXs do)."""
    return (f"[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
            f"certificate = {leaf.cert}\nprivate_key = {leaf.key}\n\n"
            f"[client:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n")


def render_accounts(cfg: str, accounts: Mapping[str, str]) -> str:
    """One ``if ($au == user) $var(pw) = password;`` per account in route[PASSWORD]."""
    for text in (*accounts, *accounts.values()):
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", text):
            raise ValueError(f"keep test user names and passwords simple: {text!r}")
    rules = "\n    ".join(f'if ($au == "{user}") {{ $var(pw) = "{pw}"; }}' for user, pw in accounts.items())
    if "# ACCOUNTS_RULES" not in cfg:
        raise RuntimeError("accounts kamailio.cfg has no ACCOUNTS_RULES line")
    return cfg.replace("# ACCOUNTS_RULES", rules)


class KamailioProcess:
    def __init__(self, workdir: str | os.PathLike[str], *, relay_to: tuple[str, int] = ("127.0.0.1", 9),
                 port: int | None = None, reference: Path = REFERENCE_CFG,
                 accounts: Mapping[str, str] | None = None, tls: Leaf | None = None) -> None:
        """``accounts`` (user -> password) selects the accounts PBX (kamailio_accounts.cfg) unless ``reference``
        names another file that has the ACCOUNTS_RULES line. ``tls`` (a tls_certs leaf) adds a TLS listener on
        ``tls_port`` presenting that certificate."""
        self.workdir = Path(workdir) / "kamailio"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(socket.SOCK_DGRAM)
        self.relay_to = relay_to
        self.config_path = self.workdir / "kamailio.cfg"
        if accounts is not None and reference == REFERENCE_CFG:
            reference = ACCOUNTS_CFG
        self.ctl_socket = self.workdir / "ctl.sock"
        cfg = render_config(reference.read_text(), port=self.port, relay_to=relay_to)
        if accounts is not None:
            cfg = render_accounts(cfg, accounts).replace("CTL_SOCKET", str(self.ctl_socket))
        self.tls_port: int | None = None
        if tls is not None:
            self.tls_port = free_port(socket.SOCK_STREAM)
            tls_cfg = self.workdir / "tls.cfg"
            tls_cfg.write_text(tls_profile(tls))
            cfg = render_tls(cfg, port=self.tls_port, tls_cfg=tls_cfg)
        self.config_path.write_text(cfg)
        self.pid_file = self.workdir / "kamailio.pid"
        self.log_path = self.workdir / "kamailio.log"
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.port}"

    def tls_uri(self, host: str = "localhost") -> str:
        """The TLS listener as an outbound proxy (``host`` must be the certificate's name)."""
        if self.tls_port is None:
            raise RuntimeError("started without tls=")
        return f"sip:{host}:{self.tls_port};transport=tls"

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

    async def location(self) -> dict[str, list[str]]:
        """Kamailio's location table (``ul.dump`` over the ctl socket, accounts config only): AOR -> contacts."""
        proc = await asyncio.create_subprocess_exec(
            KAMCMD, "-s", f"unix:{self.ctl_socket}", "ul.dump", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        if proc.returncode != 0:
            raise RuntimeError(f"kamcmd ul.dump failed: {out.decode(errors='replace')}")
        table: dict[str, list[str]] = {}
        aor = None
        for line in out.decode(errors="replace").splitlines():
            if m := re.match(r"\s*AoR:\s*(\S+)", line):
                aor = m.group(1)
                table.setdefault(aor, [])
            elif (m := re.match(r"\s*Address:\s*(\S+)", line)) and aor is not None:
                table[aor].append(m.group(1))
        return {k: v for k, v in table.items() if v}

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
