"""The public surface is pinned: adding or removing a public name is a deliberate change here."""

from __future__ import annotations

import builtins
import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any

import trio

import gossipkv
import gossipkv.testing

PUBLIC = {
    "histogram_quantile",
    "Change", "Client", "ClusterNotReady", "ConfigError", "ConnectionClosed", "DataDirError",
    "DecodeError", "GetResult", "GossipConfig", "GossipKVError", "HandshakeError",
    "InvalidContext", "InvalidKey", "KVConfig", "KeyTooLarge", "MemberView", "MembershipEvent",
    "NetworkLimits", "Node", "NodeClosedError", "NodeConfig", "NodeStatistics", "InvalidArgument",
    "PROTOCOL_VERSION", "PutResult", "QuorumNotReached", "RecordTooLarge", "RemoteError",
    "Statistic", "StorageError", "StorageLimits", "TLSConfig", "TooManySiblings", "TransportError", "Unavailable",
    "ValueNotEncodable", "ValueTooDeep", "ValueTooLarge", "__version__",
    "create_ca", "issue_certificate", "open_client", "open_node",
}  # fmt: skip

TESTING = {
    "EchoClient", "SimCluster", "SimNetwork", "SimNetworkStatistics", "open_echo_client",
    "open_echo_server_process", "open_sim_cluster", "serve_echo",
}  # fmt: skip


def test_gossipkv_public_names_are_pinned() -> None:
    assert set(gossipkv.__all__) == PUBLIC
    assert all(hasattr(gossipkv, name) for name in PUBLIC)


def test_testing_public_names_are_pinned() -> None:
    public = {n for n in dir(gossipkv.testing) if not n.startswith("_")}
    assert public == TESTING


def test_every_public_error_is_a_gossipkv_error() -> None:
    for name in PUBLIC:
        obj = getattr(gossipkv, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, gossipkv.GossipKVError), name


def test_public_callables_and_classes_are_documented() -> None:
    for name in PUBLIC - {"PROTOCOL_VERSION", "__version__"}:
        doc = (getattr(gossipkv, name).__doc__ or "").strip()
        # A dataclass without a docstring gets its signature as __doc__: that does not count.
        assert doc and not doc.startswith(f"{name}("), f"{name} has no docstring"


# --- docstring sections -------------------------------------------------------------------------
# Google style as in trio: ``Args:`` names every parameter, ``Attributes:`` every field of a data
# type, ``Raises:`` appears on every coroutine that can fail with a gossipkv error.

# Classes made by a factory: their docstring points there instead of documenting the constructor.
MADE_BY = {
    "gossipkv.Client": "open_client",
    "gossipkv.testing.EchoClient": "open_echo_client",
    "gossipkv.testing.SimCluster": "open_sim_cluster",
}

# Coroutines (and async context managers) that raise no gossipkv error of their own.
RAISE_NOTHING = {
    "gossipkv.Client.aclose",  # closing always closes
    "gossipkv.Node.events",  # a subscription works before the node runs, ends when it stops
    "gossipkv.Node.watch",
    "gossipkv.Node.wait_until",  # only the caller's predicate can raise
    "gossipkv.testing.SimCluster.wait_until",
}

NOT_DOCUMENTED_PARAMETERS = {"self", "cls", "task_status"}  # task_status: trio's convention


def _public_objects() -> Iterator[tuple[str, Any]]:
    for name in sorted(PUBLIC - {"PROTOCOL_VERSION", "__version__"}):
        yield f"gossipkv.{name}", getattr(gossipkv, name)
    for name in sorted(TESTING):
        yield f"gossipkv.testing.{name}", getattr(gossipkv.testing, name)


def _public_callables() -> Iterator[tuple[str, Any]]:
    """Every public function and class, and the public methods and properties of the classes
    (those a class inherits from gossipkv's own bases too: ``Client`` gets its calls from
    three)."""
    for qualname, obj in _public_objects():
        yield qualname, obj
        if not isinstance(obj, type) or issubclass(obj, BaseException):
            continue
        seen: set[str] = set()
        own = [k for k in obj.__mro__ if k.__module__.split(".")[0] == "gossipkv"]
        for name, attr in [item for klass in own for item in vars(klass).items()]:
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(attr, property):
                yield f"{qualname}.{name}", attr.fget
            elif isinstance(attr, (staticmethod, classmethod)):
                yield f"{qualname}.{name}", attr.__func__
            elif inspect.isfunction(attr):
                yield f"{qualname}.{name}", attr


