"""SDES key exchange in SDP (RFC 4568 `a=crypto`) for SRTP on the SIP leg. Pure code, no I/O.

Modes (``media.srtp``):
- ``off``: plain RTP/AVP offers; offers with only RTP/SAVP streams are refused (488), `a=crypto` in an
  RTP/AVP offer is ignored (answered plain, so the offerer falls back to RTP).
- ``optional``: offers are RTP/AVP *with* `a=crypto` lines: "opportunistic SRTP" (RFC 8643, what FreeSWITCH,
  Asterisk's ``media_encryption_optimistic`` and baresip's ``mediaenc=srtp`` do): a peer that understands the
  lines answers with one and media is encrypted, anything else ignores them and media is plain RTP. Offers
  (SAVP, or AVP with `a=crypto`) are answered encrypted when they carry a supported suite, plain otherwise.
- ``required``: offers are RTP/SAVP; an answer or an offer without a usable `a=crypto` line fails (488).

Keys: each offered line has its own fresh master key (key || salt). Once a call is encrypted, a re-offer
(hold / resume) repeats the line in use (same tag, suite and key) so the peer keeps its crypto context
(ROC and replay window survive a long hold); answering a re-offer keeps our key unless the peer's key or the
suite changed (RFC 4568 7.1.4: a new key from the peer means a new context, so we start one too).
Key material never appears in a repr, and nothing here logs.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

from .sdp import DIRECTIONS, MediaDescription, SdpError

MODES = ("off", "optional", "required")
# suite name -> master key + master salt length (RFC 4568 6.2, RFC 7714 14.2 for GCM: 16 + 12)
SUITES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
    "AEAD_AES_128_GCM": 28,
}
OFFER_SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "AEAD_AES_128_GCM")
SECURE_PROTOS = ("RTP/SAVP", "RTP/SAVPF")
# session parameters (RFC 4568 6.3) we can honour by ignoring: only the window size hint
_HARMLESS_PARAMS = ("WSH=",)


@dataclass(frozen=True)
class CryptoLine:
    """One `a=crypto` line: tag, suite and master key (key || salt)."""

    tag: int
    suite: str
    key: bytes

    def __repr__(self) -> str:  # never the key
        return f"CryptoLine(tag={self.tag}, suite={self.suite!r})"

    def value(self) -> str:
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode('ascii')}"


@dataclass(frozen=True)
class SrtpKeys:
    """What the media leg needs: the suite, our sending key and the peer's."""

    suite: str
    local: bytes
    remote: bytes

    def __repr__(self) -> str:
        return f"SrtpKeys(suite={self.suite!r})"


def new_line(tag: int, suite: str) -> CryptoLine:
    return CryptoLine(tag, suite, secrets.token_bytes(SUITES[suite]))


def parse_crypto(value: str) -> CryptoLine | None:
    """An `a=crypto` value we can use, else None (unknown suite, MKI, several keys, odd session params)."""
    parts = value.split()
    if len(parts) < 3 or not parts[0].isdigit() or len(parts[0]) > 9:
        return None
    tag, suite, key_params = int(parts[0]), parts[1], parts[2]
    if suite not in SUITES or ";" in key_params or not key_params.startswith("inline:"):
        return None  # several master keys: not supported by our SRTP contexts
    if any(not p.startswith(_HARMLESS_PARAMS) for p in parts[3:]):
        return None  # e.g. UNENCRYPTED_SRTP, KDR: would change the transform
    key_b64, *extra = key_params[len("inline:"):].split("|")
    if any(":" in e for e in extra):
        return None  # MKI
    try:
        key = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(key) != SUITES[suite]:
        return None
    return CryptoLine(tag, suite, key)


def usable_lines(media: MediaDescription) -> list[CryptoLine]:
    return [line for v in media.attribute_values("crypto") if (line := parse_crypto(v)) is not None]


