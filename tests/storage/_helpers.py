"""Shared helpers for the storage tests: clock builders and canonical digests."""

from __future__ import annotations

import hashlib

from gossipkv._codec import dumps_canonical
from gossipkv._dvv import DVVSet, Sibling, clock_to_plain, join, new, update


def clock_of(*values: object, actor: str = "n/1/0") -> DVVSet[Sibling]:
    """A clock holding ``values`` as siblings written blind by one actor."""
    clock: DVVSet[Sibling] | None = None
    for v in values:
        clock = update(new(None, Sibling(v)), clock, actor)
    assert clock is not None
    return clock


def next_clock(local: DVVSet[Sibling] | None, value: object, actor: str) -> DVVSet[Sibling]:
    """A coordinator's write that supersedes everything in ``local``."""
    ctx = join(local) if local is not None else None
    return update(new(ctx, Sibling(value)), local, actor)


def digest(clock: DVVSet[Sibling]) -> str:
    return hashlib.blake2b(dumps_canonical(clock_to_plain(clock)), digest_size=12).hexdigest()
