"""The invariants every abuse test checks after its attack (never timings).

- every peer process is alive (and restarts cleanly: see ``Cluster.restart_*``);
- every acknowledged write reads back on every replica (``get(local=True)`` at each peer) and
  through a quorum read, all acknowledged values present as siblings;
- each peer's RSS, sampled during and after the attack, stays under ``_expect.rss_bound``;
- no peer saw another ``down`` or unreachable, and the leader did not change;
- each refusal shows in the counters listed in ``_expect.COUNTERS``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

import gossipkv

from ..proc._peers import eventually
from . import _expect
from ._cluster import Cluster, Observation, client_of, counter_total, mib

REPLICAS = 3  # N, the default replicas per key


@dataclass
class Acked:
    """Writes a well-behaved client got acknowledged: key -> values that must be siblings."""

    values: dict[str, set[Any]] = field(default_factory=dict)
    failed: int = 0

    def add(self, key: str, value: Any) -> None:
        self.values.setdefault(key, set()).add(hashable(value))

    def forget(self, key: str, value: Any) -> None:
        """``value`` was legitimately replaced (a context write that covered it)."""
        self.values.get(key, set()).discard(hashable(value))

    async def put(
        self, client: gossipkv.Client, key: str, value: Any, **kw: Any
    ) -> gossipkv.PutResult:
        result = await client.put(key, value, **kw)
        self.add(key, value)
        return result


def hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((repr(k), hashable(v)) for k, v in value.items()))
    return value


def describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} chars)"


async def write_before(cluster: Cluster, acked: Acked, prefix: str, count: int = 10) -> None:
    """``count`` acknowledged writes on every replica (W = N), spread over the peers."""
    for i in range(count):
        addr = cluster.addrs[i % len(cluster.addrs)]
        async with client_of(addr) as c:
            await acked.put(c, f"{prefix}-before-{i}", f"{prefix}-v{i}", w=REPLICAS)


async def write_around(
    cluster: Cluster, acked: Acked, prefix: str, *, count: int = 200, period: float = 0.1
) -> None:
    """Well-behaved writes during an attack, through any peer, until cancelled or ``count`` are
    done (failures are allowed: only acknowledged writes count)."""
    async with client_of(*cluster.addrs, request_timeout=5.0) as c:
        for i in range(count):
            try:
                await acked.put(c, f"{prefix}-around-{i}", f"{prefix}-a{i}")
            except gossipkv.GossipKVError:
                acked.failed += 1
            await trio.sleep(period)


# --- checks ----------------------------------------------------------------------------------------


async def local_read(addr: str, key: str) -> gossipkv.GetResult | str:
    try:
        async with client_of(addr, request_timeout=5.0) as c:
            return await c.get(key, local=True)
    except gossipkv.GossipKVError as exc:
        return f"{type(exc).__name__}: {exc}"


async def assert_acked(
    cluster: Cluster,
    acked: Acked,
    *,
    copies: int | None = None,
    within: float = 10.0,
    names: Iterable[str] | None = None,
) -> None:
    """Every acknowledged value reads back through a quorum read (R=3, which also repairs) and
    from the local replica of ``copies`` peers (default: every peer of ``names``/the cluster)."""
    peers = list(names) if names is not None else list(cluster.names)
    need = len(peers) if copies is None else copies

    async def complete() -> Any:
        problems: list[str] = []
        async with client_of(*[cluster.addr(n) for n in peers], request_timeout=5.0) as c:
            for key, values in acked.values.items():
                try:
                    got = await c.get(key, r=3)
                except gossipkv.GossipKVError as exc:
                    problems.append(f"{key}: quorum read failed: {type(exc).__name__}: {exc}")
                    continue
                have = {hashable(v) for v in got.values}
                if not values <= have:
                    lost = [describe(v) for v in values - have]
                    problems.append(f"{key}: quorum read lacks {lost}")
        for key, values in acked.values.items():
            holders, notes = 0, []
            for name in peers:
                got = await local_read(cluster.addr(name), key)
                if isinstance(got, str):
                    notes.append(f"{name}: {got[:200]}")
                elif values <= {hashable(v) for v in got.values}:
                    holders += 1
                else:
                    notes.append(f"{name}: has {len(got.values)} values, not all acknowledged")
            if holders < need:
                problems.append(f"{key}: {holders} of {need} replicas hold it ({notes})")
        return True if not problems else _Missing(problems)

    # A replica that cannot read its own copy ("StorageError") will not be healed by waiting:
    # read repair only fills missing or older copies. Report it at once.

    result = await _poll(complete, within=within)
    if isinstance(result, _Missing):
        raise AssertionError("acknowledged writes missing:\n  " + "\n  ".join(result.problems[:20]))


@dataclass
class _Missing:
    problems: list[str]

    @property
    def permanent(self) -> bool:
        return any("StorageError" in p for p in self.problems)

    def __bool__(self) -> bool:
        return False


async def _poll(check: Any, *, within: float) -> Any:
    """Like ``eventually`` but hands back the last falsy result instead of raising."""
    last: Any = None
    with trio.move_on_after(within):
        while True:
            last = await check()
            if last or (isinstance(last, _Missing) and last.permanent):
                return last
            await trio.sleep(0.2)
    return last


def assert_alive(cluster: Cluster) -> None:
    dead = {n: cluster.peers.procs[n].returncode for n in cluster.names if n not in cluster.alive()}
    assert not dead, f"peer processes exited: {dead}\n" + "\n".join(
        f"--- {n}\n{cluster.log(n)[-2000:]}" for n in dead
    )


def assert_rss_bounded(
    cluster: Cluster, peaks: dict[str, int], outbound: dict[str, int] | None = None
) -> None:
    """Every peer's peak RSS (``RssSampler.peak``) under ``_expect.rss_bound``; ``outbound``: per
    peer, the attacking connections it owes replies or events to."""
    attackers = outbound or {}
    over = {}
    for name, peak in peaks.items():
        idle = cluster.idle_rss[name]
        bound = _expect.rss_bound(idle, attackers.get(name, 0))
        if peak > bound:
            over[name] = f"peak {mib(peak)} > bound {mib(bound)} (idle {mib(idle)})"
    assert not over, f"RSS over budget: {over}"


def assert_no_false_downs(obs: Observation) -> None:
    logged = {n: lines for n, lines in obs.events.items() if lines}
    leaders = {n: s for n, s in obs.members.leaders.items() if len(s) > 1}
    assert not obs.members.downs and not logged and not leaders, (
        f"false downs or leader changes during the attack: polled={sorted(obs.members.downs)} "
        f"logged={logged} leaders={leaders}"
    )


def counter_deltas(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> dict[str, dict[str, int]]:
    """Counters of the refusal maps that grew, summed over the peers."""
    out: dict[str, dict[str, int]] = {}
    for section in ("dropped_frames", "refusals", "refused_handshakes", "kv_errors"):
        reasons: set[str] = set()
        for doc in after.values():
            value = doc.get(section)
            if isinstance(value, dict):
                reasons.update(value)
        for reason in sorted(reasons):
            delta = counter_total(after, section, reason) - counter_total(before, section, reason)
            if delta:
                out.setdefault(section, {})[reason] = delta
    return out


async def assert_counted(
    cluster: Cluster, before: dict[str, dict[str, Any]], attack: str, *, within: float
) -> dict[str, dict[str, int]]:
    """One of ``_expect.COUNTERS[attack]`` grew (polled up to ``within`` seconds)."""
    expected = _expect.COUNTERS[attack]
    last: dict[str, dict[str, int]] = {}

    async def counted() -> Any:
        nonlocal last
        last = counter_deltas(before, await cluster.stats())
        return not expected or any(last.get(s, {}).get(r, 0) > 0 for s, r in expected)

    try:
        await eventually(counted, within=within, what=f"a refusal counter of {attack}")
    except AssertionError:
        raise AssertionError(
            f"{attack}: none of {list(expected)} grew; counters that did: {last}"
        ) from None
    return last


def print_figures(
    attack: str,
    cluster: Cluster,
    obs: Observation,
    stats: dict[str, dict[str, Any]],
    deltas: dict[str, dict[str, int]],
    outcome: str = "",
) -> None:
    """The measured figures, for ``pytest -s`` and the release note."""
    peaks = ", ".join(
        f"{n} {mib(obs.rss.peak.get(n, 0))}/{mib(cluster.idle_rss[n])}" for n in cluster.names
    )
    lags = ", ".join(
        f"{n} {float(stats.get(n, {}).get('max_loop_lag') or 0) * 1000:.0f} ms"
        for n in cluster.names
    )
    print(
        f"\n[abuse] {attack}: peak/idle RSS: {peaks}; max loop lag: {lags}; "
        f"counters: {deltas}; rss samples: {obs.rss.samples}; {outcome}"
    )
