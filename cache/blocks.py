"""The block cache: objects held as fixed-size block files on disk, under a size cap. This
module owns the index of objects by key, their journal records, and reading, writing and
truncating their blocks; its helpers own the rest: cache/objects.py (the per-object state),
cache/fetches.py (fetching blocks), cache/readahead.py (what to fetch ahead of a reader),
cache/room.py (eviction and the cap), cache/fds.py (the descriptor table),
cache/block_files.py (writing fetched block files), cache/block_reader.py (the upload's reads).

Layout: `<dir>/journal` (the records, see cache.journal), `<dir>/block-size` (B, see
cache.layout) and `<dir>/blocks/<id>.<n>`, block n of object <id>, bytes [n*B, n*B + len);
flat, because creating a directory per object costs as much as the file itself. A block file
shorter than B, or a block past `remote_size` that is absent, reads as zeros up to the
object's size.
An absent block below `remote_size` is fetched from the server version named by the record.

Locking, all on the one trio thread: a block being fetched has an Event in `fetching`, and
other readers of it wait on that instead of fetching again. Writers bump the object's
generation *before* touching a block, and the upload reader (in a worker thread) checks the
generation *after* each read, so an upload either reads a consistent snapshot or gives up
(Superseded) and is queued again.

Eviction: blocks of clean objects sit in an LRU; dirty objects are pinned whole, and a writer
pins its object while it fetches the blocks it writes into part of. Above the cap, the least
recently used clean blocks go first; when only dirty data is left, writers wait for uploads to
free room (or, if no upload could, go on over the cap rather than fail). A block fetched for a
dirty object never waits: its upload may be what needs it.

A fetch that a write, a truncate or another server version overtook while it was under way
(reading, or waiting for room) is thrown away: the block on disk is always the newest.

Hot paths (every FUSE read and write lands here, on the one trio thread):
- Block files stay open in a bounded table of descriptors (`FdCache`), so a read or write is
  one pread/pwrite instead of building a path and open + pread/pwrite + close. A descriptor
  exists only while its block is in `obj.blocks`: removing a block (eviction, discard, a new
  server version, truncate) closes it before the unlink, and a fetched block replaces a path
  that no descriptor is open on, so no descriptor ever points at a stale file. Block files
  are named by object id, which rename does not change, so a rename leaves them valid.
- A read whose blocks are all cached (or holes) never awaits: one pread per block. One within
  a single cached block (a small random read) is `read_hit`, a plain call: the FUSE read
  handler awaits no coroutine for it.
- A sequential reader's read-ahead fetches runs of consecutive blocks (up to 16 MiB) with one
  ranged GET each, several in flight; a reader's own fetch of a missing block is one block.
- Fetched blocks are written to tmp files in a worker thread; only the renames into place and
  the bookkeeping run on the trio thread, after the checks that they were not overtaken.
- The upload reader runs in a worker thread and opens block files by path, never through the
  descriptor table, which only the trio thread may touch (a descriptor closed there and its
  number reused by another open would make the thread read the wrong file).
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from cache.block_files import DEFAULT_BLOCK_SIZE, pwrite_all
from cache.block_reader import BlockReader
from cache.fds import MAX_OPEN_FDS, FdCache, fd_limit
from cache.fetches import Fetches
from cache.journal import Journal, ObjectRecord
from cache.layout import settle_block_size
from cache.objects import CachedObject
from cache.readahead import READAHEAD_PARALLEL, ReadAhead
from cache.room import Room
from cache.storage import Storage
from cache.whole import WholeReads

if TYPE_CHECKING:
    from cache.streams import PartStreams

log = logging.getLogger(__name__)


class BlockCache:
    def __init__(self, directory: Path, storage: Storage, cap_bytes: int,
                 block_size: int = DEFAULT_BLOCK_SIZE, *,
                 readahead_parallel: int = READAHEAD_PARALLEL,
                 readahead_max_blocks: int | None = None,
                 readahead_run_blocks: int | None = None,
                 max_open_fds: int = MAX_OPEN_FDS,
                 whole_reads_up_to: int | None = 0) -> None:
        self.dir = directory
        self.blocks_dir = directory / "blocks"
        self.journal = Journal(directory / "journal")
        self.storage = storage
        self.cap = cap_bytes
        self.block_size = block_size  # the one asked for: load() settles the dir's own
        self.used = 0
        self.reserved = 0  # room held for fetches under way (Room.reserving)
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # clean blocks removed to stay under the cap
        self._by_key: dict[tuple[str, str], CachedObject] = {}
        # Clean blocks, least recently used first: what eviction may remove (cache/room.py).
        self.lru: OrderedDict[tuple[CachedObject, int], None] = OrderedDict()
        # Blocks being fetched, each to the event set when its fetch is over: one fetch of a
        # block at a time (its tmp file name is the fetch's own), the others wait for it.
        self.fetching: dict[tuple[CachedObject, int], trio.Event] = {}
        # Objects the storage serves only whole: streamed into their blocks (cache/whole.py).
        self.whole = WholeReads(self, whole_reads_up_to)
        self.background: trio.Nursery | None = None
        self.room = Room(self)
        self.fetches = Fetches(self)
        self.readahead = ReadAhead(self, readahead_parallel, readahead_max_blocks,
                                   readahead_run_blocks)
        self.fds = FdCache(fd_limit(max_open_fds))
        # Set by the write-back queue: whether waiting could free room.
        self.uploads_pending: Callable[[], bool] = lambda: False
        # Set by the write-back queue: a write restarts an object's upload delay.
        self.on_write: Callable[[CachedObject], None] = lambda obj: None
        # Set by the write-back queue where the storage takes uploads in parts: large files
        # go up while they are written (cache/streams.py).
        self.streams: PartStreams | None = None

    # ---- start-up and journal replay -------------------------------------------------------

    def load(self) -> list[CachedObject]:
        """Read every record on disk; return the dirty objects, which must be uploaded."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.blocks_dir.mkdir(mode=0o700, exist_ok=True)
        records = self.journal.load()
        entries = list(os.scandir(self.blocks_dir))
        self.block_size, drop_blocks = settle_block_size(
            self.dir, self.block_size, bool(entries), any(r.dirty for r in records))
        objects = {r.id: CachedObject(r, self.blocks_dir) for r in records}
        for entry in entries:
            obj_id, _, n = entry.name.partition(".")
            obj = objects.get(obj_id)
            if obj is None or not n.isdigit() or drop_blocks:
                # no record, a fetch's tmp file cut short by a kill, or clean blocks of
                # another size
                os.unlink(entry.path)
                continue
            obj.blocks[int(n)] = entry.stat().st_size
            self.used += obj.blocks[int(n)]
        for obj in objects.values():
            record = obj.record
            if record.dirty and not record.committed:
                # The file was open when the process died: keep what was written.
                end = max((n * self.block_size + ln for n, ln in obj.blocks.items()), default=0)
                record.size = max(record.size, end)
                log.warning("recovering %s/%s, open at the last crash, as written", record.bucket,
                            record.key)
            self._claim(obj)
        self.room.fit_cap_to_disk()
        dirty = [obj for obj in self._by_key.values() if obj.dirty]
        for obj in dirty:
            obj.recovered = True
        return dirty

    def _claim(self, obj: CachedObject) -> None:
        """Index a loaded object; of two claiming one key, the dirty or newer one wins."""
        k = (obj.record.bucket, obj.record.key)
        other = self._by_key.get(k)
        if other is not None:
            keep_new = (obj.dirty, obj.record.saved_ns) > (other.dirty, other.record.saved_ns)
            loser = other if keep_new else obj
            self._forget(loser)
            if not keep_new:
                return
        self._by_key[k] = obj
        if not obj.dirty:
            for n in obj.blocks:
                self.lru[(obj, n)] = None

    # ---- objects ---------------------------------------------------------------------------

    def get(self, bucket: str, key: str) -> CachedObject | None:
        return self._by_key.get((bucket, key))

    def objects_under(self, bucket: str, prefix: str) -> list[CachedObject]:
        return [obj for (b, k), obj in self._by_key.items()
                if b == bucket and k.startswith(prefix)]

    def dirty_under(self, bucket: str, prefix: str) -> list[CachedObject]:
        return [obj for obj in self.objects_under(bucket, prefix) if obj.dirty]

    def open_object(self, bucket: str, key: str, size: int, etag: str,
                    mtime_ns: int) -> CachedObject:
        """The cached object for a server version; clean blocks of another version are dropped."""
        obj = self._by_key.get((bucket, key))
        if obj is not None:
            if obj.dirty or obj.record.etag == etag:
                return obj
            self._drop_blocks(obj)
            rec = obj.record
            rec.size, rec.remote_size, rec.etag, rec.mtime_ns = size, size, etag, mtime_ns
            rec.on_server = True
            self._save(obj)
            return obj
        return self._new(ObjectRecord(uuid.uuid4().hex, bucket, key, size, size, etag, mtime_ns,
                                      on_server=True))

    def create_object(self, bucket: str, key: str, metadata: dict[str, str]) -> CachedObject:
        """A new empty object, dirty: it exists only here until uploaded."""
        old = self._by_key.get((bucket, key))
        if old is not None:
            self.discard(old)
        return self._new(ObjectRecord(uuid.uuid4().hex, bucket, key, 0, 0, "", 0,
                                      metadata=dict(metadata), dirty=True))

    def _new(self, record: ObjectRecord) -> CachedObject:
        obj = CachedObject(record, self.blocks_dir)
        self._by_key[(record.bucket, record.key)] = obj
        self._save(obj)
        return obj

    def save(self, obj: CachedObject) -> None:
        """Write the object's record to the journal (after a change made to it elsewhere)."""
        self._save(obj)

    def _save(self, obj: CachedObject) -> None:
        if obj.detached:
            return
        obj.record.saved_ns = time.time_ns()
        self.journal.save(obj.record)
        if self.journal.needs_compaction(len(self._by_key)):
            self.journal.compact(o.record for o in self._by_key.values())

    def mark_lost(self, obj: CachedObject, reason: str) -> None:
        """Record that data written to `obj` is gone (`DataLost`): after a restart its missing
        blocks would read as holes, and an upload would store zeros for them."""
        obj.record.lost = reason
        self._save(obj)

    def rename(self, obj: CachedObject, bucket: str, key: str) -> None:
        """Point the object at a new name; one record write makes the move crash-safe."""
        old = self._by_key.get((bucket, key))
        if old is not None and old is not obj:
            self.discard(old)
        self._by_key.pop((obj.record.bucket, obj.record.key), None)
        obj.record.bucket, obj.record.key = bucket, key
        self._by_key[(bucket, key)] = obj
        self._save(obj)

    def set_server_version(self, obj: CachedObject, etag: str, mtime_ns: int) -> None:
        """The server holds this object's current data under a new version (e.g. after a copy)."""
        obj.record.etag, obj.record.mtime_ns = etag, mtime_ns
        obj.version_at = time.monotonic()
        self._save(obj)

    def set_metadata(self, obj: CachedObject, metadata: dict[str, str]) -> None:
        if metadata == obj.record.metadata:
            return  # rsync sets a new file's mode twice: no journal line, no new generation
        obj.record.metadata = dict(metadata)
        if obj.dirty:
            obj.generation += 1
            self.on_write(obj)
        self._save(obj)

    def discard(self, obj: CachedObject) -> None:
        """Forget the object (it was unlinked or replaced); open handles keep their data."""
        if obj.detached:
            return
        obj.generation += 1
        if self._by_key.get((obj.record.bucket, obj.record.key)) is obj:
            del self._by_key[(obj.record.bucket, obj.record.key)]
        obj.detached = True
        obj.record.dirty = False
        self.journal.remove(obj.id)
        if obj.open_count == 0:
            self._drop_blocks(obj)
        else:  # its server copy is going away: what the open handles read must stay
            for n in obj.blocks:
                self.lru.pop((obj, n), None)

    def opened(self, obj: CachedObject) -> None:
        obj.open_count += 1

    def closed(self, obj: CachedObject) -> None:
        obj.open_count -= 1
        if obj.open_count == 0 and obj.detached:
            self._drop_blocks(obj)

    def _drop_blocks(self, obj: CachedObject) -> None:
        for n in list(obj.blocks):
            self.remove_block(obj, n)

    def _forget(self, obj: CachedObject) -> None:
        """Remove a loaded object that lost its key to another record."""
        self._drop_blocks(obj)
        self.journal.remove(obj.id)

    def remove_block(self, obj: CachedObject, n: int) -> None:
        self.used -= obj.blocks.pop(n)
        self.lru.pop((obj, n), None)
        self.fds.close(obj, n)  # before the unlink: a kept descriptor would outlive the file
        obj.block_path(n).unlink(missing_ok=True)
        self.room.changed()

    def close(self) -> None:
        """Close the kept block file descriptors (the cache stays usable: they reopen)."""
        self.fds.close_all()

    # ---- reading ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host read-ahead fetches until cancelled."""
        async with trio.open_nursery() as nursery:
            self.background = nursery
            task_status.started()
            await trio.sleep_forever()

    def read_hit(self, obj: CachedObject, offset: int, length: int) -> bytes | None:
        """The read's bytes when they lie in one block on disk: the hit path (every small
        random read of a cached file), one pread with no coroutine and no await. None, with
        nothing done, when the read needs more (a fetch, a hole, several blocks): `read`.

        Written for its cost, which is most of what a warm random read costs mountfs over a
        bare pyfuse3 filesystem: no calls but the pread on a random read (the read-ahead's
        and the LRU's bookkeeping inline), one key for the LRU and the descriptor."""
        bs = self.block_size
        n = offset // bs
        have = obj.blocks.get(n)
        if have is None:
            return None
        lo = offset - n * bs
        hi = lo + length
        if hi > obj.record.size - n * bs:  # (not min(): its argument parsing costs more)
            hi = obj.record.size - n * bs
        if hi > bs or lo >= hi:
            return None
        if offset == obj.next_read:
            self.readahead.after_read(obj, offset, offset + hi - lo)
        else:  # a random read: ReadAhead.after_read's first branch
            obj.next_read, obj.streak = offset + hi - lo, 0
        self.hits += 1
        key = (obj, n)
        try:
            self.lru.move_to_end(key)
        except KeyError:
            pass  # a block of a dirty or detached object: pinned, in no LRU
        if hi <= have:
            data = os.pread(self.fds[key], hi - lo, lo)
            if len(data) == hi - lo:
                return data
        return self._pread(obj, n, lo, hi)

    async def read(self, obj: CachedObject, offset: int, length: int) -> bytes:
        data = self.read_hit(obj, offset, length)
        if data is not None:
            return data
        end = min(offset + length, obj.size)
        if offset >= end:
            return b""
        self.readahead.after_read(obj, offset, end)
        bs = self.block_size
        parts = []
        for n in range(offset // bs, (end - 1) // bs + 1):
            await self.fetches.ensure_block(obj, n)
            lo = max(offset, n * bs) - n * bs
            hi = min(end, (n + 1) * bs) - n * bs
            parts.append(self._pread(obj, n, lo, hi))
        return b"".join(parts)

    def _pread(self, obj: CachedObject, n: int, lo: int, hi: int) -> bytes:
        """Bytes [lo, hi) of block n through its kept descriptor; zeros past the file's end
        (a short block, or a hole). Trio thread only."""
        have = obj.blocks.get(n, 0)
        if lo >= have:
            return bytes(hi - lo)
        data = os.pread(self.fds[obj, n], min(hi, have) - lo, lo)
        if len(data) < hi - lo:
            data += bytes(hi - lo - len(data))
        return data

    def hit(self, obj: CachedObject, n: int) -> None:
        self.hits += 1
        try:
            self.lru.move_to_end((obj, n))
        except KeyError:
            pass  # a block of a dirty or detached object: pinned, in no LRU

    def has_block(self, obj: CachedObject, n: int) -> bool:
        """True when block n needs no fetch: cached, or a hole past the server's data."""
        return n in obj.blocks or n * self.block_size >= obj.record.remote_size

    async def fill(self, obj: CachedObject) -> None:
        """Fetch every block still on the server only, so the object can be read whole locally."""
        if self.streams is not None:
            await self.streams.settle(obj)  # the server then holds what the cache let go
        bs = self.block_size
        for n in range(0, (min(obj.size, obj.record.remote_size) + bs - 1) // bs):
            await self.fetches.ensure_block(obj, n)

    # ---- writing ---------------------------------------------------------------------------

    def _mark_dirty(self, obj: CachedObject) -> None:
        obj.generation += 1
        self.on_write(obj)
        if not obj.record.dirty:
            obj.record.dirty = True
            for n in obj.blocks:
                self.lru.pop((obj, n), None)
            self._save(obj)

    async def write(self, obj: CachedObject, offset: int, data: bytes) -> None:
        bs = self.block_size
        end = offset + len(data)
        first, last = offset // bs, (end - 1) // bs
        if obj.stream is not None and self.streams is not None:
            await self.streams.before_write(obj, offset, end)
        # Room first, while nothing of the object is pinned: the blocks of its parts sent
        # (cache/streams.py) may be what makes it.
        await self.room.wait(len(data))
        obj.pins += 1  # the blocks fetched here must stay until they are written
        try:
            for n in (first, last):
                partial = offset > n * bs or end < min((n + 1) * bs, max(obj.size, end))
                if partial:
                    await self.fetches.ensure_block(obj, n)
        finally:
            obj.pins -= 1
        self._mark_dirty(obj)
        view = memoryview(data) if first != last else data  # slices of a view copy nothing
        for n in range(first, last + 1):
            lo = max(offset, n * bs)
            hi = min(end, (n + 1) * bs)
            piece = view if first == last else view[lo - offset:hi - offset]
            pwrite_all(self.fds.create(obj, n), piece, lo - n * bs)
            new_len = max(obj.blocks.get(n, 0), hi - n * bs)
            self.used += new_len - obj.blocks.get(n, 0)
            obj.blocks[n] = new_len
        obj.record.size = max(obj.record.size, end)
        if self.streams is not None:
            for n in range(first, last + 1):
                obj.written[n] = obj.generation
                self.lru.pop((obj, n), None)  # a part's block sent before: pending again
            self.streams.written(obj)

    async def truncate(self, obj: CachedObject, size: int) -> None:
        if self.streams is not None:
            await self.streams.settle(obj)  # its parts hold the bytes before the cut
        bs = self.block_size
        if size < obj.size and size % bs:
            await self.fetches.ensure_block(obj, size // bs)  # its head survives the cut
        self._mark_dirty(obj)
        for n in [n for n in obj.blocks if n * bs >= size]:
            self.remove_block(obj, n)
        tail = size // bs
        if tail in obj.blocks and obj.blocks[tail] > size - tail * bs:
            os.ftruncate(self.fds[obj, tail], size - tail * bs)
            self.used -= obj.blocks[tail] - (size - tail * bs)
            obj.blocks[tail] = size - tail * bs
        obj.record.remote_size = min(obj.record.remote_size, size)
        obj.record.size = size

    # ---- committing and uploading ----------------------------------------------------------

    def commit(self, obj: CachedObject) -> None:
        """A program closed the object: record that its data, as it is now (size included),
        is promised to the server."""
        if obj.dirty and not obj.detached:
            obj.record.committed = True
            self._save(obj)

    def reader(self, obj: CachedObject) -> tuple[BlockReader, int]:
        """A file over the object's current data and the generation it snapshots."""
        return BlockReader(self, obj, obj.generation), obj.generation

    def uploaded(self, obj: CachedObject, generation: int, etag: str, mtime_ns: int,
                 size: int) -> None:
        """Record a finished upload of `generation`; clean unless written since."""
        rec = obj.record
        rec.etag, rec.mtime_ns, rec.on_server = etag, mtime_ns, True
        obj.version_at = time.monotonic()
        obj.uploaded_generation = generation
        obj.last_error = None
        # Written since the snapshot: the upload filled every block first, so the blocks absent
        # now are holes a truncate made, and the server's copy must not stand behind them.
        if generation == obj.generation:
            rec.remote_size = size
            rec.dirty = rec.committed = False
            for n in obj.blocks:
                self.lru[(obj, n)] = None
            self.room.changed()
        self._save(obj)

    def release_blocks(self, obj: CachedObject, blocks: range, generation: int) -> None:
        """Blocks of `obj` whose data a part sent (snapshot `generation`) holds: evictable,
        unless written since."""
        for n in blocks:
            if n in obj.blocks and obj.written.get(n, -1) <= generation:
                self.lru[(obj, n)] = None
        self.room.changed()

    def pin_blocks(self, obj: CachedObject, blocks: range) -> None:
        """Released blocks whose part is to be sent again: not evictable any more."""
        for n in blocks:
            self.lru.pop((obj, n), None)

    # ---- room (cache/room.py) -------------------------------------------------------------

    def untrack(self, obj: CachedObject) -> None:
        """Forget an object with nothing cached (eviction took its last block)."""
        if self._by_key.get((obj.record.bucket, obj.record.key)) is obj:
            del self._by_key[(obj.record.bucket, obj.record.key)]
        self.journal.remove(obj.id)
