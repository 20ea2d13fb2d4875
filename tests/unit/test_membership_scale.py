"""Work the membership core does per exchange and per change, counted (never timed): what must
not grow with the size of the view at every peer of a large cluster."""

from __future__ import annotations

from collections.abc import Iterator, KeysView, ValuesView

import pytest

from gossipkv._messages import DigestEntry, NodeDelta, VersionedEntry
from gossipkv.membership._duties import LeaderDuties
from gossipkv.membership._gossiper import GossipConfig, Gossiper
from gossipkv.membership._state import Namespace
from gossipkv.membership._table import MemberTable, Peer

MEMBERS = 1000


class _NoWholeView(dict[str, Namespace]):
    """A view that fails the test when anything goes through all of it."""

    def items(self) -> None:  # type: ignore[override]
        raise AssertionError("went through the whole view")

    def values(self) -> ValuesView[Namespace]:
        raise AssertionError("went through the whole view")

    def keys(self) -> KeysView[str]:
        raise AssertionError("went through the whole view")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("went through the whole view")


def _copy(ns: Namespace) -> Namespace:
    out = Namespace(ns.node_id, ns.generation)
    for key, (value, version) in ns.entries.items():
        out.put(key, value, version)
    return out


def _gossiper(name: str, *, bootstrap: bool = False) -> Gossiper:
    return Gossiper(
        GossipConfig(),
        node_id=name,
        address=f"{name}:1",
        generation=1_000,
        seeds=[],
        now=0.0,
        bootstrap=bootstrap,
    )


def _know(t: MemberTable, ns: Namespace) -> None:
    t.add(_copy(ns))
    t.peers[ns.node_id] = Peer()


def _member(i: int) -> Namespace:
    ns = Namespace(f"m{i}", generation=10)
    for key, value in (("addr", f"m{i}:1"), ("status", "up"), ("up", i + 2), ("view", "v")):
        ns.set(key, value)
    return ns


def _pair() -> tuple[Gossiper, Gossiper]:
    """Two peers that know the same ``MEMBERS`` members, and each other, alike."""
    a, b = _gossiper("a"), _gossiper("b")
    ta, tb = a._table, b._table
    for i in range(MEMBERS):
        ns = _member(i)
        _know(ta, ns)
        _know(tb, ns)
    _know(ta, tb.me)
    _know(tb, ta.me)
    return a, b


def test_an_exchange_looks_only_at_the_members_of_the_buckets_that_differ() -> None:
    a, b = _pair()
    # b learns something of one member that a does not know yet.
    b._table.namespaces["m7"].set("meta:x", "1")
    syn = b.syn()
    assert len(syn.view) > 1
    ta, tb = a._table, b._table
    ta.namespaces = _NoWholeView(ta.namespaces)
    tb.namespaces = _NoWholeView(tb.namespaces)

    reply = a.on_syn(syn, now=1.0)
    assert len(reply.buckets) == 1, "only m7's bucket differs"
    assert "m7" in {e.node_id for e in reply.digest}
    assert len(reply.digest) < MEMBERS // 8, "the entries of that bucket, not of everyone"

    ack = b.on_syn_ack(reply, now=1.0, syn=syn)
    assert [nd.node_id for nd in ack.delta] == ["m7"]
    assert a.on_ack(ack, now=1.0) is None
    assert ta.namespaces["m7"].get("meta:x") == "1"
    assert ta.summary.buckets(len(syn.view)) == tb.summary.buckets(len(syn.view))


def test_a_view_hash_learned_leaves_the_derived_lists_alone_an_address_does_not() -> None:
    a, _ = _pair()
    t = a._table
    live, _ = t.targets()
    visible = t.visible()
    before = t.changes
    ns = t.namespaces["m3"]
    a.apply_delta(
        (NodeDelta("m3", 10, 0, ns.max_version, 5, (VersionedEntry("view", "w", 5),)),), 1.0
    )
    assert t.changes > before, "news all the same (it is gossiped on)"
    assert t.targets()[0] is live and t.visible() is visible, "not rebuilt"
    a.apply_delta((NodeDelta("m3", 10, 0, 5, 6, (VersionedEntry("addr", "m3:2", 6),)),), 1.0)
    assert "m3:2" in t.targets()[0] and "m3:1" not in t.targets()[0]


