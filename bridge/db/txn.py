"""``txn`` table: appservice transaction IDs already handled, so replays (even after a restart) are no-ops."""

from __future__ import annotations

import time

from mautrix.util.async_db import Database


class TxnTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def seen(self, txn_id: str) -> bool:
        return await self.db.fetchval("SELECT 1 FROM txn WHERE txn_id=$1", txn_id) is not None

    async def mark(self, txn_id: str) -> None:
        await self.db.execute(
            "INSERT INTO txn (txn_id, received_at) VALUES ($1, $2) ON CONFLICT (txn_id) DO NOTHING",
            txn_id, int(time.time() * 1000),
        )

    async def prune(self, older_than_ms: int) -> None:
        """Forget IDs older than the cutoff (the homeserver never retries that long)."""
        await self.db.execute("DELETE FROM txn WHERE received_at < $1", older_than_ms)
