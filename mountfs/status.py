"""What `mountfs status` shows: the write-back queue, the driver's transfers under way in several
steps (staging, jobs), the downloads under way and the cache, as one JSON document. Each upload
and download carries its `path` on the mount (relative to the root) beside its bucket and key.

The running mount serves it as the extended attribute `user.mountfs.status` of its root, so
the status command finds the right process from the mount point alone.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mountfs.backends import Scope

if TYPE_CHECKING:  # the CLI reads the xattr names here; the cache is loaded only to mount
    from cache.blocks import BlockCache
    from cache.writeback import WritebackQueue

STATUS_XATTR = b"user.mountfs.status"
# Setting this extended attribute of the root to "BUCKET/KEY" (an entry as the status lists it)
# abandons that upload and drops its data: what `mountfs discard` does.
DISCARD_XATTR = b"user.mountfs.discard"
# Setting this extended attribute of the root (any value) asks the mount to upload what is
# queued now, without the write-back delay, and to retry temporary failures soon: what
# `mountfs umount` asks before it waits for the queue to drain.
FLUSH_XATTR = b"user.mountfs.flush"
# Setting this extended attribute of the root to a path relative to it ("" for all) uploads at
# once every queued file at or under that path: what `mountfs sync` asks before it waits.
SYNC_XATTR = b"user.mountfs.sync"
MAX_LISTED = 200  # keeps the document well under the 64 KiB an xattr may hold


class Status:
    def __init__(self, source: str, mountpoint: str, cache: BlockCache,
                 queue: WritebackQueue, transfers: Callable[[], list[dict[str, Any]]],
                 changes_via: Callable[[], str] = str, scope: Scope = Scope()) -> None:
        self.source, self.mountpoint, self.scope = source, mountpoint, scope
        self.cache, self.queue, self.transfers = cache, queue, transfers
        self.changes_via = changes_via

    def upload_now(self, path: str) -> None:
        """Upload now what is queued at or under `path` (relative to the mount's root)."""
        self.queue.upload_now(lambda bucket, key: is_under(
            mount_path(self.scope, bucket, key), path))

    def snapshot(self) -> dict[str, Any]:
        c = self.cache
        lookups = c.hits + c.misses
        entries = self.queue.status()
        for e in entries:
            e["path"] = mount_path(self.scope, e["bucket"], e["key"])
        return {
            "source": self.source,
            "mountpoint": self.mountpoint,
            "pid": os.getpid(),
            "queue": entries[:MAX_LISTED],
            "queued": len(entries),
            # of those, uploads whose data is gone from the cache: nothing waits for them
            "lost": sum(e["state"] == "lost" for e in entries),
            "uploaded": self.queue.uploaded_count,
            # the last uploads done, each with its number among `uploaded`
            "recent": [{"n": n, "path": mount_path(self.scope, bucket, key), "size": size}
                       for n, bucket, key, size in self.queue.recent],
            "transfers": self.transfers()[:MAX_LISTED],
            "downloads": [{**d, "path": mount_path(self.scope, d["bucket"], d["key"])}
                          for d in downloads(c)[:MAX_LISTED]],
            # how changes made elsewhere reach the listings: "events over websocket" (the
            # transport named), "polling", or "" (the metadata TTL alone)
            "changes": self.changes_via(),
            "cache": {
                "dir": str(c.dir), "used": c.used, "cap": c.cap, "dirty": c.room.dirty_bytes(),
                "hits": c.hits, "misses": c.misses,
                "hit_rate": round(c.hits / lookups, 4) if lookups else None,
            },
        }


def downloads(cache: BlockCache) -> list[dict[str, Any]]:
    """Objects with blocks being fetched now (a read's misses and read-ahead, a whole-object
    stream, an upload's fill): their size on the server and how much of it is cached."""
    objects = {obj: None for obj, _ in cache.fetching}  # in order, once each
    out = []
    for obj in objects:
        size = obj.record.remote_size
        out.append({"bucket": obj.record.bucket, "key": obj.record.key, "size": size,
                    "done": min(size, sum(obj.blocks.values()))})
    return out


def mount_path(scope: Scope, bucket: str, key: str) -> str:
    """Where the object bucket/key is on the mount, relative to its root."""
    if scope.bucket is None:
        return f"{bucket}/{key}"
    return key[len(scope.prefix):] if key.startswith(scope.prefix) else key


def is_under(path: str, top: str) -> bool:
    """Whether `path` is `top` or below it (both relative to the mount's root; "" is the root)."""
    top = top.strip("/")
    return not top or path == top or path.startswith(top + "/")
