"""Config file upgrades against the packaged example, like mautrix's config updater, but keeping the admin's file.

On start the bridge reads the admin's file with a comment-preserving YAML parser (ruamel.yaml) and:

1. migrates renamed keys (:data:`RENAMES`, ``"old.path": "new.path"``): the value moves to the new key and the old
   key goes (if the new key is already set, the old one is dropped and the change says so);
2. adds every key the example has and the file lacks, with the example's default value and the example's comment
   lines above it, at the example's position among the keys the file has;
3. keeps everything else as it was: the admin's values, order and comments, and keys the example does not know
   (validation rejects those afterwards, with the usual "unknown key" message).

A key validation requires (``homeserver.domain``: no default can be right) is never filled in; validation asks the
admin for it. Which keys those are is found by validating the example without the key, not listed here.
Recursion only descends into mappings that are non-empty in the example: a key whose example value is ``null`` or
``{}`` (``bridge.permissions``, ``logging.loggers``) is a free-form mapping of the admin's and is never filled in.
So a key added to example-config.yaml later is picked up without code changes here; a key that is renamed needs
one line in :data:`RENAMES`.

The upgraded data always feeds validation (``load_config``), so ``--check-config`` and ``-g`` accept an old file.
Only a start writes it back (:func:`write_upgrade`; ``-g`` too, for a file without the ``provisioning`` block, so it
can fill that block's secret), atomically (temporary file in the same directory, then
rename, keeping the file's mode), and only when something changed; the previous text is kept as ``<file>.bak``.
Values from ``MATRIX_SIP_BRIDGE_*`` variables are applied after this step, so they are never written to the file.
"""

from __future__ import annotations

import copy
import errno
import io
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, MarkedYAMLError
from ruamel.yaml.tokens import CommentToken

# Renamed keys, oldest first: "old.dotted.path" -> "new.dotted.path". Keep entries for at least one release after
# the rename so admins who skip a version are migrated too.
RENAMES: dict[str, str] = {}


class UpgradeError(ValueError):
    """The file could not be parsed; the text says where."""


@dataclass
class Upgrade:
    """The result of upgrading one config text."""

    data: Any  # plain dicts/lists, as yaml.safe_load would give, for validation
    text: str  # the upgraded file text (== the input when nothing changed)
    changes: list[str] = field(default_factory=list)  # one human-readable line per change

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def _yaml() -> YAML:
    y = YAML()  # round-trip: keeps comments, key order, quoting and flow style
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap long values
    y.indent(mapping=2, sequence=4, offset=2)  # the example's style
    y.representer.add_representer(
        type(None), lambda r, _d: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def example_text() -> str:
    return resources.files("bridge").joinpath("example-config.yaml").read_text(encoding="utf-8")


def _load(text: str, name: str) -> Any:
    try:
        doc = _yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UpgradeError(f"{name} is not valid YAML{where}: {e.problem}") from None
    except Exception as e:  # ruamel raises a few unmarked errors too (e.g. duplicate keys)
        raise UpgradeError(f"{name} is not valid YAML: {e}") from None
    return CommentedMap() if doc is None else doc


def _dump(doc: Any) -> str:
    out = io.StringIO()
    _yaml().dump(doc, out)
    return out.getvalue()


def upgrade_text(text: str, example: str | None = None, renames: dict[str, str] | None = None,
                 name: str = "the config file") -> Upgrade:
    """Upgrade one config text against the example text (default: the packaged example-config.yaml)."""
    doc = _load(text, name)
    if not isinstance(doc, CommentedMap):  # validation reports "must be a mapping"
        return Upgrade(data=_plain(doc), text=text)
    example_lines = (example if example is not None else example_text()).splitlines()
    ex = _load("\n".join(example_lines) + "\n", "example-config.yaml")
    changes: list[str] = []
    for old, new in (RENAMES if renames is None else renames).items():
        _rename(doc, ex, example_lines, old, new, changes)
    _fill(doc, ex, example_lines, "", changes, None, _plain(ex))
    new_text = _dump(doc) if changes else text
    return Upgrade(data=_plain(doc), text=new_text, changes=changes)


def upgrade_file(path: Path, renames: dict[str, str] | None = None) -> Upgrade:
    """Read and upgrade ``path`` in memory. Raises OSError, UpgradeError."""
    return upgrade_text(path.read_text(encoding="utf-8"), renames=renames, name=str(path))


def write_upgrade(path: Path, upgrade: Upgrade) -> Path | None:
    """Write ``upgrade.text`` over ``path`` atomically, keeping the old text as ``<path>.bak``; returns the backup.

    A symlinked config is written through the link. Raises OSError when the file or its directory cannot be
    written (the caller then runs with the in-memory upgrade). A file bind-mounted on its own (Docker) cannot be
    renamed over (EBUSY): it is rewritten in place instead.
    """
    target = Path(os.path.realpath(path))
    old = target.read_bytes()
    mode = target.stat().st_mode & 0o7777
    if not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, "the file is read-only", str(target))
    backup = target.with_name(target.name + ".bak")
    _write_atomic(backup, old, mode)
    try:
        _write_atomic(target, upgrade.text.encode("utf-8"), mode)
    except OSError as e:
        if e.errno not in (errno.EBUSY, errno.EXDEV):
            raise
        with target.open("r+b") as f:  # bind-mounted single file: rename is impossible, overwrite in place
            f.write(upgrade.text.encode("utf-8"))
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
    return backup


