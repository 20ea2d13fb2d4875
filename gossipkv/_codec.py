"""The wire codec: the only module that imports cbor2.

It owns every limit on untrusted bytes (frame size, nesting depth, field types) and turns a
payload into a typed :class:`~gossipkv._messages.Envelope` or a :class:`DecodeError` with a reason;
nothing else in gossipkv ever sees raw CBOR. The schema is the messages' own annotations.
It also offers canonical encoding of stored values (equal objects give equal bytes).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import cbor2

from ._errors import DecodeError
from ._messages import MESSAGE_TYPES, Envelope, Kind, Message

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
MAX_DEPTH = 64
FRAME_HEADER = 4  # 4-byte big-endian length prefix

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
    stack = [raw]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _PLAIN_SCALARS:
            continue
        if kind is list:
            stack.extend(item)
        elif kind is dict:
            for key, value in item.items():
                if type(key) not in (str, int):
                    raise DecodeError(
                        "bad_field", f"{_path(where)}: map keys must be text or integers"
                    )
                stack.append(value)
        else:
            raise DecodeError(
                "bad_field", f"{_path(where)}: {kind.__name__} is not a plain CBOR value"
            )
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

    _CODECS[cls] = (dec, enc)
    return dec, enc


for _cls in MESSAGE_TYPES.values():
    _dataclass_codec(_cls)


# --- public functions ------------------------------------------------------------------------

_KINDS: dict[int, Kind] = {int(k): k for k in Kind}


def encode(kind: Kind, request_id: int, message: Message) -> bytes:
    """Encode one envelope as a CBOR payload (without the length prefix)."""
    _, enc = _CODECS[type(message)]
    try:
        return cbor2.dumps([int(kind), request_id, message.TAG, enc(message)])
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise DecodeError("unencodable", f"cannot encode {message.TAG}: {exc}") from exc


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

    Raises:
      ValueError: if the value is not CBOR-encodable.
    """
    try:
        return cbor2.dumps(value, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"value is not CBOR-encodable: {exc}") from exc


def loads_value(data: bytes, *, max_depth: int = MAX_DEPTH) -> object:
    """Decode trusted-but-checked stored CBOR (data dir files, storage records, clocks and
    contexts carried as bytes), nesting at most ``max_depth`` arrays and maps.

    Raises:
      DecodeError: if the bytes are not one valid CBOR item within the limits.
    """
    return _loads(data, min(max_depth, MAX_DEPTH))
