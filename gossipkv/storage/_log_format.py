"""The log engine's on-disk format: records, segment scanning and the hint-file codec.

Pure functions over bytes (no file I/O, no trio), shared by the committer, recovery and compaction.

On disk, in the data dir::

  LOCK              flock()ed by the owning process (holds its pid)
  00000001.seg      records: magic(2) crc32(4) value_len(4) seq(8) key_len(2) key value
  00000001.hint     for a sealed segment: the segment's size and crc32, then one
                    (seq, offset, length, key) per record, then a crc32 of the hint itself

A record with an empty value is a delete marker (no clock encodes to zero bytes).
"""

from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

MAGIC = b"\xd7\x4b"
# magic, crc32, value_len, seq, key_len
HEADER = struct.Struct("<2sIIQH")
HEADER_SIZE = HEADER.size
HINT_MAGIC = b"GKVHINT1"
HINT_HEAD = struct.Struct("<8sQI")  # magic, segment size, segment crc32
HINT_ENTRY = struct.Struct("<QIIH")  # seq, offset, record length, key length
HINT_ENTRY_SIZE = HINT_ENTRY.size
SEG_SUFFIX = ".seg"
HINT_SUFFIX = ".hint"
TMP_SUFFIX = ".tmp"
QUARANTINE_DIR = "quarantine"


def seg_name(seg: int) -> str:
    return f"{seg:08d}{SEG_SUFFIX}"


def hint_name(seg: int) -> str:
    return f"{seg:08d}{HINT_SUFFIX}"


def encode_record(seq: int, key: bytes, value: bytes) -> bytes:
    """One checksummed, length-prefixed record."""
    body = struct.pack("<IQH", len(value), seq, len(key)) + key + value
    return MAGIC + struct.pack("<I", zlib.crc32(body)) + body


class Unreadable(NamedTuple):
    """A record read back that failed its checksum (instead of its value bytes)."""

    reason: str


class Entries:
    """The record index of one segment, held as its hint file's body: per record a packed
    ``(seq, offset, length, key length)`` and the key, plus where each entry starts.

    One buffer and one array instead of objects per record: the index of a 64 MiB segment
    costs what its hint file does (about 20 bytes and the key per record), the garbage
    collector has nothing in it to walk, freeing it frees two blocks (an index of a few hundred
    thousand small objects cost ~60 MB, fragmented the heap, and stalled the loop ~10 ms when
    freed there), and a decoded hint is used as it was read. Hot loops read ``body`` and
    ``starts`` directly with :data:`HINT_ENTRY`.
    """

    __slots__ = ("body", "starts")

    def __init__(
        self, body: bytes | bytearray | memoryview | None = None, starts: array[int] | None = None
    ) -> None:
        self.body: bytes | bytearray | memoryview = bytearray() if body is None else body
        self.starts: array[int] = array("I") if starts is None else starts

    def append(self, key: bytes | memoryview, seq: int, off: int, length: int) -> None:
        body = self.body
        assert isinstance(body, bytearray), "only an index being built grows"
        self.starts.append(len(body))
        body += HINT_ENTRY.pack(seq, off, length, len(key))
        body += key

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[bytes, int, int, int]:
        """``(key, seq, offset, length)`` of the ``i``-th record."""
        pos = self.starts[i]
        seq, off, length, klen = HINT_ENTRY.unpack_from(self.body, pos)
        pos += HINT_ENTRY_SIZE
        return bytes(self.body[pos : pos + klen]), seq, off, length

    def __iter__(self) -> Iterator[tuple[bytes, int, int, int]]:
        return (self[i] for i in range(len(self.starts)))

    @property
    def seqs(self) -> list[int]:
        unpack, body = HINT_ENTRY.unpack_from, self.body
        return [unpack(body, pos)[0] for pos in self.starts]

    def hint_body(self) -> bytes | bytearray | memoryview:
        """The entries as a hint file holds them (no copy)."""
        return self.body


