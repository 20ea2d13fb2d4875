"""What a write may claim and what a read may show: context clamping, the bounded read view,
plain-value checks and counter bounds (issue 10). Pure functions, no cluster."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipkv import _codec, _dvv
from gossipkv._dvv import MAX_COUNTER, DVVSet, Entry, Sibling
from gossipkv._errors import InvalidClock, ValueNotEncodable, ValueTooDeep, ValueTooLarge
from gossipkv._kv import visible
from gossipkv.storage import StorageLimits
from gossipkv.storage._base import check_value, decode_clock, encode_clock

Clock = DVVSet[Sibling]


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def blind(clock: Clock | None, value: object, actor: str) -> Clock:
    return _dvv.update(_dvv.new(None, Sibling(value)), clock, actor)


# --- plain values ------------------------------------------------------------------------------


def test_value_depth_is_bounded_and_exact() -> None:
    limits = StorageLimits()
    check_value(nested(limits.max_value_depth), limits)
    check_value({"a": nested(limits.max_value_depth - 1)}, limits)
    with pytest.raises(ValueTooDeep, match="32 deep"):
        check_value(nested(limits.max_value_depth + 1), limits)
    with pytest.raises(ValueTooDeep):
        check_value({"a": nested(limits.max_value_depth)}, limits)
    # Far deeper than Python's recursion limit: refused by the iterative walk, not a crash.
    with pytest.raises(ValueTooDeep):
        check_value(nested(100_000), limits)
    assert issubclass(ValueTooDeep, ValueTooLarge)


@pytest.mark.parametrize(
    "value",
    [{1, 2}, frozenset(), object(), 2**64, -(2**64) - 1, {(1, 2): 1}, [b"ok", {3.5: "no"}]],
    ids=["set", "frozenset", "object", "2**64", "-2**64-1", "tuple-key", "float-key"],
)
def test_only_plain_cbor_data_is_stored(value: object) -> None:
    # cbor2 would tag these (sets, bignums): tags are refused on the wire and in the stores, so
    # a value stored with one could never be read back.
    with pytest.raises(ValueNotEncodable):
        check_value(value, StorageLimits())


def test_the_value_limit_is_the_value_as_the_user_sees_it() -> None:
    limits = StorageLimits(max_value_bytes=100, max_record_bytes=1000)
    exact = "x" * 98  # 2 head bytes + 98
    assert len(_codec.dumps_canonical(exact)) == 100
    assert check_value(exact, limits) == 100
    # Stored with metadata (a request id), it is still within the limit.
    clock = _dvv.update(_dvv.new(None, Sibling(exact, False, {"rid": "c" * 40})), None, "a/1/0")
    encode_clock(clock, limits)
    with pytest.raises(ValueTooLarge):
        check_value(exact + "x", limits)


def test_counters_stay_below_the_bignum_range() -> None:
    limits = StorageLimits()
    top = DVVSet((Entry("a/1/0", MAX_COUNTER, (Sibling("v"),)),))
    assert decode_clock(encode_clock(top, limits), "test") == top
    with pytest.raises(InvalidClock, match="exhausted"):
        _dvv.update(_dvv.new({"a/1/0": MAX_COUNTER}, Sibling("w")), top, "a/1/0")
    with pytest.raises(InvalidClock):
        _dvv.validate(DVVSet((Entry("a/1/0", MAX_COUNTER + 1, ()),)))
    with pytest.raises(InvalidClock):
        _dvv.context_from_plain([["a/1/0", 2**64 - 1]])


def test_a_stored_clock_is_readable_at_the_deepest_value_allowed() -> None:
    limits = StorageLimits()
    clock = blind(None, nested(limits.max_value_depth), "a/1/0")
    assert decode_clock(encode_clock(clock, limits), "test", limits) == clock


# --- context clamping --------------------------------------------------------------------------


def test_clamp_drops_unknown_actors_and_lowers_counters() -> None:
    local = blind(blind(None, "x", "a/1/0"), "y", "b/1/0")
    forged = {"a/1/0": 2**63 - 1, "b/1/0": 1, **{f"fake{i}/1/0": 5 for i in range(10_000)}}
    assert _dvv.clamp_context(forged, local) == {"a/1/0": 1, "b/1/0": 1}
    assert not _dvv.context_within(forged, local)
    assert _dvv.context_within({"a/1/0": 1}, local)
    assert _dvv.clamp_context({"z/1/0": 3}, local) is None
    assert _dvv.clamp_context({"z/1/0": 3}, None) is None


def test_a_clamped_write_replaces_only_what_the_replica_holds() -> None:
    # The writer read a (from another replica) and claims a's next dot too: this replica holds
    # only a's first value, so only that one may be replaced.
    local = blind(None, "a1", "a/1/0")
    newer_elsewhere = blind(local, "a2", "a/1/0")
    claim = _dvv.join(newer_elsewhere)
    clamped = _dvv.clamp_context(claim, local)
    written = _dvv.update(_dvv.new(clamped, Sibling("w")), local, "me/1/0")
    merged = _dvv.sync(written, newer_elsewhere)
    assert sorted(s.data for s in _dvv.values(merged)) == ["a2", "w"]


# --- the read view -----------------------------------------------------------------------------


def test_view_is_the_clock_itself_within_the_limits() -> None:
    clock = blind(blind(None, "x", "a/1/0"), "y", "b/1/0")
    shown, more = _dvv.view(clock, 2, 10_000, lambda s: 1)
    assert shown is clock and more == 0


def test_view_keeps_the_oldest_values_and_its_context_covers_exactly_them() -> None:
    clock: Clock | None = None
    for i in range(5):
        clock = blind(clock, f"a{i}", "a/1/0")
        clock = blind(clock, f"b{i}", "b/1/0")
    assert clock is not None
    shown, more = _dvv.view(clock, 4, 10**9, lambda s: 1)
    assert sorted(s.data for s in _dvv.values(shown)) == ["a0", "a1", "b0", "b1"]
    assert more == 6
    # Resolving what was shown replaces exactly that, and every other value survives.
    resolved = _dvv.update(_dvv.new(_dvv.join(shown), Sibling("r")), clock, "c/1/0")
    left = sorted(s.data for s in _dvv.values(resolved))
    assert left == ["a2", "a3", "a4", "b2", "b3", "b4", "r"]


def test_view_by_bytes_always_shows_one_value() -> None:
    clock = blind(blind(None, "x" * 100, "a/1/0"), "y" * 100, "b/1/0")
    values, _, more = visible(clock, StorageLimits(max_value_bytes=50, max_record_bytes=60))
    assert len(values) == 1 and more == 1


def test_tombstones_cost_nothing_in_a_view() -> None:
    clock = _dvv.update(_dvv.new(None, Sibling.deleted()), None, "a/1/0")
    clock = blind(clock, "v", "a/1/0")
    shown, more = _dvv.view(clock, 1, 10**9, lambda s: 0 if s.tombstone else 1)
    assert shown is clock and more == 0


sibling_counts = st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(
    counts=sibling_counts,
    superseded=st.lists(st.integers(min_value=0, max_value=3), min_size=5, max_size=5),
    max_values=st.integers(min_value=1, max_value=12),
    max_bytes=st.integers(min_value=1, max_value=40),
    sizes=st.lists(st.integers(min_value=0, max_value=9), min_size=40, max_size=40),
)
def test_view_property(
    counts: list[int], superseded: list[int], max_values: int, max_bytes: int, sizes: list[int]
) -> None:
    """For any clock: the view shows at most the limits (and at least one value if any
    exist), and a write with the view's context removes exactly the values shown."""
    entries = []
    serial = 0
    for i, n in enumerate(counts):
        values = []
        for _ in range(n):
            serial += 1
            values.append(Sibling(serial, sizes[serial % 40] == 0, {"size": sizes[serial % 40]}))
        entries.append(
            Entry(f"actor{i}", n + superseded[i], tuple(values)) if n or superseded[i] else None
        )
    clock: Clock = DVVSet(tuple(e for e in entries if e is not None))

    def cost(s: Sibling) -> int:
        size = s.meta["size"]
        assert isinstance(size, int)
        return size

    shown, more = _dvv.view(clock, max_values, max_bytes, cost)
    _dvv.validate(shown)
    shown_values = [s for s in _dvv.values(shown) if cost(s)]
    every = [s for s in _dvv.values(clock) if cost(s)]
    assert len(shown_values) + more == len(every)
    if every:
        assert shown_values
    if len(shown_values) > 1:
        assert len(shown_values) <= max_values
        assert sum(cost(s) for s in shown_values) <= max_bytes
    written = _dvv.update(_dvv.new(_dvv.join(shown) or None, Sibling("new")), clock, "writer")
    remaining = {s.data for s in _dvv.values(written)} - {"new"}
    assert remaining == {s.data for s in _dvv.values(clock)} - {s.data for s in _dvv.values(shown)}