@pytest.mark.parametrize("leader", [False, True])
def test_only_the_leader_looks_at_the_whole_view_for_a_view_hash_learned(
    leader: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _gossiper("a", bootstrap=leader)
    t = a._table
    for i in range(20):
        _know(t, _member(i))
    a.evaluate(0.0, 1_000)
    assert (a.leader() == "a") is leader  # a bootstrapped holds up_number 1; else m0 leads
    looks: list[str] = []
    original = LeaderDuties.publish_view

    def counted(self: LeaderDuties, now: float) -> None:
        looks.append("look")
        original(self, now)

    monkeypatch.setattr(LeaderDuties, "publish_view", counted)
    a.evaluate(0.2, 1_000)
    assert looks == [], "nothing changed"
    ns = t.namespaces["m5"]
    a.apply_delta(
        (NodeDelta("m5", 10, 0, ns.max_version, 9, (VersionedEntry("view", "w", 9),)),), 0.3
    )
    a.evaluate(0.4, 1_000)
    assert len(looks) == (1 if leader else 0), "the leader checks convergence again"
    a.apply_delta((NodeDelta("m5", 10, 0, 9, 10, (VersionedEntry("status", "leaving", 10),)),), 0.5)
    a.evaluate(0.6, 1_000)
    assert len(looks) == (2 if leader else 1), "a member's status moved: everyone looks"


def test_the_leader_is_found_again_only_after_a_structural_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _ = _pair()
    t = a._table
    assert a.leader() == "m0"
    looks: list[str] = []
    original = MemberTable.visible

    def counted(self: MemberTable) -> list[tuple[str, Namespace]]:
        looks.append("look")
        return original(self)

    monkeypatch.setattr(MemberTable, "visible", counted)
    ns = t.namespaces["m0"]
    a.apply_delta(
        (NodeDelta("m0", 10, 0, ns.max_version, 9, (VersionedEntry("view", "w", 9),)),), 1.0
    )
    assert a.leader() == "m0" and looks == [], "a view hash moves no leader"
    a.apply_delta((NodeDelta("m0", 10, 0, 9, 10, (VersionedEntry("status", "left", 10),)),), 1.0)
    assert a.leader() == "m1" and looks == ["look"]


def test_a_joiners_syn_is_answered_with_digest_entries_for_the_budget_not_the_view(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _ = _pair()
    joiner = _gossiper("j")
    syn = joiner.syn()
    assert len(syn.view) == 1, "a joiner knows itself only: one bucket, which differs"
    made: list[str] = []
    original = Namespace.digest

    def counted(self: Namespace) -> DigestEntry:
        made.append(self.node_id)
        return original(self)

    monkeypatch.setattr(Namespace, "digest", counted)
    reply = a.on_syn(syn, now=1.0)
    assert reply.buckets == () and 100 < len(reply.digest) < MEMBERS
    assert len(made) <= 2 * len(reply.digest) + 2, "entries made only to fill the budget"


def test_the_addresses_persisted_are_those_of_the_member_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _ = _pair()
    t = a._table
    t.peers["m1"].liveness = "down"
    t.namespaces["m2"].set("status", "left")
    t.namespaces["m3"].set("addr", "not an address")
    expected = sorted({m.address for m in a.members(0.0) if m.address and not m.is_self})
    monkeypatch.setattr(Gossiper, "members", None)  # persisting builds no rows
    assert a.member_addresses() == expected
    assert "m1:1" in expected and "m2:1" in expected and "m3:1" not in expected


def test_a_moving_view_is_published_once_it_holds_still() -> None:
    # In a join storm every member's view moves at each evaluation; each publication of its hash
    # is news every peer must hear of. A view is published once it held still for half a
    # round (or after five rounds of moving), so the storm's hashes do not crowd out its news.
    a = _gossiper("a", bootstrap=True)
    t = a._table
    duties = a._duties
    half = t.config.gossip_interval / 2
    duties.publish_view(0.0)
    first = t.me.get("view")
    assert first is not None, "the first view is published at once"
    published = [first]
    now = 0.0
    for i in range(4):  # a member turns up at every evaluation, 0.1 s apart
        _know(t, _member(i))
        now += 0.1
        duties.publish_view(now)
        if t.me.get("view") != published[-1]:
            published.append(t.me.get("view"))
    assert published == [first], "nothing published while the view moves"
    assert duties.view_due() == now + half
    assert not duties.converged(), "a view that waits to be published is no convergence"
    duties.publish_view(now + half)
    assert t.me.get("view") not in (None, first), "published once it held still"
    assert duties.view_due() == float("inf")
    moving = now + half
    for i in range(4, 60):  # it never holds still: published anyway after five rounds
        _know(t, _member(i))
        moving += 0.05
        before = t.me.get("view")
        duties.publish_view(moving)
        if t.me.get("view") != before:
            break
    assert moving - (now + half) <= 5 * t.config.gossip_interval + 0.1
    assert i < 59


def test_a_leader_whose_view_moved_is_not_converged_until_it_publishes() -> None:
    # The others still show the hash this peer published before its view moved: that is no
    # convergence on the view it now has (its decisions would rest on a view nobody confirmed).
    a = _gossiper("a", bootstrap=True)
    t = a._table
    for i in range(3):
        _know(t, _member(i))
    duties = a._duties
    duties.publish_view(0.0)
    view = t.me.get("view")
    for i in range(3):
        t.namespaces[f"m{i}"].set("view", view)
    assert duties.converged()
    newcomer = _member(3)  # admitted elsewhere; it shows the hash the others show
    newcomer.set("view", view)
    _know(t, newcomer)
    duties.publish_view(0.1)
    assert t.me.get("view") == view, "the moved view waits to be published"
    assert not duties.converged()
    duties.publish_view(duties.view_due())
    assert t.me.get("view") != view and not duties.converged(), "the others have not seen it yet"
