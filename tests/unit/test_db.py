"""Database: migrations and CRUD of every table, on SQLite and on a throwaway local PostgreSQL cluster
(started below on 127.0.0.1 with a free port; those cases skip, visibly, if PostgreSQL is not installed).

initdb refuses to run as root, so as root the cluster runs as the ``postgres`` system user in a temp dir that
user owns."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from mautrix.util.async_db import Database

from bridge.call.record import CallRecord
from bridge.db import CallLogEntry, Ghost, Tables, create_database, upgrade_table

PG_BIN_DIRS = ["/usr/local/bin", *sorted(str(p) for p in Path("/usr/lib/postgresql").glob("*/bin"))]


def _find(name: str) -> str | None:
    for d in PG_BIN_DIRS:
        if (Path(d) / name).is_file():
            return str(Path(d) / name)
    return shutil.which(name)


@dataclass
class PgServer:
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_pg(timeout: float = 60.0) -> PgServer:
    initdb, postgres = _find("initdb"), _find("postgres")
    if not initdb or not postgres:
        pytest.skip("PostgreSQL binaries (initdb/postgres) not installed")
    base = Path(tempfile.mkdtemp(prefix="bridge-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    data = base / "data"
    subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=timeout)
    port = _free_port()
    with open(base / "log", "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [*prefix, postgres, "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={base}", "-c", "fsync=off"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    server = PgServer(port=port, data_dir=base, process=proc)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            stop_pg(server)
            raise RuntimeError(f"postgres exited: {(base / 'log').read_text(errors='replace')[-2000:]}")
        if _accepts_logins(port):
            return server
        if time.monotonic() > deadline:
            stop_pg(server)
            raise TimeoutError("postgres did not start")
        time.sleep(0.2)


def _accepts_logins(port: int) -> bool:
    isready = _find("pg_isready")
    if isready:
        return subprocess.run([isready, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
                              capture_output=True, timeout=10).returncode == 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def stop_pg(server: PgServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    server = start_pg()
    try:
        yield server
    finally:
        stop_pg(server)


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path / 'bridge.db'}"
        return
    server: PgServer = request.getfixturevalue("pg")
    name = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(server.url("postgres"))
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    yield server.url(name)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = create_database(db_url)
    await database.start()
    try:
        yield database
    finally:
        await database.stop()


async def test_migrations_create_all_tables_and_record_the_version(db: Database) -> None:
    for table in ("portal", "ghost", "txn", "handled_event", "call_log", "call_state"):
        assert await db.table_exists(table)
    assert await db.fetchval("SELECT version FROM version") == len(upgrade_table.upgrades)


async def test_migrations_are_idempotent_across_restarts(db_url: str) -> None:
    url = db_url
    first = create_database(url)
    await first.start()
    await Tables.for_db(first).portal.put("!r:x", "@a:x", "15551234567")
    await first.stop()
    second = create_database(url)
    await second.start()
    try:
        assert (await Tables.for_db(second).portal.get_by_room("!r:x")) is not None
    finally:
        await second.stop()


async def test_portal_put_get_and_newest_room_replaces_old_one_for_the_pair(db: Database) -> None:
    portals = Tables.for_db(db).portal
    first = await portals.put("!old:x", "@alice:x", "15551234567")
    assert await portals.get_by_room("!old:x") == first
    assert await portals.get_by_pair("@alice:x", "15551234567") == first
    second = await portals.put("!new:x", "@alice:x", "15551234567")
    assert await portals.get_by_room("!old:x") is None
    assert await portals.get_by_pair("@alice:x", "15551234567") == second
    await portals.put("!other:x", "@alice:x", "442079460958")
    assert [p.room_id for p in await portals.all_for_user("@alice:x")] == ["!new:x", "!other:x"]
    await portals.delete("!new:x")
    assert await portals.get_by_pair("@alice:x", "15551234567") is None


async def test_ghost_upsert(db: Database) -> None:
    ghosts = Tables.for_db(db).ghost
    assert await ghosts.get("@sip_1:x") is None
    await ghosts.put(Ghost("@sip_1:x", "1", "One"))
    await ghosts.put(Ghost("@sip_1:x", "1", "Uno"))
    assert await ghosts.get("@sip_1:x") == Ghost("@sip_1:x", "1", "Uno")


async def test_txn_dedupe_keys_on_id_and_body_digest_and_prunes(db: Database) -> None:
    txns = Tables.for_db(db).txn
    assert not await txns.seen("t1", "d1")
    await txns.mark("t1", "d1")
    await txns.mark("t1", "d1")  # a second mark is harmless
    assert await txns.seen("t1", "d1")
    assert not await txns.seen("t1", "d2")  # same ID, other body: a new transaction (homeserver restarted)
    await txns.mark("t1", "d2")
    assert await txns.seen("t1", "d2")
    await txns.prune(older_than_ms=0)
    assert await txns.seen("t1", "d1")
    await txns.prune(older_than_ms=2**62)
    assert not await txns.seen("t1", "d1")


async def test_handled_events_are_remembered_and_bounded(db: Database) -> None:
    txns = Tables.for_db(db).txn
    assert not await txns.event_seen("$a")
    await txns.mark_event("$a")
    await txns.mark_event("$a")
    assert await txns.event_seen("$a")
    await txns.prune_old()  # recent rows survive the routine prune
    assert await txns.event_seen("$a")
    for i in range(5):
        await db.execute("INSERT INTO handled_event (event_id, handled_at) VALUES ($1, $2)", f"$n{i}", 10**13 + i)
    await txns.prune(older_than_ms=0, keep_rows=3)  # only the 3 newest remain
    assert [await txns.event_seen(f"$n{i}") for i in range(5)] == [False, False, True, True, True]
    assert not await txns.event_seen("$a")
    await txns.prune(older_than_ms=2**62)
    assert not await txns.event_seen("$n4")


async def test_call_log_lifecycle_keeps_first_answer_and_end(db: Database) -> None:
    log = Tables.for_db(db).call_log
    entry = CallLogEntry(call_id="c1", room_id="!r:x", direction="outbound", invite_ts=1000, party_id="p",
                         sip_call_id="sip-1", number="15551234567", mxid="@alice:x")
    await log.insert(entry)
    assert await log.get("c1") == entry
    await log.update_answered("c1", 2000)
    await log.update_answered("c1", 2500)
    await log.update_ended("c1", 3000, "user_hangup")
    await log.update_ended("c1", 3500, "ice_failed")
    got = await log.get("c1")
    assert got is not None
    assert (got.answer_ts, got.end_ts, got.end_reason) == (2000, 3000, "user_hangup")
    await log.set_sip_call_id("c1", "sip-2")
    assert (await log.get("c1")).sip_call_id == "sip-2"  # type: ignore[union-attr]
    assert await log.get("missing") is None
    await log.insert(CallLogEntry(call_id="c2", room_id="!r:x", direction="inbound", invite_ts=5000))
    assert [e.call_id for e in await log.recent()] == ["c2", "c1"]


async def test_call_log_closes_calls_left_open_by_a_previous_process(db: Database) -> None:
    log = Tables.for_db(db).call_log
    await log.insert(CallLogEntry(call_id="done", room_id="!r:x", direction="outbound", invite_ts=1))
    await log.update_ended("done", 2, "sip_bye")
    await log.insert(CallLogEntry(call_id="open", room_id="!r:x", direction="inbound", invite_ts=3))
    assert await log.close_unfinished(10, "bridge_restart") == 1
    done, still = await log.get("done"), await log.get("open")
    assert done is not None and (done.end_ts, done.end_reason) == (2, "sip_bye")
    assert still is not None and (still.end_ts, still.end_reason) == (10, "bridge_restart")
    assert await log.close_unfinished(20, "bridge_restart") == 0


async def test_call_log_rejects_unknown_direction(db: Database) -> None:
    log = Tables.for_db(db).call_log
    with pytest.raises(Exception, match=r"(?i)check"):
        await log.insert(CallLogEntry(call_id="c3", room_id="!r:x", direction="sideways",  # type: ignore[arg-type]
                                      invite_ts=1))


async def test_call_log_claim_writes_a_call_id_once_and_keeps_the_first_row(db: Database) -> None:
    log = Tables.for_db(db).call_log
    first = CallLogEntry(call_id="c1", room_id="!r:x", direction="outbound", invite_ts=1, sip_call_id="sip-1")
    assert await log.claim(first)
    await log.update_ended("c1", 2, "sip_486")
    # The same call_id again (a replay, or a client reusing it): not written, the first row is untouched.
    assert not await log.claim(CallLogEntry(call_id="c1", room_id="!r:x", direction="outbound", invite_ts=3,
                                            sip_call_id="sip-2"))
    got = await log.get("c1")
    assert got is not None and (got.sip_call_id, got.end_reason) == ("sip-1", "sip_486")


async def test_call_state_save_replaces_the_record_and_delete_removes_it(db: Database) -> None:
    table = Tables.for_db(db).call_state
    ringing = CallRecord(call_id="c1", direction="outbound", sip_call_id="sip-1", sip_phase="invite_sent",
                         sip={"via": "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx", "routes": ["<sip:p;lr>"]},
                         room_id="!r:x", mxid="@alice:x", number="15551234567", party_id="ABCDEFGHIJ",
                         version="1", rtp_port=20000, updated_ts=1)
    await table.save(ringing)
    assert await table.get("c1") == ringing
    answered = CallRecord(call_id="c1", direction="outbound", sip_call_id="sip-1", sip_phase="dialog",
                          sip={"local_cseq": 7}, room_id="!r:x", mxid="@alice:x", number=None,
                          party_id="ABCDEFGHIJ", version="0", answered=True, rtp_port=None, updated_ts=2)
    await table.save(answered)
    await table.save(CallRecord(call_id="c0", direction="inbound", sip_call_id="sip-0",
                                sip_phase="invite_received", updated_ts=0))
    assert await table.get("c1") == answered
    assert [r.call_id for r in await table.all()] == ["c0", "c1"]
    await table.delete("c1")
    await table.delete("c1")  # deleting twice is harmless
    assert await table.get("c1") is None
    assert [r.call_id for r in await table.all()] == ["c0"]