def _write_atomic(target: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)  # the config holds tokens: the copy is never more readable than the original
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# --------------------------------------------------------------------------------------------- renames


def _rename(doc: CommentedMap, ex: CommentedMap, lines: list[str], old: str, new: str, changes: list[str]) -> None:
    old_parts, new_parts = old.split("."), new.split(".")
    old_parent = _get(doc, old_parts[:-1])
    if not isinstance(old_parent, CommentedMap) or old_parts[-1] not in old_parent:
        return
    parents: list[tuple[Any, Any]] = []  # (mapping, key in it) down to the new key's parent
    node: Any = doc
    ex_node: Any = ex
    for part in new_parts[:-1]:
        child = node.get(part)
        if child is None:
            if part in node:
                return  # "section: null" where a mapping is needed: validation names it
            child = CommentedMap()
            _place(node, part, child, [], ex_node if isinstance(ex_node, CommentedMap) else None)
        if not isinstance(child, CommentedMap):
            return  # validation will name the odd value
        parents.append((node, part))
        node = child
        ex_node = ex_node.get(part) if isinstance(ex_node, CommentedMap) else None
    value, comment, eol = _take(old_parent, old_parts[-1])
    if new_parts[-1] in node:
        changes.append(f"removed {old} (renamed to {new}, which is already set)")
        return
    _place(node, new_parts[-1], value, comment, ex_node if isinstance(ex_node, CommentedMap) else None,
           parents[-1] if parents else None)
    if eol is not None and not isinstance(value, CommentedMap | CommentedSeq):
        # keep the comment's distance from the value: shift it by the difference in key length
        column = max(0, eol.column + len(new_parts[-1]) - len(old_parts[-1]))
        eol = CommentToken(eol.value, CommentMark(column), None)
        _, rest = _split_tail(node, new_parts[-1])
        _set_tail(node, new_parts[-1], _join(eol, rest))
    changes.append(f"moved {old} to {new}")


