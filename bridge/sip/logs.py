"""Per-call logging: every line about a call names its SIP Call-ID, in the text and as `extra`.

Call-IDs and other remote text are data: they travel as `%s` arguments (never inside the format string, where a
`%` would break the line) and control characters are escaped so a CR/LF cannot forge a log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import Any

MAX_LOGGED_TEXT = 200  # remote text longer than this is cut: a 64 kB header must not become a 64 kB log line


def printable(text: object, limit: int = MAX_LOGGED_TEXT) -> str:
    """`text` safe for one log line: control and non-printable characters escaped, at most `limit` chars."""
    s = text if isinstance(text, str) else str(text)
    if len(s) > limit:
        s = s[:limit] + "…"
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


class CallLog(logging.LoggerAdapter):
    """Prefixes messages with `[call-id]` and adds `call_id` (and any other context) to each record."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs

    def log(self, level: int, msg: Any, *args: Any, **kw: Any) -> None:
        kwargs: MutableMapping[str, Any] = kw
        if self.isEnabledFor(level):
            msg, kwargs = self.process(msg, kwargs)
            kwargs.setdefault("stacklevel", 1)
            kwargs["stacklevel"] += 1
            fmt, fargs = prefixed("[%s] ", (printable(kwargs["extra"].get("call_id", "-")),), msg, args)
            self.logger.log(level, fmt, *fargs, **kwargs)


def prefixed(prefix: str, prefix_args: tuple[Any, ...], msg: Any, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """A prefix format plus its args in front of a caller's (msg, args), without ever formatting data into msg.

    A message logged without args is never %-formatted by logging, so its own `%` must be escaped once it gets
    args (the prefix's)."""
    text = str(msg)
    if not args:
        text = text.replace("%", "%%")
    elif len(args) == 1 and isinstance(args[0], dict) and args[0]:
        # logging's mapping form (`"%(x)s", {"x": ...}`) cannot take positional prefix args: format it here
        try:
            text = text % args[0]
        except (TypeError, ValueError, KeyError):
            text = f"{text} {args[0]!r}"
        text = text.replace("%", "%%")
        args = ()
    return prefix + text, (*prefix_args, *args)


def call_log(logger: logging.Logger, call_id: str, **context: Any) -> CallLog:
    return CallLog(logger, {"call_id": call_id, **context})


class RateLimitedLog:
    """At most one line per `interval` seconds for a recurring event, with how many were folded into it."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, level: int = logging.WARNING) -> None:
        self._logger = logger
        self._interval = interval
        self._level = level
        self._next = 0.0
        self.suppressed = 0
        self.total = 0

    def __call__(self, msg: str, *args: Any) -> None:
        """`msg` is a constant format string; remote text goes in `args` (printable() it first)."""
        self.total += 1
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return
        self._next = now + self._interval
        folded, self.suppressed = self.suppressed, 0
        self._logger.log(self._level, msg + " (%d more like it since the last such line)", *args, folded,
                         stacklevel=2)


class LogBudget:
    """A token bucket for log lines about individual bad packets: a burst of `burst` lines, then `per_second`;
    what is over budget is counted and reported in one line when the budget allows again. A flood of garbage
    must not become a flood of log lines (disk, CPU), yet the first bad packets of an incident are all logged."""

    def __init__(self, logger: logging.Logger, burst: int = 200, per_second: float = 20.0) -> None:
        self._logger = logger
        self._burst = float(burst)
        self._rate = per_second
        self._tokens = float(burst)
        self._last = time.monotonic()
        self.suppressed = 0

    def log(self, level: int, msg: str, *args: Any) -> None:
        """`msg` is a constant format string; remote text goes in `args`."""
        if not self._logger.isEnabledFor(level):
            return
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            self.suppressed += 1
            return
        self._tokens -= 1
        if self.suppressed:
            folded, self.suppressed = self.suppressed, 0
            self._logger.warning("%d log lines about bad SIP packets suppressed (over %d/s)", folded, int(self._rate),
                                 stacklevel=2)
        self._logger.log(level, msg, *args, stacklevel=2)
