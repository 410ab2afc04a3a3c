"""Write the demo's bridge config the way an admin would: copy bridge/example-config.yaml and change a few
values in place, so the comments stay and the file reads like a hand-edited config.

Values are written in YAML flow style (JSON is valid YAML). After editing, the text is parsed again and every
edited key is checked, so a change in the example's layout fails loudly instead of silently keeping a default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w-]*)\s*:(?P<rest>.*?)(?P<nl>\r?\n)?$")


class ConfigEditError(Exception):
    pass


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_noise(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def set_value(text: str, dotted_key: str, value: Any) -> str:
    """Replace the value of ``dotted_key`` (e.g. "sip.trunk.proxy") in YAML ``text``, dropping a block value's
    child lines; comments elsewhere are kept. Raises ConfigEditError if the key is not in the text."""
    wanted = dotted_key.split(".")
    lines = text.splitlines(keepends=True)
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        if _is_noise(line) or line.lstrip().startswith("- "):
            continue
        m = _KEY_LINE.match(line)
        if m is None:
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group("key")))
        if [key for _, key in stack] != wanted:
            continue
        # The old value may be a block (child mappings or "- " items on the following lines): drop it.
        end = i + 1
        while end < len(lines):
            nxt = lines[end]
            if _is_noise(nxt) or _indent(nxt) > indent or (_indent(nxt) == indent and nxt.lstrip().startswith("- ")):
                end += 1
                continue
            break
        while end > i + 1 and _is_noise(lines[end - 1]):
            end -= 1  # keep comments/blank lines that introduce the next key
        new = f"{m.group('indent')}{m.group('key')}: {json.dumps(value)}{m.group('nl') or ''}"
        return "".join([*lines[:i], new, *lines[end:]])
    raise ConfigEditError(f"key {dotted_key!r} not found in the config text")


def _lookup(data: Any, dotted_key: str) -> Any:
    for key in dotted_key.split("."):
        if not isinstance(data, dict) or key not in data:
            raise ConfigEditError(f"key {dotted_key!r} missing after editing")
        data = data[key]
    return data


def edit_config(text: str, values: Mapping[str, Any]) -> str:
    """Apply every ``dotted key -> value`` to ``text`` and check the parsed result holds exactly those values."""
    for key, value in values.items():
        text = set_value(text, key, value)
    parsed = yaml.safe_load(text)
    for key, value in values.items():
        got = _lookup(parsed, key)
        if got != value:
            raise ConfigEditError(f"{key}: wrote {value!r} but the file now says {got!r}")
    return text


def write_config(example: Path, target: Path, values: Mapping[str, Any]) -> Path:
    header = (f"# Demo config: {example.name} with the values below changed by scripts/demo.py\n"
              f"# ({', '.join(values)}).\n")
    target.write_text(header + edit_config(example.read_text(encoding="utf-8"), values), encoding="utf-8")
    return target


def update_config(path: Path, values: Mapping[str, Any]) -> None:
    path.write_text(edit_config(path.read_text(encoding="utf-8"), values), encoding="utf-8")
