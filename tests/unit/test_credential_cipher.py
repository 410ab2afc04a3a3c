"""Per-user SIP passwords at rest (bridge/db/credential_cipher.py): AES-GCM, mxid-bound, key rotation."""

from __future__ import annotations

import pytest

from bridge.db.credential_cipher import CipherError, CredentialCipher, generate_key, parse_key


def test_round_trip_and_ciphertext_hides_the_password() -> None:
    cipher = CredentialCipher(generate_key())
    stored = cipher.encrypt("s3cret-pass", "@alice:example.org")
    assert "s3cret-pass" not in stored and stored.startswith(f"v1.{cipher.current_id}.")
    assert cipher.decrypt(stored, "@alice:example.org") == "s3cret-pass"
    assert stored != cipher.encrypt("s3cret-pass", "@alice:example.org")  # a fresh nonce every time


def test_a_row_copied_to_another_user_does_not_decrypt() -> None:
    cipher = CredentialCipher(generate_key())
    stored = cipher.encrypt("s3cret-pass", "@alice:example.org")
    with pytest.raises(CipherError, match="another user"):
        cipher.decrypt(stored, "@mallory:example.org")


def test_tampered_ciphertext_does_not_decrypt() -> None:
    cipher = CredentialCipher(generate_key())
    stored = cipher.encrypt("s3cret-pass", "@a:x")
    last = "A" if stored[-1] != "A" else "B"
    with pytest.raises(CipherError):
        cipher.decrypt(stored[:-1] + last, "@a:x")


def test_previous_key_decrypts_and_marks_the_row_for_re_encryption() -> None:
    old, new = generate_key(), generate_key()
    stored = CredentialCipher(old).encrypt("pw", "@a:x")
    rotated = CredentialCipher(new, [old])
    assert rotated.decrypt(stored, "@a:x") == "pw" and not rotated.is_current(stored)
    again = rotated.encrypt("pw", "@a:x")
    assert rotated.is_current(again)
    with pytest.raises(CipherError, match="neither encryption_key nor in previous_keys"):
        CredentialCipher(new).decrypt(stored, "@a:x")  # the old key dropped too early


@pytest.mark.parametrize("bad", ["", "abc", "A" * 40, "not base64 !!"])
def test_keys_must_be_32_bytes_of_base64(bad: str) -> None:
    with pytest.raises(CipherError):
        parse_key(bad)


def test_standard_base64_keys_are_accepted_too() -> None:
    import base64
    import os

    raw = os.urandom(32)
    assert parse_key(base64.b64encode(raw).decode()) == raw
