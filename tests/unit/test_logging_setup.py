"""logging.loggers (per-logger levels) and logging.file (rotating file output) from the config to the handlers."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.config import ConfigError, load_config
from bridge.logs import configure_logging, setup_logging

EXAMPLE = Path(__file__).resolve().parents[2] / "bridge" / "example-config.yaml"
NAMES = ("bridge.sip", "bridge.sip.transport", "bridge.matrix", "aioice", "aiortc", "mautrix")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in NAMES}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def write_config(tmp_path: Path, logging_yaml: str) -> Path:
    text = EXAMPLE.read_text()
    start = text.index("\nlogging:\n")
    path = tmp_path / "etc" / "config.yaml"
    path.parent.mkdir()
    path.write_text(text[:start + 1] + "logging:\n" + logging_yaml)
    return path


def test_log_file_is_relative_to_the_config_directory_and_gets_per_logger_levels(tmp_path: Path) -> None:
    path = write_config(tmp_path, '  level: INFO\n  file: "logs/bridge.log"\n'
                                  '  loggers: {"bridge.sip": debug, "aioice": "INFO"}\n')
    cfg = load_config(path, {})
    assert cfg.logging.file == str((tmp_path / "etc" / "logs" / "bridge.log").resolve())
    assert cfg.logging.loggers == {"bridge.sip": "DEBUG", "aioice": "INFO"}
    configure_logging(cfg.logging)
    logging.getLogger("bridge.sip.transport").debug("sip detail %d", 1)  # a child of a DEBUG logger
    logging.getLogger("bridge.matrix").debug("matrix detail")  # root is INFO
    logging.getLogger("bridge.matrix").info("matrix info")
    logging.getLogger("aioice").info("aioice info")  # raised from the WARNING default by `loggers`
    logging.getLogger("aiortc").info("aiortc info")  # still quiet
    for handler in logging.getLogger().handlers:
        handler.flush()
    lines = [line.split(" ", 2)[2] for line in Path(cfg.logging.file or "").read_text().splitlines()]
    assert lines == ["DEBUG bridge.sip.transport: sip detail 1", "INFO bridge.matrix: matrix info",
                     "INFO aioice: aioice info"]


def test_log_file_rotates_and_uses_the_json_format(tmp_path: Path) -> None:
    log_file = tmp_path / "bridge.log"
    setup_logging("INFO", "json", file=str(log_file), file_max_bytes=400, file_backups=2)
    for i in range(20):
        logging.getLogger("bridge.test").info("line %d of a rotating log", i)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bridge.log", "bridge.log.1", "bridge.log.2"]
    last = [json.loads(line) for line in log_file.read_text().splitlines()][-1]
    assert last["msg"] == "line 19 of a rotating log" and last["logger"] == "bridge.test"


def test_setting_up_again_closes_the_previous_file(tmp_path: Path) -> None:
    setup_logging("INFO", file=str(tmp_path / "a.log"))
    first = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    setup_logging("INFO", file=str(tmp_path / "b.log"))
    assert first and first[0].stream is None  # closed
    assert len([h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]) == 1


@pytest.mark.parametrize(("yaml_text", "message"), [
    ('  loggers: {"bridge.sip": LOUD}\n',
     "config error: logging.loggers.bridge.sip: 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("  loggers: [bridge.sip]\n", 'config error: logging.loggers: must be a mapping like {"bridge.sip": DEBUG}'),
    ('  loggers: {"bad name": INFO}\n',
     "config error: logging.loggers.bad name: is not a logger name (e.g. bridge.sip, aiortc, mautrix)"),
    ("  file_backups: -1\n", "config error: logging.file_backups: -1 is too small (minimum 0)"),
])
def test_bad_logging_keys_name_the_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path, yaml_text), {})
    assert str(e.value) == message
