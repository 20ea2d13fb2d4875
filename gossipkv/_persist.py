"""What a peer keeps across restarts: its name, last generation and accepted leader decisions.

The Generation Clock needs the last generation written *before* the first gossip of a new
incarnation; the emergent leader needs the decisions a peer accepted to outlive the leader that made
them. Both live in one small CBOR file in the data dir, written atomically (temp file, fsync,
rename, fsync of the directory) in a worker thread. A lock file keeps a second process out.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path

import trio

from . import _codec
from ._errors import DataDirError, DecodeError

STATE_FILE = "membership.cbor"
LOCK_FILE = "membership.lock"


@dataclass(slots=True)
class PeerRecord:
    """The persisted identity of a peer."""

    node_id: str
    generation: int
    decisions: object = None  # Decisions.to_plain() form
    known_peers: list[str] = field(default_factory=list)
    #: Wall-clock ms when this member was last known alive (written every little while).
    alive_ms: int = 0
    #: The write time (ms) of the newest tombstone this member reaped.
    reaped_upto_ms: int = 0


class NodeStore:
    """Keeps a :class:`PeerRecord` between incarnations (in memory; see :class:`FileNodeStore`)."""

    def __init__(self) -> None:
        self._record: PeerRecord | None = None

    async def open(self) -> PeerRecord | None:
        return self._record

    async def save(self, record: PeerRecord) -> None:
        self._record = PeerRecord(
            record.node_id,
            record.generation,
            record.decisions,
            list(record.known_peers),
            record.alive_ms,
            record.reaped_upto_ms,
        )

    async def close(self) -> None:
        return


class FileNodeStore(NodeStore):
    """A :class:`NodeStore` in a data directory, locked against a second process."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(data_dir)
        self._lock_fd: int | None = None

    async def open(self) -> PeerRecord | None:
        return await trio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> PeerRecord | None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise DataDirError(f"data dir {path} exists and is not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataDirError(f"cannot use data dir {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise DataDirError(
                    f"data dir {path} is in use by another gossipkv process"
                ) from exc
            raise DataDirError(f"cannot lock data dir {path}: {exc.strerror or exc}") from exc
        self._lock_fd = fd
        state = path / STATE_FILE
        try:
            data = state.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._unlock()
            raise DataDirError(f"cannot read {state}: {exc.strerror or exc}") from exc
        try:
            record = _parse(_codec.loads_value(data))
        except DecodeError as exc:
            self._unlock()
            raise DataDirError(f"{state} is damaged: {exc}") from exc
        if record is None:
            self._unlock()
            raise DataDirError(f"{state} is damaged: unexpected content")
        return record

    async def save(self, record: PeerRecord) -> None:
        await super().save(record)
        data = _codec.dumps_canonical(
            {
                "node_id": record.node_id,
                "generation": record.generation,
                "decisions": record.decisions,
                "known_peers": list(record.known_peers),
                "alive_ms": record.alive_ms,
                "reaped_upto_ms": record.reaped_upto_ms,
            }
        )
        await trio.to_thread.run_sync(self._write_sync, data)

    def _write_sync(self, data: bytes) -> None:
        tmp = self.path / (STATE_FILE + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / STATE_FILE)
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise DataDirError(
                f"cannot write {self.path / STATE_FILE}: {exc.strerror or exc}"
            ) from exc

    async def close(self) -> None:
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _parse(raw: object) -> PeerRecord | None:
    if not isinstance(raw, dict):
        return None
    node_id, generation = raw.get("node_id"), raw.get("generation")
    peers = raw.get("known_peers", [])
    if not isinstance(node_id, str) or not isinstance(generation, int):
        return None
    if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
        return None
    alive, reaped = raw.get("alive_ms", 0), raw.get("reaped_upto_ms", 0)
    if type(alive) is not int or type(reaped) is not int:
        return None
    return PeerRecord(node_id, generation, raw.get("decisions"), list(peers), alive, reaped)
