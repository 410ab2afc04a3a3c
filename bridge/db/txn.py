"""``txn`` and ``handled_event`` tables: what the homeserver already delivered, so replays are no-ops.

A transaction is known by (txn_id, digest of its body): Synapse on SQLite numbers transactions from 1 again
after a restart, so the ID alone would drop new transactions. Events are known by event_id, so one that a
restarted homeserver re-sends inside a differently numbered transaction is still handled once. Both tables
are bounded by age and by row count.
"""

from __future__ import annotations

import time

from mautrix.util.async_db import Database

# A homeserver re-sends within hours at most (Synapse keeps undelivered transactions and retries them as soon
# as it is back); a week and 100,000 rows per table leave a wide margin and keep the tables small.
RETENTION_MS = 7 * 24 * 3600 * 1000
KEEP_ROWS = 100_000


def _now_ms() -> int:
    return int(time.time() * 1000)


class TxnTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def seen(self, txn_id: str, digest: str) -> bool:
        return await self.db.fetchval(
            "SELECT 1 FROM txn WHERE txn_id=$1 AND digest=$2", txn_id, digest) is not None

    async def mark(self, txn_id: str, digest: str) -> None:
        await self.db.execute(
            "INSERT INTO txn (txn_id, digest, received_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (txn_id, digest) DO NOTHING",
            txn_id, digest, _now_ms(),
        )

    async def event_seen(self, event_id: str) -> bool:
        return await self.db.fetchval(
            "SELECT 1 FROM handled_event WHERE event_id=$1", event_id) is not None

    async def mark_event(self, event_id: str) -> None:
        await self.db.execute(
            "INSERT INTO handled_event (event_id, handled_at) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
            event_id, _now_ms(),
        )

    async def prune_old(self) -> None:
        await self.prune(_now_ms() - RETENTION_MS, keep_rows=KEEP_ROWS)

    async def prune(self, older_than_ms: int, *, keep_rows: int | None = None) -> None:
        """Forget entries older than the cutoff, and beyond the newest ``keep_rows`` of each table."""
        await self.db.execute("DELETE FROM txn WHERE received_at < $1", older_than_ms)
        await self.db.execute("DELETE FROM handled_event WHERE handled_at < $1", older_than_ms)
        if keep_rows is not None:
            for table, column in (("txn", "received_at"), ("handled_event", "handled_at")):
                cutoff = await self.db.fetchval(
                    f"SELECT {column} FROM {table} ORDER BY {column} DESC LIMIT 1 OFFSET $1", keep_rows)
                if cutoff is not None:
                    await self.db.execute(f"DELETE FROM {table} WHERE {column} <= $1", cutoff)
