#!/usr/bin/env python3
"""One-command demo of matrix-sip-bridge on loopback (README quick start; `bash scripts/demo.sh` runs setup first).

What it does, as an admin would: writes a bridge config from bridge/example-config.yaml, runs
`python -m bridge -c config.yaml -g -r registration.yaml`, starts a real Synapse (SQLite, temp dir) with that
registration, checks the config, starts the bridge as its own process, registers a Matrix user, then:

  1. Matrix -> SIP: the user calls +1 555 123 4567 from an Element-like aiortc client playing a 440 Hz tone; sipp
     plays the SIP trunk and a plain-RTP phone plays a 1000 Hz tone; the Matrix user hangs up.
  2. SIP -> Matrix: sipp calls 1 800 555 0100 with a phone playing 800 Hz, the Matrix user is rung and answers
     (playing 440 Hz), the phone hangs up.

Audio is checked both ways by listening, not by counting packets: the Matrix client decodes what it receives and
must hear the phone's tone, and the phone decodes the G.711 it receives and must hear the Matrix client's tone.
A silent direction fails the demo ("no audio from ..."); `--silent phone` or `--silent matrix` makes one side
send silence to show that.

The SIP messages (from sipp's trace) and the Matrix call events (from /sync) are printed interleaved in the order
they happened, each with its time, as the calls go on.

Everything binds 127.0.0.1 on free ports. Exit status 0 and a final "DEMO OK" line on success; non-zero and a
"DEMO FAILED" line naming the step otherwise. Every process started here is stopped at the end (or on ^C),
unless --keep leaves Synapse and the bridge running for manual exploration until ^C. The demo's temp directory
(config, logs) is removed after a successful run; it is kept, and named, after a failure or with --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the demo drives the stack with the test harness (tests/harness)

from demo_config import update_config, write_config  # noqa: E402
from demo_timeline import MatrixCallEvents, SippTrace, Timeline  # noqa: E402

from tests.harness.bridge_stack import free_rtp_range  # noqa: E402
from tests.harness.matrix_client import IncomingCall, MatrixTestClient, OutgoingCall, loopback_ice  # noqa: E402
from tests.harness.rtp_peer import RtpPeer  # noqa: E402
from tests.harness.sipp import SippProcess  # noqa: E402
from tests.harness.sipp import free_port as free_sip_port  # noqa: E402
from tests.harness.synapse import SynapseServer, free_port, register_user, start_synapse, stop_synapse  # noqa: E402

log = logging.getLogger("demo")

SCENARIOS = REPO / "tests" / "e2e" / "scenarios"
SERVER_NAME = "demo.test"
USER = "demo"
USER_ID = f"@{USER}:{SERVER_NAME}"
OUT_NUMBER, OUT_FORMATTED = "15551234567", "+1 555 123 4567"
OUT_GHOST = f"@sip_{OUT_NUMBER}:{SERVER_NAME}"
IN_DIALLED, IN_DIALLED_FORMATTED = "18005550100", "+1 800 555 0100"
IN_CALLER, IN_CALLER_FORMATTED, IN_CALLER_NAME = "15557654321", "+1 555 765 4321", "Bob Phone"
OUT_TONE_HZ, IN_TONE_HZ, MATRIX_TONE_HZ = 1000.0, 800.0, 440.0  # a different tone from each side
MIN_FRAMES = 50  # 1 s of 20 ms frames
MIN_TONE_RATIO = 0.5  # share of the last second's energy at the expected frequency
AUDIO_TIMEOUT_S = 15.0  # after the answer, for each direction to carry the far end's tone
HOLD_S = 5.0  # how long each call stays up with audio flowing
INDENT = "    "

def _die_with_parent() -> None:
    """Child-side (preexec): the kernel sends the bridge SIGTERM if the demo dies without stopping it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class DemoError(Exception):
    """A step did not do what it should; the message says what was expected."""


