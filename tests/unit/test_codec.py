"""The wire codec: every message round-trips, and untrusted bytes only ever raise DecodeError."""

from __future__ import annotations

import dataclasses
import tracemalloc
import types
import typing
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossipkv import DecodeError, _codec
from gossipkv._codec import (
    DEFAULT_MAX_FRAME,
    GUARD_THRESHOLD,
    MAX_DEPTH,
    check_decode_cost,
    decode,
    decode_budget,
    decode_cost,
    encode,
    frame_header,
    frame_length,
    loads_value,
)
from gossipkv._messages import (
    MAX_BATCH_OPS,
    MESSAGE_TYPES,
    BatchError,
    Envelope,
    Hello,
    Kind,
    KvPut,
    KvResult,
    LeaveRequest,
    Message,
    ReplicaBatch,
    ReplicaBatchReply,
    ReplicaGet,
    ReplicaPut,
)

# --- strategies built from the messages' own annotations (the codec's schema) ------------------

_INTS = st.integers(min_value=-(2**64), max_value=2**64 - 1)  # CBOR's native integer range
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    _INTS,
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
_VALUES: st.SearchStrategy[object] = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)


def _strategy(hint: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(hint)
    if hint is ReplicaBatch:  # 1..MAX_BATCH_OPS ops, gets and puts mixed
        op = st.one_of(_strategy(ReplicaGet), _strategy(ReplicaPut))
        return st.builds(ReplicaBatch, st.lists(op, min_size=1, max_size=4).map(tuple))
    if hint is ReplicaBatchReply:  # an error names a distinct op of the batch
        return st.lists(st.none() | st.binary(max_size=30), min_size=1, max_size=4).flatmap(
            lambda clocks: st.builds(
                ReplicaBatchReply,
                st.just(tuple(clocks)),
                st.lists(
                    st.builds(
                        BatchError, st.integers(0, len(clocks) - 1), st.text(max_size=9), st.text()
                    ),
                    max_size=len(clocks),
                    unique_by=lambda e: e.index,
                ).map(tuple),
            )
        )
    if hint is int:
        return _INTS
    if hint is str:
        return st.text(max_size=30)
    if hint is bytes:
        return st.binary(max_size=30)
    if hint is bool:
        return st.booleans()
    if hint is float:
        return st.floats(allow_nan=False)
    if hint is object:
        return _VALUES
    if origin in (types.UnionType, typing.Union):
        [inner] = [a for a in typing.get_args(hint) if a is not type(None)]
        return st.none() | _strategy(inner)
    if origin is tuple:
        return st.lists(_strategy(typing.get_args(hint)[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), _VALUES, max_size=4)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        fields = {f.name: _strategy(hints[f.name]) for f in dataclasses.fields(hint)}
        return st.builds(hint, **fields)
    raise TypeError(f"no strategy for {hint!r}")


_ENVELOPES = st.builds(
    Envelope,
    st.sampled_from(Kind),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.one_of([_strategy(cls) for cls in MESSAGE_TYPES.values()]),
)


def _decode_or_decode_error(payload: bytes) -> None:
    """Decoding untrusted bytes either succeeds or raises DecodeError, nothing else."""
    try:
        envelope = decode(payload)
    except DecodeError as exc:
        assert exc.reason in {
            "too_large",
            "truncated",
            "bad_cbor",
            "too_deep",
            "bad_shape",
            "unknown_type",
            "bad_field",
            "too_complex",
            "bad_batch",
        }, exc.reason
    else:
        assert isinstance(envelope.message, Message)


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
@settings(max_examples=60)
@given(data=st.data())
def test_every_message_type_round_trips(tag: str, data: st.DataObject) -> None:
    message = data.draw(_strategy(MESSAGE_TYPES[tag]))
    kind = data.draw(st.sampled_from(Kind))
    request_id = data.draw(st.integers(min_value=0, max_value=2**63 - 1))
    assert decode(encode(kind, request_id, message)) == Envelope(kind, request_id, message)


def test_optional_trailing_fields_may_be_omitted() -> None:
    hello = [1, "c", "n1", 7, "127.0.0.1:7400"]  # no auth
    assert decode(cbor2.dumps([0, 1, "hello", hello])).message == Hello(
        1, "c", "n1", 7, "127.0.0.1:7400", None
    )


# --- fuzzing: only DecodeError ever escapes ------------------------------------------------------


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(payload: bytes) -> None:
    _decode_or_decode_error(payload)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    envelope=_ENVELOPES,
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "cut"]),
            st.integers(0, 10**6),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_frames_raise_only_decode_error(
    envelope: Envelope, edits: list[tuple[str, int, int]]
) -> None:
    payload = bytearray(encode(envelope.kind, envelope.request_id, envelope.message))
    for op, where, byte in edits:
        i = where % (len(payload) + 1)
        if op == "flip" and i < len(payload):
            payload[i] ^= byte or 1
        elif op == "insert":
            payload.insert(i, byte)
        elif op == "delete" and i < len(payload):
            del payload[i]
        elif op == "cut":
            del payload[i:]
    _decode_or_decode_error(bytes(payload))


