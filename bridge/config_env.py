"""Environment-variable overrides of config keys: ``MATRIX_SIP_BRIDGE_<SECTION>_<KEY>``.

As in mautrix bridges, a variable names a key path with ``_`` between the parts, upper-cased:
``MATRIX_SIP_BRIDGE_APPSERVICE_AS_TOKEN`` sets ``appservice.as_token``, ``MATRIX_SIP_BRIDGE_SIP_TRUNK_AUTH_PASSWORD``
sets ``sip.trunk.auth_password``. Key names contain ``_`` themselves, so the path is resolved against the example
config's key tree (longest key first), never guessed. Secrets can then live only in the environment (e.g. a
Docker/systemd secret), with the file's value left empty.

Values are read as YAML (``5060`` is a number, ``true`` a boolean, ``[a, b]`` a list, ``{"*": user}`` a mapping),
except where the example's value is a string or the key is a secret (``*password``, ``*token``, ...): there the
variable's text is taken as it is, so a token such as ``0123`` or ``yes`` stays a string. For keys that are unset
(null) in the example, only numbers, booleans and ``{...}``/``[...]`` are read as YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml

PREFIX = "MATRIX_SIP_BRIDGE_"
# always text, whatever they look like (a password "0123" is not the number 123)
SECRET_SUFFIXES = ("password", "token", "secret", "credential")


class EnvOverrideError(ValueError):
    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def example_tree() -> dict[str, Any]:
    """The packaged example config: the schema that variable names are resolved against."""
    text = resources.files("bridge").joinpath("example-config.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def resolve(name: str, schema: Mapping[str, Any]) -> tuple[list[str], Any]:
    """Key path for a variable name without the prefix (``SIP_TRUNK_PROXY`` -> ["sip", "trunk", "proxy"]),
    and the example's value at that path. Raises KeyError when no key path spells the name."""
    rest = name.lower()
    node: Any = schema
    path: list[str] = []
    while True:
        if not isinstance(node, Mapping):
            raise KeyError(name)
        for key in sorted((str(k) for k in node), key=len, reverse=True):
            if rest == key:
                return [*path, key], node[key]
            if rest.startswith(key + "_") and isinstance(node[key], Mapping):
                path.append(key)
                node = node[key]
                rest = rest[len(key) + 1:]
                break
        else:
            raise KeyError(name)


def apply_env_overrides(data: Any, environ: Mapping[str, str], schema: Mapping[str, Any] | None = None) -> Any:
    """A copy of the parsed config file ``data`` with every ``MATRIX_SIP_BRIDGE_*`` variable applied."""
    names = sorted(n for n in environ if n.startswith(PREFIX))
    if not names:
        return data
    tree = schema if schema is not None else example_tree()
    out: dict[str, Any] = _copy(data) if isinstance(data, Mapping) else {}
    for variable in names:
        try:
            path, example_value = resolve(variable[len(PREFIX):], tree)
        except KeyError:
            raise EnvOverrideError(variable, "names no config key (see example-config.yaml; e.g. "
                                             f"{PREFIX}HOMESERVER_ADDRESS for homeserver.address)") from None
        value = _value(variable, path[-1], environ[variable], example_value)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _value(variable: str, key: str, raw: str, example_value: Any) -> Any:
    if isinstance(example_value, str) or key.endswith(SECRET_SUFFIXES):
        return raw
    if example_value is None and not raw.lstrip().startswith(("{", "[")):
        # unset in the example (type unknown): numbers and booleans as YAML, anything else as written
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw
        return value if isinstance(value, bool | int | float) else raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise EnvOverrideError(variable, "is not a valid YAML value") from None


def _copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}
