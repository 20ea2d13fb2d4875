"""Decode guard benchmark: time and memory of checking and decoding large frames.

Run: ``python tests/bench/bench_decode_guard.py [MiB]`` (default 16, the default ``max_frame``).
For each shape it builds one ``reply`` frame of about that size whose body holds the shape, then
prints one JSON line: the guard's verdict, its time (``check_decode_cost``), the time of the whole
``decode`` when accepted, the decoded memory as tracemalloc measures it (in a separate decode) and
as the guard estimates it, both as multiples of the frame size. Numbers are this machine's; no test
asserts a time.
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
from collections.abc import Callable

import cbor2

from gossipkv import DecodeError
from gossipkv._codec import check_decode_cost, decode, decode_budget, decode_cost


def _frame(body: bytes) -> bytes:
    """A ``reply`` envelope ``[1, 1, "reply", [{"v": <body>}]]`` with ``body`` spliced in raw."""
    return b"\x84\x01\x01" + cbor2.dumps("reply") + b"\x81\xa1" + cbor2.dumps("v") + body


def _array(item: bytes, size: int, items: int = 1) -> bytes:
    """An array of ``item`` repeated to ``size`` bytes (``item`` holds ``items`` CBOR items)."""
    n = size // len(item)
    return b"\x9a" + (n * items).to_bytes(4, "big") + item * n


SHAPES: dict[str, Callable[[int], bytes]] = {
    # The red-team frame: empty arrays (0x80), ~64 bytes of Python each.
    "empty arrays": lambda size: _array(b"\x80", size),
    # The worst amplification found: one-entry maps, ~77 bytes of Python per byte.
    "one-entry maps": lambda size: _array(b"\xa1\x00\x00", size),
    "2-char strings": lambda size: _array(b"\x62ab", size),
    # Accepted shapes that make the guard walk every head (the slowest accepted frames).
    "23-int arrays": lambda size: _array(b"\x97" + b"\x00" * 23, size),
    "ints 0 and -6": lambda size: _array(b"\x00\x25", size, 2),
    "ints -6, 0, 0": lambda size: _array(b"\x25\x00\x00", size, 3),
    # Accepted (~15x), but its byte counts allow more: the slowest frame to check found so far.
    "ints -6, 0, 0, 0, 0": lambda size: _array(b"\x25\x00\x00\x00\x00", size, 5),
    "small ints": lambda size: _array(b"\x01", size),
    # Legitimate large values.
    "one byte string": lambda size: cbor2.dumps(b"x" * size),
    "one text": lambda size: cbor2.dumps("x" * size),
    "json records": lambda size: cbor2.dumps(
        [
            {"id": i, "name": f"item-{i % 97}", "tags": ["a", "b"], "score": i / 7}
            for i in range(size // 50)
        ]
    ),
}


def _peak(payload: bytes) -> int:
    tracemalloc.start()
    try:
        decoded = decode(payload)
    except DecodeError:
        decoded = None
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del decoded
    return peak


def measure(name: str, size: int) -> dict[str, object]:
    payload = _frame(SHAPES[name](size))
    n = len(payload)
    started = time.perf_counter()
    try:
        check_decode_cost(payload)
        verdict = "accepted"
    except DecodeError as exc:
        verdict = exc.reason
    guard_s = time.perf_counter() - started
    decode_s = None
    if verdict == "accepted":
        started = time.perf_counter()
        try:
            decode(payload)
        except DecodeError as exc:
            verdict = f"accepted, then {exc.reason}"
        decode_s = round(time.perf_counter() - started, 3)
    row: dict[str, object] = {
        "shape": name,
        "frame_bytes": n,
        "verdict": verdict,
        "guard_s": round(guard_s, 3),
        "decode_s": decode_s,
        "estimate_x": round(decode_cost(payload) / n, 2),
        "budget_x": round(decode_budget(n) / n, 2),
    }
    if verdict.startswith("accepted"):
        row["tracemalloc_x"] = round(_peak(payload) / n, 2)
    else:
        # What cbor2 alone would have built (the guard's refusal saved this much).
        tracemalloc.start()
        try:
            cbor2.loads(payload)
        except Exception:
            pass
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        row["unguarded_tracemalloc_x"] = round(peak / n, 2)
    return row


def main() -> None:
    mib = float(sys.argv[1]) if len(sys.argv) > 1 else 16.0
    size = int(mib * 1024 * 1024) - 64
    for name in SHAPES:
        print(json.dumps(measure(name, size)), flush=True)


if __name__ == "__main__":
    main()
