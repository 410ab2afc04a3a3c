"""``-g`` for the provisioning API's shared secret: replace a placeholder ``provisioning.shared_secret`` in the
config text with a random value, keeping every other byte of the file (comments, order, quoting)."""

from __future__ import annotations

import re

from bridge.config import PLACEHOLDER_TOKENS

_BLOCK_RE = re.compile(r"^provisioning:\s*(#.*)?$")
_KEY_RE = re.compile(r"^(\s+)shared_secret(\s*:\s*)([^#\n]*?)(\s*#.*)?(\r?\n)?$")


def replace_provisioning_secret(text: str, secret: str) -> str:
    """The text with the placeholder secret replaced; unchanged if the admin already set a real one, and unchanged
    for a file without the ``provisioning`` block (``-g`` upgrades such an older file first, see __main__)."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if _BLOCK_RE.match(ln)), None)
    if start is None:
        return text
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.strip() and not line.startswith((" ", "\t", "#")):
            break  # next top-level key: the block has no shared_secret line
        m = _KEY_RE.match(line)
        if m:
            if m.group(3).strip().strip("\"'") not in PLACEHOLDER_TOKENS:
                return text
            lines[i] = f'{m.group(1)}shared_secret{m.group(2)}"{secret}"{m.group(4) or ""}{m.group(5) or ""}'
            return "".join(lines)
    lines.insert(start + 1, f'  shared_secret: "{secret}"\n')
    return "".join(lines)
