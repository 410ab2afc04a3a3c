"""Per-user SIP passwords at rest: AES-256-GCM (the ``cryptography`` package) with a key from the config.

A stored value is ``v1.<key id>.<base64url(nonce + ciphertext)>``. The key id (8 hex digits of the key's
SHA-256) says which key wrote it, so after a key rotation rows written with an older key are found and
re-encrypted at start (``bridge.accounts.previous_keys`` are accepted for decryption only). The associated data
is the row's Matrix user ID: a ciphertext copied into another user's row does not decrypt.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = "v1"
_NONCE_BYTES = 12


class CipherError(Exception):
    """A key that is not a key, or a stored value no configured key opens."""


def generate_key() -> str:
    """A fresh key as config text: 32 random bytes, base64url (44 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def parse_key(text: str) -> bytes:
    """The 32 key bytes of a config value (base64 or base64url of 32 bytes)."""
    raw = text.strip()
    try:
        key = base64.urlsafe_b64decode(raw.replace("+", "-").replace("/", "_") + "=" * (-len(raw) % 4))
    except (ValueError, TypeError):
        raise CipherError("is not base64") from None
    if len(key) != 32:
        raise CipherError(f"decodes to {len(key)} bytes, not 32 (generate one with --generate-account-key)")
    return key


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


class CredentialCipher:
    """Encrypts with ``current``; decrypts with it or any of ``previous`` (key rotation)."""

    def __init__(self, current: str, previous: Sequence[str] = ()) -> None:
        self._current = parse_key(current)
        self.current_id = key_id(self._current)
        self._keys = {key_id(k): k for k in (*(parse_key(p) for p in previous), self._current)}

    def encrypt(self, plaintext: str, associated: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(self._current).encrypt(nonce, plaintext.encode("utf-8"), associated.encode("utf-8"))
        blob = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
        return f"{_VERSION}.{self.current_id}.{blob}"

    def decrypt(self, stored: str, associated: str) -> str:
        version, _, rest = stored.partition(".")
        kid, _, blob = rest.partition(".")
        if version != _VERSION or not blob:
            raise CipherError("unknown stored format")
        key = self._keys.get(kid)
        if key is None:
            raise CipherError(f"written with key {kid}, which is neither encryption_key nor in previous_keys")
        try:
            data = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
            plain = AESGCM(key).decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], associated.encode("utf-8"))
        except (InvalidTag, ValueError):
            raise CipherError("does not decrypt (tampered, or stored for another user)") from None
        return plain.decode("utf-8")

    def is_current(self, stored: str) -> bool:
        """Written with the current key (no re-encryption needed)."""
        return stored.split(".")[1:2] == [self.current_id]
