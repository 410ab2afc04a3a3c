"""Phone number normalisation, dial rules and inbound routing. Pure functions, no I/O.

Numbers are carried through the bridge as E.164 digits without the '+' ("15551234567"). The normalisation
rules (documented in example-config.yaml under ``dialplan``) are deliberately simple and predictable:

1. ``+`` or one of ``international_prefixes`` -> the rest already starts with a country code;
2. starts with ``national_prefix`` (if set) -> replace it with ``default_country_code``;
3. exactly ``national_number_length`` digits (if > 0) -> prepend ``default_country_code``;
4. otherwise the digits are taken as already including the country code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import phonenumbers

from bridge.config import DialplanConfig, InboundRoute

_SEPARATORS_RE = re.compile(r"[\s\-.()/\u00a0\u2010-\u2015]")
_MIN_DIGITS = 3  # short codes like 911 are still numbers; anything shorter is noise
_MAX_DIGITS = 15  # E.164 maximum


def _strip_uri(raw: str) -> str:
    """Reduce tel:/sip:/sips: URIs (optionally in <...> with a display name) to their number part."""
    s = raw.strip()
    if "<" in s and ">" in s:
        s = s[s.index("<") + 1 : s.rindex(">")]
    low = s.lower()
    if low.startswith(("sip:", "sips:")):
        s = s.split(":", 1)[1]
        if "@" not in s:
            return ""  # a SIP URI without a user part names a host, not a number
        s = s.split("@", 1)[0]
    elif low.startswith("tel:"):
        s = s[4:]
    return s.split(";", 1)[0]  # drop tel/user parameters such as ;phone-context= or ;isub=


def normalize_number(raw: str, plan: DialplanConfig) -> str | None:
    """E.164 digits (no '+') for ``raw``, or None if it is not a usable phone number."""
    if not isinstance(raw, str):
        return None
    s = _SEPARATORS_RE.sub("", _strip_uri(raw))
    if not s:
        return None
    international = s.startswith("+")
    if international:
        s = s[1:]
    if not s.isdigit() or not s.isascii():
        return None
    if not international:
        for prefix in sorted(plan.international_prefixes, key=len, reverse=True):
            if prefix and s.startswith(prefix) and len(s) > len(prefix):
                s, international = s[len(prefix) :], True
                break
    if not international:
        if plan.national_prefix and s.startswith(plan.national_prefix):
            s = plan.default_country_code + s[len(plan.national_prefix) :]
        elif plan.national_number_length and len(s) == plan.national_number_length:
            s = plan.default_country_code + s
    if s.startswith("0") or not _MIN_DIGITS <= len(s) <= _MAX_DIGITS:
        return None  # no country code starts with 0
    return s


def check_dial(number: str, plan: DialplanConfig) -> str | None:
    """None if ``number`` (normalised digits) may be dialled, else a short human-readable reason."""
    for pattern in plan.blocked:
        if re.search(pattern, number):
            return f"+{number} is blocked by the bridge's dial plan"
    if not any(re.search(pattern, number) for pattern in plan.allowed):
        return f"+{number} is not allowed by the bridge's dial plan"
    return None


def format_number(digits: str) -> str:
    """Human-friendly form: "+1 555 123 4567" for NANP, the phonenumbers library's international format
    (with spaces) otherwise, and "+<digits>" when the number is not recognised."""
    if len(digits) == 11 and digits.startswith("1"):
        return f"+1 {digits[1:4]} {digits[4:7]} {digits[7:]}"
    try:
        parsed = phonenumbers.parse("+" + digits)
        if phonenumbers.is_possible_number(parsed):
            text = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
            return text.replace("-", " ")
    except phonenumbers.NumberParseException:
        pass
    return "+" + digits


def route_users(number: str, routes: Sequence[InboundRoute], default: Sequence[str]) -> tuple[str, ...]:
    """Matrix users to ring for an inbound call to ``number``: an exact route beats any prefix, the longest
    prefix wins, else ``default`` (empty means: no one, answer 404)."""
    for route in routes:
        if route.number == number:
            return route.users
    best: InboundRoute | None = None
    for route in routes:
        if route.prefix is not None and number.startswith(route.prefix):
            if best is None or len(route.prefix) > len(best.prefix or ""):
                best = route
    return best.users if best else tuple(default)
