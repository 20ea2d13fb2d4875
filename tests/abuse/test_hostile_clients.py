"""Issue 10, hostile clients found by Hypothesis: valid-looking but hostile requests, interleaved
with a well-behaved client's acknowledged writes, against three real peers with data dirs.

Each example takes a fresh key, writes ``a`` to it (acknowledged by all 3 replicas), sends one
hostile request (or a burst) on a raw connection from 127.0.0.2 to one peer, writes ``b`` to the
key, and checks: every peer is alive; the key reads back on every replica (``local``) and through
a quorum read, with at most the sibling cap of values, no made-up actor in its clock, ``b`` among
its values, and ``a`` too unless the hostile request was an accepted write with a context or
clock (which may legitimately supersede it). The hostile requests: deep values, extreme integers,
forged, foreign and malformed contexts (real actors with extreme counters, thousands of made-up
actors, another key's context), oversized and non-text keys, extreme quorum and sequence numbers,
sibling storms, random message types and fields; ``test_peer_messages_from_a_client`` sends what
only peers should (replica writes with forged clocks, gossip, shutdown notices).
``test_cluster_survived_the_hostile_clients`` then checks the whole run: RSS, no false downs,
every acknowledged write of a passing example on every replica, clean restarts.

``GOSSIPKV_ABUSE_EXAMPLES`` sets the number of generated examples per test (default 80); the
examples are derandomized so CI sees the same ones every run.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cbor2
import pytest
import trio
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import gossipkv
from gossipkv._messages import (
    MESSAGE_TYPES,
    KvPut,
    MembersRequest,
    ReplicaGet,
    ReplicaPut,
    SetMetadataRequest,
    Shutdown,
    WatchRequest,
)

from . import _expect
from ._attack import (
    RawConnection,
    context_pairs,
    forged_context,
    message_frame,
    nested,
    raw_frame,
)
from ._cluster import Cluster, ClusterPool, RssSampler, client_of, logged_events
from ._invariants import (
    Acked,
    assert_acked,
    assert_alive,
    assert_rss_bounded,
    hashable,
    local_read,
)

pytestmark = [pytest.mark.abuse, pytest.mark.proc]

EXAMPLES = int(os.environ.get("GOSSIPKV_ABUSE_EXAMPLES", "80"))
REPLY_WITHIN = 5.0  # seconds to wait for the answers to one example's hostile requests
PING_ID = 2**40  # request id of the members request sent after the hostile ones
FOREIGN_KEYS = 3  # keys whose (real) contexts are replayed on other keys
FOREIGN_WRITES = 6  # writes to each of them, spread over the peers (counters above 1)

# --- strategies ------------------------------------------------------------------------------------

EXTREME_INTS = [
    0, 1, -1, 255, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), -(2**64),
]  # fmt: skip
# Beyond what CBOR encodes without a bignum tag (the codec refuses tags: the frame is dropped).
BIGNUMS = [2**64, -(2**64) - 1, 2**100]
COUNTERS = [0, 1, 2, 3, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]
SAFE_TAGS = sorted(t for t in MESSAGE_TYPES if t != "leave")  # a leave request is an operator call

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(EXTREME_INTS),
    st.integers(),
    st.floats(),
    st.text(max_size=16),
    st.binary(max_size=16),
)
plain = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.integers(-5, 5), inner, max_size=3)
    ),
    max_leaves=10,
)
actor_ref = st.integers(0, 3) | st.text(min_size=1, max_size=12)  # a real actor's index, or made up
counter = st.sampled_from(COUNTERS) | st.integers(1, 50)


@dataclass(frozen=True)
class Hostile:
    """One hostile move: ``kind`` and its parameters (built into frames once the key and its real
    actors are known)."""

    kind: str
    params: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def __repr__(self) -> str:
        shown = {
            k: (v if len(repr(v)) < 120 else f"<{len(repr(v))} chars>") for k, v in self.params
        }
        return f"Hostile({self.kind!r}, {shown})"


def hostile(name: str, /, **params: Any) -> Hostile:
    return Hostile(name, tuple(sorted(params.items())))


def _builds(name: str, /, **strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[Hostile]:
    return st.fixed_dictionaries(strategies).map(lambda p: hostile(name, **p))


hostile_requests: st.SearchStrategy[Hostile] = st.one_of(
    _builds("deep", depth=st.integers(_expect.MAX_VALUE_DEPTH - 2, 70)),
    _builds("value", value=plain),
    _builds("value", value=st.sampled_from(BIGNUMS)),
    _builds("big", size=st.sampled_from([2**20 - 40, 2**20 - 5, 2**20, 2**20 + 10, 3 * 2**20])),
    _builds(
        "context",
        pairs=st.lists(st.tuples(actor_ref, counter), max_size=4),
        made_up=st.sampled_from([0, 0, 1, 50, 3000]),
        delete=st.booleans(),
    ),
    _builds("foreign_context", which=st.integers(0, FOREIGN_KEYS - 1), delete=st.booleans()),
    _builds(
        "bad_context",
        raw=st.binary(max_size=40)
        | plain.map(lambda v: cbor2.dumps(v))
        | st.integers(30, 80).map(lambda d: cbor2.dumps(nested(d))),
    ),
    _builds(
        "key",
        key=st.text(min_size=1025, max_size=3000)
        | st.text(alphabet="\x1f\x00é💥", min_size=1, max_size=8)
        | st.sampled_from(["", 0, b"bytes", None, ["list"], 2**64 - 1]),
        read=st.booleans(),
    ),
    _builds(
        "params",
        w=st.sampled_from(EXTREME_INTS + BIGNUMS) | st.integers(-3, 5),
        r=st.sampled_from(EXTREME_INTS) | st.integers(-3, 5),
        seq=st.sampled_from(EXTREME_INTS),
        client_id=st.text(max_size=8) | st.just("c" * 5000),
        forwarded=st.booleans(),
    ),
    _builds("storm", count=st.integers(90, 130)),
    _builds(
        "partition",
        partition=st.sampled_from(EXTREME_INTS),
        q=st.sampled_from(EXTREME_INTS),
        limit=st.sampled_from(EXTREME_INTS),
        after=st.text(max_size=4),
    ),
    _builds("watch", prefix=st.text(max_size=8) | st.just("w" * 5000)),
    _builds("metadata", key=st.text(max_size=200), value=st.none() | st.text(max_size=2000)),
    _builds(
        "envelope",
        kind=st.sampled_from([0, 1, 2, 3]) | st.sampled_from(EXTREME_INTS),
        rid=st.integers(1, 1000) | st.sampled_from(EXTREME_INTS),
        tag=st.sampled_from(SAFE_TAGS) | st.text(max_size=10).filter(lambda t: t != "leave"),
        fields=st.lists(plain, max_size=6),
    ),
)


# Peer messages a client connection has no business sending (DESIGN §14: such a connection is
# closed and counted, or the message is validated so that it cannot hurt).
peer_messages: st.SearchStrategy[Hostile] = st.one_of(
    _builds(
        "replica_put",
        entries=st.lists(st.tuples(actor_ref, counter, st.integers(0, 3)), min_size=0, max_size=4),
        hint_for=st.sampled_from(["", "p1", "p2", "p3", "nobody"]),
        raw=st.none() | st.binary(max_size=30),
    ),
    _builds("shutdown", node_id=st.sampled_from(["p1", "p2", "p3", "client"]), gen=counter),
    _builds(
        "envelope",
        kind=st.just(0),
        rid=st.integers(1, 1000),
        tag=st.sampled_from(["syn", "replica_put", "replica_get", "tree_keys"]),
        fields=st.lists(plain, max_size=4),
    ),
)


# --- building and sending one example's requests ---------------------------------------------------


@dataclass
class Sent:
    frames: list[bytes] = field(default_factory=list)
    expect: set[int] = field(default_factory=set)  # request ids that should be answered
    superseding: set[int] = field(default_factory=set)  # ids of context/clock/delete writes
    next_id: int = 1

    def request(self, payload_of: Any, *, supersedes: bool = False) -> None:
        rid = self.next_id
        self.next_id += 1
        self.frames.append(payload_of(rid))
        self.expect.add(rid)
        if supersedes:
            self.superseding.add(rid)


def _actor(ref: Any, actors: list[str]) -> str:
    return actors[ref % len(actors)] if isinstance(ref, int) else f"made-up-{ref}"


def _clock(entries: list[tuple[Any, int, int]], actors: list[str], key: str) -> bytes:
    plain_entries: dict[str, list[Any]] = {}
    for ref, n, values in entries:
        plain_entries[_actor(ref, actors)] = [
            _actor(ref, actors),
            n,
            [[f"{key}-replica-{i}", False, {}] for i in range(values)],
        ]
    ordered = [plain_entries[a] for a in sorted(plain_entries)]
    return cbor2.dumps([ordered, []], canonical=True)


def build(h: Hostile, key: str, actors: list[str], foreign: list[bytes]) -> Sent:
    sent = Sent()
    if h.kind == "deep":
        sent.request(lambda i: message_frame(KvPut(key, nested(h.get("depth"))), request_id=i))
    elif h.kind == "value":
        sent.request(lambda i: message_frame(KvPut(key, h.get("value")), request_id=i))
    elif h.kind == "big":
        sent.request(lambda i: message_frame(KvPut(key, b"x" * h.get("size")), request_id=i))
    elif h.kind == "context":
        pairs = {_actor(ref, actors): n for ref, n in h.get("pairs")}
        pairs.update({f"made-up-{j}": 1 for j in range(h.get("made_up"))})
        ctx = forged_context(pairs.items())
        value = None if h.get("delete") else f"{key}-ctx"
        msg = KvPut(key, value, ctx, delete=h.get("delete"))
        sent.request(lambda i: message_frame(msg, request_id=i), supersedes=True)
    elif h.kind == "foreign_context":
        value = None if h.get("delete") else f"{key}-foreign"
        msg = KvPut(key, value, foreign[h.get("which")], delete=h.get("delete"))
        sent.request(lambda i: message_frame(msg, request_id=i), supersedes=True)
    elif h.kind == "bad_context":
        sent.request(lambda i: message_frame(KvPut(key, "v", h.get("raw")), request_id=i))
    elif h.kind == "key":
        sent.request(lambda i: raw_frame(0, i, "kv_put", [h.get("key"), "v"]))
        if h.get("read"):
            sent.request(lambda i: raw_frame(0, i, "kv_get", [h.get("key")]))
    elif h.kind == "params":
        put = [key, "p", None, h.get("w"), h.get("client_id"), h.get("seq"), False]
        put.append(h.get("forwarded"))
        sent.request(lambda i: raw_frame(0, i, "kv_put", put))
        sent.request(lambda i: raw_frame(0, i, "kv_get", [key, h.get("r"), False]))
    elif h.kind == "replica_put":
        raw = h.get("raw")
        clock = raw if raw is not None else _clock(h.get("entries"), actors, key)
        msg = ReplicaPut(key, clock, h.get("hint_for"))
        sent.request(lambda i: message_frame(msg, request_id=i), supersedes=True)
        sent.request(lambda i: message_frame(ReplicaGet(key), request_id=i))
    elif h.kind == "storm":
        for j in range(h.get("count")):
            sent.request(lambda i, j=j: message_frame(KvPut(key, f"{key}-storm-{j}"), request_id=i))
    elif h.kind == "partition":
        part, q = h.get("partition"), h.get("q")
        sent.request(lambda i: raw_frame(0, i, "tree_root", [part, q]))
        segments = [part, q, [h.get("limit")]]
        sent.request(lambda i: raw_frame(0, i, "tree_segments", segments))
        keys = [part, q, [h.get("limit")], h.get("after")]
        sent.request(lambda i: raw_frame(0, i, "tree_keys", keys))
    elif h.kind == "watch":
        sent.request(lambda i: message_frame(WatchRequest(h.get("prefix")), request_id=i))
    elif h.kind == "metadata":
        msg = SetMetadataRequest(h.get("key"), h.get("value"))
        sent.request(lambda i: message_frame(msg, request_id=i))
    elif h.kind == "shutdown":
        msg = Shutdown(h.get("node_id"), h.get("gen"))
        sent.frames.append(raw_frame(3, 0, "shutdown", [msg.node_id, msg.generation]))
    elif h.kind == "envelope":
        kind, rid = h.get("kind"), h.get("rid")
        sent.frames.append(raw_frame(kind, rid, h.get("tag"), h.get("fields")))
        if kind == 0 and h.get("tag") in ("kv_put", "replica_put") and isinstance(rid, int):
            sent.superseding.add(rid)
    else:
        raise AssertionError(h.kind)
    sent.frames.append(message_frame(MembersRequest(), request_id=PING_ID))
    sent.expect.add(PING_ID)
    return sent


async def send_and_collect(addr: str, sent: Sent) -> dict[int, tuple[int, str]]:
    """Send the frames after a hello; collect ``{request_id: (kind, tag)}`` of the answers until
    every expected one came, the peer closed the connection, or ``REPLY_WITHIN`` passed."""
    answers: dict[int, tuple[int, str]] = {}
    conn = await RawConnection.open(addr)
    try:
        reply = await conn.hello()
        assert reply is not None and reply[2] == "hello", reply
        with trio.move_on_after(REPLY_WITHIN):
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    while not sent.expect <= set(answers):
                        got = await conn.read_frame()
                        if got is None:
                            return
                        kind, rid, tag, _ = got
                        if kind in (1, 2):
                            answers[rid] = (kind, tag)

                nursery.start_soon(read)
                await conn.send(b"".join(sent.frames))
    finally:
        await conn.aclose()
    return answers


# --- the run -------------------------------------------------------------------------------------


@dataclass
class HostileRun:
    cluster: Cluster
    rss: RssSampler
    log_mark: dict[str, int]
    foreign: list[bytes]
    acked: Acked = field(default_factory=Acked)
    ids: Iterator[int] = field(default_factory=itertools.count)
    examples: int = 0
    failed_keys: set[str] = field(default_factory=set)
    accepted: dict[str, int] = field(default_factory=dict)


async def foreign_contexts(cluster: Cluster) -> list[bytes]:
    """Real contexts of other keys (several writes through every peer: real actors, counters
    above 1), to replay on the keys under attack."""
    out = []
    for k in range(FOREIGN_KEYS):
        result = None
        for i in range(FOREIGN_WRITES):
            async with client_of(cluster.addrs[i % len(cluster.addrs)]) as c:
                result = await c.put(f"foreign-{k}", i, w=3)
        assert result is not None
        out.append(result.context)
    return out


@pytest.fixture(scope="module")
def run(pool3: ClusterPool) -> Iterator[HostileRun]:
    cluster = pool3.get()
    foreign = trio.run(foreign_contexts, cluster)
    rss = RssSampler({n: cluster.pid(n) for n in cluster.names})
    with rss.in_thread():
        yield HostileRun(cluster, rss, cluster.log_mark(), foreign)


async def check_key(run: HostileRun, key: str, want: set[Any]) -> None:
    """``key`` reads back on every replica and through a quorum read: no error, at most the
    sibling cap of values, every value in ``want`` among them."""
    cluster = run.cluster
    assert_alive(cluster)
    for name in cluster.names:
        got = await local_read(cluster.addr(name), key)
        assert not isinstance(got, str), f"{name}: local read of {key!r} failed: {got}"
        assert len(got.values) <= _expect.MAX_SIBLINGS, (name, len(got.values))
        missing = want - {hashable(v) for v in got.values}
        assert not missing, f"{name}: {key!r} lacks acknowledged {missing} (has {len(got.values)})"
        made_up = [a for a, _ in context_pairs(got.context) if a.startswith("made-up-")]
        assert not made_up, f"{name}: {key!r} keeps {len(made_up)} made-up actors in its clock"
    async with client_of(*cluster.addrs) as c:
        got = await c.get(key, r=3)
    assert len(got.values) <= _expect.MAX_SIBLINGS, ("quorum", len(got.values))
    missing = want - {hashable(v) for v in got.values}
    assert not missing, f"quorum read of {key!r} lacks {missing}"


async def run_example(run: HostileRun, request: Hostile, via: int) -> None:
    """One example: ``a`` acknowledged, the hostile request, ``b`` acknowledged, then the key
    checked on every replica."""
    cluster = run.cluster
    run.examples += 1
    key = f"hostile-{next(run.ids)}"
    run.failed_keys.add(key)  # until this example passes
    async with client_of(*cluster.addrs) as c:
        first = await run.acked.put(c, key, f"{key}-a", w=3)
    actors = [a for a, _ in context_pairs(first.context)]

    sent = build(request, key, actors, run.foreign)
    answers = await send_and_collect(cluster.addr(cluster.names[via]), sent)
    if any(answers.get(rid, (0, ""))[0] == 1 for rid in sent.superseding):
        run.acked.forget(key, f"{key}-a")  # an accepted context or clock may replace it
    accepted = sum(1 for kind, _ in answers.values() if kind == 1)
    run.accepted[request.kind] = run.accepted.get(request.kind, 0) + accepted

    async with client_of(*cluster.addrs) as c:
        try:
            await run.acked.put(c, key, f"{key}-b", w=3)
        except gossipkv.TooManySiblings:
            # Only a burst of accepted writes (or a clock full of siblings) may fill the key.
            assert request.kind in ("storm", "replica_put") and accepted, (request, answers)
    await check_key(run, key, run.acked.values.get(key, set()))
    run.failed_keys.discard(key)


HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)


@HYPOTHESIS
@given(request=hostile_requests, via=st.integers(0, 2))
@example(request=hostile("deep", depth=62), via=0)
@example(request=hostile("context", pairs=[(0, 2**64 - 1)], made_up=0, delete=False), via=1)
@example(request=hostile("context", pairs=[(0, 1)], made_up=3000, delete=False), via=2)
async def test_hostile_requests(run: HostileRun, request: Hostile, via: int) -> None:
    await run_example(run, request, via)


@HYPOTHESIS
@given(request=peer_messages, via=st.integers(0, 2))
@example(request=hostile("replica_put", entries=[(0, 2**64 - 1, 1)], hint_for="", raw=None), via=2)
@example(request=hostile("replica_put", entries=[(0, 40, 1)], hint_for="p3", raw=None), via=2)
async def test_peer_messages_from_a_client(run: HostileRun, request: Hostile, via: int) -> None:
    await run_example(run, request, via)


async def test_cluster_survived_the_hostile_clients(run: HostileRun) -> None:
    """The whole hostile run: RSS under budget, no false downs or leader changes, every
    acknowledged write of a passing example on every replica, and clean restarts."""
    cluster = run.cluster
    print(
        f"\n[abuse] hostile clients: {run.examples} examples, accepted answers by kind "
        f"{run.accepted}, keys of failing examples {sorted(run.failed_keys)}"
    )
    assert_alive(cluster)
    for key in run.failed_keys:
        run.acked.values.pop(key, None)
    events = {n: logged_events(text) for n, text in cluster.log_since(run.log_mark).items()}
    events = {n: lines for n, lines in events.items() if lines}
    assert not events, f"membership changes during the hostile run: {events}"
    run.rss.sample()
    assert_rss_bounded(cluster, run.rss.peak, dict.fromkeys(cluster.names, 1))
    await assert_acked(cluster, run.acked)
    code = await cluster.restart_gracefully(cluster.names[1])
    assert code == 0, f"graceful leave exited with {code}"
    await cluster.restart_crashed(cluster.names[2])
    await assert_acked(cluster, run.acked)
