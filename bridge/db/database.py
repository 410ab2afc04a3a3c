"""Opening the bridge database and grouping its tables."""

from __future__ import annotations

from dataclasses import dataclass

from mautrix.util.async_db import Database

from bridge.db.call_log import CallLog
from bridge.db.call_state import CallStateTable
from bridge.db.ghost import GhostTable
from bridge.db.management_room import ManagementRoomTable
from bridge.db.portal import PortalTable
from bridge.db.sip_account import SipAccountTable
from bridge.db.txn import TxnTable
from bridge.db.upgrade import upgrade_table


def create_database(url: str) -> Database:
    """A not-yet-started Database for ``sqlite:<path>`` or ``postgres://...``; ``await db.start()`` connects
    and applies pending migrations, ``await db.stop()`` closes it."""
    if url.startswith("postgresql://"):
        url = "postgres://" + url[len("postgresql://"):]
    return Database.create(url, upgrade_table=upgrade_table)


@dataclass(frozen=True)
class Tables:
    portal: PortalTable
    ghost: GhostTable
    txn: TxnTable
    call_log: CallLog
    call_state: CallStateTable
    sip_account: SipAccountTable
    management_room: ManagementRoomTable

    @classmethod
    def for_db(cls, db: Database) -> Tables:
        return cls(portal=PortalTable(db), ghost=GhostTable(db), txn=TxnTable(db), call_log=CallLog(db),
                   call_state=CallStateTable(db), sip_account=SipAccountTable(db),
                   management_room=ManagementRoomTable(db))