@settings(max_examples=200)
@given(st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=5), max_leaves=20))
def test_well_formed_cbor_of_the_wrong_shape_raises_only_decode_error(value: object) -> None:
    _decode_or_decode_error(cbor2.dumps([0, 1, "syn", value]))
    _decode_or_decode_error(cbor2.dumps(value))


# --- specific rejections -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\x81" * 10_000 + b"\x00",  # 10,000 nested one-element arrays
        b"\xa1\x00" * 10_000 + b"\x00",  # 10,000 nested one-entry maps
        b"\x81" * (MAX_DEPTH + 1) + b"\x00",  # just over the limit
    ],
    ids=["arrays", "maps", "just-over"],
)
def test_deep_nesting_is_rejected(payload: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode(payload)
    assert info.value.reason in ("too_deep", "bad_cbor")


def test_unknown_message_type() -> None:
    with pytest.raises(DecodeError) as info:
        decode(cbor2.dumps([0, 1, "no_such_message", []]))
    assert info.value.reason == "unknown_type"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (["1", "c", "n1", 7, ""], "bad_field"),  # proto must be an int
        ([1, "c", "n1", True, ""], "bad_field"),  # a bool is not an int
        ([1, "c", "n1", 7, "", "not bytes"], "bad_field"),
        ([1, "c", "n1"], "bad_shape"),  # too few fields
        ([1, "c", "n1", 7, "", None, 0, "extra"], "bad_shape"),  # too many
        ({"proto": 1}, "bad_shape"),  # a map instead of an array
    ],
)
def test_wrong_fields(fields: object, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(cbor2.dumps([0, 1, "hello", fields]))
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "body",
    [
        ["syn", [["n1", 1, 2]]],  # a DigestEntry with a field missing
        ["syn", "not a list"],
        ["reply", [{1: "int key"}]],
    ],
)
def test_wrong_nested_fields(body: list[object]) -> None:
    tag, fields = body
    if tag == "syn":
        fields = ["n0", 1, fields]
    with pytest.raises(DecodeError) as info:
        decode(cbor2.dumps([0, 1, tag, fields]))
    assert info.value.reason in ("bad_field", "bad_shape")


@pytest.mark.parametrize(
    "frame",
    [
        [9, 1, "members", []],  # unknown envelope kind
        [0, -1, "members", []],  # negative request id
        [0, 2**63, "members", []],  # request id out of range
        [True, 1, "members", []],  # a bool is not a kind
        [0, 1, "members"],  # missing the fields
        {"kind": 0},
        "members",
    ],
)
def test_bad_envelopes(frame: object) -> None:
    with pytest.raises(DecodeError) as info:
        decode(cbor2.dumps(frame))
    assert info.value.reason == "bad_shape"


