"""Merkle trees kept current on every write (gossipkv._merkle): incremental updates equal a
rebuild from scratch for any sequence of writes, whatever the build interleaves with; XOR
properties; the checks that replace a wrong tree; and both engines keeping the record hashes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipkv import _dvv
from gossipkv import _merkle as mk
from gossipkv._dvv import Sibling, partition_of
from gossipkv.storage import open_storage

Q = 8

# A write: key number, then the clock bytes it stores, or None for "the record goes away".
_write = st.tuples(st.integers(0, 40), st.one_of(st.none(), st.binary(min_size=1, max_size=6)))


def _apply(hashes: mk.RecordHashes, key: int, value: bytes | None) -> None:
    name = f"k{key}"
    if value is None:
        hashes.discard(name)
    else:
        hashes.set(name, mk.record_hash(name.encode(), value))


def _final(writes: list[tuple[int, bytes | None]]) -> dict[str, bytes]:
    state: dict[str, bytes] = {}
    for key, value in writes:
        if value is None:
            state.pop(f"k{key}", None)
        else:
            state[f"k{key}"] = value
    return state


def _scratch(state: dict[str, bytes], q: int = Q) -> mk.MerkleTrees:
    hashes = mk.RecordHashes()
    for name, value in state.items():
        hashes.set(name, mk.record_hash(name.encode(), value))
    trees = hashes.attach(q)
    while not hashes.build_step(4096):
        pass
    return trees


def _same(a: mk.MerkleTrees, b: mk.MerkleTrees) -> bool:
    parts = set(a.partitions()) | set(b.partitions())
    empty = mk.PartitionTree()
    return all((a.tree(p) or empty) == (b.tree(p) or empty) for p in parts)


@settings(max_examples=200, deadline=None)
@given(
    writes=st.lists(_write, max_size=60), attach_at=st.integers(0, 60), step=st.integers(1, 5000)
)
def test_incremental_updates_equal_a_rebuild_from_scratch(
    writes: list[tuple[int, bytes | None]], attach_at: int, step: int
) -> None:
    """Trees attached at any point, built in steps of any size interleaved with the writes,
    end equal to trees built from the final records alone."""
    hashes = mk.RecordHashes()
    for i, (key, value) in enumerate(writes):
        if i == attach_at:
            hashes.attach(Q)
        if hashes.trees is not None and not hashes.trees.ready:
            hashes.build_step(step)
        _apply(hashes, key, value)
    if hashes.trees is None:
        hashes.attach(Q)
    while not hashes.build_step(step):
        pass
    assert hashes.trees is not None
    assert _same(hashes.trees, _scratch(_final(writes)))


@given(st.lists(st.integers(1, 2**60 - 1), max_size=20), st.randoms(use_true_random=False))
def test_xor_makes_the_tree_independent_of_order_and_self_inverse(
    deltas: list[int], rng: Any
) -> None:
    a, b = mk.PartitionTree(), mk.PartitionTree()
    placed = [(d % mk.SEGMENTS, d) for d in deltas]
    for segment, d in placed:
        a.toggle(segment, d)
    shuffled = list(placed)
    rng.shuffle(shuffled)
    for segment, d in shuffled:
        b.toggle(segment, d)
    assert a == b
    for segment, d in placed:  # every hash toggled twice: back to the empty tree
        a.toggle(segment, d)
    assert a == mk.PartitionTree() and a.root == 0 and not any(a.branches)
    # Each level is the XOR of the one below.
    for segment, d in placed:
        b.toggle(segment, d ^ 12345)
    for branch in range(mk.BRANCHES):
        acc = 0
        for h in b.branch_segments(branch):
            acc ^= h
        assert acc == b.branches[branch]
    acc = 0
    for h in b.branches:
        acc ^= h
    assert acc == b.root


def test_a_key_lands_in_its_partition_and_segment() -> None:
    for i in range(2000):
        kb = f"key-{i}".encode()
        digest = mk.key_digest(kb)
        for q in (1, 7, 64, 1024):
            assert digest % q == partition_of(kb.decode(), q)
        assert 0 <= mk.segment_of(digest) < mk.SEGMENTS
    assert mk.unpack(mk.pack([0, 1, 2**64 - 1])) == [0, 1, 2**64 - 1]
    with pytest.raises(ValueError):
        mk.unpack(b"123")


def test_segments_spread_the_keys_of_a_partition() -> None:
    """The sizing the module documents: ~16k keys of one partition spread over the segments
    at a few keys each (segment bits are independent of the partition bits)."""
    q, counts = 64, [0] * mk.SEGMENTS
    n = 0
    for i in range(16_000 * 8):
        digest = mk.key_digest(f"user:{i}".encode())
        if digest % q == 5:
            counts[mk.segment_of(digest)] += 1
            n += 1
    assert 1500 < n < 2500
    assert sum(1 for c in counts if c) > 0.35 * mk.SEGMENTS
    assert max(counts) <= 8


def test_a_check_replaces_a_corrupted_tree_and_wrong_record_hashes() -> None:
    state = {f"k{i}": bytes([i]) for i in range(1, 200)}
    trees = _scratch(state)
    hashes = mk.RecordHashes()
    for name, value in state.items():
        hashes.set(name, mk.record_hash(name.encode(), value))
    live = hashes.attach(Q)
    while not hashes.build_step(4096):
        pass
    fresh_of = {
        p: {k: mk.record_hash(k.encode(), v) for k, v in state.items() if partition_of(k, Q) == p}
        for p in range(Q)
    }
    # An intact tree passes its check.
    live.begin_check(3)
    assert not live.finish_check(3, dict(fresh_of[3]), hashes)
    # A flipped segment is found and replaced.
    tree = live.tree(3)
    assert tree is not None
    tree.toggle(17, 0xDEAD)
    live.begin_check(3)
    assert live.finish_check(3, dict(fresh_of[3]), hashes)
    assert _same(live, trees)
    # A wrong per-key hash (with its tree consistent with it) is found and corrected.
    key = next(iter(fresh_of[4]))
    hashes.set(key, 99)
    live.begin_check(4)
    assert live.finish_check(4, dict(fresh_of[4]), hashes)
    assert hashes.get(key) == fresh_of[4][key] and _same(live, trees)
    # A key written during the check counts as what the store holds now.
    live.begin_check(5)
    written = next(iter(fresh_of[5]))
    hashes.set(written, 7)
    assert not live.finish_check(5, dict(fresh_of[5]), hashes)
    assert hashes.get(written) == 7
    # A per-key hash of a key the store no longer holds is forgotten.
    gone = next(iter(fresh_of[6]))
    listed = list(fresh_of[6])
    fresh = dict(fresh_of[6])
    del fresh[gone]
    live.begin_check(6)
    assert live.finish_check(6, fresh, hashes, listed=listed)
    assert hashes.get(gone) is None


def _clock(value: object, actor: str) -> Any:
    return _dvv.update(_dvv.new(None, Sibling(value, False, {})), None, actor)


async def _stored_hashes(data_dir: Path | None, keys: int) -> dict[str, int | None]:
    async with open_storage(data_dir) as eng:
        for i in range(keys):
            await eng.put(f"key{i}", _clock({"i": i, "s": "x" * (i % 7)}, f"a{i % 3}"))
        for i in range(0, keys, 3):  # overwrites
            await eng.put(f"key{i}", _clock({"again": i}, "b"))
        names = [f"key{i}" for i in range(keys)] + ["never-stored"]
        read = {k: mk.record_hash(k.encode(), data) async for k, data in eng.records(names)}
        out = {k: eng.record_hashes.get(k) for k in names[:-1]}
        assert read == out  # the records read back hash to what the engine kept
        return out


async def test_memory_and_log_engines_keep_equal_record_hashes(tmp_path: Path) -> None:
    """Equal records give equal hashes in either engine, and the log engine recomputes the
    same ones from its records when it opens again."""
    memory = await _stored_hashes(None, 300)
    log = await _stored_hashes(tmp_path / "log", 300)
    assert memory == log and None not in memory.values()
    async with open_storage(tmp_path / "log") as eng:
        assert {k: eng.record_hashes.get(k) for k in log} == log
        assert len(eng.record_hashes) == 300


async def test_a_quarantined_record_leaves_the_trees(tmp_path: Path) -> None:
    """A record that fails its checksum when read back (the scheduled check reads every one) is
    quarantined, and its hash leaves the record hashes and the trees with it."""
    from gossipkv.storage import _keydir, _log

    async with open_storage(tmp_path / "log") as eng:
        assert isinstance(eng, _log.LogEngine)
        names = [f"key{i}" for i in range(50)]
        for name in names:
            await eng.put(name, _clock({"n": name}, "a"))
        trees = eng.record_hashes.attach(Q)
        while not eng.record_hashes.build_step(4096):
            pass
        victim = names[17]
        loc = eng._keydir.get(victim)
        assert loc is not None
        seg, off, length = _keydir.seg_of(loc), _keydir.off_of(loc), _keydir.len_of(loc)
        path = tmp_path / "log" / f"{seg:08d}.seg"
        raw = bytearray(path.read_bytes())
        raw[off + length - 1] ^= 0xFF  # the last byte of its value
        path.write_bytes(bytes(raw))
        read = [k async for k, _ in eng.records(names)]
        assert victim not in read and len(read) == 49
        assert eng.record_hashes.get(victim) is None
        expected = {n: _dvv_bytes(_clock({"n": n}, "a")) for n in names if n != victim}
        assert _same(trees, _scratch(expected))


def _dvv_bytes(clock: Any) -> bytes:
    from gossipkv.storage._base import DEFAULT_LIMITS, encode_clock

    return encode_clock(clock, DEFAULT_LIMITS)
