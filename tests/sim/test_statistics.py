"""Each statistic is declared once (issue 14): the declarations and :class:`NodeStatistics` match one
to one, every counter a node keeps reaches a declared statistic, and a peer's statistics body is
checked before it becomes a snapshot."""

from __future__ import annotations

import dataclasses
import typing
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from gossipkv import DecodeError, NodeStatistics
from gossipkv._admission import ByteBudget
from gossipkv._antientropy import AntiEntropyCounters
from gossipkv._connections import ConnectionTable
from gossipkv._handoff import OwnershipHandoffCounters
from gossipkv._histogram import LatencyHistogram
from gossipkv._kv import KVCounters
from gossipkv._outbox import TransportCounters
from gossipkv._reaper import ReaperCounters
from gossipkv._repair import RepairCounters
from gossipkv._statistics import BY_NAME, STATISTICS, statistics_body, statistics_from_body
from gossipkv._transfer import TransferCounters, TransferSource
from gossipkv.membership._gossiper import GossipCounters
from gossipkv.membership._records import ProbeCounters
from gossipkv.storage import StorageStatistics
from gossipkv.testing import open_sim_cluster

# Where each counter a node keeps shows up: holder -> attribute -> the statistic that reports it
# (``latency.<op>`` for a histogram). Every attribute of a holder is here or in NOT_REPORTED.
REPORTED: dict[type, dict[str, str]] = {
    KVCounters: {
        "gets": "kv_gets",
        "puts": "kv_puts",
        "deletes": "kv_deletes",
        "forwarded": "kv_forwarded",
        "put_plans": "kv_put_requests",
        "read_repairs": "read_repairs",
        "read_repairs_skipped": "read_repairs_skipped",
        "hints_stored": "hints_stored",
        "hints_delivered": "hints_delivered",
        "hints_expired": "hints_expired",
        "idempotent_hits": "idempotent_hits",
        "siblings_seen": "siblings_seen",
        "contexts_clamped": "contexts_clamped",
        "context_catch_ups": "context_catch_ups",
        "errors": "kv_errors",
        "get_latency": "latency.get",
        "put_latency": "latency.put",
        "replica_latency": "latency.replica",
    },
    GossipCounters: {
        "rounds": "gossip_rounds",
        "syns_received": "syns_received",
        "deltas_applied": "deltas_applied",
        "stale_ignored": "gossip_stale_ignored",
        "quarantined": "gossip_from_removed",
        "identity_conflicts": "identity_conflicts",
        "bad_values": "gossip_bad_values",
        "budget_truncations": "budget_truncations",
        "pause_guards": "pause_guards",
        "refused": "refusals",
    },
    ProbeCounters: {
        "probes": "probes",
        "probes_failed": "probes_failed",
        "indirect_probes": "indirect_probes",
        "suspicions": "suspicions",
        "refuted": "verdicts_refuted",
        "verdicts": "verdicts",
        "missed_nacks": "missed_nacks",
    },
    AntiEntropyCounters: {
        "rounds": "anti_entropy_rounds",
        "partitions_compared": "anti_entropy_partitions_compared",
        "partitions_differing": "anti_entropy_partitions_differing",
        "keys_repaired": "anti_entropy_keys_repaired",
        "errors": "anti_entropy_errors",
        "tree_roots_compared": "anti_entropy_tree_roots_compared",
        "branches_exchanged": "anti_entropy_branches_exchanged",
        "segments_exchanged": "anti_entropy_segments_exchanged",
        "trees_checked": "anti_entropy_trees_checked",
        "tree_mismatches": "anti_entropy_tree_mismatches",
    },
    OwnershipHandoffCounters: {
        "rounds": "ownership_handoff_rounds",
        "partitions_handed_off": "ownership_handoff_partitions",
        "keys_sent": "ownership_handoff_keys",
        "errors": "ownership_handoff_errors",
    },
    TransferCounters: {
        "partitions_filled": "partitions_filled",
        "keys_filled": "keys_filled",
        "pages": "transfer_pages",
        "errors": "transfer_errors",
        "bad_pages": "transfer_bad_pages",
    },
    RepairCounters: {
        "keys_repaired": "quarantine_repairs",
        "hints_rewritten": "quarantine_repairs",
        "dropped": "quarantine_dropped",
        "errors": "quarantine_repair_errors",
    },
    ReaperCounters: {
        "rounds": "tombstone_reaper_rounds",
        "reaped": "tombstones_reaped",
        "checked": "tombstones_checked",
        "blocked": "tombstones_blocked",
        "errors": "tombstone_reaper_errors",
    },
    TransportCounters: {
        "frames_in": "frames_in",
        "frames_out": "frames_out",
        "bytes_in": "bytes_in",
        "bytes_out": "bytes_out",
        "queued_bytes": "outbound_queued_bytes",
        "dropped": "dropped_frames",
        "refused": "refused_handshakes",
        "refusals": "refusals",
    },
    ConnectionTable: {
        "accepted": "accepted_connections",
        "peer_channels": "peer_connections",
        "client_channels": "client_connections",
        "watches": "watches",
        "refusals": "refusals",
    },
    TransferSource: {"pages_sent": "transfer_pages_sent"},
    ByteBudget: {"used": "inflight_bytes", "waits": "admission_waits"},
    StorageStatistics: {
        "engine": "storage_engine",
        "keys": "storage_keys",
        "segments": "storage_segments",
        "disk_bytes": "storage_disk_bytes",
        "live_bytes": "storage_live_bytes",
        "fsyncs": "storage_fsyncs",
        "page_cache_reads": "storage_page_cache_reads",
        "pending_writes": "storage_pending_writes",
        "compactions": "storage_compactions",
        "compaction_errors": "storage_compaction_errors",
        "bytes_reclaimed": "storage_bytes_reclaimed",
        "corrupt_records_skipped": "storage_corrupt_records_skipped",
        "torn_tail_truncations": "storage_torn_tail_truncations",
        "quarantined_records": "quarantined_records",
        "recovery_seconds": "storage_recovery_seconds",
        "delete_markers": "storage_delete_markers",
    },
}