def _section(doc: str, title: str) -> list[str] | None:
    """The entries of a ``Title:`` section: one string per item, continuation lines joined."""
    lines = doc.splitlines()
    if f"{title}:" not in (line.strip() for line in lines):
        return None
    start = next(i for i, line in enumerate(lines) if line.strip() == f"{title}:") + 1
    body: list[str] = []
    for line in lines[start:]:
        if line.strip() and not line.startswith(" "):
            break  # the next section or paragraph
        body.append(line)
    indents = [len(line) - len(line.lstrip()) for line in body if line.strip()]
    if not indents:
        return []
    base = min(indents)
    entries: list[str] = []
    for line in body:
        if not line.strip():
            continue
        starts_item = len(line) - len(line.lstrip()) == base and (not entries or ":" in entries[-1])
        if starts_item:
            entries.append(line.strip())
        else:
            entries[-1] += " " + line.strip()
    return entries


def _names(entries: list[str]) -> set[str]:
    """``"a, b: text"`` -> ``{"a", "b"}`` (``*args`` and ``**kwargs`` without their stars)."""
    out: set[str] = set()
    for entry in entries:
        head = entry.split(":", 1)[0]
        out.update(part.strip().lstrip("*") for part in head.split(","))
    return out


def _parameters(obj: Any) -> list[str]:
    try:
        signature = inspect.signature(obj)
    except ValueError:  # some builtins have no signature
        return []
    return [p for p in signature.parameters if p not in NOT_DOCUMENTED_PARAMETERS]


def _is_async(fn: Any) -> bool:
    wrapped = getattr(fn, "__wrapped__", None)  # @asynccontextmanager
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(wrapped)


def test_public_methods_and_properties_are_documented() -> None:
    missing = [q for q, fn in _public_callables() if not (inspect.getdoc(fn) or "").strip()]
    assert not missing, f"no docstring: {missing}"


def test_parameters_are_documented() -> None:
    problems: list[str] = []
    for qualname, obj in _public_callables():
        doc = inspect.getdoc(obj) or ""
        if isinstance(obj, type) and issubclass(obj, BaseException):
            # An error's constructor arguments are read back as attributes.
            if "__init__" in vars(obj) and _section(doc, "Attributes") is None:
                problems.append(f"{qualname}: no Attributes: section")
            continue
        if qualname in MADE_BY:
            if MADE_BY[qualname] not in doc:
                problems.append(f"{qualname}: does not say it is made by {MADE_BY[qualname]}")
            continue
        params = _parameters(obj)
        if not params:
            continue
        title = "Attributes" if dataclasses.is_dataclass(obj) else "Args"
        entries = _section(doc, title)
        if entries is None:
            problems.append(f"{qualname}: no {title}: section")
            continue
        undocumented = set(params) - _names(entries)
        if undocumented:
            problems.append(f"{qualname}: {title}: misses {sorted(undocumented)}")
    assert not problems, "\n".join(problems)


def test_coroutines_document_what_they_raise() -> None:
    coroutines = {q: fn for q, fn in _public_callables() if _is_async(fn)}
    stale = RAISE_NOTHING - set(coroutines)
    assert not stale, f"not public coroutines: {stale}"
    missing = [
        q
        for q, fn in coroutines.items()
        if q not in RAISE_NOTHING and _section(inspect.getdoc(fn) or "", "Raises") is None
    ]
    assert not missing, f"no Raises: section: {missing}"


def test_raises_sections_name_real_exceptions() -> None:
    namespaces = [vars(gossipkv), vars(builtins), vars(trio)]
    problems: list[str] = []
    for qualname, obj in _public_callables():
        entries = _section(inspect.getdoc(obj) or "", "Raises") or []
        for name in _names(entries):
            found = next((ns[name] for ns in namespaces if name in ns), None)
            if not (isinstance(found, type) and issubclass(found, BaseException)):
                problems.append(f"{qualname}: Raises: names {name!r}, which is not an exception")
    assert not problems, "\n".join(problems)
