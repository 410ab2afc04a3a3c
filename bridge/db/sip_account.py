"""``sip_account`` table: one SIP account per Matrix user (password encrypted by the caller, never here)."""

from __future__ import annotations

import time
from typing import Any

from mautrix.util.async_db import Database

from bridge.call.account_record import AccountRecord


def _record(row: Any) -> AccountRecord:
    return AccountRecord(mxid=row["mxid"], aor=row["aor"], auth_username=row["auth_username"],
                         password_enc=row["password_enc"], outbound_proxy=row["outbound_proxy"],
                         transport=row["transport"], registration_enabled=bool(row["registration_enabled"]),
                         contact_token=row["contact_token"], created_at=row["created_at"],
                         updated_at=row["updated_at"])


class SipAccountTable:
    _COLUMNS = ("mxid, aor, auth_username, password_enc, outbound_proxy, transport, registration_enabled, "
                "contact_token, created_at, updated_at")

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, mxid: str) -> AccountRecord | None:
        row = await self.db.fetchrow(f"SELECT {self._COLUMNS} FROM sip_account WHERE mxid=$1", mxid)
        return _record(row) if row else None

    async def all(self) -> list[AccountRecord]:
        rows = await self.db.fetch(f"SELECT {self._COLUMNS} FROM sip_account ORDER BY mxid")
        return [_record(r) for r in rows]

    async def put(self, account: AccountRecord) -> AccountRecord:
        """Insert or replace the user's account; created_at is kept for a replaced row."""
        now = int(time.time() * 1000)
        await self.db.execute(
            f"""INSERT INTO sip_account ({self._COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                ON CONFLICT (mxid) DO UPDATE SET aor=excluded.aor, auth_username=excluded.auth_username,
                    password_enc=excluded.password_enc, outbound_proxy=excluded.outbound_proxy,
                    transport=excluded.transport, registration_enabled=excluded.registration_enabled,
                    contact_token=excluded.contact_token, updated_at=excluded.updated_at""",
            account.mxid, account.aor, account.auth_username, account.password_enc, account.outbound_proxy,
            account.transport, account.registration_enabled, account.contact_token, account.created_at or now, now,
        )
        stored = await self.get(account.mxid)
        assert stored is not None
        return stored

    async def set_enabled(self, mxid: str, enabled: bool) -> None:
        await self.db.execute("UPDATE sip_account SET registration_enabled=$2, updated_at=$3 WHERE mxid=$1",
                              mxid, enabled, int(time.time() * 1000))

    async def set_password_enc(self, mxid: str, password_enc: str) -> None:
        await self.db.execute("UPDATE sip_account SET password_enc=$2, updated_at=$3 WHERE mxid=$1",
                              mxid, password_enc, int(time.time() * 1000))

    async def delete(self, mxid: str) -> bool:
        existed = await self.get(mxid) is not None
        await self.db.execute("DELETE FROM sip_account WHERE mxid=$1", mxid)
        return existed
