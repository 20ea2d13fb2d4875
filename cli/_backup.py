"""``gossipkv backup DIR`` and ``gossipkv restore DIR``: a cluster-wide dump and load of every
live key with its whole clock (siblings, dots and all), so restored siblings stay siblings.

``backup`` asks one owner of each partition for pages of keys with their clocks (as ``keys``
does) and writes ``DIR/keys.jsonl`` (one ``{"key", "clock"}`` per line, the clock base64) and,
last, ``DIR/manifest.json`` (cluster, partitions, key count): a dump without a manifest is
incomplete. ``restore`` refuses a cluster that holds any live key unless ``--force``, then
merges each clock into the key's owners, a few at a time (a merge: re-running it is harmless).
Nothing is held whole: a page at a time out, a bounded window of lines in.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import trio

import gossipkv

from ._common import fail, open_client

FORMAT = 1
KEYS_FILE = "keys.jsonl"
MANIFEST = "manifest.json"
#: Clocks merged at once by ``restore``.
RESTORE_CONCURRENCY = 16


def _client(peer: str, cluster: str) -> Any:
    return open_client([peer], cluster=cluster, request_timeout=30.0)


async def partition_owners(entry: gossipkv.Client) -> tuple[list[list[str]], dict[str, str]]:
    """Each partition's owners, and the address of each member that may answer."""
    ring: dict[str, Any] = await entry.ring()
    if ring.get("epoch") is None:
        fail("no partition table yet (the cluster has not formed)")
    address = {
        m.name: m.address
        for m in await entry.members()
        if m.address and m.status not in ("left", "removed")
    }
    return list(ring.get("owners") or []), address


async def backup(peer: str, cluster: str, directory: Path) -> dict[str, Any]:
    """Dump every live key with its clock into ``directory``; returns the manifest."""
    await trio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True))
    keys_path, manifest_path = directory / KEYS_FILE, directory / MANIFEST
    if await trio.to_thread.run_sync(manifest_path.exists):
        fail(f"{directory} already holds a backup ({MANIFEST}); choose another folder")
    count = 0
    missed: list[int] = []
    async with _client(peer, cluster) as entry:
        owners, address = await partition_owners(entry)
        clients: dict[str, gossipkv.Client] = {}
        out = await trio.open_file(keys_path, "w", encoding="utf-8")
        async with out, trio.open_nursery() as nursery:
            for partition, row in enumerate(owners):
                after, done = "", False
                for owner in row:
                    addr = address.get(owner)
                    if addr is None:
                        continue
                    try:
                        client = clients.get(addr)
                        if client is None:
                            client = clients[addr] = await nursery.start(
                                _held_client, addr, cluster
                            )
                        while True:
                            page: dict[str, Any] = await client.keys_page(
                                partition, after=after, clocks=True
                            )
                            lines = [
                                json.dumps({"key": k, "clock": base64.b64encode(c).decode("ascii")})
                                + "\n"
                                for k, c in zip(page["keys"], page["clocks"], strict=True)
                            ]
                            await out.write("".join(lines))
                            count += len(lines)
                            if page["keys"]:
                                after = page["keys"][-1]
                            if page["next"] is None:
                                break
                            after = str(page["next"])
                        done = True
                        break
                    except gossipkv.GossipKVError:
                        continue  # the next owner, from the last key written
                if not done:
                    missed.append(partition)
            nursery.cancel_scope.cancel()
    if missed:
        fail(f"no owner answered for {len(missed)} partition(s) ({missed[:5]}...): no manifest")
    manifest = {
        "format": FORMAT,
        "cluster": cluster,
        "partitions": len(owners),
        "keys": count,
        "source": peer,
    }
    await trio.to_thread.run_sync(
        lambda: manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    )
    return manifest


async def _held_client(addr: str, cluster: str, *, task_status: Any) -> None:
    async with _client(addr, cluster) as client:
        task_status.started(client)
        await trio.sleep_forever()


async def restore(peer: str, cluster: str, directory: Path, force: bool) -> dict[str, Any]:
    """Merge every clock of the backup in ``directory`` into the cluster ``peer`` is in."""
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(await trio.to_thread.run_sync(manifest_path.read_text))
    except (OSError, ValueError) as exc:
        fail(f"{directory} holds no complete backup ({MANIFEST}: {exc})")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fail(f"{manifest_path}: not a gossipkv backup of format {FORMAT}")
    restored = 0
    async with _client(peer, cluster) as entry:
        if not force:
            holder = await _any_key(entry, cluster)
            if holder is not None:
                fail(
                    f"the cluster already holds keys (e.g. {holder!r}): restore merges into "
                    "what is there; use --force to do it anyway"
                )
        send, receive = trio.open_memory_channel[tuple[str, bytes]](RESTORE_CONCURRENCY * 4)

        async def worker() -> None:
            nonlocal restored
            async for key, clock in receive:
                await entry.restore(key, clock)
                restored += 1

        async with trio.open_nursery() as nursery:
            for _ in range(RESTORE_CONCURRENCY):
                nursery.start_soon(worker, name="restore")
            async with send, await trio.open_file(directory / KEYS_FILE, encoding="utf-8") as f:
                async for n, line in _numbered(f):
                    try:
                        item = json.loads(line)
                        key, clock = item["key"], base64.b64decode(item["clock"], validate=True)
                    except (ValueError, KeyError, TypeError):
                        fail(f"{directory / KEYS_FILE}:{n}: not a backup line")
                    if not isinstance(key, str):
                        fail(f"{directory / KEYS_FILE}:{n}: not a backup line")
                    await send.send((key, clock))
    if restored != manifest.get("keys"):
        fail(f"restored {restored} keys, the manifest says {manifest.get('keys')}")
    return {"restored": restored, "from": str(directory), "backup_cluster": manifest["cluster"]}


async def _numbered(f: Any) -> Any:
    n = 0
    async for line in f:
        n += 1
        if line.strip():
            yield n, line


async def _any_key(entry: gossipkv.Client, cluster: str) -> str | None:
    """A live key held by an owner of any partition, or ``None`` (the cluster is empty)."""
    owners, address = await partition_owners(entry)
    async with trio.open_nursery() as nursery:
        clients: dict[str, gossipkv.Client] = {}
        try:
            for partition, row in enumerate(owners):
                for owner in row:
                    addr = address.get(owner)
                    if addr is None:
                        continue
                    client = clients.get(addr)
                    if client is None:
                        client = clients[addr] = await nursery.start(_held_client, addr, cluster)
                    try:
                        page = await client.keys_page(partition, limit=1)
                    except gossipkv.GossipKVError:
                        continue
                    if page["keys"]:
                        return str(page["keys"][0])  # type: ignore[index]
            return None
        finally:
            nursery.cancel_scope.cancel()