def test_the_compiled_decoders_check_every_field_as_the_generic_ones() -> None:
    # An int where a float is expected is taken as a float; a bool is never an int.
    leave = decode(cbor2.dumps([0, 1, "leave", [5, True]])).message
    assert leave == LeaveRequest(5.0, True) and type(leave.timeout) is float
    with pytest.raises(DecodeError, match=r"leave\.force: expected bool"):
        decode(cbor2.dumps([0, 1, "leave", [5.0, 1]]))
    with pytest.raises(DecodeError, match=r"kv_put\.context: expected bytes"):
        decode(cbor2.dumps([0, 1, "kv_put", ["k", 1, "ctx", 0, "", 0, False, False]]))
    put = decode(
        cbor2.dumps([0, 1, "kv_put", ["k", [1, {"a": None}], None, 0, "", 0, False, False]])
    )
    assert put.message == KvPut("k", [1, {"a": None}], None)
    with pytest.raises(DecodeError, match=r"kv_put\.value: set is not a plain") as info:
        _codec._CODECS[KvPut][0](["k", {1, 2}, None, 0, "", 0, False, False], "kv_put")
    assert info.value.reason == "bad_field"


# --- replica batches --------------------------------------------------------------------------


def test_a_batch_carries_gets_and_puts_in_order() -> None:
    ops = (ReplicaPut("a", b"\x01"), ReplicaGet("b"), ReplicaPut("c", b"\x02", "n3"))
    payload = encode(Kind.REQUEST, 9, ReplicaBatch(ops))
    assert decode(payload) == Envelope(Kind.REQUEST, 9, ReplicaBatch(ops))
    # On the wire a get is [key], a put [key, clock] or [key, clock, hint_for].
    assert cbor2.loads(payload)[3] == [[["a", b"\x01"], ["b"], ["c", b"\x02", "n3"]]]


@pytest.mark.parametrize("count", [0, MAX_BATCH_OPS + 1, 10_000])
def test_a_batch_of_too_many_or_no_ops_is_refused_before_any_op_is_decoded(count: int) -> None:
    # Every op but the first is malformed: the count is refused first, with its own reason.
    ops: list[object] = [["k"]] + [[1, 2, 3, 4]] * (count - 1) if count else []
    with pytest.raises(DecodeError) as info:
        decode(cbor2.dumps([0, 1, "replica_batch", [ops]]))
    assert info.value.reason == "bad_batch"


def test_the_largest_batch_is_accepted() -> None:
    ops = tuple(ReplicaGet(f"k{i}") for i in range(MAX_BATCH_OPS))
    assert decode(encode(Kind.REQUEST, 1, ReplicaBatch(ops))).message == ReplicaBatch(ops)


