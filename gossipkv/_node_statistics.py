"""The statistics snapshot of a running node: what :meth:`Node.statistics` returns.

One function reads every part that counts something (the membership core, the transport and
connection counters, the data path and its background work, the storage engine, the loops'
lag and latencies) and fills the :class:`NodeStatistics` that :mod:`gossipkv._statistics`
declares. It only reads: the parts keep their own counters.
"""

from __future__ import annotations

from collections import Counter

from ._connections import ConnectionTable
from ._histogram import LatencyHistogram
from ._kv import KeyValueService
from ._membership_runtime import LoopLag
from ._outbox import TransportCounters
from ._statistics import NodeStatistics
from .membership._gossiper import GossipConfig, Gossiper


def node_statistics(
    *,
    g: Gossiper,
    kv: KeyValueService,
    config: GossipConfig,
    address: str,
    counters: TransportCounters,
    conns: ConnectionTable,
    lag: LoopLag,
    gossip_latency: LatencyHistogram,
    leave: dict[str, object],
    wiped: int,
    now: float,
) -> NodeStatistics:
    """A new snapshot of one node's state and counters.

    Args:
      g: the membership core.
      kv: the data path.
      config: the membership settings (the cluster name; N before there is a table).
      address: the address the node advertises.
      counters: the transport's frame, byte, drop and refusal counters.
      conns: the connection table (connections, accepts, watches).
      lag: the evaluation loop's lateness.
      gossip_latency: round trips of gossip exchanges.
      leave: the progress of a leave under way (empty when none).
      wiped: keys dropped by replica wipes.
      now: ``trio.current_time()``.
    """
    rows = g.members(now)
    c = g.counters
    probes = g.probe_counters
    table = g.table()
    kvc = kv.counters
    store = kv.storage.statistics()
    return NodeStatistics(
        name=g.node_id,
        address=address,
        cluster=config.cluster,
        generation=g.generation,
        status=g.status,
        leader=g.leader(),
        converged=g.converged(),
        members_by_status=dict(Counter(r.status for r in rows)),
        gossip_rounds=c.rounds,
        syns_received=c.syns_received,
        deltas_applied=c.deltas_applied,
        budget_truncations=c.budget_truncations,
        pause_guards=c.pause_guards,
        probes=probes.probes,
        probes_failed=probes.probes_failed,
        indirect_probes=probes.indirect_probes,
        suspicions=probes.suspicions,
        verdicts=probes.verdicts,
        verdicts_refuted=probes.refuted,
        missed_nacks=probes.missed_nacks,
        local_health=g.local_health,
        frames_in=counters.frames_in,
        frames_out=counters.frames_out,
        bytes_in=counters.bytes_in,
        bytes_out=counters.bytes_out,
        dropped_frames=dict(counters.dropped),
        refused_handshakes=dict(counters.refused),
        connections=conns.peer_channels + conns.client_channels,
        peer_connections=conns.peer_channels,
        client_connections=conns.client_channels,
        refusals={
            **counters.refusals,
            **{f"gossip_{k}": v for k, v in g.counters.refused.items()},
        },
        max_loop_lag=lag.max,
        last_loop_lag=lag.last,
        table_epoch=None if table is None else list(table.epoch),
        partitions=0 if table is None else table.q,
        replicas=config.replicas if table is None else table.n,
        partitions_owned={} if table is None else dict(sorted(table.replica_counts().items())),
        kv_gets=kvc.gets,
        kv_puts=kvc.puts,
        kv_deletes=kvc.deletes,
        kv_forwarded=kvc.forwarded,
        read_repairs=kvc.read_repairs,
        hints_pending=kv.hints_pending,
        hints_stored=kvc.hints_stored,
        hints_delivered=kvc.hints_delivered,
        siblings_seen=kvc.siblings_seen,
        kv_errors=dict(kvc.errors),
        storage_keys=store.keys,
        anti_entropy_rounds=kv.anti_entropy.counters.rounds,
        anti_entropy_partitions_compared=kv.anti_entropy.counters.partitions_compared,
        anti_entropy_partitions_differing=kv.anti_entropy.counters.partitions_differing,
        anti_entropy_keys_repaired=kv.anti_entropy.counters.keys_repaired,
        anti_entropy_errors=kv.anti_entropy.counters.errors,
        anti_entropy_tree_roots_compared=kv.anti_entropy.counters.tree_roots_compared,
        anti_entropy_branches_exchanged=kv.anti_entropy.counters.branches_exchanged,
        anti_entropy_segments_exchanged=kv.anti_entropy.counters.segments_exchanged,
        anti_entropy_trees_checked=kv.anti_entropy.counters.trees_checked,
        anti_entropy_tree_mismatches=kv.anti_entropy.counters.tree_mismatches,
        ownership_handoff_rounds=kv.ownership_handoff.counters.rounds,
        ownership_handoff_partitions=kv.ownership_handoff.counters.partitions_handed_off,
        ownership_handoff_keys=kv.ownership_handoff.counters.keys_sent,
        ownership_handoff_errors=kv.ownership_handoff.counters.errors,
        leave=dict(leave),
        contexts_clamped=kvc.contexts_clamped,
        context_catch_ups=kvc.context_catch_ups,
        quarantined_records=store.quarantined_records + kv.hints.statistics().quarantined_records,
        quarantine_repairs=kv.repair.counters.keys_repaired + kv.repair.counters.hints_rewritten,
        quarantine_pending=kv.repair.pending,
        inflight_bytes=kv.admission.used,
        admission_waits=kv.admission.waits,
        partitions_filling=kv.transfers.pending,
        partitions_filled=kv.transfers.counters.partitions_filled,
        keys_filled=kv.transfers.counters.keys_filled,
        transfer_errors=kv.transfers.counters.errors,
        transfer_bad_pages=kv.transfers.counters.bad_pages,
        transfers=[
            {
                "partition": t.partition,
                "from": t.source,
                "to": g.node_id,
                "keys_done": t.keys_done,
                "keys_total": t.keys_total,
                "rate": round(t.rate(now), 1),
                "error": t.error,
            }
            for t in kv.transfers.in_flight()
        ],
        under_replicated=g.under_replicated(),
        tombstone_grace=kv.reaper.grace if kv.reaper.enabled else None,
        tombstones_pending=kv.reaper.pending,
        tombstones_reaped=kv.reaper.counters.reaped,
        hints_expired=kvc.hints_expired,
        replica_wiped=wiped,
        replicas_effective=0 if table is None else min(len(o) for o in table.owners),
        read_quorum=kv.config.r,
        write_quorum=kv.config.w,
        latency={
            "get": kvc.get_latency.snapshot(),
            "put": kvc.put_latency.snapshot(),
            "replica": kvc.replica_latency.snapshot(),
            "gossip_round": gossip_latency.snapshot(),
        },
        accepted_connections=conns.accepted,
        watches=conns.watches,
        outbound_queued_bytes=counters.queued_bytes,
        gossip_stale_ignored=c.stale_ignored,
        gossip_from_removed=c.quarantined,
        gossip_bad_values=c.bad_values,
        identity_conflicts=c.identity_conflicts,
        kv_put_requests=kvc.put_plans,
        idempotent_hits=kvc.idempotent_hits,
        read_repairs_skipped=kvc.read_repairs_skipped,
        storage_engine=store.engine,
        storage_disk_bytes=store.disk_bytes,
        storage_live_bytes=store.live_bytes,
        storage_segments=store.segments,
        storage_pending_writes=store.pending_writes,
        storage_delete_markers=store.delete_markers,
        storage_fsyncs=store.fsyncs,
        storage_page_cache_reads=store.page_cache_reads,
        storage_compactions=store.compactions,
        storage_compaction_errors=store.compaction_errors,
        storage_bytes_reclaimed=store.bytes_reclaimed,
        storage_corrupt_records_skipped=store.corrupt_records_skipped,
        storage_torn_tail_truncations=store.torn_tail_truncations,
        storage_recovery_seconds=store.recovery_seconds,
        quarantine_dropped=kv.repair.counters.dropped,
        quarantine_repair_errors=kv.repair.counters.errors,
        tombstone_reaper_rounds=kv.reaper.counters.rounds,
        tombstones_checked=kv.reaper.counters.checked,
        tombstones_blocked=kv.reaper.counters.blocked,
        tombstone_reaper_errors=kv.reaper.counters.errors,
        transfer_pages=kv.transfers.counters.pages,
        transfer_pages_sent=kv.transfer_source.pages_sent,
    )