@dataclass
class ScanResult:
    entries: Entries
    valid_end: int
    corrupt: int
    #: ``(start, end, key or None)`` of each damaged span skipped (the key when its header
    #: still names one), for quarantine.
    damaged: list[tuple[int, int, bytes | None]] = field(default_factory=list)


def record_at(data: bytes | memoryview, pos: int) -> tuple[bytes, int, int] | None:
    """(key, seq, length) if a valid record starts at ``pos``, else None."""
    n = len(data)
    if n - pos < HEADER_SIZE:
        return None
    magic, crc, vlen, seq, klen = HEADER.unpack_from(data, pos)
    end = pos + HEADER_SIZE + klen + vlen
    if magic != MAGIC or end > n:
        return None
    if zlib.crc32(memoryview(data)[pos + 6 : end]) != crc:
        return None
    key = bytes(data[pos + HEADER_SIZE : pos + HEADER_SIZE + klen])
    return key, seq, end - pos


def scan_segment(data: bytes) -> ScanResult:
    """Every valid record of a segment's bytes; corrupt records are skipped and counted.

    ``valid_end`` is where the last valid record ends: anything after it is a torn tail (a write
    cut short by a crash, or damage with no valid record after it).
    """
    entries = Entries()
    pos = 0
    corrupt = 0
    damaged: list[tuple[int, int, bytes | None]] = []
    n = len(data)
    view = memoryview(data)
    valid_end = 0
    while pos < n:
        rec = record_at(view, pos)
        if rec is not None:
            key, seq, length = rec
            entries.append(key, seq, pos, length)
            pos += length
            valid_end = pos
            continue
        # Damaged here: resynchronise on the next magic that starts a valid record.
        nxt = data.find(MAGIC, pos + 1)
        while nxt != -1 and record_at(view, nxt) is None:
            nxt = data.find(MAGIC, nxt + 1)
        if nxt == -1:
            break
        corrupt += 1
        damaged.append((pos, nxt, _key_in_header(view, pos, nxt)))
        pos = nxt
    return ScanResult(entries, valid_end, corrupt, damaged)


def _key_in_header(data: memoryview, pos: int, end: int) -> bytes | None:
    """The key a damaged record's header still names, if its header looks intact."""
    if end - pos < HEADER_SIZE:
        return None
    magic, _, _, _, klen = HEADER.unpack_from(data, pos)
    if magic != MAGIC or pos + HEADER_SIZE + klen > end:
        return None
    key = bytes(data[pos + HEADER_SIZE : pos + HEADER_SIZE + klen])
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return key or None


def hint_frame(
    size: int, crc: int, entries_body: bytes | bytearray | memoryview
) -> tuple[bytes, bytes]:
    """The head and trailer that frame a hint's entries (written in three pieces: joining a
    hint of a million entries would copy it twice while holding the GIL)."""
    head = HINT_HEAD.pack(HINT_MAGIC, size, crc)
    return head, struct.pack("<I", zlib.crc32(entries_body, zlib.crc32(head)))


def decode_hint(raw: bytes, seg_size: int, seg_crc: int) -> Entries | None:
    """The hint's entries if it is intact and matches the segment's size and checksum.

    The entries stay in ``raw`` (a view of it, no copy); only where each starts is recorded.
    """
    if len(raw) < HINT_HEAD.size + 4:
        return None
    framed = memoryview(raw)[: len(raw) - 4]
    if zlib.crc32(framed) != struct.unpack_from("<I", raw, len(raw) - 4)[0]:
        return None
    magic, size, crc = HINT_HEAD.unpack_from(raw, 0)
    if magic != HINT_MAGIC or size != seg_size or crc != seg_crc:
        return None
    body = framed[HINT_HEAD.size :]
    starts = array("I")
    pos = 0
    unpack = HINT_ENTRY.unpack_from
    n = len(body)
    while pos + HINT_ENTRY_SIZE <= n:
        starts.append(pos)
        pos += HINT_ENTRY_SIZE + unpack(body, pos)[3]
    if pos != n:
        return None
    return Entries(body, starts)
