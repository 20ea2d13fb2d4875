"""What the abuse tier expects of a peer, in one place: memory budgets, limits, error types and the
statistics counter that must show each refusal.

Align this file (and nothing else) when the fixes for issue 10 land with other names or budgets.
"""

from __future__ import annotations

import gossipkv

MiB = 2**20

# --- memory ---------------------------------------------------------------------------------------
# A peer's RSS, sampled every 50 ms during and after an attack, must stay below
#   RSS_IDLE_FACTOR x its idle RSS (after warm-up, before the attack)
#   + RECEIVE_BUDGET + DATA_PATH_BUDGET
#   + OUTBOUND_PER_CONNECTION x the attacking connections to it that it owes replies or events
#     (pipelined gets, watches; not connections that only send, such as half-sent frames)
#   + ALLOCATOR_SLACK.
RSS_IDLE_FACTOR = 2
# Memory the allocator holds on to after the budgets' objects are freed (the pipelined 1 MiB gets
# peak at 190-230 MiB above idle, budgets 96 MiB + idle: the estimate of a read's cost is below
# what decoding N replies and encoding the reply really takes; open, see the issue 10 note).
ALLOCATOR_SLACK = 32 * MiB
RECEIVE_BUDGET = 64 * MiB  # bytes of partly received frames a peer holds, all connections together
DATA_PATH_BUDGET = 64 * MiB  # bytes of values and clocks in flight in the data path
OUTBOUND_PER_CONNECTION = 8 * MiB  # bytes queued for sending on one connection

# A cluster whose peer sits above this multiple of its idle RSS after a test is replaced by a fresh
# one before the next test (so one test's leftovers never fail another).
REUSE_BLOAT_FACTOR = 1.6


def rss_bound(idle: int, outbound_connections: int) -> int:
    """The most RSS a peer may use during an attack (see above)."""
    return (
        RSS_IDLE_FACTOR * idle
        + RECEIVE_BUDGET
        + DATA_PATH_BUDGET
        + OUTBOUND_PER_CONNECTION * outbound_connections
        + ALLOCATOR_SLACK
    )


# --- limits the fixes introduce (defaults) ----------------------------------------------------------
MAX_VALUE_BYTES = 1 * MiB  # a value's own canonical CBOR encoding; metadata is not counted
MAX_VALUE_DEPTH = 32  # nesting depth of a value (the lead's default)
MAX_SIBLINGS = 100  # siblings per key, in storage and in every read's answer
MAX_FRAME = 16 * MiB

# --- typed errors a refused write raises at a well-behaved client ----------------------------------
# Each entry: the exception classes (any of them) a refused put of that kind may raise.
REFUSED_DEEP_VALUE: tuple[type[BaseException], ...] = (gossipkv.ValueTooLarge,)
REFUSED_RECORD_TOO_LARGE: tuple[type[BaseException], ...] = (gossipkv.ValueTooLarge,)
REFUSED_FORGED_CONTEXT: tuple[type[BaseException], ...] = (gossipkv.InvalidContext,)
REFUSED_TOO_MANY_SIBLINGS: tuple[type[BaseException], ...] = (gossipkv.TooManySiblings,)

# --- counters: where each refusal shows in ``gossipkv stats --json`` --------------------------------
# attack -> the (stats section, reason) pairs of which at least one must grow (summed over the
# peers) when the attack is refused. Sections: ``dropped_frames`` (decode reasons, incl. the new
# ``too_complex``), ``refusals`` (new: connection, stage and data-path refusals) and ``kv_errors``
# (by exception name).
COUNTERS: dict[str, tuple[tuple[str, str], ...]] = {
    # data damage
    # (a value too deep for the frame itself is dropped by the decoder: too_deep)
    "deep_value": (("refusals", "value_too_deep"), ("dropped_frames", "too_deep")),
    "forged_counter": (("refusals", "invalid_context"),),
    "made_up_actors": (("refusals", "invalid_context"),),
    "record_too_large": (("refusals", "record_too_large"),),
    "sibling_storm": (("refusals", "too_many_siblings"),),
    "value_too_large": (("refusals", "value_too_large"),),
    # memory and connections
    "big_frame_before_hello": (("dropped_frames", "too_large"), ("dropped_frames", "too_complex")),
    "half_sent_frames": (("refusals", "frame_timeout"),),
    "connection_flood": (("refusals", "connection_limit"), ("refusals", "source_limit")),
    "silent_connections": (("refusals", "hello_timeout"),),
    "watch_flood": (("refusals", "watch_limit"),),
    # pipelined gets that are never read: the bound is on memory (backpressure), no refusal
    "unread_replies": (),
}

# Seconds a counter may take to appear after an attack that is refused at once (polled, not slept).
COUNTER_WITHIN = 5.0
# Seconds to wait for refusals that fire on a deadline (hello timeout, frame deadline).
DEADLINE_COUNTER_WITHIN = 20.0