def _set_crypto(media: MediaDescription, lines: list[CryptoLine]) -> None:
    attrs = [(k, v) for k, v in media.attributes if k != "crypto"]
    # after rtpmap/fmtp/ptime, before the direction attribute, as most stacks print them
    at = next((i for i, (k, _) in enumerate(attrs) if k in DIRECTIONS), len(attrs))
    attrs[at:at] = [("crypto", line.value()) for line in lines]
    media.attributes = attrs


class SdesNegotiation:
    """The SDES state of one call's SIP leg (offers we made, the pair of lines in use)."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"srtp mode must be one of {MODES}")
        self.mode = mode
        self._offered: list[CryptoLine] = []
        self.active: tuple[CryptoLine, CryptoLine] | None = None  # (ours, theirs)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def accepted_protos(self, plain: tuple[str, ...]) -> tuple[str, ...]:
        """The m= protocols an offer may use for us to answer it."""
        return plain + SECURE_PROTOS if self.enabled else plain

    # -- we offer ----------------------------------------------------------------------------------------
    def secure_offer(self, media: MediaDescription, *, renew: bool = False) -> None:
        """Turn our plain audio m= line into the offer for this mode (in place). ``renew``: fresh keys even
        when a context runs (an INVITE to a new far end, whose context starts with a rollover counter of 0)."""
        if not self.enabled:
            self._offered = []
            return
        if self.active is not None and not renew:
            lines = [self.active[0]]  # re-offer: the context in use continues (RFC 4568 7.1.4)
        else:
            lines = [new_line(i + 1, suite) for i, suite in enumerate(OFFER_SUITES)]
        self._offered = lines
        _set_crypto(media, lines)
        if self.mode == "required":
            media.proto = "RTP/SAVP" if media.proto == "RTP/AVP" else "RTP/SAVPF"

    def read_answer(self, answer: MediaDescription) -> SrtpKeys | None:
        """The keys of the answer to our offer; None for plain RTP. SdpError when `required` is not met."""
        if not self._offered:
            return None
        theirs = next((t for t in usable_lines(answer) for o in self._offered
                       if t.tag == o.tag and t.suite == o.suite), None)
        if theirs is None:
            if self.mode == "required" or answer.proto in SECURE_PROTOS:
                raise SdpError("the answer accepted none of our SRTP crypto suites")
            self.active = None
            return None
        ours = next(o for o in self._offered if o.tag == theirs.tag)
        return self._activate(ours, theirs)

    # -- we answer ---------------------------------------------------------------------------------------
    def answer_offer(self, offer: MediaDescription, answer: MediaDescription) -> SrtpKeys | None:
        """Fill our answer's `a=crypto` for the peer's offered stream (in place); None for plain RTP.
        SdpError (488) for an SRTP offer we cannot meet, or a plain one when SRTP is required."""
        secure_proto = offer.proto in SECURE_PROTOS
        if not self.enabled:
            if secure_proto:
                raise SdpError("SRTP offered but media.srtp is off")
            return None
        offered = usable_lines(offer)
        if not offered:
            if secure_proto or self.mode == "required":
                raise SdpError("no supported SRTP crypto suite in the offer" if offer.attribute_values("crypto")
                               else "SRTP is required but the offer is plain RTP")
            self.active = None
            return None
        theirs = self._pick(offered)
        ours = self._our_line_for(theirs)
        _set_crypto(answer, [ours])
        return self._activate(ours, theirs)

    def _pick(self, offered: list[CryptoLine]) -> CryptoLine:
        if self.active is not None:  # the suite in use, if still offered: its contexts may continue
            same = next((t for t in offered if t.suite == self.active[1].suite), None)
            if same is not None:
                return same
        return offered[0]  # the offerer's preference

    def _our_line_for(self, theirs: CryptoLine) -> CryptoLine:
        if self.active is not None:
            ours, previous = self.active
            if previous.key == theirs.key and previous.suite == theirs.suite:
                return CryptoLine(theirs.tag, ours.suite, ours.key)  # unchanged context: keep our key
        return new_line(theirs.tag, theirs.suite)

    def _activate(self, ours: CryptoLine, theirs: CryptoLine) -> SrtpKeys:
        self.active = (ours, theirs)
        return SrtpKeys(ours.suite, ours.key, theirs.key)
