"""The wire codec: the only module that imports cbor2.

It owns every limit on untrusted bytes (frame size, nesting depth, field types) and turns a
payload into a typed :class:`~gossipkv._messages.Envelope` or a :class:`DecodeError` with a reason;
nothing else in gossipkv ever sees raw CBOR. The schema is the messages' own annotations.
It also offers canonical encoding of stored values (equal objects give equal bytes).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import Any

import cbor2

from ._errors import DecodeError
from ._messages import (
    MAX_BATCH_OPS,
    MESSAGE_TYPES,
    BatchError,
    DigestEntry,
    Envelope,
    Kind,
    Message,
    ReplicaBatch,
    ReplicaBatchReply,
    ReplicaGet,
    ReplicaPut,
)

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
MAX_DEPTH = 64
FRAME_HEADER = 4  # 4-byte big-endian length prefix

#: Payloads up to this size are decoded without the cost check: at worst (tiny maps, about
#: 80 bytes of Python objects per byte of CBOR) one costs a few MiB, and all gossip is this small.
GUARD_THRESHOLD = 64 * 1024
#: Python memory a checked payload may decode into, per payload byte. Lists of small integers
#: take 8.4x their CBOR size and lists of JSON-like records 10-15x; adversarial shapes (empty
#: arrays and maps, tiny maps) up to about 80x. See ``decode_cost``.
DECODE_MEMORY_FACTOR = 16
#: ...plus this much, for the fixed costs of a payload just over the threshold.
DECODE_MEMORY_ALLOWANCE = 1024 * 1024

# ``where`` locates a field for error messages: a string, or ``(parent, name_or_index)`` built
# cheaply per field and only formatted into text when a DecodeError is raised.
_Where = Any
_Decoder = Callable[[Any, _Where], Any]
_Encoder = Callable[[Any], Any]


def _reject_tag(decoder: object, tag: object) -> object:
    raise DecodeError("bad_cbor", "CBOR tags are not allowed on the wire")


def _reject_semantic(decoder: Any, immutable: bool = False) -> Any:
    raise DecodeError("bad_cbor", "CBOR tags are not allowed on the wire")


# cbor2 decodes its built-in semantic tags (dates, bignums, sets, shared references 28/29...)
# without calling tag_hook; overriding them all keeps the wire to plain CBOR values, so no frame
# can decode into a cycle, a DAG far larger than itself, or a type another peer cannot re-encode.
_SEMANTIC_REJECTS = dict.fromkeys((*range(1024), 1004, 55799), _reject_semantic)


def _loads(data: bytes, max_depth: int = MAX_DEPTH) -> object:
    check_decode_cost(data)
    try:
        value = cast_object(
            cbor2.loads(
                data,
                max_depth=max_depth,
                allow_duplicate_keys=False,
                tag_hook=_reject_tag,
                semantic_decoders=_SEMANTIC_REJECTS,
                allow_indefinite=False,
            )
        )
        return value
    except DecodeError:
        raise
    except RecursionError as exc:
        raise DecodeError("too_deep", "frame nests too deeply") from exc
    except cbor2.CBORDecodeEOF as exc:
        raise DecodeError("truncated", f"truncated CBOR: {exc}") from exc
    except cbor2.CBORDecodeError as exc:
        text = str(exc)
        reason = "too_deep" if "depth" in text else "bad_cbor"
        raise DecodeError(reason, f"invalid CBOR: {text}") from exc
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise DecodeError("bad_cbor", f"invalid CBOR: {exc}") from exc


def cast_object(value: Any) -> object:
    """Narrow cbor2's ``Any`` to ``object`` (the one place ``Any`` leaves cbor2)."""
    result: object = value
    return result


# --- the decode cost guard --------------------------------------------------------------------
#
# cbor2 turns one byte into a Python object of up to ~230 bytes (0x80: an empty list, 0xa1 0x00
# 0x00: a one-entry dict), so an unchecked 16 MiB frame can decode into more than 1 GiB. A payload
# over GUARD_THRESHOLD is checked first: a count of byte classes bounds its decoded size at C
# speed; only when that bound is over the budget are the item heads walked (string and byte string
# contents skipped whole), stopping as soon as the estimate passes the budget. The estimate models
# CPython's object sizes (final objects plus the largest transient allocation); the unit tests hold
# it against tracemalloc over adversarial shapes, so it must stay an upper bound.


