"""RFC 4028 session timers, the pure half: Session-Expires / Min-SE headers and who refreshes how often.

The timers of a live dialog (refresh at half the interval, BYE at expiry) are in session_refresher.py.
Directions: a `refresher` parameter names the UAC or UAS *of the transaction that carries it*, so the same
party is "uac" in its own refresh request and "uas" in the response to the peer's.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.sip.headers import Headers, parse_params

RFC_MIN_SE = 90  # 4: the smallest Min-SE a UA may require (lower values only in tests)
TIMER = "timer"


@dataclass(frozen=True)
class SessionTimerSettings:
    """What we ask for (expires) and the shortest interval we accept (min_se), in seconds."""

    enabled: bool = True
    expires: int = 1800
    min_se: int = RFC_MIN_SE


@dataclass(frozen=True)
class SessionExpires:
    interval: int
    refresher: str | None = None  # "uac" | "uas" | None (not said)

    @classmethod
    def parse(cls, value: str) -> SessionExpires:
        number, _, rest = value.partition(";")
        interval = int(number.strip())
        if interval <= 0:
            raise ValueError(f"Session-Expires must be positive, got {interval}")
        refresher = parse_params(rest).get("refresher") if rest else None
        refresher = refresher.lower() if refresher else None
        return cls(interval, refresher if refresher in ("uac", "uas") else None)

    def __str__(self) -> str:
        return f"{self.interval};refresher={self.refresher}" if self.refresher else str(self.interval)


@dataclass(frozen=True)
class Negotiated:
    """A dialog's session timer: the interval in seconds and whether this UA sends the refreshes."""

    interval: int
    we_refresh: bool


def session_expires(headers: Headers) -> SessionExpires | None:
    """The Session-Expires of a message; None when absent or unparsable (treated as not asked for)."""
    value = headers.get("Session-Expires")
    if value is None:
        return None
    try:
        return SessionExpires.parse(value)
    except ValueError:
        return None


def min_se(headers: Headers) -> int | None:
    value = headers.get("Min-SE")
    if value is None:
        return None
    try:
        return max(0, int(value.split(";")[0].strip()))
    except ValueError:
        return None


def has_option(headers: Headers, option: str, names: tuple[str, ...] = ("Supported", "Require")) -> bool:
    return any(item.strip().lower() == option for name in names for item in headers.get_all(name))


def request_headers(settings: SessionTimerSettings, *, interval: int | None = None, refresher: str | None = None,
                    min_se_s: int | None = None) -> list[tuple[str, str]]:
    """Session-Expires + Min-SE for a request (the initial INVITE, a refresh); Supported: timer is added by
    extensions.py with the other options."""
    value = SessionExpires(interval or settings.expires, refresher)
    return [("Session-Expires", str(value)), ("Min-SE", str(min_se_s or settings.min_se))]


def interval_too_small(headers: Headers, settings: SessionTimerSettings) -> bool:
    """9: a request whose Session-Expires is below our Min-SE gets 422 - only when its sender knows the
    extension (a UAC without Supported: timer cannot act on a 422; its interval is raised instead)."""
    if not settings.enabled:
        return False
    se = session_expires(headers)
    return se is not None and se.interval < settings.min_se and has_option(headers, TIMER)


def uas_negotiate(request: Headers, settings: SessionTimerSettings,
                  current: Negotiated | None) -> tuple[Negotiated, list[tuple[str, str]]] | None:
    """9: our answer to an INVITE / UPDATE (initial or a refresh): the timer now in force and the headers for
    our 2xx. None when no timer applies (disabled, and none running)."""
    if not settings.enabled:
        return None
    se = session_expires(request)
    peer_knows = has_option(request, TIMER)
    asked_min = min_se(request) or 0
    if se is None:
        interval = current.interval if current else max(settings.expires, asked_min)
        we_refresh = current.we_refresh if current and peer_knows else True
    else:
        interval = max(min(se.interval, settings.expires), asked_min, settings.min_se)
        if peer_knows:
            interval = min(interval, se.interval)  # a UAS may lower the interval, never raise it
        if se.refresher == "uac":
            we_refresh = False
        elif se.refresher == "uas":
            we_refresh = True
        else:
            we_refresh = current.we_refresh if current else True
    if not peer_knows:
        we_refresh = True  # 9: a UAC that does not know the extension cannot be the refresher
    headers = [("Session-Expires", str(SessionExpires(interval, "uas" if we_refresh else "uac")))]
    if peer_knows:
        headers.append(("Require", TIMER))
    return Negotiated(interval, we_refresh), headers


def uac_negotiate(response: Headers, requested: int, settings: SessionTimerSettings) -> Negotiated | None:
    """7.2: the timer after a 2xx to our INVITE / UPDATE. Without Session-Expires in it the peer does not do
    session timers: we refresh ourselves at the interval we asked for (it is for our own benefit)."""
    se = session_expires(response)
    if se is None:
        return Negotiated(requested, True) if settings.enabled else None
    return Negotiated(se.interval, se.refresher != "uas")


def expiry_delay(negotiated: Negotiated) -> float:
    """10: the non-refresher ends the session min(32, interval/3) s before expiry; the refresher at expiry
    (its refresh transaction, sent at half the interval, has failed by then)."""
    if negotiated.we_refresh:
        return float(negotiated.interval)
    return negotiated.interval - min(32.0, negotiated.interval / 3)


def refresh_delay(negotiated: Negotiated) -> float:
    """10: the refresher refreshes at half the interval."""
    return negotiated.interval / 2
