"""Fetching blocks from the server (`Fetches`): one fetch of a block at a time (the others
wait on its entry in `BlockCache.fetching`), a run of blocks per ranged GET streamed into
tmp files as it arrives, each block moved into place on the trio thread as soon as it is
whole (a sequential reader follows the GET rather than waiting for its end), unless a write,
a truncate or another server version overtook the fetch meanwhile."""
from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from cache.block_files import BlockSink, unlink_quietly, write_files
from cache.errors import ObjectChanged
from cache.objects import CachedObject
from cache.readahead import Slot
from cache.room import Reservation

if TYPE_CHECKING:
    from cache.blocks import BlockCache

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Run:
    """One fetch's blocks: each one's event (set once it is in place or the fetch is over),
    its tmp file while not yet in place (none left once the fetch is over), the room held for
    it."""
    obj: CachedObject
    first: int
    events: dict[int, trio.Event]
    tmps: dict[int, str] = field(default_factory=dict)
    room: Reservation | None = None


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
        """Fetch blocks [first, first + count) with one ranged GET, each block going into
        place (and its readers on) as soon as its bytes are in. The caller saw each of them
        neither cached nor being fetched, with no await since."""
        run = _Run(obj, first, {n: trio.Event() for n in range(first, first + count)})
        self.cache.fetching.update({(obj, n): event for n, event in run.events.items()})
        self.cache.misses += count
        try:
            await self._fetch_unlocked(run, slot)
        finally:
            for n in run.events:
                self._release(run, n)

    async def _fetch_unlocked(self, run: _Run, slot: Slot | None) -> None:
        obj, first = run.obj, run.first
        rec = obj.record
        bs = self.cache.block_size
        storage = self.cache.storage
        etag, start = rec.etag, first * bs
        want = min(len(run.events) * bs, rec.remote_size - start)
        run.tmps = self._tmp_names(obj, range(first, first + -(-want // bs)))
        paths = list(run.tmps.values())
        token = trio.lowlevel.current_trio_token()

        def whole(index: int, length: int) -> None:
            # On the driver's thread: the block goes into place on the trio thread, before the
            # end of the read is reported there (run_sync_soon keeps the order). Not the last:
            # it is whole only as the GET ends, and goes into place with the fetch's end, with
            # no await before the fetch returns (a reader's own fetch of one block then reads
            # it before any eviction can take it).
            if index < len(paths) - 1:
                token.run_sync_soon(self._install_whole, run, first + index, length, etag)

        async with self._filling(obj, run.tmps, want) as run.room:
            # The body goes straight into the blocks' tmp files as it arrives (BlockSink).
            with BlockSink(paths, bs, want, whole) as sink:
                try:
                    got = await storage.read_into(rec.bucket, rec.key, start, want, sink)
                finally:
                    if slot is not None:
                        slot.release()
                if got != want and rec.etag == etag:
                    raise ObjectChanged(f"{rec.bucket}/{rec.key} is {start + got} bytes on "
                                        f"the server, expected {rec.remote_size}")
                sink.cut(got)  # a longer try cut short and repeated may have written more
            lengths = {n: min(bs, got - (n - first) * bs) for n in run.tmps
                       if (n - first) * bs < got}
            for n in [n for n in run.tmps if n not in lengths]:
                unlink_quietly(run.tmps.pop(n))
            for n, length in lengths.items():
                self._install_one(run, n, length, etag)

    def _install_whole(self, run: _Run, n: int, length: int, etag: str) -> None:
        """A block of a fetch under way is whole: into place, its readers on. A callback on
        the trio thread, where an exception would end the loop: a failure here leaves the
        block to the end of the fetch."""
        if n not in run.tmps:
            return  # the fetch is over: its blocks in place, or gone with its failure
        try:
            self._install_one(run, n, length, etag)
        except Exception as exc:
            log.warning("block %d of %s not put in place early: %s", n, run.obj.record.key,
                        exc)

    def _install_one(self, run: _Run, n: int, length: int, etag: str) -> None:
        # Out of the run's tmp files only once in place (or dropped): should the rename
        # fail, the end of the fetch tries again, or the fetch's failure removes the file.
        self._install(run.obj, n, [length], {n: run.tmps[n]}, etag)
        del run.tmps[n]
        if run.room is not None:
            run.room.settle(length)
        self._release(run, n)

    def _release(self, run: _Run, n: int) -> None:
        """Block n of the run is no longer being fetched: its readers look again."""
        event = run.events[n]
        if self.cache.fetching.get((run.obj, n)) is event:
            del self.cache.fetching[(run.obj, n)]
        event.set()

    def _tmp_names(self, obj: CachedObject, blocks: range) -> dict[int, str]:
        """Where blocks being fetched are written before they go into place (`<id>.<n>.fetch`,
        which load() sweeps). Only one fetch of a block runs at a time (`fetching`), so the
        names are the fetch's own."""
        return {n: f"{self.cache.blocks_dir}/{obj.id}.{n}.fetch" for n in blocks}

    @asynccontextmanager
    async def _filling(self, obj: CachedObject, tmps: dict[int, str],
                       need: int) -> AsyncIterator[Reservation]:
        """Room under the cap (`Room.reserving`) for the `need` bytes written to `tmps` and
        moved into place as blocks; should that fail, the tmp files still there go (and
        leave `tmps`)."""
        async with self.cache.room.reserving(need, wait=not obj.dirty) as reservation:
            try:
                yield reservation
            except BaseException:
                for tmp in tmps.values():
                    unlink_quietly(tmp)
                tmps.clear()
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
