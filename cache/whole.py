"""Objects a storage serves only whole (no ranged reads at all, or not below some size): a miss
of any block streams the object from its start into its blocks (`Storage.stream_object`), once
for every reader, each reader going on as soon as its own block is in. Without this a file read
block by block would cost one whole download per block.

A stream owns the blocks that were neither cached nor being fetched when it began (it holds
their entries in `BlockCache.fetching`, so read-ahead and other readers wait for it); blocks
it does not own it skips. A stream that fails hands its error to the readers waiting on it; one
overtaken by a new version of the object stops, and its readers fetch again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from cache.errors import ObjectChanged

if TYPE_CHECKING:
    from cache.blocks import BlockCache
    from cache.objects import CachedObject

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Stream:
    owned: dict[int, trio.Event]  # the blocks it brings in, each with its readers' event (set
    # once the block is in, or the stream is over)
    done: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None


class WholeReads:
    def __init__(self, cache: BlockCache, up_to: int | None) -> None:
        """`up_to`: objects of at most this many bytes are read whole (None: all; 0: none)."""
        self.cache, self.up_to = cache, up_to
        self._streams: dict[CachedObject, _Stream] = {}

    def applies(self, obj: CachedObject) -> bool:
        return self.up_to is None or obj.record.remote_size <= self.up_to

    async def ensure(self, obj: CachedObject, n: int) -> None:
        """Wait until block n is in, from a stream of the object under way or started now;
        raise that stream's error if it ended without the block. (Returns without the block
        when a new version overtook the stream: the caller looks again.)"""
        stream = self._streams.get(obj)
        if stream is None:
            stream = self._start(obj)
            if self.cache.background is None:  # a cache not running: the reader streams
                await self._run(obj, stream)
            else:
                self.cache.background.start_soon(self._run, obj, stream)
        event = stream.owned.get(n)
        await (event if event is not None else stream.done).wait()
        if n not in obj.blocks and stream.error is not None:
            raise stream.error

    def _start(self, obj: CachedObject) -> _Stream:
        cache = self.cache
        blocks = -(-obj.record.remote_size // cache.block_size)
        owned = {n: trio.Event() for n in range(blocks)
                 if n not in obj.blocks and (obj, n) not in cache.fetching}
        cache.fetching.update({(obj, n): event for n, event in owned.items()})
        stream = self._streams[obj] = _Stream(owned)
        return stream

    async def _run(self, obj: CachedObject, stream: _Stream) -> None:
        cache, rec = self.cache, obj.record
        bs, etag = cache.block_size, rec.etag
        pending, n, total = bytearray(), 0, 0
        try:
            async for piece in cache.storage.stream_object(rec.bucket, rec.key):
                pending += piece
                total += len(piece)
                while len(pending) >= bs:
                    await self._store(obj, stream, n, bytes(pending[:bs]), etag)
                    del pending[:bs]
                    n += 1
                if rec.etag != etag:
                    return  # a new version: what is read of the old one is void
            if pending:
                await self._store(obj, stream, n, bytes(pending), etag)
            if total != rec.remote_size and rec.etag == etag:
                raise ObjectChanged(f"{rec.bucket}/{rec.key} is {total} bytes on the server, "
                                    f"expected {rec.remote_size}")
        except Exception as exc:  # the readers waiting on it raise it
            log.debug("stream of %s/%s failed: %s", rec.bucket, rec.key, exc)
            stream.error = exc
        finally:
            for k in stream.owned:
                self._release(obj, stream, k)
            del self._streams[obj]
            stream.done.set()

    async def _store(self, obj: CachedObject, stream: _Stream, n: int, data: bytes,
                     etag: str) -> None:
        if n in stream.owned:
            self.cache.misses += 1
            await self.cache.fetches.store_fetched(obj, n, data, etag)
            self._release(obj, stream, n)

    def _release(self, obj: CachedObject, stream: _Stream, n: int) -> None:
        event = stream.owned[n]
        if self.cache.fetching.get((obj, n)) is event:
            del self.cache.fetching[(obj, n)]
        event.set()