@pytest.mark.parametrize(
    "op",
    [[], [1], ["k", "not bytes"], ["k", b"c", 3], ["k", b"c", "h", "extra"], "k", [None, b"c"]],
)
def test_a_malformed_op_is_refused(op: object) -> None:
    with pytest.raises(DecodeError) as info:
        decode(cbor2.dumps([0, 1, "replica_batch", [[["ok"], op]]]))
    assert info.value.reason == "bad_field"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([[]], "bad_batch"),  # no answers
        ([[None] * (MAX_BATCH_OPS + 1)], "bad_batch"),
        ([[None, "text"]], "bad_field"),  # a clock is bytes or null
        ([[None], [[0, "e", "m"], [0, "e", "m"]]], "bad_batch"),  # more errors than ops
        ([[None, None], [[0, "e", "m"], [0, "e", "m"]]], "bad_batch"),  # an index twice
        ([[None], [[1, "e", "m"]]], "bad_batch"),  # an index out of range
        ([[None], [[-1, "e", "m"]]], "bad_batch"),
        ([[None], [["0", "e", "m"]]], "bad_field"),
        ([[None], "errors"], "bad_batch"),
        ([[None], [], "extra"], "bad_shape"),
    ],
)
def test_a_malformed_batch_reply_is_refused(fields: object, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(cbor2.dumps([1, 1, "replica_batch_reply", fields]))
    assert info.value.reason == reason


def test_tags_and_truncation_are_rejected() -> None:
    with pytest.raises(DecodeError) as info:
        decode(cbor2.dumps([0, 1, "members", [cbor2.CBORTag(4000, 1)]]))
    assert info.value.reason == "bad_cbor"
    with pytest.raises(DecodeError) as info:
        decode(cbor2.dumps([0, 1, "members", []])[:-1])
    assert info.value.reason == "truncated"


def test_oversize_payload_is_too_large() -> None:
    payload = encode(Kind.REQUEST, 1, Hello(1, "c", "n" * 100, 1, ""))
    decode(payload, max_frame=len(payload))
    with pytest.raises(DecodeError) as info:
        decode(payload, max_frame=len(payload) - 1)
    assert info.value.reason == "too_large"


def test_frame_length_checks_the_limit_before_the_body() -> None:
    assert frame_length(frame_header(b"x" * 10), max_frame=10) == 10
    assert frame_length((DEFAULT_MAX_FRAME).to_bytes(4, "big")) == DEFAULT_MAX_FRAME
    with pytest.raises(DecodeError) as info:
        frame_length((11).to_bytes(4, "big"), max_frame=10)
    assert info.value.reason == "too_large"
    with pytest.raises(DecodeError) as info:
        frame_length(b"\xff\xff\xff\xff")
    assert info.value.reason == "too_large"
    with pytest.raises(DecodeError) as info:
        frame_length(b"\x00\x00")
    assert info.value.reason == "truncated"


def _reply_with_value(value_cbor: bytes) -> bytes:
    """A ``reply`` frame whose body is ``{"a": <value_cbor>}`` (raw CBOR spliced in)."""
    return b"\x84\x00\x01" + cbor2.dumps("reply") + b"\x81\xa1" + cbor2.dumps("a") + value_cbor


@pytest.mark.parametrize(
    "value_cbor",
    [
        b"\xd8\x1c\x81\xd8\x1d\x00",  # 28([29(0)]): a list that contains itself
        b"\xd8\x1c\xa1\x00\xd8\x1d\x00",  # 28({0: 29(0)}): a map that contains itself
        # [28([1, 2]), 29(0)]: one list reachable twice (nested, this grows exponentially)
        b"\x82\xd8\x1c\x82\x01\x02\xd8\x1d\x00",
    ],
    ids=["cyclic-list", "cyclic-map", "shared"],
)
def test_shared_references_are_rejected(value_cbor: bytes) -> None:
    # Regression: cbor2 resolves tags 28/29 without calling tag_hook, so these used to decode
    # into cyclic values that later crashed encoded_size() and re-encoding in a handler.
    with pytest.raises(DecodeError) as info:
        decode(_reply_with_value(value_cbor))
    assert info.value.reason == "bad_cbor"


def test_repeated_empty_containers_are_not_shared_references() -> None:
    body = {"a": [[], [], {}, {}], "b": {1: [[]], "c": {}}}
    assert decode(cbor2.dumps([1, 1, "reply", [body]])).message.body == body


def test_array_map_keys_are_not_plain_values() -> None:
    # cbor2 decodes array keys as tuples, which other peers could not re-encode the same way.
    with pytest.raises(DecodeError) as info:
        decode(cbor2.dumps([1, 1, "reply", [{"b": {(1,): 1}}]]))
    assert info.value.reason == "bad_field"


# --- the decode cost guard -------------------------------------------------------------------------


def _peak(payload: bytes) -> int:
    """Bytes cbor2 allocates at the peak while decoding ``payload``, as tracemalloc sees them."""
    tracemalloc.start()
    try:
        decoded = cbor2.loads(payload)
    except Exception:
        decoded = None
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del decoded
    return peak


def _array_of(item: bytes, size: int, items: int = 1) -> bytes:
    """An array of ``item`` (which holds ``items`` CBOR items) repeated to about ``size`` bytes."""
    n = size // len(item)
    return b"\x9a" + (n * items).to_bytes(4, "big") + item * n


# Shapes with their measured amplification (tracemalloc, CPython 3.11, cbor2 6.3): the guard
# refuses those over DECODE_MEMORY_FACTOR.
ADVERSARIAL = {
    "empty arrays": (b"\x80", 1),  # ~64x
    "empty maps": (b"\xa0", 1),  # ~72x
    "one-entry maps": (b"\xa1\x00\x00", 1),  # ~77x
    "nested one-item arrays": (b"\x81\x80", 1),  # ~76x
    "2-char strings": (b"\x62ab", 1),  # ~20x
    "3-byte non-ASCII strings": (b"\x63\xe2\x82\xac", 1),  # ~21x
    "simple values": (b"\xe0", 1),  # ~48x
    "ints -6": (b"\x25", 1),  # ~36x
    "small floats": (b"\xf9\x3c\x00", 1),  # ~11x
    "small ints": (b"\x01", 1),  # ~8x
    "ints 1000": (b"\x19\x03\xe8", 1),  # ~12x
    "2-byte byte strings": (b"\x42ab", 1),  # ~14x
    "23-int arrays": (b"\x97" + b"\x00" * 23, 1),  # ~11x
    "6-entry maps": (b"\xa6" + b"".join(bytes([k, 0]) for k in range(6)), 1),  # ~28x
    "ints 0, -6": (b"\x00\x25", 2),  # ~18x
}


@pytest.fixture(scope="module")
def adversarial() -> Iterator[dict[str, tuple[bytes, int]]]:
    """Each shape as a 256 KiB payload with its tracemalloc-measured decode peak."""
    shapes = {}
    for name, (item, items) in ADVERSARIAL.items():
        payload = _array_of(item, 256 * 1024, items)
        shapes[name] = (payload, _peak(payload))
    yield shapes


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_the_estimate_bounds_tracemalloc_tightly(
    adversarial: dict[str, tuple[bytes, int]], name: str
) -> None:
    payload, peak = adversarial[name]
    estimate = decode_cost(payload)
    # An upper bound (the guard's promise), and a close one (so it does not refuse needlessly).
    assert peak <= estimate <= 1.25 * peak + 4096, (name, peak, estimate)
    crude = _codec._crude_bound(payload)
    assert crude is None or crude >= estimate, (name, crude, estimate)


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_the_guard_refuses_exactly_the_shapes_over_budget(
    adversarial: dict[str, tuple[bytes, int]], name: str
) -> None:
    payload, peak = adversarial[name]
    budget = decode_budget(len(payload))
    if decode_cost(payload) > budget:
        with pytest.raises(DecodeError) as info:
            check_decode_cost(payload)
        assert info.value.reason == "too_complex"
    else:
        check_decode_cost(payload)
        assert peak <= budget


def test_the_red_team_frame_is_refused_and_legitimate_big_values_pass() -> None:
    bomb = _array_of(b"\x80", 4 * 1024 * 1024)  # the red-team frame, at 4 MiB
    with pytest.raises(DecodeError) as info:
        decode(bomb)
    assert info.value.reason == "too_complex"
    with pytest.raises(DecodeError) as info:
        loads_value(bomb)  # stored and replicated clock bytes are checked the same way
    assert info.value.reason == "too_complex"
    records = [
        {"id": i, "name": f"item-{i}", "tags": ["a", "b"], "score": i / 7} for i in range(20_000)
    ]
    for value in (b"\x00" * 2**20, "x" * 2**20, "\u20ac" * 2**18, list(range(200_000)), records):
        payload = encode(Kind.RESPONSE, 1, KvResult("k", True, (value,), b"c"))
        assert len(payload) > GUARD_THRESHOLD
        assert decode(payload).message == KvResult("k", True, (value,), b"c")


def test_one_large_string_is_one_step() -> None:
    # The walk skips string contents whole: a frame that is one large value costs O(1) steps,
    # whatever its bytes look like (here: the red-team bytes, inside a byte string).
    payload = cbor2.dumps([b"\x80" * 2**20, "\x80" * 2**19])
    assert decode_cost(payload) < 8 * len(payload)
    check_decode_cost(payload)


def test_nothing_after_a_point_where_cbor2_fails_is_counted() -> None:
    bomb = b"\x80" * 2**18
    for stop in (b"\xc1\x00", b"\x9f", b"\x1c", b"\xff", b"\x5a\xff\xff\xff\xff"):
        payload = b"\x84\x01\x01" + stop + bomb
        assert decode_cost(payload) < 4096, stop
        with pytest.raises(DecodeError) as info:
            decode(payload)
        assert info.value.reason in ("bad_cbor", "truncated"), stop
    # A count the data cannot hold costs what is there: cbor2 appends items as they arrive.
    assert decode_cost(b"\x9b" + b"\xff" * 8) < 4096
    assert decode_cost(b"\xbb" + b"\xff" * 8) < 4096


def test_the_walk_stops_at_the_limit() -> None:
    payload = b"\x80" * 2**20  # a CBOR sequence: the walk counts trailing items too
    full = decode_cost(payload)
    assert full > 2**20 * 56
    # It stops at the first head past the limit: the result is over the limit by one empty
    # list at most (plus the baseline allowance for small transients).
    assert 10_000 < decode_cost(payload, 10_000) <= 10_000 + 56 + 1024


_DENSE_ITEMS = st.one_of(
    st.sampled_from(
        [b"\x80", b"\xa0", b"\x01", b"\x25", b"\xf5", b"\xf9\x3c\x00", b"\x19\x03\xe8"]
    ),
    st.binary(min_size=1, max_size=4).map(lambda b: cbor2.dumps(b)),
    st.text(min_size=0, max_size=6).map(lambda t: cbor2.dumps(t)),
    _VALUES.map(lambda v: cbor2.dumps(v)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(_DENSE_ITEMS, min_size=1, max_size=6), repeat=st.integers(1, 3000))
def test_guard_accepts_only_what_decodes_within_its_budget(items: list[bytes], repeat: int) -> None:
    """For any payload, the estimate bounds tracemalloc's peak (so whatever the guard accepts
    decodes within ``decode_budget``), and the crude bound, when it has one, bounds the estimate."""
    unit = b"".join(items)
    payload = b"\x9a" + (len(items) * repeat).to_bytes(4, "big") + unit * repeat
    estimate = decode_cost(payload)
    assert _peak(payload) <= estimate
    crude = _codec._crude_bound(payload)
    assert crude is None or crude >= estimate
    try:
        check_decode_cost(payload)
    except DecodeError as exc:
        assert exc.reason == "too_complex"
        assert estimate > decode_budget(len(payload))
    else:
        assert len(payload) <= GUARD_THRESHOLD or estimate <= decode_budget(len(payload))


def test_nothing_is_encoded_that_the_guard_would_refuse() -> None:
    """A value whose decoding the guard refuses is refused when it is encoded, so a put fails
    with an error instead of storing (or sending) what no peer could read back."""
    value = [{}] * 100_000  # 100 KB of CBOR, ~7 MB of dicts
    with pytest.raises(ValueError, match="too complex"):
        _codec.dumps_canonical(value)
    with pytest.raises(DecodeError) as info:
        encode(Kind.RESPONSE, 1, KvResult("k", True, (value,), b""))
    assert info.value.reason == "too_complex"
    fine = list(range(100_000))
    assert loads_value(_codec.dumps_canonical(fine)) == fine
