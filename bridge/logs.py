"""Logging set-up: plain text or JSON lines; call-scoped loggers carry the Matrix call_id and SIP Call-ID."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

from .sip.logs import prefixed, printable

_CALL_FIELDS = ("call_id", "sip_call_id")


class CallLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the call's IDs and puts them in the record for JSON output."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return msg, kwargs

    def log(self, level: int, msg: Any, *args: Any, **kw: Any) -> None:
        kwargs: MutableMapping[str, Any] = kw
        # the IDs (a SIP Call-ID is remote text) are arguments, never part of the format string
        if self.isEnabledFor(level):
            msg, kwargs = self.process(msg, kwargs)
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            extra = kwargs["extra"]
            fmt, fargs = prefixed("[call_id=%s sip_call_id=%s] ",
                                  (printable(extra.get("call_id", "-")), printable(extra.get("sip_call_id", "-"))),
                                  msg, args)
            self.logger.log(level, fmt, *fargs, **kwargs)

    def set_ids(self, **ids: str) -> None:
        self.extra = {**dict(self.extra or {}), **ids}


def call_logger(name: str, call_id: str, sip_call_id: str = "-") -> CallLogger:
    return CallLogger(logging.getLogger(name), {"call_id": call_id, "sip_call_id": sip_call_id})


class SafeFormatter(logging.Formatter):
    """Escapes control characters in the message so remote text can never start a forged log line
    (tracebacks, appended after the message, keep their newlines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message, limit=1 << 20)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _CALL_FIELDS:
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter at INFO would drown call logs.
    for noisy in ("aioice", "aiortc", "aiohttp.access", "mautrix", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