# Attributes of the holders that are not statistics of a node, and why.
NOT_REPORTED: dict[type, dict[str, str]] = {
    TransportCounters: {"on_drain": "a callback"},
    ConnectionTable: {
        "limits": "configuration",
        "max_connections": "configuration (the limit in force)",
        "_by_source": "per-address bookkeeping behind the source limit",
        "_by_member": "per-member bookkeeping behind the peer limit",
    },
    TransferSource: {
        "_table": "state: the partition table it serves pages by",
        "_keys": "state: the store's key listing",
        "_clocks": "state: the store's clock reader",
        "_listings": "state: a cache of listings being paged through",
        "handed": "state: confirmed complete pulls (ownership handoff reads it)",
    },
    ByteBudget: {
        "capacity": "configuration (KVConfig.max_inflight_bytes)",
        "_external": "a reader of bytes held elsewhere (outbound_queued_bytes)",
        "_lot": "the waiters (admission_waits counts them)",
    },
    # Engine-level detail for storage tuning: StorageEngine.statistics() and `gossipkv bench
    # storage` show them; a node reports the operational ones above.
    StorageStatistics: {
        "fsync": "configuration",
        "records": "engine detail (keys plus superseded records)",
        "puts": "engine detail (kv_puts counts the writes)",
        "gets": "engine detail (kv_gets counts the reads)",
        "deletes": "engine detail (tombstones_reaped counts the deletes)",
        "commit_batches": "group-commit tuning",
        "max_commit_batch": "group-commit tuning",
        "mean_commit_batch": "group-commit tuning",
        "hint_files_loaded": "engine detail of the hints store",
    },
}


def _attributes(holder: type) -> set[str]:
    """The counters a holder keeps: its dataclass fields, or what its ``__init__`` sets."""
    if dataclasses.is_dataclass(holder):
        return {f.name for f in dataclasses.fields(holder)}
    code = holder.__init__.__code__  # type: ignore[misc]
    import inspect
    import re

    source = inspect.getsource(code)
    return set(re.findall(r"self\.(\w+)(?::[^=]*)? = ", source))


def test_every_field_has_exactly_one_declaration_and_back() -> None:
    fields = [f.name for f in dataclasses.fields(NodeStatistics)]
    names = [s.name for s in STATISTICS]
    assert len(names) == len(set(names)), [n for n, k in Counter(names).items() if k > 1]
    assert set(fields) == set(names), set(fields) ^ set(names)
    assert NodeStatistics.declarations() is STATISTICS


def test_declarations_agree_with_the_field_types() -> None:
    hints = typing.get_type_hints(NodeStatistics)
    metrics = [s.metric for s in STATISTICS if s.metric]
    assert len(metrics) == len(set(metrics))
    for s in STATISTICS:
        hint = hints[s.name]
        if s.kind == "counter":
            assert hint is int, s.name
        elif s.kind == "gauge":
            assert set(typing.get_args(hint) or (hint,)) <= {int, float, bool, type(None)}, s.name
        elif s.kind in ("counters", "gauges"):
            assert hint == dict[str, int] and s.label, s.name
        elif s.kind == "histograms":
            assert hint == dict[str, dict[str, object]] and s.label, s.name
        assert s.help.strip() and s.unit in ("", "seconds", "bytes"), s.name


def test_the_docstring_documents_every_statistic() -> None:
    doc = NodeStatistics.__doc__ or ""
    for s in STATISTICS:
        assert f"\n      {s.name}: {s.help}" in doc, s.name


