"""AccountRecord: one stored per-user SIP account (table ``sip_account``), as the account service and the DB
layer exchange it. The password is only ever here in encrypted form (db/credential_cipher.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AccountRecord:
    mxid: str
    aor: str  # sip:alice@pbx.example[:port]
    auth_username: str | None
    password_enc: str = field(repr=False)
    outbound_proxy: str | None = None
    transport: str = "udp"  # udp | tcp | tls
    registration_enabled: bool = True
    contact_token: str = ""  # random user part of the Contact the bridge registers for this account
    created_at: int = 0  # ms since the epoch
    updated_at: int = 0