class Demo:
    def __init__(self, workdir: Path, keep: bool, silent: str | None = None) -> None:
        self.dir = workdir
        self.keep = keep
        self.silent = silent  # "phone" or "matrix": that side sends silence instead of its tone
        self.t0 = time.time()
        self.timeline = Timeline(self.t0)
        self.stage = "starting"
        self.config_path = workdir / "config.yaml"
        self.registration_path = workdir / "registration.yaml"
        self.bridge_log = workdir / "bridge.log"
        self.password = secrets.token_urlsafe(12)
        self.as_port = free_port()
        self.sip_port = free_sip_port(socket.SOCK_DGRAM)
        self.trunk_port = free_sip_port(socket.SOCK_DGRAM)
        self.rtp_range = free_rtp_range()
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                              os.environ.get("PYTHONPATH")]))}
        self.synapse: SynapseServer | None = None
        self._synapse_start: asyncio.Future[SynapseServer] | None = None
        self.bridge: asyncio.subprocess.Process | None = None
        self.client: MatrixTestClient | None = None
        self.sipps: list[SippProcess] = []
        self.peers: list[RtpPeer] = []
        self.results: list[str] = []

    # -- output: every line goes through the timeline, which prints in the order things happened
    def say(self, msg: str, indent: int = 0) -> None:
        self.timeline.add(time.time(), f"{INDENT * indent}{msg}")

    async def begin(self, stage: str) -> None:
        self.stage = stage
        await self.timeline.settle()  # the previous step's last SIP/Matrix lines first
        self.timeline.print_now("")
        self.say(f"== {stage}")

    def tone_hz(self, side: str, hz: float) -> float:
        return 0.0 if self.silent == side else hz  # a 0 Hz "tone" is silence

    def bridge_log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.bridge_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no bridge log>"

    # -- the steps
    async def run(self) -> None:
        self.say(f"demo directory: {self.dir} (config, registration, logs)")
        await self.configure()
        await self.start_homeserver()
        await self.start_bridge()
        await self.log_in()
        await self.matrix_calls_phone()
        await self.phone_calls_matrix()

    async def cli(self, *args: str) -> str:
        """Run `python -m bridge <args>` in the demo dir like an admin would; fail the demo if it fails."""
        self.say(f"$ python -m bridge {' '.join(args)}", 1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", *args, cwd=self.dir, env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode(errors="replace").strip()
        for line in text.splitlines():
            self.say(f"  {line}", 1)
        if proc.returncode != 0:
            raise DemoError(f"`python -m bridge {' '.join(args)}` exited with {proc.returncode}")
        return text

    async def configure(self) -> None:
        await self.begin("Configure the bridge")
        write_config(REPO / "bridge" / "example-config.yaml", self.config_path, {
            "homeserver.address": "http://127.0.0.1:8008",  # the real port is known once Synapse runs
            "homeserver.domain": SERVER_NAME,
            "appservice.address": f"http://127.0.0.1:{self.as_port}",
            "appservice.port": self.as_port,
            "appservice.database": f"sqlite:{self.dir / 'bridge.db'}",
            "bridge.permissions": {SERVER_NAME: "user"},
            "bridge.ring_timeout_s": 30,
            "sip.listen": [{"transport": "udp", "host": "127.0.0.1", "port": self.sip_port}],
            "sip.trunk.proxy": f"sip:127.0.0.1:{self.trunk_port}",
            "sip.inbound.routes": [{"number": IN_DIALLED, "users": [USER_ID]}],
            "media.port_start": self.rtp_range[0],
            "media.port_end": self.rtp_range[1],
            "media.ice_host_addresses": ["127.0.0.1"],  # WebRTC host candidates on loopback only
            "logging.level": "DEBUG",
        })
        self.say(f"wrote {self.config_path.name} from bridge/example-config.yaml: homeserver {SERVER_NAME}, "
                 f"SIP on udp 127.0.0.1:{self.sip_port}, trunk sip:127.0.0.1:{self.trunk_port}, "
                 f"RTP ports {self.rtp_range[0]}-{self.rtp_range[1]}, calls to {IN_DIALLED_FORMATTED} ring "
                 f"{USER_ID}", 1)
        await self.cli("-c", self.config_path.name, "-g", "-r", self.registration_path.name)

    async def start_homeserver(self) -> None:
        await self.begin("Start the homeserver")
        self.say("starting Synapse (SQLite, loopback only) with the bridge's registration.yaml ...", 1)
        # Shielded: Synapse starts in a worker thread that a cancel (^C, --timeout) cannot stop; close() then
        # waits for the start to finish and stops the server instead of leaving it running.
        self._synapse_start = asyncio.ensure_future(start_synapse(
            self.dir / "synapse", server_name=SERVER_NAME, appservice_registrations=[self.registration_path]))
        self.synapse = await asyncio.shield(self._synapse_start)
        self.say(f"Synapse is up at {self.synapse.url} (log: {self.synapse.log_path})", 1)
        update_config(self.config_path, {"homeserver.address": self.synapse.url})
        await self.cli("-c", self.config_path.name, "--check-config")
        await register_user(self.synapse, USER, self.password)
        self.say(f"registered Matrix user {USER_ID}", 1)

    async def start_bridge(self) -> None:
        await self.begin("Start the bridge")
        self.say(f"$ python -m bridge -c {self.config_path.name}   (log: {self.bridge_log})", 1)
        with self.bridge_log.open("wb") as out:
            self.bridge = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "-c", self.config_path.name, cwd=self.dir, env=self.env,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while True:
            text = self.bridge_log.read_text(errors="replace")
            ready = next((ln for ln in text.splitlines() if "bridge running" in ln), None)
            if ready is not None:
                self.say(ready.split(": ", 1)[-1], 1)
                return
            if self.bridge.returncode is not None:
                raise DemoError(f"the bridge exited with {self.bridge.returncode} while starting")
            if time.monotonic() > deadline:
                raise DemoError("the bridge did not log 'bridge running' within 60 s")
            await asyncio.sleep(0.2)

    async def log_in(self) -> None:
        assert self.synapse is not None
        await self.begin("Matrix user logs in")
        self.client = await MatrixTestClient.login(self.synapse.url, USER_ID, self.password)
        await self.client.start_sync(auto_join=True)  # auto_join: accept the portal invite of a ringing phone
        self.timeline.watch(MatrixCallEvents(self.client.events, USER_ID, f"@{USER}", INDENT))
        mic = ("sends silence (--silent matrix)" if self.silent == "matrix"
               else f"plays a {MATRIX_TONE_HZ:.0f} Hz tone as its microphone")
        self.say(f"{USER_ID} logged in with an Element-like VoIP client (aiortc; it {mic}). From here on, "
                 f"'Matrix' lines are the m.call.* events @{USER} and the bridge exchange, 'SIP' lines the SIP "
                 "messages sipp saw, in the order they happened", 1)

    async def new_peer(self, hz: float) -> RtpPeer:
        peer = RtpPeer(tone_hz=self.tone_hz("phone", hz), decode_audio=True)
        await peer.open()
        self.peers.append(peer)
        peer.start_sending(seconds=60)  # starts once the bridge's first RTP packet shows where to send
        return peer

    async def check_audio(self, call: OutgoingCall | IncomingCall, phone: RtpPeer, phone_hz: float,
                          phone_name: str, answered_at: float) -> str:
        """Listen on both ends at once: Matrix must hear the phone's tone, the phone the Matrix client's."""

        async def matrix_hears_phone() -> str | None:
            try:
                await call.wait_for_tone(phone_hz, timeout=AUDIO_TIMEOUT_S, min_frames=MIN_FRAMES,
                                         min_ratio=MIN_TONE_RATIO)
            except TimeoutError:
                return (f"no audio from {phone_name}: the Matrix client did not hear its {phone_hz:.0f} Hz tone "
                        f"within {AUDIO_TIMEOUT_S:.0f} s ({call.frames_received} frames decoded, "
                        f"{call.tone_ratio(phone_hz):.0%} of the last second at {phone_hz:.0f} Hz)")
            return None

        async def phone_hears_matrix() -> str | None:
            deadline = time.monotonic() + AUDIO_TIMEOUT_S
            while phone.audio_frames < MIN_FRAMES or phone.tone_ratio(MATRIX_TONE_HZ) < MIN_TONE_RATIO:
                if time.monotonic() > deadline:
                    return (f"no audio from Matrix: {phone_name} did not hear the Matrix client's "
                            f"{MATRIX_TONE_HZ:.0f} Hz tone within {AUDIO_TIMEOUT_S:.0f} s ({phone.received} RTP "
                            f"packets, {phone.audio_frames} G.711 frames decoded, "
                            f"{phone.tone_ratio(MATRIX_TONE_HZ):.0%} of the last second at {MATRIX_TONE_HZ:.0f} Hz)")
                await asyncio.sleep(0.1)
            return None

        errors = [e for e in await asyncio.gather(matrix_hears_phone(), phone_hears_matrix()) if e]
        if errors:
            raise DemoError("; ".join(errors))
        self.say(f"audio: the Matrix client hears the phone's {phone_hz:.0f} Hz tone and the phone hears the "
                 f"Matrix client's {MATRIX_TONE_HZ:.0f} Hz tone", 1)
        await asyncio.sleep(max(0.0, answered_at + HOLD_S - time.monotonic()))
        pts = ", ".join(f"{_PT_NAMES.get(pt, f'PT {pt}')}: {n}"
                        for pt, n in sorted(phone.received_payload_types.items()))
        summary = (f"Matrix heard the phone's {phone_hz:.0f} Hz tone ({call.tone_ratio(phone_hz):.0%} of the last "
                   f"second, {call.frames_received} frames decoded); the phone heard Matrix's "
                   f"{MATRIX_TONE_HZ:.0f} Hz tone ({phone.tone_ratio(MATRIX_TONE_HZ):.0%} of the last second, "
                   f"{phone.received} RTP packets: {pts})")
        self.say(f"audio both ways after {HOLD_S:.0f} s: {summary}", 1)
        return summary

    def phone_plays(self, hz: float) -> str:
        return "sends silence (--silent phone)" if self.silent == "phone" else f"plays a {hz:.0f} Hz tone"

    def watch_sip(self, sipp: SippProcess, name: str) -> SippTrace:
        trace = SippTrace(sipp.message_file, name, INDENT)
        self.timeline.watch(trace)
        return trace

    async def finish_sipp(self, sipp: SippProcess, role: str) -> None:
        code = await sipp.wait(30)
        if code != 0:
            raise DemoError(f"the {role} (sipp) did not see the expected SIP exchange (exit {code}); "
                            f"trace: {sipp.message_file}, errors: {sipp.error_file}")

    async def matrix_calls_phone(self) -> None:
        assert self.client is not None
        await self.begin(f"Call 1: Matrix user {USER_ID} calls {OUT_FORMATTED}")
        phone = await self.new_peer(OUT_TONE_HZ)
        sipp = SippProcess(SCENARIOS / "trunk_answer.xml", local_port=self.trunk_port, timeout=60,
                           extra_args=["-key", "rtp_port", str(phone.port)], workdir=self.dir / "sipp")
        self.sipps.append(sipp)
        trace = self.watch_sip(sipp, "trunk")
        await sipp.start()
        self.say(f"SIP trunk (sipp) listening on udp 127.0.0.1:{self.trunk_port}; the phone behind it "
                 f"{self.phone_plays(OUT_TONE_HZ)} over RTP (PCMU) from port {phone.port}", 1)
        room = await self.client.create_dm(OUT_GHOST)
        self.say(f"{USER_ID} opens a direct chat with {OUT_GHOST} (the number's ghost user)", 1)
        await self.client.wait_for_membership(room, OUT_GHOST, "join", timeout=30)
        self.say(f"the bridge's ghost joined {room}: it is now the portal room for {OUT_FORMATTED}", 1)
        self.say(f"{USER_ID} presses the call button", 1)
        call = await self.client.place_call(room, OUT_GHOST, tone_hz=self.tone_hz("matrix", MATRIX_TONE_HZ))
        await call.wait_answer(timeout=30)
        answered_at = time.monotonic()
        self.say(f"{USER_ID}'s client has the answer; the call is connected", 1)
        audio = await self.check_audio(call, phone, OUT_TONE_HZ, f"the phone ({OUT_FORMATTED})", answered_at)
        self.say(f"{USER_ID} hangs up", 1)
        await call.hangup()
        await self.finish_sipp(sipp, "trunk")
        self.timeline.unwatch(trace)
        await call.close()
        self.results.append(f"Matrix -> SIP: {audio}")

    async def phone_calls_matrix(self) -> None:
        assert self.client is not None
        await self.begin(f"Call 2: phone {IN_CALLER_FORMATTED} ({IN_CALLER_NAME}) calls {IN_DIALLED_FORMATTED}")
        phone = await self.new_peer(IN_TONE_HZ)
        sipp = SippProcess(SCENARIOS / "caller_talk.xml", remote=("127.0.0.1", self.sip_port), service=IN_DIALLED,
                           timeout=60, workdir=self.dir / "sipp",
                           extra_args=["-key", "caller", IN_CALLER, "-key", "caller_name", IN_CALLER_NAME,
                                       "-key", "rtp_port", str(phone.port), "-d", str(int((HOLD_S + 3) * 1000))])
        self.sipps.append(sipp)
        trace = self.watch_sip(sipp, "phone")
        self.say(f"the phone (sipp) dials {IN_DIALLED_FORMATTED} via the bridge at udp 127.0.0.1:{self.sip_port}; "
                 f"it {self.phone_plays(IN_TONE_HZ)} and hangs up {HOLD_S + 3:.0f} s after the answer", 1)
        await sipp.start()
        call = await self.client.wait_incoming_call(timeout=40)
        self.say(f"{USER_ID}'s client rings: {call.invite['sender']} calls in {call.room_id}; {USER_ID} answers",
                 1)
        await call.answer(tone_hz=self.tone_hz("matrix", MATRIX_TONE_HZ))
        answered_at = time.monotonic()
        await call.wait_select_answer(timeout=15)
        audio = await self.check_audio(call, phone, IN_TONE_HZ, f"the phone ({IN_CALLER_FORMATTED})", answered_at)
        hangup = await call.wait_hangup(timeout=30)
        self.say(f"the phone hung up; {USER_ID}'s call ended (reason {hangup['content'].get('reason')})", 1)
        await self.finish_sipp(sipp, "phone")
        self.timeline.unwatch(trace)
        await call.close()
        self.results.append(f"SIP -> Matrix: {audio}")

    # -- --keep and cleanup
    async def wait_for_stop(self) -> None:
        assert self.synapse is not None
        if self.client is not None:  # log out of the scripted client: the account is yours now
            await self.client.close()
            self.client = None
        print(flush=True)
        self.say("== Stack left running (--keep)")
        scenarios = SCENARIOS.relative_to(Path.cwd()) if SCENARIOS.is_relative_to(Path.cwd()) else SCENARIOS
        for line in (f"homeserver: {self.synapse.url} (server name {SERVER_NAME}); log in with a Matrix client",
                     f"Matrix user: {USER_ID}  password: {self.password}",
                     f"call a phone: DM @sip_<digits>:{SERVER_NAME} and call; a SIP trunk must answer on udp "
                     f"127.0.0.1:{self.trunk_port}, e.g.: sipp -sf {scenarios}/trunk_answer.xml -i 127.0.0.1 "
                     f"-p {self.trunk_port} -m 1 -key rtp_port 40000",
                     f"ring {USER_ID}: sipp 127.0.0.1:{self.sip_port} -sf {scenarios}/caller_talk.xml -s {IN_DIALLED} "
                     f"-i 127.0.0.1 -m 1 -key caller {IN_CALLER} -key caller_name Bob -key rtp_port 40000 -d 10000",
                     f"config: {self.config_path}   bridge log: {self.bridge_log}",
                     "stop everything: press Ctrl-C (or send SIGTERM to this demo process)"):
            self.say(line, 1)
        await asyncio.Event().wait()

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        for sipp in self.sipps:
            await sipp.aclose()
        for peer in self.peers:
            await peer.close()
        if self.bridge is not None and self.bridge.returncode is None:
            self.bridge.terminate()
            try:
                await asyncio.wait_for(self.bridge.wait(), 15)
            except TimeoutError:
                self.bridge.kill()
                await self.bridge.wait()
        if self.synapse is None and self._synapse_start is not None:
            with contextlib.suppress(Exception):
                self.synapse = await self._synapse_start
        if self.synapse is not None:
            await stop_synapse(self.synapse)


_PT_NAMES = {0: "PCMU", 8: "PCMA", 9: "G722", 101: "telephone-event"}


async def main_async(args: argparse.Namespace, workdir: Path) -> int:
    logging.basicConfig(filename=workdir / "demo-client.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo = Demo(workdir, args.keep, args.silent)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    printer = asyncio.create_task(demo.timeline.run(), name="demo timeline")
    out = demo.timeline.print_now  # prints every line reported so far first
    code = 1
    try:
        with loopback_ice():
            async with asyncio.timeout(args.timeout):
                await demo.run()
                await demo.timeline.settle()
            elapsed = time.time() - demo.t0
            out("")
            for result in demo.results:
                demo.say(result)
            demo.say(f"bridge log: {demo.bridge_log}")
            out(f"DEMO OK: Matrix -> SIP and SIP -> Matrix calls connected with audio both ways "
                f"({elapsed:.1f} s)")
            code = 0
            if args.keep:
                await demo.wait_for_stop()
    except asyncio.CancelledError:
        if code != 0:
            out(f"\nDEMO FAILED: interrupted during '{demo.stage}'")
            code = 130
    except Exception as e:
        what = str(e) or type(e).__name__
        if isinstance(e, TimeoutError) and not str(e):
            what = f"gave up after {args.timeout:g} s (--timeout)"
        if demo.bridge_log.exists():
            out(f"\nlast lines of the bridge log ({demo.bridge_log}):\n{demo.bridge_log_tail()}")
        out(f"\nDEMO FAILED during '{demo.stage}': {what}")
        log.exception("demo failed")
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        out("")
        demo.say("stopping sipp, RTP peers, the bridge and Synapse ...")
        await demo.close()
        demo.say("all demo processes stopped")
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer
        out("")
    return code


def finish_workdir(workdir: Path, *, created: bool, code: int, keep: bool) -> str:
    """Remove the demo's own temp dir after a successful run; keep a --dir, a --keep run's and a failed run's."""
    if created and code == 0 and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
        return f"removed the demo directory {workdir}"
    why = "given with --dir" if not created else "--keep" if keep else "for its logs"
    return f"demo directory kept ({why}): {workdir}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run matrix-sip-bridge end to end on loopback: a Matrix -> SIP call "
                                            "and a SIP -> Matrix call with audio both ways.")
    p.add_argument("--dir", help="demo directory for config, registration and logs (default: a new temp dir, "
                                 "removed after a successful run)")
    p.add_argument("--keep", action="store_true",
                   help="leave Synapse and the bridge running after the calls, until Ctrl-C; keeps the directory")
    p.add_argument("--timeout", type=float, default=240.0, help="give up after this many seconds (default 240)")
    p.add_argument("--silent", choices=("phone", "matrix"),
                   help="make that side send silence instead of its tone: the audio check must then fail")
    args = p.parse_args(argv)
    created = not args.dir
    workdir = Path(args.dir).resolve() if args.dir else Path(tempfile.mkdtemp(prefix="matrix-sip-bridge-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    code = 130
    try:
        code = asyncio.run(main_async(args, workdir))
    finally:
        logging.shutdown()
        print(finish_workdir(workdir, created=created, code=code, keep=args.keep), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