@pytest.mark.parametrize("holder", list(REPORTED), ids=lambda h: h.__name__)
def test_every_counter_of_a_holder_is_declared(holder: type) -> None:
    reported, excused = REPORTED[holder], NOT_REPORTED.get(holder, {})
    attributes = _attributes(holder)
    assert attributes, holder
    undeclared = attributes - set(reported) - set(excused)
    assert not undeclared, f"{holder.__name__}: declare these (or say why not): {undeclared}"
    assert not (set(reported) | set(excused)) - attributes, "stale entries"
    for name in reported.values():
        assert name.split(".")[0] in BY_NAME, name


def _bump(obj: Any, attr: str) -> None:
    value = getattr(obj, attr)
    if isinstance(value, LatencyHistogram):
        value.observe(0.003)
    elif isinstance(value, dict):
        value["probe"] = value.get("probe", 0) + 7
    else:
        setattr(obj, attr, value + 7)


def _read(stats: NodeStatistics, name: str) -> object:
    if name.startswith("latency."):
        return stats.latency[name.split(".", 1)[1]]["count"]
    value = getattr(stats, name)
    if isinstance(value, dict):
        return value.get("probe", 0) + value.get("gossip_probe", 0)
    return value


async def test_every_counter_reaches_the_snapshot(autojump_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(1, seed=1) as c:
        node = c.nodes["n1"]
        with trio.fail_after(30):
            await node.wait_ready()
        kv = node._service()
        holders: dict[type, Any] = {
            KVCounters: kv.counters,
            GossipCounters: node._runtime().gossiper.counters,
            AntiEntropyCounters: kv.anti_entropy.counters,
            OwnershipHandoffCounters: kv.ownership_handoff.counters,
            TransferCounters: kv.transfers.counters,
            RepairCounters: kv.repair.counters,
            ReaperCounters: kv.reaper.counters,
            TransportCounters: node._rt.counters,
            ConnectionTable: node._rt.conns,
            TransferSource: kv.transfer_source,
            ByteBudget: kv.admission,
        }
        problems = []
        for holder, obj in holders.items():
            for attr, name in REPORTED[holder].items():
                before = _read(node.statistics(), name)
                _bump(obj, attr)
                after = _read(node.statistics(), name)
                if after == before:
                    problems.append(f"{holder.__name__}.{attr} does not reach {name}")
        # Whatever the node reports survives the wire body.
        bumped = node.statistics()
        assert statistics_from_body(statistics_body(bumped)) == bumped
        # The storage snapshot is made by the engine: fake one with every value changed.
        real = kv.storage.statistics()
        moved = {
            f.name: value + 7 if isinstance(value, (int, float)) else f"{value}x"
            for f in dataclasses.fields(StorageStatistics)
            for value in [getattr(real, f.name)]
        }
        kv.storage.statistics = lambda: dataclasses.replace(real, **moved)  # type: ignore[method-assign]
        faked = node.statistics()
        for attr, name in REPORTED[StorageStatistics].items():
            if getattr(bumped, name) == getattr(faked, name):
                problems.append(f"StorageStatistics.{attr} does not reach {name}")
        assert not problems, "\n".join(problems)


def _body(**over: object) -> dict[str, object]:
    stats = NodeStatistics(
        "n1", "h:1", "c", 1, "up", None, True, {"up": 1}, *([0] * 9), {}, {}, 0, 0.0, 0.0,
        None, 0, 3, {}, 0, 0, 0, 0, 0, 0, 0, 0, 0, {}, 0,
    )  # fmt: skip
    body = statistics_body(stats)
    body.update(over)
    return body


@pytest.mark.parametrize(
    "over",
    [
        {"kv_gets": "7"},
        {"kv_gets": True},
        {"converged": 1},
        {"members_by_status": {"up": "1"}},
        {"members_by_status": [1]},
        {"table_epoch": [1, "2"]},
        {"leader": 5},
        {"latency": {"get": 3}},
        {"latency": {"get": {"buckets": [0.1], "counts": [1], "sum": 0.1, "count": 1}}},
        {"max_loop_lag": float("nan")},
    ],
    ids=repr,
)
def test_a_malformed_body_is_a_decode_error(over: dict[str, object]) -> None:
    with pytest.raises(DecodeError) as info:
        statistics_from_body(_body(**over))
    assert info.value.reason == "bad_field"


def test_a_missing_required_field_is_a_decode_error_and_unknown_keys_are_ignored() -> None:
    body = _body(from_the_future=1)
    assert statistics_from_body(body).name == "n1"
    del body["name"]
    with pytest.raises(DecodeError):
        statistics_from_body(body)
    older = _body()
    del older["transfer_pages_sent"]  # a field a peer of an older version does not send
    assert statistics_from_body(older).transfer_pages_sent == 0
