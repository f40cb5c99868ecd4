"""Read-ahead scheduling: a sequential reader gets the blocks ahead of it fetched in parallel,
in a window that grows with the reader's streak, as runs of consecutive blocks fetched with one
ranged GET each, at most `parallel` of them on the wire at once (`ReadAhead`). It decides what
to fetch and when; cache.fetches does the fetching."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from cache.objects import CachedObject

if TYPE_CHECKING:
    from cache.blocks import BlockCache

log = logging.getLogger(__name__)

# The read-ahead window doubles per sequential read up to this many bytes ahead of the
# reader (and at most a quarter of the cap); it bounds the data in flight. A server answers
# each ranged GET after a round trip, so throughput is (bytes in flight) per round trip, and
# the window must hold every run it means to keep under way: READAHEAD_PARALLEL of them (at
# half that, only half were ever under way: a cold 1 GiB read on s3rver, 10 paired runs on a
# loaded machine: median 0.68x boto3's throughput, 0.78x with all).
READAHEAD_PARALLEL = 8  # read-ahead GETs under way at once (the default)
# Consecutive blocks a read-ahead fetches with one ranged GET: a server's cost per request
# makes small GETs slow (s3rver, 8 in flight: 190 MiB/s with 1 MiB GETs, 330 MiB/s with 8 MiB
# ones). 1 GiB read cold from s3rver, paired rounds (2026-12-05): the median ratio to boto3's
# GETs 0.88 with runs of 8 MiB, 0.97 with 16, 0.78 with 32, as s3rver's CPU per GiB fell
# (2.13 -> 1.84 s at 16). DCSS's download against dt-data-api: 1.31x -> 0.92x.
READAHEAD_RUN_BYTES = 16 * 1024 * 1024
READAHEAD_MAX_BYTES = READAHEAD_PARALLEL * READAHEAD_RUN_BYTES


class Slot:
    """One read-ahead's claim on the limiter of fetches in flight; release() is idempotent."""

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self.limiter = limiter
        self.held = False

    async def acquire(self) -> None:
        await self.limiter.acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.limiter.release()


class ReadAhead:
    def __init__(self, cache: BlockCache, parallel: int, max_blocks: int | None,
                 run_blocks: int | None) -> None:
        """`max_blocks`, `run_blocks`: the window and the run in blocks (None: those of
        READAHEAD_MAX_BYTES and READAHEAD_RUN_BYTES, at the block size the cache settles)."""
        self.cache = cache
        self._max_asked = max_blocks
        self._run_asked = run_blocks
        self._slots = trio.CapacityLimiter(parallel)

    @property
    def max_blocks(self) -> int:
        return self._max_asked or max(1, READAHEAD_MAX_BYTES // self.cache.block_size)

    def after_read(self, obj: CachedObject, offset: int, end: int) -> None:
        """A sequential reader gets the next blocks fetched in parallel, in a growing window.

        Consecutive missing blocks are fetched as runs of up to `run_blocks` with one ranged
        GET each: a server's cost per request (s3rver: 1 MiB GETs reach half the throughput of
        8 MiB ones) would otherwise bound a cold read. The kernel reads 128 KiB to 1 MiB at a
        time, so the window's edge moves a block at a time; a run starts only once enough
        blocks are due (half the window while it still grows), not one GET per block, and once
        runs are whole, only whole runs start before the end of the object.

        `BlockCache.read_hit` does the first branch, a random read's, itself (a call less per
        read)."""
        if offset != obj.next_read:
            obj.next_read, obj.streak = end, 0
            return
        obj.next_read = end
        cache = self.cache
        if cache.whole.applies(obj):
            return  # read only whole: its stream is the read-ahead
        obj.streak += 1
        if cache.background is None:
            return
        bs = cache.block_size
        # Within a quarter of the cap, so that what is read ahead never evicts what the
        # reader has yet to read.
        window = min(self.max_blocks, 1 << min(obj.streak, 20),
                     max(1, cache.cap // (4 * bs)))
        final = (obj.size - 1) // bs
        first = max(end // bs, obj.readahead_to)
        last = min((end - 1) // bs + window, final)
        run_blocks = self._run_blocks()
        due = last - first + 1
        if due < min(run_blocks, max(1, window // 2)) and last < final:
            return  # wait until a longer run is due
        if due > run_blocks and last < final:
            # Whole runs only: the rest would be a short GET of its own (a window of 33
            # blocks was four runs of 8 and one of 1), a request's cost for a block's bytes.
            # It goes with the next run, when the reader has moved on.
            last = first + due // run_blocks * run_blocks - 1
        for run_first, count in self._missing_runs(obj, first, last, run_blocks):
            cache.background.start_soon(self._prefetch_run, obj, run_first, count)
        obj.readahead_to = max(obj.readahead_to, last + 1)

    def _run_blocks(self) -> int:
        """Blocks per read-ahead GET: at most the window, and a quarter of the cap, so that a
        run never needs more room than eviction can make."""
        bs = self.cache.block_size
        run = self._run_asked or max(1, READAHEAD_RUN_BYTES // bs)
        return max(1, min(run, self.max_blocks, self.cache.cap // (4 * bs)))

    def _missing_runs(self, obj: CachedObject, first: int,
                      last: int, run_blocks: int) -> list[tuple[int, int]]:
        """(first block, count) of the runs of blocks in [first, last] that are neither cached
        nor being fetched, each at most `run_blocks` long."""
        cache = self.cache
        runs: list[tuple[int, int]] = []
        n = first
        while n <= last:
            if cache.has_block(obj, n) or (obj, n) in cache.fetching:
                n += 1
                continue
            count = 1
            while (count < run_blocks and n + count <= last
                   and not cache.has_block(obj, n + count)
                   and (obj, n + count) not in cache.fetching):
                count += 1
            runs.append((n, count))
            n += count
        return runs

    async def _prefetch_run(self, obj: CachedObject, first: int, count: int) -> None:
        """Fetch the blocks [first, first + count) still missing once a read-ahead slot is
        free; the slot is held only while the GET is on the wire (a run waiting for room must
        not keep others, maybe the upload that would make that room, from fetching)."""
        slot = Slot(self._slots)
        try:
            await slot.acquire()
            # Readers may have fetched some of them meanwhile: fetch what is still missing,
            # the first run here and any other in a read-ahead of its own.
            runs = self._missing_runs(obj, first, first + count - 1, count)
            if not runs:
                return
            for later in runs[1:]:
                assert self.cache.background is not None
                self.cache.background.start_soon(self._prefetch_run, obj, *later)
            await self.cache.fetches.fetch(obj, runs[0][0], runs[0][1], slot)
        except Exception as exc:  # a reader fetches the block again and gets the error itself
            log.debug("read-ahead of %s blocks %d+%d failed: %s", obj.record.key, first, count,
                      exc)
        finally:
            slot.release()
