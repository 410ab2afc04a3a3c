"""Bridge database: mautrix.util.async_db tables and numbered migrations (SQLite or PostgreSQL)."""

from bridge.db.call_log import CallLog, CallLogEntry
from bridge.db.call_state import CallStateTable
from bridge.db.database import Tables, create_database
from bridge.db.ghost import Ghost, GhostTable
from bridge.db.portal import Portal, PortalTable
from bridge.db.sip_account import SipAccountTable
from bridge.db.txn import TxnTable
from bridge.db.upgrade import upgrade_table

__all__ = [
    "CallLog",
    "CallLogEntry",
    "CallStateTable",
    "Ghost",
    "GhostTable",
    "Portal",
    "PortalTable",
    "SipAccountTable",
    "Tables",
    "TxnTable",
    "create_database",
    "upgrade_table",
]
