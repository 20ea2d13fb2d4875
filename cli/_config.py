"""``gossipkv peer --config FILE.toml``: a peer's settings in one file (standard ``tomllib``).

Top-level keys are the ``peer`` command's options, spelt with ``_`` for ``-`` (``data_dir``,
``seed`` as a list); the tables ``[gossip]``, ``[kv]``, ``[limits]`` and ``[storage_limits]``
hold the fields of :class:`gossipkv.GossipConfig`, :class:`gossipkv.KVConfig`,
:class:`gossipkv.NetworkLimits` and :class:`gossipkv.StorageLimits`. A flag given on the command
line (or by its environment variable) overrides the file, and the file overrides the defaults.
Anything the file gets wrong (bad TOML, an unknown key, a value of the wrong type) is one
:class:`ConfigFileError` line naming the file and the key.

Imports nothing heavy at module level: ``gossipkv`` is imported where the sections are checked.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The ``peer`` options a file may set, with the Python type each must have.
PEER_KEYS: dict[str, tuple[type, ...]] = {
    "listen": (str,),
    "name": (str,),
    "seed": (list,),
    "data_dir": (str,),
    "cluster": (str,),
    "gossip_interval": (int, float),
    "remove_after": (int, float),
    "log_level": (str,),
    "tombstone_grace": (int, float, str),
    "replace": (str,),
    "tls_dir": (str,),
    "tls_name": (str,),
    "fsync": (str,),
    "metrics_listen": (str,),
}

#: Section name -> the public gossipkv class whose fields it holds.
SECTIONS = ("gossip", "kv", "limits", "storage_limits")

#: Files larger than this are refused before parsing (a config file is a few hundred bytes).
MAX_CONFIG_BYTES = 1 << 20


class ConfigFileError(Exception):
    """The configuration file cannot be used; the message is one line naming file and key."""


@dataclass(frozen=True)
class ConfigFile:
    """What a configuration file holds, checked: peer options and section fields."""

    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)


def _section_classes() -> dict[str, type]:
    import gossipkv

    return {
        "gossip": gossipkv.GossipConfig,
        "kv": gossipkv.KVConfig,
        "limits": gossipkv.NetworkLimits,
        "storage_limits": gossipkv.StorageLimits,
    }


def load(path: Path) -> ConfigFile:
    """Read and check ``path``.

    Raises:
      ConfigFileError: unreadable, too large, not TOML, an unknown key or a wrongly typed value.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigFileError(f"config {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"config {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigFileError(f"config {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config {path}: not valid TOML: {exc}") from None
    return check(doc, path)


def check(doc: dict[str, Any], path: Path | None = None) -> ConfigFile:
    """Check a parsed document (see the module docstring).

    Raises:
      ConfigFileError: an unknown key or a wrongly typed value.
    """
    where = f"config {path}" if path is not None else "config"
    options: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    classes = _section_classes()
    for key, value in doc.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigFileError(f"{where}: [{key}] must be a table")
            sections[key] = _check_section(where, key, value, classes[key])
        elif key in PEER_KEYS:
            options[key] = _check_option(where, key, value)
        else:
            known = (
                ", ".join(sorted(PEER_KEYS)) + "; tables " + ", ".join(f"[{s}]" for s in SECTIONS)
            )
            raise ConfigFileError(f"{where}: unknown key {key!r} (known: {known})")
    return ConfigFile(path, options, sections)


def _check_option(where: str, key: str, value: Any) -> Any:
    types = PEER_KEYS[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise ConfigFileError(f"{where}: {key} must be {_kind(types)}, got {value!r}")
    if key == "seed" and not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
        raise ConfigFileError(f'{where}: seed must be a list of "HOST:PORT" strings')
    if key == "tombstone_grace" and isinstance(value, str):
        if value != "inf":
            raise ConfigFileError(f'{where}: tombstone_grace must be seconds or "inf"')
        return math.inf
    return value


def _check_section(where: str, name: str, table: dict[str, Any], cls: type) -> dict[str, Any]:
    defaults = cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigFileError(
                f"{where}: unknown key {key!r} in [{name}] (known: {', '.join(sorted(fields))})"
            )
        default = getattr(defaults, key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if isinstance(value, str) and value == "inf":
                value, ok = math.inf, True
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ConfigFileError(
                f"{where}: [{name}] {key} must be {_kind((type(default),))}, got {value!r}"
            )
        out[key] = float(value) if isinstance(default, float) else value
    return out


def _kind(types: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        list: "a list",
        int: "an integer",
        float: "a number",
        bool: "true or false",
    }
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def build_section(config: ConfigFile, name: str, **overrides: Any) -> Any:
    """The ``name`` section's object: defaults, then the file's fields, then ``overrides``.

    Raises:
      ConfigFileError: the class refused a value (its own range checks).
    """
    cls = _section_classes()[name]
    values = {**config.sections.get(name, {}), **overrides}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        where = f"config {config.path}" if config.path is not None else "config"
        raise ConfigFileError(f"{where}: [{name}]: {exc}") from None


def plain(value: Any) -> Any:
    """A JSON-safe copy of a configuration value (``inf`` becomes the string ``"inf"``)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
