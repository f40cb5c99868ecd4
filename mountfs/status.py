"""What `mountfs status` shows: the write-back queue, the driver's transfers under way in several
steps (staging, jobs) and the cache, as one JSON document.

The running mount serves it as the extended attribute `user.mountfs.status` of its root, so
the status command finds the right process from the mount point alone.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

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
MAX_LISTED = 200  # keeps the document well under the 64 KiB an xattr may hold


class Status:
    def __init__(self, source: str, mountpoint: str, cache: BlockCache,
                 queue: WritebackQueue, transfers: Callable[[], list[dict[str, Any]]],
                 changes_via: Callable[[], str] = str) -> None:
        self.source, self.mountpoint = source, mountpoint
        self.cache, self.queue, self.transfers = cache, queue, transfers
        self.changes_via = changes_via

    def snapshot(self) -> dict[str, Any]:
        c = self.cache
        lookups = c.hits + c.misses
        entries = self.queue.status()
        return {
            "source": self.source,
            "mountpoint": self.mountpoint,
            "pid": os.getpid(),
            "queue": entries[:MAX_LISTED],
            "queued": len(entries),
            # of those, uploads whose data is gone from the cache: nothing waits for them
            "lost": sum(e["state"] == "lost" for e in entries),
            "uploaded": self.queue.uploaded_count,
            "transfers": self.transfers()[:MAX_LISTED],
            # how changes made elsewhere reach the listings: "events over websocket" (the
            # transport named), "polling", or "" (the metadata TTL alone)
            "changes": self.changes_via(),
            "cache": {
                "dir": str(c.dir), "used": c.used, "cap": c.cap, "dirty": c.dirty_bytes(),
                "hits": c.hits, "misses": c.misses,
                "hit_rate": round(c.hits / lookups, 4) if lookups else None,
            },
        }