def _get(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts:
        if not isinstance(node, CommentedMap) or part not in node:
            return None
        node = node[part]
    return node


def _take(node: CommentedMap, key: Any) -> tuple[Any, list[str], CommentToken | None]:
    """Remove ``key``; return its value, the comment lines above it and its end-of-line comment. Comment lines that
    followed its value (they belong to the next key) stay in place."""
    keys = list(node)
    index = keys.index(key)
    comment: list[str] = []
    before = node.ca.items.get(key, [None, None])[1]
    if index > 0:
        keep, above = _split_tail(node, keys[index - 1])
        comment = _comment_lines(above)
    if isinstance(before, list):
        comment += [line for token in before if isinstance(token, CommentToken)
                    for line in _comment_lines(token.value)]
    eol, after = _split_tail(node, key)
    value = node[key]
    del node[key]
    if index > 0:
        _set_tail(node, keys[index - 1], _join(keep, after))
    return value, comment, eol


def _comment_lines(text: str | None) -> list[str]:
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith("#"):
            out.append(line[1:].removeprefix(" "))
    return out


def _join(keep: CommentToken | None, rest: str | None) -> CommentToken | str | None:
    if keep is None or rest is None:
        return rest if rest is not None else keep
    return CommentToken(keep.value + rest, keep.start_mark, None)


# --------------------------------------------------------------------------------------------- missing keys


def _fill(doc: CommentedMap, ex: CommentedMap, lines: list[str], path: str, changes: list[str],
          parent: tuple[Any, Any] | None, root: dict[str, Any]) -> None:
    for key in ex:
        dotted = f"{path}.{key}" if path else str(key)
        ex_value = ex[key]
        if key in doc:
            value = doc[key]
            if isinstance(ex_value, CommentedMap) and ex_value:
                if value is None:  # an empty section ("logging:") is filled like a missing one
                    doc[key] = _fresh(ex_value)
                    _adopt_first_comment(doc, key)
                    changes.append(f"added {dotted} (the example's keys)")
                elif isinstance(value, CommentedMap):
                    _fill(value, ex_value, lines, dotted, changes, (doc, key), root)
            continue
        required = _required(root, dotted)
        if required == dotted:
            continue  # a key without a possible default (homeserver.domain): validation asks the admin for it
        if required:  # a section holding such a key: added key by key, without it
            _place(doc, key, CommentedMap(), _comment_above(ex, key, lines), ex, parent)
            _fill(doc[key], ex_value, lines, dotted, changes, (doc, key), root)
            continue
        _place(doc, key, _fresh(ex_value), _comment_above(ex, key, lines), ex, parent)
        changes.append(f"added {dotted}" + ("" if isinstance(ex_value, CommentedMap)
                                            else f" = {_short(ex_value)}"))


def _required(example_root: dict[str, Any], dotted: str) -> str | None:
    """The key validation requires (no default can be right, e.g. homeserver.domain) if it is ``dotted`` or inside
    it: found by validating the example without ``dotted``, so a required key added later needs no change here."""
    from bridge.config import ConfigError, parse_config  # config imports this module

    data = copy.deepcopy(example_root)
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    del node[last]
    try:
        parse_config(data)
    except ConfigError as e:
        if e.problem == "is required" and (e.key == dotted or e.key.startswith(dotted + ".")):
            return e.key
    return None


def _place(doc: CommentedMap, key: Any, value: Any, comment: list[str], ex: CommentedMap | None,
           parent: tuple[Any, Any] | None = None) -> None:
    """Insert ``key`` into ``doc`` after the nearest preceding example key that ``doc`` has (no example: at the end),
    with ``comment`` lines above it."""
    if ex is not None and key in ex:
        ex_keys = list(ex)
        at = ex_keys.index(key)
        prev = next((k for k in reversed(ex_keys[:at]) if k in doc), None)
    else:
        prev = list(doc)[-1] if len(doc) else None
    if prev is None:
        if len(doc) and parent is not None:
            # The comment above the mapping's first key is stored on the parent; it belongs to that key.
            first = next(iter(doc))
            p_items = parent[0].ca.items.get(parent[1])
            tokens = p_items[3] if p_items and len(p_items) > 3 else None
            if tokens:
                doc.ca.items.setdefault(first, [None, None, None, None])[1] = tokens
                p_items[3] = None
                if doc.ca.comment:
                    doc.ca.comment[1] = None
        doc.insert(0, key, value)
        _set_tail(doc, key, None)
    else:
        keep, rest = _split_tail(doc, prev)
        if parent is None and rest is not None and not rest.strip():
            # blank lines between top-level sections stay where they are
            _set_tail(doc, prev, _join(keep, rest))
            rest = None
        else:
            _set_tail(doc, prev, keep)
        doc.insert(list(doc).index(prev) + 1, key, value)
        _set_tail(doc, key, rest)
    _adopt_first_comment(doc, key)
    if comment:
        indent = ex.lc.key(key)[1] if ex is not None and key in ex else 0
        if ex is None or key not in ex:
            indent = _indent_of(doc)
        doc.yaml_set_comment_before_after_key(key, before="\n".join(comment), indent=indent)


def _adopt_first_comment(doc: CommentedMap, key: Any) -> None:
    """A copied mapping's comment above its first key must sit on the parent's entry to be written."""
    value = doc[key]
    if isinstance(value, CommentedMap) and value.ca.comment and value.ca.comment[1]:
        doc.ca.items.setdefault(key, [None, None, None, None])[3] = value.ca.comment[1]


def _indent_of(doc: CommentedMap) -> int:
    for k in doc:
        try:
            return int(doc.lc.key(k)[1])
        except (KeyError, TypeError, AttributeError):
            continue
    return 0


def _fresh(value: Any) -> Any:
    """A copy of an example value without the comment that trails it in the example (it belongs to the example's
    next key, which is not necessarily the next key in the admin's file)."""
    out = copy.deepcopy(value)
    if isinstance(out, CommentedMap) and out:
        _set_tail(out, list(out)[-1], None)
    return out


def _comment_above(ex: CommentedMap, key: Any, lines: list[str]) -> list[str]:
    """The example's comment lines directly above ``key`` (text, without '#'), read from the example's text."""
    line = ex.lc.key(key)[0]
    out: list[str] = []
    i = line - 1
    while i >= 0 and lines[i].lstrip().startswith("#"):
        out.insert(0, lines[i].lstrip()[1:].removeprefix(" "))
        i -= 1
    if i < 0:
        return []  # the file's header comment, not this key's
    return out


def _short(value: Any) -> str:
    text = repr(_plain(value))
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------- comment tails
# ruamel.yaml stores the comment lines between two keys as the *trailing* comment of whatever node ends just before
# the second key (for a nested mapping: its deepest last scalar). Inserting or removing a key must move those
# lines so they stay above the key they describe.


def _tail_slot(node: Any, key: Any) -> tuple[list[Any], int] | None:
    value = node[key]
    if isinstance(value, CommentedMap) and value and not value.fa.flow_style():
        return _tail_slot(value, list(value)[-1])
    if isinstance(value, CommentedSeq) and value and not value.fa.flow_style():
        last = len(value) - 1
        if isinstance(value[last], CommentedMap | CommentedSeq) and value[last] \
                and not value[last].fa.flow_style():
            return _tail_slot(value, last)
        items = value.ca.items.setdefault(last, [None, None, None, None])
        return items, 0
    if isinstance(node, CommentedSeq):
        return node.ca.items.setdefault(key, [None, None, None, None]), 0
    items = node.ca.items.setdefault(key, [None, None, None, None])
    return items, 2


def _split_tail(node: Any, key: Any) -> tuple[CommentToken | None, str | None]:
    """(what stays with ``key``: its end-of-line comment; the following comment lines, as text)."""
    slot = _tail_slot(node, key)
    if slot is None:
        return None, None
    items, i = slot
    token = items[i]
    if not isinstance(token, CommentToken):
        return token, None
    value: str = token.value
    first, sep, rest = value.partition("\n")
    if not rest:
        return token, None
    keep = CommentToken(first + sep, token.start_mark, None) if first.strip() else None
    return keep, rest


def _set_tail(node: Any, key: Any, tail: CommentToken | str | None) -> None:
    slot = _tail_slot(node, key)
    if slot is None:
        return
    items, i = slot
    if isinstance(tail, str):
        tail = CommentToken("\n" + tail, CommentMark(0), None)
    items[i] = tail


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str | int | float | bool) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)  # ruamel's quoted-string subclasses become plain str
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value
