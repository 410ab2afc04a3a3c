"""management_room table (migration v5) on SQLite and PostgreSQL: one row per user, replaced on update."""

from __future__ import annotations

from mautrix.util.async_db import Database

from bridge.db.management_room import ManagementRoom, ManagementRoomTable
from bridge.db.upgrade import upgrade_table
from tests.unit.test_db import db, db_url, pg

__all__ = ["db", "db_url", "pg"]  # fixtures shared with test_db.py


async def test_v5_creates_the_table_after_v4(db: Database) -> None:
    assert [f.__name__ for f in upgrade_table.upgrades][3:5] == ["upgrade_v4", "upgrade_v5"]
    assert await db.table_exists("sip_account") and await db.table_exists("management_room")


async def test_put_get_replace_delete(db: Database) -> None:
    table = ManagementRoomTable(db)
    assert await table.get("@a:x") is None
    await table.put("@a:x", "!dm:x", bot_owned=False)
    assert await table.get("@a:x") == ManagementRoom("@a:x", "!dm:x", bot_owned=False)
    await table.put("@a:x", "!own:x", bot_owned=True)
    assert await table.get("@a:x") == ManagementRoom("@a:x", "!own:x", bot_owned=True)
    await table.delete("@a:x")
    assert await table.get("@a:x") is None