def decode_budget(size: int) -> int:
    """The most Python memory a checked payload of ``size`` bytes may decode into."""
    return DECODE_MEMORY_FACTOR * size + DECODE_MEMORY_ALLOWANCE


def _int_bytes(limit: int) -> int:
    """Size of an int object holding values below ``limit`` (small ints are shared: 0)."""
    return 28 if limit <= 1 << 30 else 32 if limit <= 1 << 60 else 36


def _list_capacities(limit: int) -> list[int]:
    """Slots CPython's ``list.append`` has allocated after 0..limit appends (3.11+ growth)."""
    caps, allocated = [0], 0
    for size in range(1, limit + 1):
        if size > allocated:
            allocated = (size + (size >> 3) + 6) & ~3
        caps.append(allocated)
    return caps


_SMALL_LIST_SLOTS = _list_capacities(64)


def _list_bytes(n: int) -> int:
    """A list cbor2 built by appending ``n`` items: its header and over-allocated slots."""
    if n < len(_SMALL_LIST_SLOTS):
        return 56 + 8 * _SMALL_LIST_SLOTS[n]
    return 56 + 8 * (n + (n >> 3) + 6)


def _dict_keys_bytes(log2: int) -> int:
    width = 1 if log2 < 8 else 2 if log2 < 16 else 4 if log2 < 32 else 8
    return 32 + (width << log2) + ((2 << log2) // 3) * 24


def _dict_bytes(n: int) -> tuple[int, int]:
    """A dict built by inserting ``n`` entries (general entries, an upper bound for text keys),
    and the table its last resize freed (both exist during that resize)."""
    if n == 0:
        return 64, 0
    log2, previous = 3, 0
    while n > (2 << log2) // 3:
        previous = _dict_keys_bytes(log2)
        log2 = (3 * ((2 << log2) // 3) - 1).bit_length()
    return 64 + _dict_keys_bytes(log2), previous


# Per initial byte: how many bytes the head (with its argument or inline content) takes, and the
# bytes its object costs; step 0 marks the heads handled one by one (_SPECIAL says how).
_STOP, _TEXT_INLINE, _BYTES_ARG, _TEXT_ARG, _ARRAY_ARG, _MAP_ARG = range(6)


def _head_tables() -> tuple[list[int], list[int], list[int]]:
    step, cost, special = [0] * 256, [0] * 256, [_STOP] * 256
    arg_len = {24: 1, 25: 2, 26: 4, 27: 8}
    for ib in range(256):
        major, info = ib >> 5, ib & 0x1F
        if info > 27:
            continue  # reserved or indefinite length: cbor2 (allow_indefinite=False) raises
        width = arg_len.get(info, 0)
        inline = info if info < 24 else -1
        if major in (0, 1):
            step[ib] = 1 + width
            biggest = 1 << (8 * width) if width else 24
            shared = biggest <= 257 if major == 0 else inline != -1 and inline <= 4
            cost[ib] = 0 if shared else _int_bytes(biggest)
        elif major == 2:
            if inline == -1:
                special[ib] = _BYTES_ARG
            else:
                step[ib] = 1 + inline
                cost[ib] = 0 if inline <= 1 else 33 + inline  # b"" and 1-byte bytes are shared
        elif major == 3:
            if inline == -1:
                special[ib] = _TEXT_ARG
            elif inline <= 1:
                step[ib] = 1 + inline  # "" and one ASCII character are shared
            else:
                special[ib] = _TEXT_INLINE
        elif major == 4:
            if inline == -1:
                special[ib] = _ARRAY_ARG
            else:
                step[ib], cost[ib] = 1, _list_bytes(inline)
        elif major == 5:
            if inline == -1:
                special[ib] = _MAP_ARG
            else:
                step[ib], cost[ib] = 1, _dict_bytes(inline)[0]
        elif major == 7:
            if info in (20, 21, 22, 23):  # false, true, null, undefined: shared
                step[ib] = 1
            elif info < 20 or info == 24:  # simple values: a CBORSimpleValue each
                step[ib], cost[ib] = 1 + width, 40
            elif info in (25, 26, 27):  # half, single and double floats
                step[ib], cost[ib] = 1 + width, 24
        # major 6 (tags): cbor2 raises at the first one (every tag is refused on the wire)
    return step, cost, special


_STEP, _COST, _SPECIAL = _head_tables()
# Transient allocations too small to track one by one (the table a small dict's resize frees).
_SMALL_SPIKE = 1024
_NON_ASCII = re.compile(rb"[\x80-\xff]")


def decode_cost(data: bytes, limit: int | None = None) -> int:
    """Estimate the Python memory cbor2 needs to decode ``data`` (an upper bound, in bytes).

    Walks the item heads in order without building anything; string contents are skipped whole,
    so a payload that is one large byte string or text costs O(1) steps. Items after a point where
    cbor2 must fail (a tag, an indefinite length, a reserved head, the end of the data) are not
    counted: decoding stops there too.

    Args:
      data: one CBOR payload.
      limit: stop as soon as the estimate exceeds this (the result is then only known to be
        over it).

    Returns:
      The estimate: the objects' sizes plus the largest transient allocation on the way.
    """
    step, cost, special = _STEP, _COST, _SPECIAL
    stop = len(data)
    ceiling = 1 << 62 if limit is None else limit
    i = total = 0
    spike = _SMALL_SPIKE
    # Where the next non-ASCII byte is: one C-speed search serves every string before it.
    non_ascii = -1
    while i < stop:
        ib = data[i]
        n = step[ib]
        if n:
            total += cost[ib]
            i += n
            if total > ceiling:
                break
            continue
        how = special[ib]
        if how == _STOP:
            break
        if how == _TEXT_INLINE:
            start, k = i + 1, ib & 0x1F
        else:
            start = i + 1 + (1 << ((ib & 0x1F) - 24))
            if start > stop:
                break
            k = int.from_bytes(data[i + 1 : start], "big")
            if how in (_ARRAY_ARG, _MAP_ARG):
                # cbor2 appends items as they arrive: a count the rest of the data cannot hold
                # costs only what is there before decoding fails.
                if how == _ARRAY_ARG:
                    total += _list_bytes(min(k, stop - start))
                else:
                    final, freed = _dict_bytes(min(k, (stop - start) // 2))
                    total += final
                    if freed > spike:
                        spike = freed
                i = start
                if total + spike > ceiling:
                    break
                continue
        end = start + k
        if end > stop:
            break
        if how == _BYTES_ARG:
            total += 33 + k
            transient = k // 4 + 64  # cbor2 reads large byte strings in pieces
        else:
            if non_ascii < start:
                found = _NON_ASCII.search(data, start)
                non_ascii = stop if found is None else found.start()
            if non_ascii >= end:
                total += 49 + k
                transient = k
            else:
                # At most k characters, 4 bytes each once one needs it; CPython's decoder widens
                # its buffer on the way (measured: up to 5 more bytes per UTF-8 byte at the peak).
                total += 80 + 4 * k
                transient = 5 * k + 128
        if transient > spike:
            spike = transient
        i = end
        if total + spike > ceiling:
            break
    return total + spike


def _crude_weights() -> tuple[bytes, list[int]]:
    """Byte classes for :func:`_crude_bound`: a translate table and each class's weight.

    Any byte may be an item head or part of a head's argument or string content. Every byte
    carries 9 bytes: as an item, the slot (with over-allocation) it takes in its list or map; as
    string content, its share of the string (at most 4 bytes of text plus 5 transient). A head
    adds what its own object costs beyond its children's slots. A map with a count argument may
    cost more per entry than that: a payload holding such a byte (0xb8-0xbb) gets no crude bound
    and is walked exactly.
    """
    buckets = [9, 16, 32, 48, 64, 96, 128, 256, 512, 1024]
    table = bytearray(256)
    for ib in range(256):
        how, info = _SPECIAL[ib], ib & 0x1F
        if _STEP[ib] and ib >> 5 == 4:  # a list of `info` items: header and spare slots
            weight = 9 + _list_bytes(info) - 8 * info
        elif _STEP[ib] and ib >> 5 == 5:  # a dict of `info` entries: beyond 9 bytes per item
            weight = 9 + max(64, _dict_bytes(info)[0] - 18 * info)
        elif _STEP[ib]:
            weight = 9 + _COST[ib]
        elif how in (_TEXT_INLINE, _TEXT_ARG):
            weight = 9 + 80 + 128  # non-ASCII text: 80 + 4k bytes and 5k + 128 transient
        elif how == _BYTES_ARG:
            weight = 9 + 33 + 64  # 33 + k bytes and k // 4 + 64 transient
        elif how == _ARRAY_ARG:
            weight = 9 + _list_bytes(0) + 48  # 56 + 8 * (n + n // 8 + 6)
        elif how == _STOP:
            weight = 9
        else:
            table[ib] = len(buckets)
            continue
        table[ib] = next(c for c, top in enumerate(buckets) if weight <= top)
    return bytes(table), buckets


_CRUDE_TABLE, _CRUDE_WEIGHTS = _crude_weights()
_CRUDE_WALK = bytes([len(_CRUDE_WEIGHTS)])
_CRUDE_CLASSES = [(bytes([c]), w) for c, w in enumerate(_CRUDE_WEIGHTS)][1:]


def _crude_bound(data: bytes) -> int | None:
    """An upper bound of :func:`decode_cost` from byte counts alone, or ``None`` when the payload
    holds a byte whose cost only a walk can tell."""
    classes = data.translate(_CRUDE_TABLE)
    if _CRUDE_WALK in classes:
        return None
    bound = len(data) * _CRUDE_WEIGHTS[0] + _SMALL_SPIKE
    for mark, weight in _CRUDE_CLASSES:
        bound += classes.count(mark) * (weight - _CRUDE_WEIGHTS[0])
    return bound


def check_decode_cost(data: bytes) -> None:
    """Refuse a payload that would decode into more than :func:`decode_budget` of its size.

    Payloads up to ``GUARD_THRESHOLD`` pass unchecked. Cost: a few C-speed passes over the
    payload; the exact walk only for payloads whose byte counts allow an amplification, and it
    stops at the budget.

    Raises:
      DecodeError: ``too_complex``.
    """
    size = len(data)
    if size <= GUARD_THRESHOLD:
        return
    budget = decode_budget(size)
    bound = _crude_bound(data)
    if bound is not None and bound <= budget:
        return
    if decode_cost(data, budget) > budget:
        raise DecodeError(
            "too_complex",
            f"a payload of {size} bytes would decode into more than {budget} bytes of objects",
        )


# --- schema-driven conversion ---------------------------------------------------------------


def _path(where: _Where) -> str:
    parts: list[str] = []
    while isinstance(where, tuple):
        where, step = where
        parts.append(f"[{step}]" if isinstance(step, int) else f".{step}")
    return str(where) + "".join(reversed(parts))


def _scalar(expected: type, name: str) -> _Decoder:
    def decode(raw: Any, where: _Where) -> Any:
        if type(raw) is not expected:
            if expected is float and type(raw) is int:
                return float(raw)
            raise DecodeError(
                "bad_field", f"{_path(where)}: expected {name}, got {type(raw).__name__}"
            )
        return raw

    return decode


_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes)


def _any_value(raw: Any, where: _Where) -> Any:
    """Accept only plain CBOR data (no datetimes, sets, tags...): what every peer can re-encode."""
    if type(raw) in _PLAIN_SCALARS:
        return raw
    # A stack of iterators, not of items: its size is the nesting depth (at most MAX_DEPTH), where
    # a stack of items would copy every element of a large list once more.
    stack = [iter((raw,))]
    while stack:
        for item in stack[-1]:
            kind = type(item)
            if kind in _PLAIN_SCALARS:
                continue
            if kind is list:
                stack.append(iter(item))
                break
            if kind is dict:
                for key in item:
                    if type(key) not in (str, int):
                        raise DecodeError(
                            "bad_field", f"{_path(where)}: map keys must be text or integers"
                        )
                stack.append(iter(item.values()))
                break
            raise DecodeError(
                "bad_field", f"{_path(where)}: {kind.__name__} is not a plain CBOR value"
            )
        else:
            stack.pop()
    return raw


def _build(hint: Any) -> tuple[_Decoder, _Encoder]:
    origin = typing.get_origin(hint)
    if hint in (int, str, bytes, bool, float):
        return _scalar(hint, hint.__name__), _identity
    if hint is object:
        return _any_value, _identity
    if origin in (types.UnionType, typing.Union):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"unsupported union {hint}")
        inner_dec, inner_enc = _build(members[0])

        def dec_opt(raw: Any, where: _Where) -> Any:
            return None if raw is None else inner_dec(raw, where)

        def enc_opt(value: Any) -> Any:
            return None if value is None else inner_enc(value)

        return dec_opt, enc_opt
    if origin is tuple:
        targs = typing.get_args(hint)
        if len(targs) != 2 or targs[1] is not Ellipsis:
            raise TypeError(f"unsupported tuple {hint}")
        item_dec, item_enc = _build(targs[0])

        def dec_tuple(raw: Any, where: _Where) -> Any:
            if type(raw) is not list:
                raise DecodeError(
                    "bad_field", f"{_path(where)}: expected array, got {type(raw).__name__}"
                )
            return tuple(item_dec(item, (where, i)) for i, item in enumerate(raw))

        def enc_tuple(value: Any) -> Any:
            return [item_enc(item) for item in value]

        return dec_tuple, enc_tuple
    if origin is dict:
        key_t, _ = typing.get_args(hint)
        if key_t is not str:
            raise TypeError(f"unsupported dict {hint}")

        def dec_map(raw: Any, where: _Where) -> Any:
            if type(raw) is not dict or not all(type(k) is str for k in raw):
                raise DecodeError("bad_field", f"{_path(where)}: expected map with text keys")
            return dict(_any_value(raw, where))

        return dec_map, _identity
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass_codec(hint)
    raise TypeError(f"unsupported annotation {hint!r}")


def _identity(value: Any) -> Any:
    return value


_CODECS: dict[type, tuple[_Decoder, _Encoder]] = {}


_SCALARS = (int, str, bytes, bool, float)


def _plain_type(hint: Any) -> tuple[type | None, bool]:
    """For a field encoded as itself: the scalar type it must have (``None`` for ``object``,
    which still needs :func:`_any_value`), and whether ``None`` is allowed too."""
    if hint in _SCALARS or hint is object:
        return (None if hint is object else hint), False
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1 and (members[0] in _SCALARS or members[0] is object):
            return (None if members[0] is object else members[0]), True
    raise LookupError


def _dataclass_codec(cls: type) -> tuple[_Decoder, _Encoder]:
    if cls in _CODECS:
        return _CODECS[cls]
    hints = typing.get_type_hints(cls)
    flds = list(dataclasses.fields(cls))
    parts = [(f.name, *_build(hints[f.name])) for f in flds]
    required = sum(
        1
        for f in flds
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    name = cls.__name__

    def dec(raw: Any, where: _Where) -> Any:
        if type(raw) is not list:
            raise DecodeError("bad_shape", f"{_path(where)}: {name} must be an array")
        if not required <= len(raw) <= len(parts):
            raise DecodeError(
                "bad_shape",
                f"{_path(where)}: {name} takes {required}..{len(parts)} fields, got {len(raw)}",
            )
        return cls(
            *[
                fdec(item, (where, fname))
                for (fname, fdec, _), item in zip(parts, raw, strict=False)
            ]
        )

    def enc(value: Any) -> Any:
        return [fenc(getattr(value, fname)) for fname, _, fenc in parts]

    fast_dec, fast_enc = _compiled(cls, [(n, hints[n], d) for n, d, _ in parts], dec)
    _CODECS[cls] = (fast_dec, fast_enc or enc)
    return _CODECS[cls]


def _compiled(
    cls: type, fields: list[tuple[str, Any, _Decoder]], generic: _Decoder
) -> tuple[_Decoder, _Encoder | None]:
    """A decoder specialised for ``cls`` (as ``dataclasses`` makes ``__init__``): a frame with
    every field present has each scalar field checked by one inline type test, and only what
    fails one (to raise, or to turn an int into a float) or is not a scalar goes through its
    field decoder; anything else takes ``generic``. When every field is encoded as itself, an
    encoder that lists them without a call per field (else ``None``)."""
    names = [f"f{i}" for i in range(len(fields))]
    env: dict[str, Any] = {"cls": cls, "generic": generic}
    lines = ["def dec(raw, where):", f"    if type(raw) is not list or len(raw) != {len(fields)}:"]
    lines += ["        return generic(raw, where)"]
    if fields:
        lines.append(f"    {', '.join(names)}, = raw")
    plain = True
    for i, (fname, hint, fdec) in enumerate(fields):
        var, call = names[i], f"d{i}({names[i]}, (where, {fname!r}))"
        env[f"d{i}"] = fdec
        try:
            expected, optional = _plain_type(hint)
        except LookupError:
            plain = plain and typing.get_origin(hint) is dict
            lines.append(f"    {var} = {call}")
            continue
        if expected is None:  # object: checked by _any_value, which returns scalars at once
            lines.append(f"    {var} = {call}")
            continue
        env[f"t{i}"] = expected
        test = f"type({var}) is not t{i}" + (f" and {var} is not None" if optional else "")
        lines.append(f"    if {test}:")
        lines.append(f"        {var} = {call}")
    lines.append(f"    return cls({', '.join(names)})")
    code = "\n".join(lines)
    if plain:
        listed = ", ".join(f"value.{fname}" for fname, _, _ in fields)
        code += f"\ndef enc(value):\n    return [{listed}]"
    exec(compile(code, f"<codec of {cls.__name__}>", "exec"), env)
    return env["dec"], env.get("enc")


def _dec_digest_entry(raw: Any, where: _Where) -> Any:
    # Every gossip message carries up to a few hundred of these: one type test per field,
    # instead of the generic decoder's call per field.
    if (
        type(raw) is list
        and len(raw) == 4
        and type(raw[0]) is str
        and type(raw[1]) is int
        and type(raw[2]) is int
        and type(raw[3]) is int
    ):
        return DigestEntry(raw[0], raw[1], raw[2], raw[3])
    return _generic_digest_entry(raw, where)


def _enc_digest_entry(value: Any) -> Any:
    return [value.node_id, value.generation, value.heartbeat, value.max_version]


_generic_digest_entry, _ = _dataclass_codec(DigestEntry)
_CODECS[DigestEntry] = (_dec_digest_entry, _enc_digest_entry)


# A replica batch is a bounded list of gets and puts, told apart by their length: its count is
# checked before any op is decoded, and each op with a type test per field.


def _batch_count(raw: Any, where: _Where, name: str) -> None:
    if type(raw) is not list:
        raise DecodeError("bad_shape", f"{_path(where)}: {name} must be an array")
    if not 1 <= len(raw) <= MAX_BATCH_OPS:
        raise DecodeError(
            "bad_batch", f"{_path(where)}: {name} holds {len(raw)} ops, not 1..{MAX_BATCH_OPS}"
        )


def _dec_replica_batch(raw: Any, where: _Where) -> Any:
    if type(raw) is not list or len(raw) != 1:
        raise DecodeError("bad_shape", f"{_path(where)}: ReplicaBatch takes 1 field")
    items = raw[0]
    _batch_count(items, (where, "ops"), "a batch")
    ops: list[ReplicaGet | ReplicaPut] = []
    for i, item in enumerate(items):
        if type(item) is list and type(item[0] if item else None) is str:
            n = len(item)
            if n == 1:
                ops.append(ReplicaGet(item[0]))
                continue
            if n <= 3 and type(item[1]) is bytes and (n == 2 or type(item[2]) is str):
                ops.append(ReplicaPut(item[0], item[1], item[2] if n == 3 else ""))
                continue
        raise DecodeError(
            "bad_field", f"{_path(((where, 'ops'), i))}: not [key] or [key, clock, hint_for]"
        )
    return ReplicaBatch(tuple(ops))


def _enc_replica_batch(value: Any) -> Any:
    return [
        [
            [op.key]
            if type(op) is ReplicaGet
            else [op.key, op.clock, op.hint_for]
            if op.hint_for
            else [op.key, op.clock]
            for op in value.ops
        ]
    ]


_dec_batch_error, _enc_batch_error = _dataclass_codec(BatchError)


def _dec_replica_batch_reply(raw: Any, where: _Where) -> Any:
    if type(raw) is not list or not 1 <= len(raw) <= 2:
        raise DecodeError("bad_shape", f"{_path(where)}: ReplicaBatchReply takes 1..2 fields")
    clocks = raw[0]
    _batch_count(clocks, (where, "clocks"), "a batch reply")
    for i, clock in enumerate(clocks):
        if clock is not None and type(clock) is not bytes:
            raise DecodeError("bad_field", f"{_path(((where, 'clocks'), i))}: expected bytes")
    errors: tuple[BatchError, ...] = ()
    if len(raw) == 2:
        listed = raw[1]
        if type(listed) is not list or len(listed) > len(clocks):
            raise DecodeError("bad_batch", f"{_path(where)}.errors: more errors than ops")
        errors = tuple(_dec_batch_error(e, ((where, "errors"), i)) for i, e in enumerate(listed))
        if len({e.index for e in errors}) != len(errors) or not all(
            0 <= e.index < len(clocks) for e in errors
        ):
            raise DecodeError(
                "bad_batch", f"{_path(where)}.errors: an index repeats or is out of range"
            )
    return ReplicaBatchReply(tuple(clocks), errors)


def _enc_replica_batch_reply(value: Any) -> Any:
    clocks = list(value.clocks)
    if not value.errors:
        return [clocks]
    return [clocks, [_enc_batch_error(e) for e in value.errors]]


_CODECS[ReplicaBatch] = (_dec_replica_batch, _enc_replica_batch)
_CODECS[ReplicaBatchReply] = (_dec_replica_batch_reply, _enc_replica_batch_reply)

for _cls in MESSAGE_TYPES.values():
    _dataclass_codec(_cls)


# --- public functions ------------------------------------------------------------------------

_KINDS: dict[int, Kind] = {int(k): k for k in Kind}


def encode(kind: Kind, request_id: int, message: Message) -> bytes:
    """Encode one envelope as a CBOR payload (without the length prefix).

    A payload the receiving end would refuse as ``too_complex`` is refused here instead, so the
    sender gets the error (a request's caller; a reply's requester, as an error reply).

    Raises:
      DecodeError: ``unencodable`` (not CBOR-encodable) or ``too_complex``.
    """
    _, enc = _CODECS[type(message)]
    try:
        payload = cbor2.dumps([int(kind), request_id, message.TAG, enc(message)])
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise DecodeError("unencodable", f"cannot encode {message.TAG}: {exc}") from exc
    check_decode_cost(payload)
    return payload


def decode(payload: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> Envelope:
    """Decode and validate one payload (the bytes after the length prefix).

    Raises:
      DecodeError: with a ``reason`` tag; the caller closes the connection and counts it.
    """
    if len(payload) > max_frame:
        raise DecodeError("too_large", f"frame of {len(payload)} bytes exceeds {max_frame}")
    raw = _loads(payload)
    # Plain type checks, not ``match``: a sequence pattern costs microseconds per frame.
    if type(raw) is not list or len(raw) != 4:
        raise DecodeError("bad_shape", "frame is not [kind, id, type, fields]")
    kind, request_id, tag, body = raw
    if type(kind) is not int or type(request_id) is not int or type(tag) is not str:
        raise DecodeError("bad_shape", "frame is not [kind, id, type, fields]")
    if type(body) is not list:
        raise DecodeError("bad_shape", "frame is not [kind, id, type, fields]")
    envelope_kind = _KINDS.get(kind)
    if envelope_kind is None:
        raise DecodeError("bad_shape", f"unknown envelope kind {kind}")
    if not 0 <= request_id < 2**63:
        raise DecodeError("bad_shape", f"request id {request_id} out of range")
    cls = MESSAGE_TYPES.get(tag)
    if cls is None:
        raise DecodeError("unknown_type", f"unknown message type {tag[:40]!r}")
    dec, _ = _CODECS[cls]
    message: Message = dec(body, tag)
    return Envelope(envelope_kind, request_id, message)


def frame_length(header: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> int:
    """Read a 4-byte length prefix and check it against ``max_frame`` before any body is read."""
    if len(header) != FRAME_HEADER:
        raise DecodeError("truncated", "short frame header")
    length = int.from_bytes(header, "big")
    if length > max_frame:
        raise DecodeError("too_large", f"frame of {length} bytes exceeds the {max_frame} limit")
    return length


def frame_header(payload: bytes) -> bytes:
    """The 4-byte big-endian length prefix for ``payload``."""
    return len(payload).to_bytes(FRAME_HEADER, "big")


def dumps_canonical(value: object) -> bytes:
    """Canonical CBOR of a plain value (equal values give equal bytes).

    Bytes that :func:`loads_value` would refuse as ``too_complex`` are refused here, so nothing
    is stored or sent that cannot be read back (a put of such a value fails instead).

    Raises:
      ValueError: if the value is not CBOR-encodable, or too complex to decode again.
    """
    try:
        data = cbor2.dumps(value, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"value is not CBOR-encodable: {exc}") from exc
    try:
        check_decode_cost(data)
    except DecodeError as exc:
        raise ValueError(f"value is too complex: {exc}") from exc
    return data


def loads_value(data: bytes, *, max_depth: int = MAX_DEPTH) -> object:
    """Decode trusted-but-checked stored CBOR (data dir files, storage records, clocks and
    contexts carried as bytes), nesting at most ``max_depth`` arrays and maps.

    Raises:
      DecodeError: if the bytes are not one valid CBOR item within the limits.
    """
    return _loads(data, min(max_depth, MAX_DEPTH))
