"""Coordinated writes: a put is checked and routed once (:func:`~gossipkv._replication.plan_put`),
stored at this replica, and sent to the others; it is acknowledged once W copies are stored.

A peer that holds no replica of the key forwards the put to the first reachable one. A retried
client request (same client id and sequence) gets its first result (Idempotent Receiver).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import trio

from . import _dvv
from ._errors import (
    GossipKVError,
    InvalidContext,
    InvalidKey,
    RemoteError,
    TransportError,
    Unavailable,
    ValueNotEncodable,
    ValueTooLarge,
    error_code,
)
from ._fanout import Fanout, deliver
from ._kv_model import Clock, PutResult, decode_context, visible
from ._messages import KvPut, KvResult, ReplicaPut
from ._replica_calls import ReplicaCalls
from ._replication import PutPlan, plan_put, write_acks
from .storage._base import check_value

log = logging.getLogger("gossipkv.kv")


class Writes:
    """The writes this peer coordinates (or forwards).

    Args:
      calls: the replicas of a key, and the requests that reach them.
      stamp: a hybrid logical clock (``last_write_wins`` and deletes carry its stamp).
    """

    def __init__(self, calls: ReplicaCalls, *, stamp: Callable[[], int]) -> None:
        self._calls = calls
        self._replica = calls.replica
        self._config = calls.config
        self._counters = calls.counters
        self._stamp = stamp
        self._results: OrderedDict[str, PutResult] = OrderedDict()

    async def put(self, request: KvPut) -> PutResult:
        """Write ``request.value`` (or a tombstone) with the causal context of an earlier read.

        Raises:
          ClusterNotReady, QuorumNotReached, Unavailable, TooManySiblings, ValueTooLarge,
          InvalidContext, StorageError.
        """
        plan = self.plan(request)
        if isinstance(plan, PutResult):
            return plan
        return await self.run(plan)

    def plan(self, request: KvPut) -> PutPlan | PutResult:
        """Check a put and decide where it runs; a retried request gets its first result."""
        self._counters.put_plans += 1
        replica = self._replica
        key = request.key
        try:
            replica.check_key(key)
            ctx = decode_context(request.context, replica.limits)
            size = 0 if request.delete else check_value(request.value, replica.limits)
        except (InvalidKey, InvalidContext, ValueTooLarge, ValueNotEncodable) as exc:
            replica.refusals[error_code(exc)] += 1
            raise
        rid = f"{request.client_id}:{request.seq}" if request.client_id else ""
        if rid and rid in self._results:
            self._counters.idempotent_hits += 1
            self._results.move_to_end(rid)
            return self._results[rid]
        targets, n = self._calls.targets(key)
        stamped = self._config.last_write_wins or request.delete
        return plan_put(
            request,
            node_id=replica.node_id,
            ctx=ctx,
            size=size,
            targets=targets,
            n=n,
            default_w=self._config.w,
            stamp=self._stamp if stamped else None,
            started=trio.current_time(),
        )

    async def run(self, plan: PutPlan) -> PutResult:
        """Carry out a planned put: forward it, or store it and wait for W copies."""
        admission = self._calls.admission
        reserved = self._calls.estimate(plan.key, plan.size)
        await admission.acquire(reserved)
        if plan.forward_to:
            try:
                return await self._forward(plan)
            finally:
                admission.release(reserved)
        try:
            clock, fan = await self._store_and_replicate(plan, reserved)
        except BaseException:
            admission.release(reserved)
            raise
        await fan.wait_enough()
        return self._outcome(plan, clock, fan)

    def start(self, request: KvPut, on_result: Callable[[PutResult | GossipKVError], None]) -> None:
        """Start a put without waiting for it; ``on_result`` is called once, when W copies are
        stored (or every replica answered), with the result or the error, and must not block.

        The put is planned (checked, its replicas chosen) once. When nothing needs to wait
        (this peer is a replica with an engine that never waits, no write to the key is in
        progress, no hint is needed and the memory budget has room) it is stored at once and its
        replies are gathered by callbacks; otherwise the same plan goes on in a task.

        Raises:
          the argument errors of :meth:`put`, at once.
        """
        plan = self.plan(request)
        if isinstance(plan, PutResult):
            on_result(plan)
            return
        replica, admission = self._replica, self._calls.admission
        if not plan.forward_to and replica.can_store_now(plan):
            reserved = self._calls.estimate(plan.key, plan.size)
            if admission.try_acquire(reserved):
                try:
                    clock = replica.store_now(plan)
                except BaseException:
                    admission.release(reserved)
                    raise
                if clock is not None:
                    outcome = partial(self._outcome, plan, clock)
                    self._replicate(plan, clock, reserved, partial(deliver, outcome, on_result))
                    return
                admission.release(reserved)
        self._calls.nursery_or_fail().start_soon(self._finish, plan, on_result)

    async def _finish(
        self, plan: PutPlan, on_result: Callable[[PutResult | GossipKVError], None]
    ) -> None:
        try:
            result: PutResult | GossipKVError = await self.run(plan)
        except GossipKVError as exc:
            result = exc
        except Exception as exc:
            # A bug answers one request with an error; it never takes the data path down.
            log.error("put of %r failed", plan.key, exc_info=exc)
            result = RemoteError("internal", f"internal error: {exc!r}")
        on_result(result)

    async def _forward(self, plan: PutPlan) -> PutResult:
        """Hand a put to a replica of its key (this peer is none): the first reachable one, and
        the next when it cannot be reached (a dead owner not yet detected) or answers that it
        reaches no replica, within the same request.

        Raises:
          Unavailable: no replica took the write.
          QuorumNotReached, and the other errors of :meth:`put`: as the replica reported them.
        """
        self._counters.forwarded += 1
        key = plan.key
        message = dataclasses.replace(plan.request, forwarded=True)
        failures: list[str] = []
        for target in [m for m, _ in plan.targets if m != self._replica.node_id]:
            # The replica itself waits up to a replica timeout for its acks: allow that and more.
            with trio.move_on_after(self._config.replica_timeout * 3):
                try:
                    reply = await self._calls.send(target, message)
                except (TransportError, Unavailable) as exc:
                    failures.append(f"{target}: {exc}")
                    continue
                if not isinstance(reply, KvResult):
                    raise Unavailable(f"unexpected reply {reply.TAG} from {target}")
                return PutResult(reply.key, list(reply.values), reply.context, reply.more)
            failures.append(f"{target}: no answer in time")
        raise Unavailable(f"no replica of {key!r} took the write: {'; '.join(failures)}")

    async def _store_and_replicate(self, plan: PutPlan, reserved: int) -> tuple[Clock, Fanout]:
        """Store a put here and start replicating it (the fan-out keeps ``reserved``)."""
        replica, key = self._replica, plan.key
        stored = replica.store_now(plan) if replica.can_store_now(plan) else None
        if stored is None:
            replica.count_put(plan)
            async with replica.lock(key):
                local = await replica.storage.get(key)
                if not _dvv.context_within(plan.ctx, local):
                    local = await self._catch_up(key, local)
                stored = replica.update(plan, local)
                await replica.storage.put(key, stored)
                replica.changed(key, stored)
                if plan.hint_for and replica.keep_hint is not None:
                    await replica.keep_hint(plan.hint_for, key, stored)
        return stored, self._replicate(plan, stored, reserved)

    async def _catch_up(self, key: str, local: Clock | None) -> Clock | None:
        """Merge the other reachable owners' clocks of ``key`` into this replica's (under the
        key lock): a write's context claimed dots this replica has not received yet, and it can
        only honour the claims it can check. Owners that do not answer in time are skipped."""
        self._counters.context_catch_ups += 1
        replica = self._replica
        try:
            targets, _ = self._calls.targets(key)
        except GossipKVError:
            return local
        others = [m for m, hint in targets if m != replica.node_id and not hint]
        clocks = [c for c in (await self._calls.gather(key, others)).values() if c is not None]
        if not clocks:
            return local
        merged = replica.synced(_dvv.sync_all(clocks), local)
        if merged is None:
            return local
        await replica.storage.put(key, merged)
        replica.changed(key, merged)
        return merged

    def _outcome(self, plan: PutPlan, clock: Clock, fan: Fanout) -> PutResult:
        write_acks(fan.tally, plan.need)
        result = PutResult(plan.key, *visible(clock, self._replica.limits))
        if plan.started:
            self._counters.put_latency.observe(trio.current_time() - plan.started)
        self._counters.siblings_seen += max(0, _dvv.size(clock) - 1)
        if plan.rid:
            self._results[plan.rid] = result
            while len(self._results) > self._config.idempotency_cache:
                self._results.popitem(last=False)
        return result

    def _replicate(
        self,
        plan: PutPlan,
        clock: Clock,
        reserved: int,
        on_enough: Callable[[Fanout], None] | None = None,
    ) -> Fanout:
        """Send ``clock`` to the other replicas; ``enough`` once W-1 acked (or all answered).
        The fan-out gives back the ``reserved`` memory once every replica answered."""
        calls, others = self._calls, plan.others
        fan = calls.fanout(
            [m for m, _ in others],
            max(plan.need - 1, 0),
            on_enough=on_enough,
            release=partial(calls.admission.release, reserved),
        )
        try:
            encoded = self._replica.encoded(plan.key, clock) if others else b""
            for member, hint in others:
                message = ReplicaPut(plan.key, encoded, hint)
                if not calls.start(fan, member, message, calls.on_put_reply):
                    calls.nursery_or_fail().start_soon(
                        calls.put_to, fan, member, plan.key, clock, hint
                    )
        except BaseException:
            fan.release = None  # the caller gives the reservation back
            raise
        calls.expiry.track(fan)
        fan.check()
        return fan

    async def restore(self, key: str, raw: bytes) -> dict[str, object]:
        """Merge a whole clock (``raw``, as replicas exchange it) into every owner of ``key``
        (stand-ins keep a hint for an unreachable owner), as read repair does: a ``sync``, so
        siblings stay siblings and nothing newer is lost (``gossipkv restore``).

        Returns:
          ``{"key", "acks", "owners"}``: how many owners (or stand-ins) stored it.

        Raises:
          RemoteError: ``invalid_clock``. InvalidKey, KeyTooLarge, ClusterNotReady.
          Unavailable: no owner stored it.
        """
        replica = self._replica
        replica.check_key(key)
        clock = replica.clock_from_wire(raw)
        targets, n = self._calls.targets(key)
        acks = 0
        errors: list[str] = []

        async def store(member: str, hint_for: str) -> None:
            nonlocal acks
            try:
                await self._calls.write(member, key, clock, hint_for)
                acks += 1
            except GossipKVError as exc:
                replica.count_error(exc)
                errors.append(f"{member}: {exc}")

        async with trio.open_nursery() as nursery:
            for member, hint_for in targets:
                nursery.start_soon(store, member, hint_for)
        if acks == 0:
            raise Unavailable(f"no owner of {key!r} stored it: {'; '.join(errors) or 'none'}")
        return {"key": key, "acks": acks, "owners": n}
