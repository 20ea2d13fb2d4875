"""The pure parts of tombstone reaping: a clock's tombstone age and a stored hint's age."""

from __future__ import annotations

from gossipkv import _dvv
from gossipkv._dvv import DVVSet, Entry, Sibling
from gossipkv._reaper import HINT_AGE_ACTOR, hint_age, tombstone_time, with_hint_age

MS = 1_780_000_000_000


def _hlc(ms: int, counter: int = 0) -> int:
    return ms << 16 | counter


def test_tombstone_time_is_the_newest_stamp_of_a_tombstone_only_clock() -> None:
    t1 = Sibling.deleted({"ts": _hlc(MS, 3)})
    t2 = Sibling.deleted({"ts": _hlc(MS + 500)})
    clock = DVVSet((Entry("a/1/0", 2, (t1,)), Entry("b/1/0", 1, (t2,))))
    assert tombstone_time(clock) == MS + 500


def test_no_tombstone_time_for_live_values_missing_stamps_or_no_values() -> None:
    live = Sibling("v", False, {"ts": _hlc(MS)})
    dead = Sibling.deleted({"ts": _hlc(MS)})
    assert tombstone_time(DVVSet((Entry("a/1/0", 2, (dead, live)),))) is None
    assert tombstone_time(DVVSet((Entry("a/1/0", 1, (Sibling.deleted(),)),))) is None
    assert tombstone_time(DVVSet((Entry("a/1/0", 3, ()),))) is None
    assert tombstone_time(DVVSet()) is None


def test_a_hint_keeps_its_age_in_a_valueless_entry_that_delivery_strips() -> None:
    clock = DVVSet((Entry("n1/5/0", 2, (Sibling("v"),)),))
    kept = with_hint_age(clock, MS)
    _dvv.validate(kept)
    assert kept.entries[0] == Entry(HINT_AGE_ACTOR, MS, ())
    assert _dvv.values(kept) == _dvv.values(clock)
    assert hint_age(kept) == (MS, clock)
    # Rewritten with a newer clock, the first age is what the caller passes again.
    newer = DVVSet((Entry("n1/5/0", 3, (Sibling("w"),)),))
    assert hint_age(with_hint_age(newer, MS)) == (MS, newer)
    assert hint_age(with_hint_age(kept, MS + 1))[0] == MS + 1  # never two age entries
    assert hint_age(clock) == (None, clock)  # a hint from before ages were kept
