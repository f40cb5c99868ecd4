"""Room under the cache's cap (`Room`): evicting the least recently used clean blocks, writers
and fetches waiting for uploads to free room, the cap fitted to the disk at start-up, and the
dirty bytes the pinned blocks hold, and the room held for fetches under way (`reserving`):
their tmp files are on disk before their blocks are in place. The counters (`used`,
`reserved`, `cap`, `evictions`) and the LRU of clean blocks (`lru`) are the BlockCache's; this
decides what leaves and who waits."""
from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from cache.objects import CachedObject

if TYPE_CHECKING:
    from cache.blocks import BlockCache

log = logging.getLogger(__name__)


class Reservation:
    """The room a fetch holds (`Room.reserving`), given back a block at a time as the blocks
    go into place (then in `used`) or are dropped, and the rest when the fetch ends."""

    def __init__(self, cache: BlockCache, need: int) -> None:
        self.cache, self.left = cache, need

    def settle(self, length: int) -> None:
        """`length` bytes of it are in place or dropped: no longer held."""
        length = min(length, self.left)
        self.left -= length
        self.cache.reserved -= length


class Room:
    def __init__(self, cache: BlockCache) -> None:
        self.cache = cache
        self._changed = trio.Event()

    def fit_cap_to_disk(self) -> None:
        """Lower the cap to what the cache dir's filesystem holds, less a reserve for the
        journal and its compaction: a cap the disk cannot reach never evicts, and a disk filled
        with clean blocks failed every later write with ENOSPC (tests/test_limits.py)."""
        cache = self.cache
        st = os.statvfs(cache.dir)
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        reserve = max(8 * cache.block_size, min(64 * 1024 * 1024, total // 8))
        fits = cache.used + free - reserve
        if fits < cache.cap:
            cache.cap = max(fits, 4 * cache.block_size)
            log.warning("the cache dir's disk holds less than the cache size: capping the "
                        "cache at %d MiB", cache.cap // (1024 * 1024))

    def dirty_bytes(self) -> int:
        return self.cache.used - sum(self._block_len(k) for k in self.cache.lru)

    def _block_len(self, k: tuple[CachedObject, int]) -> int:
        return k[0].blocks.get(k[1], 0)

    def evict(self, need: int) -> None:
        """Remove the least recently used clean, unpinned blocks until `need` more bytes fit."""
        cache = self.cache
        excess = cache.used + cache.reserved + need - cache.cap
        victims = []
        for obj, n in cache.lru:
            if excess <= 0:
                break
            if not obj.pins:
                victims.append((obj, n))
                excess -= obj.blocks[n]
        cache.evictions += len(victims)
        for obj, n in victims:
            cache.remove_block(obj, n)
            if not obj.blocks and obj.open_count == 0 and not obj.dirty:
                cache.untrack(obj)  # nothing cached: no record needed, and none kept

    @asynccontextmanager
    async def reserving(self, need: int, *, wait: bool) -> AsyncIterator[Reservation]:
        """Room for `need` bytes of fetched blocks from before their tmp files are written
        until the block is written in place (then in `used`) or dropped: in-flight fetches
        count against the cap (read-ahead GETs of 8 MiB under way took the cache dir 44 MiB
        over a 2 GiB cap in scripts/bench (h), 50 MiB over a 256 MiB one). `wait`: wait for
        uploads to free room as `wait` does, else only evict (a fetch into an object with
        unuploaded data must not wait for uploads, which may wait for it)."""
        if wait:
            await self.wait(need)
        else:
            self.evict(need)
        self.cache.reserved += need
        reservation = Reservation(self.cache, need)
        try:
            yield reservation
        finally:
            reservation.settle(reservation.left)
            self.changed()

    def changed(self) -> None:
        """Wake waiting writers to look again (room was freed, or uploads_pending changed)."""
        self._changed.set()

    async def wait(self, need: int) -> None:
        """Evict until `need` more bytes fit, waiting for uploads to free room while only dirty
        data is left and an upload could (otherwise going on over the cap)."""
        cache = self.cache
        while True:
            self.evict(need)
            if cache.used + cache.reserved + need <= cache.cap or not cache.uploads_pending():
                return
            if self._changed.is_set():  # a fresh event, unless others already wait on this one
                self._changed = trio.Event()
            await self._changed.wait()
