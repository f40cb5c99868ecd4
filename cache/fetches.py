"""Fetching blocks from the server (`Fetches`): one fetch of a block at a time (the others
wait on its entry in `BlockCache.fetching`), a run of blocks per ranged GET streamed into
tmp files as it arrives, then moved into place on the trio thread once there is room, unless
a write, a truncate or another server version overtook the fetch meanwhile."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from cache.block_files import BlockSink, unlink_quietly, write_files
from cache.errors import ObjectChanged
from cache.objects import CachedObject
from cache.readahead import Slot

if TYPE_CHECKING:
    from cache.blocks import BlockCache


class Fetches:
    def __init__(self, cache: BlockCache) -> None:
        self.cache = cache

    async def ensure_block(self, obj: CachedObject, n: int) -> None:
        """Make block n readable from disk, fetching it from the server if needed. A reader's
        own fetch takes no read-ahead slot: it never queues behind read-ahead."""
        cache = self.cache
        while True:
            if n in obj.blocks:
                cache.hit(obj, n)
                return
            if obj.stream is not None and cache.streams is not None \
                    and cache.streams.holds(obj, n):
                await cache.streams.settle(obj)  # evicted: only the upload in parts has it
                continue
            if n * cache.block_size >= obj.record.remote_size:
                return
            pending = cache.fetching.get((obj, n))
            if pending is None:
                if not cache.whole.applies(obj):
                    break
                await cache.whole.ensure(obj, n)  # streamed in with the rest of the object
                continue
            await pending.wait()
        await self.fetch(obj, n, 1)

    async def fetch(self, obj: CachedObject, first: int, count: int,
                    slot: Slot | None = None) -> None:
        """Fetch blocks [first, first + count) with one ranged GET. The caller saw each of
        them neither cached nor being fetched, with no await since."""
        blocks = range(first, first + count)
        done = trio.Event()
        for n in blocks:
            self.cache.fetching[(obj, n)] = done
        self.cache.misses += count
        try:
            await self._fetch_unlocked(obj, first, count, slot)
        finally:
            for n in blocks:
                del self.cache.fetching[(obj, n)]
            done.set()

    async def _fetch_unlocked(self, obj: CachedObject, first: int, count: int,
                              slot: Slot | None) -> None:
        rec = obj.record
        bs = self.cache.block_size
        storage = self.cache.storage
        etag, start = rec.etag, first * bs
        want = min(count * bs, rec.remote_size - start)
        tmps = self._tmp_names(obj, range(first, first + -(-want // bs)))
        async with self._filling(obj, tmps, want):
            # The body goes straight into the blocks' tmp files as it arrives (BlockSink).
            with BlockSink(list(tmps.values()), bs, want) as sink:
                try:
                    got = await storage.read_into(rec.bucket, rec.key, start, want, sink)
                finally:
                    if slot is not None:
                        slot.release()
                if got != want and rec.etag == etag:
                    raise ObjectChanged(f"{rec.bucket}/{rec.key} is {start + got} bytes on "
                                        f"the server, expected {rec.remote_size}")
                sink.cut(got)  # a longer try cut short and repeated may have written more
            lengths = [min(bs, got - i * bs) for i in range(-(-got // bs))]
            for n in list(tmps)[len(lengths):]:
                unlink_quietly(tmps.pop(n))
            self._install(obj, first, lengths, tmps, etag)

    def _tmp_names(self, obj: CachedObject, blocks: range) -> dict[int, str]:
        """Where blocks being fetched are written before they go into place (`<id>.<n>.fetch`,
        which load() sweeps). Only one fetch of a block runs at a time (`fetching`), so the
        names are the fetch's own."""
        return {n: f"{self.cache.blocks_dir}/{obj.id}.{n}.fetch" for n in blocks}

    @asynccontextmanager
    async def _filling(self, obj: CachedObject, tmps: dict[int, str],
                       need: int) -> AsyncIterator[None]:
        """Room under the cap (`Room.reserving`) for the `need` bytes written to `tmps` and
        moved into place as blocks; should that fail, the tmp files still there go."""
        async with self.cache.room.reserving(need, wait=not obj.dirty):
            try:
                yield
            except BaseException:
                for tmp in tmps.values():
                    unlink_quietly(tmp)
                raise

    async def store_fetched(self, obj: CachedObject, first: int, data: bytes,
                            etag: str) -> None:
        """Put `data`, read from the server's version `etag` of the object at block `first`,
        into the blocks it covers; a block cached meanwhile, or data of a version no longer
        the object's, is dropped."""
        bs = self.cache.block_size
        view = memoryview(data)
        pieces = [view[i * bs:(i + 1) * bs] for i in range(-(-len(data) // bs))]
        tmps = self._tmp_names(obj, range(first, first + len(pieces)))
        async with self._filling(obj, tmps, len(data)):
            # Copying a block into the page cache takes about a millisecond: a worker thread
            # does it.
            await trio.to_thread.run_sync(write_files, list(zip(tmps.values(), pieces)))
            self._install(obj, first, [len(p) for p in pieces], tmps, etag)

    def _install(self, obj: CachedObject, first: int, lengths: list[int],
                 tmps: dict[int, str], etag: str) -> None:
        """Move fetched blocks (`lengths[i]` bytes of block first + i, in `tmps`) into place,
        in the room their fetch holds (no await: the checks hold when the blocks go in); one
        cached meanwhile, or of a version no longer the object's, is dropped."""
        cache, rec = self.cache, obj.record
        bs = cache.block_size
        for i, length in enumerate(lengths):
            n = first + i
            if (rec.etag != etag or n in obj.blocks or n * bs + length > rec.remote_size
                    or obj.detached and obj.open_count == 0):
                unlink_quietly(tmps[n])
                continue  # superseded: a write, a truncate or another version got there first
            # A descriptor exists only for a block in obj.blocks, so none can be open here;
            # were one, it would point at the file being replaced.
            cache.fds.close(obj, n)
            os.replace(tmps[n], obj.block_path(n))
            obj.blocks[n] = length
            cache.used += length
            if not obj.dirty and not obj.detached:
                cache.lru[(obj, n)] = None
