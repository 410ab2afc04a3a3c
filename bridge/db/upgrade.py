"""Numbered schema migrations. Append a new ``@upgrade_table.register`` function for each change; never edit
one that has shipped (databases record the last applied number in the ``version`` table)."""

from __future__ import annotations

from mautrix.util.async_db import Connection, Scheme, UpgradeTable

upgrade_table = UpgradeTable(database_name="matrix-sip-bridge")


async def upgrade_v1(conn: Connection, scheme: Scheme) -> None:
    await conn.execute(
        """CREATE TABLE portal (
            room_id    TEXT PRIMARY KEY,
            mxid       TEXT NOT NULL,
            number     TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            UNIQUE (mxid, number)
        )"""
    )
    await conn.execute(
        """CREATE TABLE ghost (
            mxid        TEXT PRIMARY KEY,
            number      TEXT NOT NULL,
            displayname TEXT
        )"""
    )
    await conn.execute(
        """CREATE TABLE txn (
            txn_id      TEXT PRIMARY KEY,
            received_at BIGINT NOT NULL
        )"""
    )
    await conn.execute(
        """CREATE TABLE call_log (
            call_id     TEXT PRIMARY KEY,
            party_id    TEXT,
            sip_call_id TEXT,
            room_id     TEXT NOT NULL,
            direction   TEXT NOT NULL CHECK (direction IN ('outbound', 'inbound')),
            number      TEXT,
            mxid        TEXT,
            invite_ts   BIGINT NOT NULL,
            answer_ts   BIGINT,
            end_ts      BIGINT,
            end_reason  TEXT
        )"""
    )
    await conn.execute("CREATE INDEX call_log_sip_call_id_idx ON call_log (sip_call_id)")


upgrade_table.register(upgrade_v1, description="Initial schema: portal, ghost, txn, call_log")


async def upgrade_v2(conn: Connection, scheme: Scheme) -> None:
    # one row per call in progress, rewritten as the call changes, deleted when it has ended: what a
    # restarted bridge needs to end calls a crash left open (bridge/calls/recovery.py)
    await conn.execute(
        """CREATE TABLE call_state (
            call_id     TEXT PRIMARY KEY,
            direction   TEXT NOT NULL CHECK (direction IN ('outbound', 'inbound')),
            sip_call_id TEXT NOT NULL,
            sip_phase   TEXT NOT NULL,
            sip_state   TEXT NOT NULL,
            room_id     TEXT,
            mxid        TEXT,
            number      TEXT,
            party_id    TEXT NOT NULL,
            version     TEXT NOT NULL,
            answered    BOOLEAN NOT NULL,
            rtp_port    INTEGER,
            updated_ts  BIGINT NOT NULL
        )"""
    )


upgrade_table.register(upgrade_v2, description="call_state: durable state of calls in progress")


async def upgrade_v3(conn: Connection, scheme: Scheme) -> None:
    # A homeserver may number its transactions from 1 again after a restart (Synapse on SQLite does), so an
    # ID alone says nothing: key on (ID, body digest). Old rows carry no digest and cannot be matched.
    await conn.execute("DROP TABLE txn")
    await conn.execute(
        """CREATE TABLE txn (
            txn_id      TEXT NOT NULL,
            digest      TEXT NOT NULL,
            received_at BIGINT NOT NULL,
            PRIMARY KEY (txn_id, digest)
        )"""
    )
    await conn.execute("CREATE INDEX txn_received_at_idx ON txn (received_at)")
    # Events already handled, so one re-sent under another transaction ID is still handled once.
    await conn.execute(
        """CREATE TABLE handled_event (
            event_id   TEXT PRIMARY KEY,
            handled_at BIGINT NOT NULL
        )"""
    )
    await conn.execute("CREATE INDEX handled_event_handled_at_idx ON handled_event (handled_at)")


upgrade_table.register(upgrade_v3, description="Transaction dedupe on (txn_id, body digest); handled event IDs")


async def upgrade_v4(conn: Connection, scheme: Scheme) -> None:
    # Per-user SIP accounts (calls/accounts.py). The password is stored encrypted (db/credential_cipher.py, the
    # mxid as associated data); contact_token is the random user part of the Contact the bridge registers for
    # the account, so an INVITE to it names exactly one Matrix user.
    await conn.execute(
        """CREATE TABLE sip_account (
            mxid                 TEXT PRIMARY KEY,
            aor                  TEXT NOT NULL,
            auth_username        TEXT,
            password_enc         TEXT NOT NULL,
            outbound_proxy       TEXT,
            transport            TEXT NOT NULL,
            registration_enabled BOOLEAN NOT NULL,
            contact_token        TEXT NOT NULL UNIQUE,
            created_at           BIGINT NOT NULL,
            updated_at           BIGINT NOT NULL
        )"""
    )


upgrade_table.register(upgrade_v4, description="sip_account: per-user SIP accounts (encrypted passwords)")


async def upgrade_v5(conn: Connection, scheme: Scheme) -> None:
    # Each user's management room (bridge/matrix/account_commands.py): where registration notices go.
    await conn.execute(
        """CREATE TABLE management_room (
            mxid       TEXT PRIMARY KEY,
            room_id    TEXT NOT NULL,
            bot_owned  BOOLEAN NOT NULL,
            updated_ts BIGINT NOT NULL
        )"""
    )


upgrade_table.register(upgrade_v5, description="management_room: each user's room with the bot")
