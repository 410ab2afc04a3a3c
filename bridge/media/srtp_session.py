"""SRTP/SRTCP contexts of one SIP leg (RFC 3711), built on pylibsrtp (libsrtp 2): no crypto written here.

One outbound context (our key) and one inbound context (the peer's key), each for any SSRC. A context lives
as long as its key: re-INVITEs that keep the keys keep the contexts, so the sender's rollover counter and the
receiver's replay window continue across a hold of any length; a changed key (RFC 4568 7.1.4) replaces only
that direction's context. Keys are never logged or shown in a repr.
"""

from __future__ import annotations

import pylibsrtp

PROFILES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}
REPLAY_WINDOW = 1024  # packets; libsrtp's default is 128 (2.5 s of 20 ms audio) for reordering, this is 20 s


def _session(suite: str, key: bytes, ssrc_type: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=PROFILES[suite])
    policy.window_size = REPLAY_WINDOW
    return pylibsrtp.Session(policy)


class SrtpSession:
    """protect / unprotect for one call's RTP and RTCP. ``unprotect*`` return None for a packet that fails
    authentication or replay checks (counted, never raised: the media loop must survive a forged packet)."""

    def __init__(self, suite: str, local_key: bytes, remote_key: bytes) -> None:
        self.suite = suite
        self._local_key = local_key
        self._remote_key = remote_key
        self._tx = _session(suite, local_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self._rx = _session(suite, remote_key, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self.auth_failures = 0
        self.replayed = 0
        self.rekeys = 0

    def __repr__(self) -> str:
        return f"SrtpSession(suite={self.suite!r})"

    def update(self, suite: str, local_key: bytes, remote_key: bytes) -> bool:
        """Apply renegotiated keys; only a changed key (or suite) gets a new context. True if anything changed."""
        changed = False
        if suite != self.suite or local_key != self._local_key:
            self._tx = _session(suite, local_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
            self._local_key = local_key
            changed = True
        if suite != self.suite or remote_key != self._remote_key:
            self._rx = _session(suite, remote_key, pylibsrtp.Policy.SSRC_ANY_INBOUND)
            self._remote_key = remote_key
            changed = True
        self.suite = suite
        self.rekeys += changed
        return changed

    def protect(self, rtp: bytes) -> bytes:
        return self._tx.protect(rtp)

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        return self._tx.protect_rtcp(rtcp)

    def unprotect(self, srtp: bytes) -> bytes | None:
        try:
            return self._rx.unprotect(srtp)
        except pylibsrtp.Error as exc:
            self._count(exc)
            return None

    def unprotect_rtcp(self, srtcp: bytes) -> bytes | None:
        try:
            return self._rx.unprotect_rtcp(srtcp)
        except pylibsrtp.Error as exc:
            self._count(exc)
            return None

    def _count(self, exc: pylibsrtp.Error) -> None:
        if "replay" in str(exc):
            self.replayed += 1
        else:
            self.auth_failures += 1
