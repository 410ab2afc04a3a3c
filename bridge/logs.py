"""Logging set-up: plain text or JSON lines; call-scoped loggers carry the Matrix call_id and SIP Call-ID."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.config import LoggingConfig

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


_NOISY = ("aioice", "aiortc", "aiohttp.access", "mautrix", "aiosqlite")


def setup_logging(level: str = "INFO", fmt: str = "text", *, loggers: Mapping[str, str] | None = None,
                  file: str | None = None, file_max_bytes: int = 10 * 1024 * 1024, file_backups: int = 5) -> None:
    """Log to stderr and, with ``file``, to a rotating file too; ``loggers`` sets levels per logger name.

    Calling it again replaces what an earlier call installed (the file handler is closed)."""
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(
            file, maxBytes=file_max_bytes, backupCount=file_backups, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, logging.FileHandler):
            old.close()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    # Third-party chatter at INFO would drown call logs (unless named in `loggers`).
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for name, name_level in (loggers or {}).items():
        logging.getLogger(name).setLevel(name_level.upper())


def configure_logging(cfg: LoggingConfig) -> None:
    """:func:`setup_logging` from the config's ``logging`` section."""
    setup_logging(cfg.level, cfg.format, loggers=cfg.loggers, file=cfg.file,
                  file_max_bytes=max(1, int(cfg.file_max_mb * 1024 * 1024)), file_backups=cfg.file_backups)
