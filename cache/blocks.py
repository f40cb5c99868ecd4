"""The block cache: objects held as fixed-size block files on disk, under a size cap.

Layout: `<dir>/journal` (the records, see cache.journal) and `<dir>/blocks/<id>.<n>`, block n
of object <id>, bytes [n*B, n*B + len); flat, because creating a directory per object costs
as much as the file itself. A block file shorter
than B, or a block past `remote_size` that is absent, reads as zeros up to the object's size.
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
- Block files stay open in a bounded table of descriptors (`_FdCache`), so a read or write is
  one pread/pwrite instead of building a path and open + pread/pwrite + close. A descriptor
  exists only while its block is in `obj.blocks`: removing a block (eviction, discard, a new
  server version, truncate) closes it before the unlink, and a fetched block replaces a path
  that no descriptor is open on, so no descriptor ever points at a stale file. Block files
  are named by object id, which rename does not change, so a rename leaves them valid.
- A read whose blocks are all cached (or holes) never awaits: one pread per block. One within
  a single cached block (a small random read) is `read_hit`, a plain call: the FUSE read
  handler awaits no coroutine for it.
- A sequential reader's read-ahead fetches runs of consecutive blocks (up to 8 MiB) with one
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
import resource
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from cache.errors import DataLost, ObjectChanged, Superseded
from cache.journal import Journal, ObjectRecord
from cache.storage import Storage
from cache.whole import WholeReads

if TYPE_CHECKING:
    from cache.streams import PartStreams

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 1024 * 1024
# The read-ahead window doubles per sequential read up to this many blocks ahead of the
# reader (and at most a quarter of the cap); it bounds the data in flight. A server answers
# each ranged GET after a round trip, so throughput is (bytes in flight) per round trip: 8
# GETs of 8 MiB at once is what boto3's own parallel reads use to fill the link, and the
# window must hold them all (at 32 blocks only 4 runs were ever under way: a cold 1 GiB read
# on s3rver, 10 paired runs on a loaded machine: median 0.68x boto3's throughput, 0.78x at 64).
READAHEAD_MAX_BLOCKS = 64
READAHEAD_PARALLEL = 8  # read-ahead GETs under way at once (the default)
# Consecutive blocks a read-ahead fetches with one ranged GET: per-request costs make small
# GETs slow (s3rver: 190 MiB/s with 1 MiB GETs, 330 MiB/s with 8 MiB ones, 8 in flight).
READAHEAD_RUN_BYTES = 8 * 1024 * 1024
# Block files kept open; at most a quarter of the process's descriptor limit (see _FdCache).
MAX_OPEN_FDS = 1024


@dataclass(eq=False)
class CachedObject:
    record: ObjectRecord
    blocks_dir: Path
    blocks: dict[int, int] = field(default_factory=dict)  # block number -> bytes on disk
    generation: int = 0
    uploaded_generation: int = -1
    open_count: int = 0
    pins: int = 0  # writers between fetching blocks and writing them: not evictable
    detached: bool = False  # unlinked: never uploaded, deleted once closed
    last_error: BaseException | None = None
    attempt_done: trio.Event = field(default_factory=trio.Event)
    next_read: int = -1  # where a sequential reader reads next
    streak: int = 0  # sequential reads in a row
    readahead_to: int = 0  # first block no read-ahead has been started for
    # When this cache last learned the server's version from a write of its own (an upload,
    # a copy): server answers to requests begun before then are older news.
    version_at: float = -1e18
    # Dirty at load: an upload of it may have been under way when the last process died, and
    # may have left an unfinished multipart upload on the server to abort.
    recovered: bool = False
    # With uploads in parts (cache/streams.py): the generation of each block's last write,
    # and the upload in parts under way (a Stream).
    written: dict[int, int] = field(default_factory=dict)
    stream: Any = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def size(self) -> int:
        return self.record.size

    @property
    def dirty(self) -> bool:
        return self.record.dirty

    def block_path(self, n: int) -> Path:
        return self.blocks_dir / f"{self.record.id}.{n}"


def _fd_limit(wanted: int) -> int:
    """`wanted`, but at most a quarter of RLIMIT_NOFILE: sockets, the FUSE device and worker
    threads' files need the rest."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        soft = 1024
    if soft == resource.RLIM_INFINITY:
        return max(1, wanted)
    return max(1, min(wanted, soft // 4))


class _FdCache(dict[tuple[CachedObject, int], int]):
    """Open descriptors of block files by (object, block), at most `limit` of them; past it
    the one opened first is closed (first in, first out: a warm read's lookup is then one
    dict lookup in C, `self[obj, n]`, with no reordering; a descriptor closed while its block
    is still read costs one open to get back).

    Used only on the trio thread. The descriptors are O_RDWR, opened on demand (a write to a
    new block creates its file); the cache never decides whether a block exists, its callers
    do (see the module docstring for when a descriptor must be closed). A missing file raises
    FileNotFoundError as an open by path would.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __missing__(self, key: tuple[CachedObject, int]) -> int:
        return self._open(key, os.O_RDWR)

    def create(self, obj: CachedObject, n: int) -> int:
        """The descriptor of block n's file, made if missing (a write)."""
        fd = self.get((obj, n))
        return fd if fd is not None else self._open((obj, n), os.O_RDWR | os.O_CREAT)

    def _open(self, key: tuple[CachedObject, int], flags: int) -> int:
        obj, n = key
        fd = os.open(f"{obj.blocks_dir}/{obj.record.id}.{n}", flags, 0o600)
        self[key] = fd
        if len(self) > self.limit:
            os.close(self.pop(next(iter(self))))
        return fd

    def close(self, obj: CachedObject, n: int) -> None:
        fd = self.pop((obj, n), None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        while self:
            os.close(self.popitem()[1])


def _write_files(files: list[tuple[str, memoryview]]) -> None:
    """Create each path holding its data (a worker thread writes fetched blocks with this)."""
    for path, data in files:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _pwrite_all(fd, data, 0)
        finally:
            os.close(fd)


class BlockSink:
    """A ranged read's body written into consecutive block files as it arrives: byte p of the
    range goes to file p // block_size at p % block_size. Called from the driver's thread
    (see `Backend.read_into`); each call is one pwrite per block it spans, no copy in Python,
    and a file is created when its first byte comes (on that thread, not the trio thread).
    A context manager: the descriptors are closed on exit."""

    def __init__(self, paths: list[str], block_size: int) -> None:
        self.paths, self.block_size = paths, block_size
        self.fds: dict[int, int] = {}  # block index in the range -> its file, once written

    def __enter__(self) -> BlockSink:
        return self

    def __exit__(self, *_: object) -> None:
        while self.fds:
            os.close(self.fds.popitem()[1])

    def __call__(self, pos: int, data: bytes | memoryview) -> None:
        view, bs = memoryview(data), self.block_size
        while view:
            n, inside = divmod(pos, bs)
            if n >= len(self.paths):
                raise ValueError(f"a read wrote past its range (at {pos})")
            fd = self.fds.get(n)
            if fd is None:
                fd = self.fds[n] = os.open(self.paths[n], os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                           0o600)
            piece = view[:bs - inside]
            _pwrite_all(fd, piece, inside)
            pos += len(piece)
            view = view[len(piece):]

    def cut(self, length: int) -> None:
        """Make the files hold exactly the range's first `length` bytes (a try cut short and
        repeated as a shorter read may have left more)."""
        for n, fd in self.fds.items():
            os.ftruncate(fd, max(0, min(self.block_size, length - n * self.block_size)))


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite every byte of `data` (a regular file writes short only when the disk is full,
    and then the retry raises ENOSPC instead of losing the tail silently)."""
    done = os.pwrite(fd, data, offset)
    while done < len(data):
        done += os.pwrite(fd, memoryview(data)[done:], offset + done)


class BlockCache:
    def __init__(self, directory: Path, storage: Storage, cap_bytes: int,
                 block_size: int = DEFAULT_BLOCK_SIZE, *,
                 readahead_parallel: int = READAHEAD_PARALLEL,
                 readahead_max_blocks: int = READAHEAD_MAX_BLOCKS,
                 readahead_run_blocks: int | None = None,
                 max_open_fds: int = MAX_OPEN_FDS,
                 whole_reads_up_to: int | None = 0) -> None:
        self.dir = directory
        self.blocks_dir = directory / "blocks"
        self.journal = Journal(directory / "journal")
        self.storage = storage
        self.cap = cap_bytes
        self.block_size = block_size
        self.used = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # clean blocks removed to stay under the cap
        self._by_key: dict[tuple[str, str], CachedObject] = {}
        self._lru: OrderedDict[tuple[CachedObject, int], None] = OrderedDict()
        # Blocks being fetched, each to the event set when its fetch is over: one fetch of a
        # block at a time (its tmp file name is the fetch's own), the others wait for it.
        self.fetching: dict[tuple[CachedObject, int], trio.Event] = {}
        # Objects the storage serves only whole: streamed into their blocks (cache/whole.py).
        self.whole = WholeReads(self, whole_reads_up_to)
        self._room = trio.Event()
        self.background: trio.Nursery | None = None
        self.readahead_max_blocks = readahead_max_blocks
        if readahead_run_blocks is None:
            readahead_run_blocks = max(1, READAHEAD_RUN_BYTES // block_size)
        self.readahead_run_blocks = max(1, min(readahead_run_blocks, readahead_max_blocks))
        self._readahead_slots = trio.CapacityLimiter(readahead_parallel)
        self._fds = _FdCache(_fd_limit(max_open_fds))
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
        objects = {r.id: CachedObject(r, self.blocks_dir) for r in self.journal.load()}
        for entry in os.scandir(self.blocks_dir):
            obj_id, _, n = entry.name.partition(".")
            obj = objects.get(obj_id)
            if obj is None or not n.isdigit():
                os.unlink(entry.path)  # no record, or a fetch's tmp file cut short by a kill
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
        self._fit_cap_to_disk()
        dirty = [obj for obj in self._by_key.values() if obj.dirty]
        for obj in dirty:
            obj.recovered = True
        return dirty

    def _fit_cap_to_disk(self) -> None:
        """Lower the cap to what the cache dir's filesystem holds, less a reserve for the
        journal and its compaction: a cap the disk cannot reach never evicts, and a disk filled
        with clean blocks failed every later write with ENOSPC (tests/test_limits.py)."""
        st = os.statvfs(self.dir)
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        reserve = max(8 * self.block_size, min(64 * 1024 * 1024, total // 8))
        fits = self.used + free - reserve
        if fits < self.cap:
            self.cap = max(fits, 4 * self.block_size)
            log.warning("the cache dir's disk holds less than the cache size: capping the "
                        "cache at %d MiB", self.cap // (1024 * 1024))

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
                self._lru[(obj, n)] = None

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
                self._lru.pop((obj, n), None)

    def opened(self, obj: CachedObject) -> None:
        obj.open_count += 1

    def closed(self, obj: CachedObject) -> None:
        obj.open_count -= 1
        if obj.open_count == 0 and obj.detached:
            self._drop_blocks(obj)

    def _drop_blocks(self, obj: CachedObject) -> None:
        for n in list(obj.blocks):
            self._remove_block(obj, n)

    def _forget(self, obj: CachedObject) -> None:
        """Remove a loaded object that lost its key to another record."""
        self._drop_blocks(obj)
        self.journal.remove(obj.id)

    def _remove_block(self, obj: CachedObject, n: int) -> None:
        self.used -= obj.blocks.pop(n)
        self._lru.pop((obj, n), None)
        self._fds.close(obj, n)  # before the unlink: a kept descriptor would outlive the file
        obj.block_path(n).unlink(missing_ok=True)
        self.room_changed()

    def close(self) -> None:
        """Close the kept block file descriptors (the cache stays usable: they reopen)."""
        self._fds.close_all()

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
            self._read_ahead(obj, offset, offset + hi - lo)
        else:  # a random read: _read_ahead's first branch
            obj.next_read, obj.streak = offset + hi - lo, 0
        self.hits += 1
        key = (obj, n)
        try:
            self._lru.move_to_end(key)
        except KeyError:
            pass  # a block of a dirty or detached object: pinned, in no LRU
        if hi <= have:
            data = os.pread(self._fds[key], hi - lo, lo)
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
        self._read_ahead(obj, offset, end)
        bs = self.block_size
        parts = []
        for n in range(offset // bs, (end - 1) // bs + 1):
            await self.ensure_block(obj, n)
            lo = max(offset, n * bs) - n * bs
            hi = min(end, (n + 1) * bs) - n * bs
            parts.append(self._pread(obj, n, lo, hi))
        return b"".join(parts)

    def _hit(self, obj: CachedObject, n: int) -> None:
        self.hits += 1
        try:
            self._lru.move_to_end((obj, n))
        except KeyError:
            pass  # a block of a dirty or detached object: pinned, in no LRU

    def _pread(self, obj: CachedObject, n: int, lo: int, hi: int) -> bytes:
        """Bytes [lo, hi) of block n through its kept descriptor; zeros past the file's end
        (a short block, or a hole). Trio thread only."""
        have = obj.blocks.get(n, 0)
        if lo >= have:
            return bytes(hi - lo)
        data = os.pread(self._fds[obj, n], min(hi, have) - lo, lo)
        if len(data) < hi - lo:
            data += bytes(hi - lo - len(data))
        return data

    def _read_ahead(self, obj: CachedObject, offset: int, end: int) -> None:
        """A sequential reader gets the next blocks fetched in parallel, in a growing window.

        Consecutive missing blocks are fetched as runs of up to `run_blocks` with one ranged
        GET each: a server's cost per request (s3rver: 1 MiB GETs reach half the throughput of
        8 MiB ones) would otherwise bound a cold read. The kernel reads 128 KiB at a time, so
        the window's edge moves a block at a time; a run starts only once enough blocks are
        due (half the window while it still grows), not one GET per block.

        `read_hit` does the first branch, a random read's, itself (a call less per read)."""
        if offset != obj.next_read:
            obj.next_read, obj.streak = end, 0
            return
        obj.next_read = end
        if self.whole.applies(obj):
            return  # read only whole: its stream is the read-ahead
        obj.streak += 1
        if self.background is None:
            return
        bs = self.block_size
        # Within a quarter of the cap, so that what is read ahead never evicts what the
        # reader has yet to read.
        window = min(self.readahead_max_blocks, 1 << min(obj.streak, 20),
                     max(1, self.cap // (4 * bs)))
        first = max(end // bs, obj.readahead_to)
        last = min((end - 1) // bs + window, (obj.size - 1) // bs)
        run_blocks = self._run_blocks()
        if last - first + 1 < min(run_blocks, max(1, window // 2)) and last < (obj.size - 1) // bs:
            return  # wait until a longer run is due
        for run_first, count in self._missing_runs(obj, first, last, run_blocks):
            self.background.start_soon(self._prefetch_run, obj, run_first, count)
        obj.readahead_to = max(obj.readahead_to, last + 1)

    def _run_blocks(self) -> int:
        """Blocks per read-ahead GET: at most a quarter of the cap, so that a run never needs
        more room than eviction can make."""
        return max(1, min(self.readahead_run_blocks, self.cap // (4 * self.block_size)))

    def _missing_runs(self, obj: CachedObject, first: int,
                      last: int, run_blocks: int) -> list[tuple[int, int]]:
        """(first block, count) of the runs of blocks in [first, last] that are neither cached
        nor being fetched, each at most `run_blocks` long."""
        runs: list[tuple[int, int]] = []
        n = first
        while n <= last:
            if self.has_block(obj, n) or (obj, n) in self.fetching:
                n += 1
                continue
            count = 1
            while (count < run_blocks and n + count <= last
                   and not self.has_block(obj, n + count)
                   and (obj, n + count) not in self.fetching):
                count += 1
            runs.append((n, count))
            n += count
        return runs

    async def _prefetch_run(self, obj: CachedObject, first: int, count: int) -> None:
        """Fetch the blocks [first, first + count) still missing once a read-ahead slot is
        free; the slot is held only while the GET is on the wire (a run waiting for room must
        not keep others, maybe the upload that would make that room, from fetching)."""
        slot = _Slot(self._readahead_slots)
        try:
            await slot.acquire()
            # Readers may have fetched some of them meanwhile: fetch what is still missing,
            # the first run here and any other in a read-ahead of its own.
            runs = self._missing_runs(obj, first, first + count - 1, count)
            if not runs:
                return
            for later in runs[1:]:
                assert self.background is not None
                self.background.start_soon(self._prefetch_run, obj, *later)
            await self._fetch(obj, runs[0][0], runs[0][1], slot)
        except Exception as exc:  # a reader fetches the block again and gets the error itself
            log.debug("read-ahead of %s blocks %d+%d failed: %s", obj.record.key, first, count,
                      exc)
        finally:
            slot.release()

    def read_block_into(self, obj: CachedObject, n: int, lo: int, out: memoryview) -> None:
        """Bytes [lo, lo + len(out)) of block n into `out` (a hole reads as zeros), opened by
        path: safe in a worker thread (the upload)."""
        got = 0
        have = obj.blocks.get(n, 0)  # once: the trio thread may drop the block meanwhile
        if lo < have:
            with open(obj.block_path(n), "rb", buffering=0) as f:
                f.seek(lo)
                got = f.readinto(out[:have - lo]) or 0
        out[got:] = bytes(len(out) - got)

    def has_block(self, obj: CachedObject, n: int) -> bool:
        """True when block n needs no fetch: cached, or a hole past the server's data."""
        return n in obj.blocks or n * self.block_size >= obj.record.remote_size

    async def ensure_block(self, obj: CachedObject, n: int) -> None:
        """Make block n readable from disk, fetching it from the server if needed. A reader's
        own fetch takes no read-ahead slot: it never queues behind read-ahead."""
        while True:
            if n in obj.blocks:
                self._hit(obj, n)
                return
            if obj.stream is not None and self.streams is not None \
                    and self.streams.holds(obj, n):
                await self.streams.settle(obj)  # evicted: only the upload in parts has it
                continue
            if n * self.block_size >= obj.record.remote_size:
                return
            pending = self.fetching.get((obj, n))
            if pending is None:
                if not self.whole.applies(obj):
                    break
                await self.whole.ensure(obj, n)  # streamed in with the rest of the object
                continue
            await pending.wait()
        await self._fetch(obj, n, 1)

    async def _fetch(self, obj: CachedObject, first: int, count: int,
                     slot: _Slot | None = None) -> None:
        """Fetch blocks [first, first + count) with one ranged GET. The caller saw each of
        them neither cached nor being fetched, with no await since."""
        blocks = range(first, first + count)
        done = trio.Event()
        for n in blocks:
            self.fetching[(obj, n)] = done
        self.misses += count
        try:
            await self._fetch_unlocked(obj, first, count, slot)
        finally:
            for n in blocks:
                del self.fetching[(obj, n)]
            done.set()

    async def _fetch_unlocked(self, obj: CachedObject, first: int, count: int,
                              slot: _Slot | None) -> None:
        rec = obj.record
        bs = self.block_size
        etag, start = rec.etag, first * bs
        want = min(count * bs, rec.remote_size - start)
        tmps = self._tmp_names(obj, range(first, first + -(-want // bs)))
        try:
            # The body goes straight into the blocks' tmp files as it arrives (BlockSink).
            with BlockSink(list(tmps.values()), bs) as sink:
                try:
                    got = await self.storage.read_into(rec.bucket, rec.key, start, want, sink)
                finally:
                    if slot is not None:
                        slot.release()
                if got != want and rec.etag == etag:
                    raise ObjectChanged(f"{rec.bucket}/{rec.key} is {start + got} bytes on "
                                        f"the server, expected {rec.remote_size}")
                sink.cut(got)  # a longer try cut short and repeated may have written more
        except BaseException:
            for tmp in tmps.values():
                _unlink_quietly(tmp)
            raise
        lengths = [min(bs, got - i * bs) for i in range(-(-got // bs))]
        for n in list(tmps)[len(lengths):]:
            _unlink_quietly(tmps.pop(n))
        await self._install(obj, first, lengths, tmps, etag)

    def _tmp_names(self, obj: CachedObject, blocks: range) -> dict[int, str]:
        """Where blocks being fetched are written before they go into place (`<id>.<n>.fetch`,
        which load() sweeps). Only one fetch of a block runs at a time (`fetching`), so the
        names are the fetch's own."""
        return {n: f"{self.blocks_dir}/{obj.id}.{n}.fetch" for n in blocks}

    async def store_fetched(self, obj: CachedObject, first: int, data: bytes,
                            etag: str) -> None:
        """Put `data`, read from the server's version `etag` of the object at block `first`,
        into the blocks it covers; a block cached meanwhile, or data of a version no longer
        the object's, is dropped."""
        bs = self.block_size
        view = memoryview(data)
        pieces = [view[i * bs:(i + 1) * bs] for i in range(-(-len(data) // bs))]
        tmps = self._tmp_names(obj, range(first, first + len(pieces)))
        try:
            # Copying a block into the page cache takes about a millisecond: a worker thread
            # does it.
            await trio.to_thread.run_sync(_write_files, list(zip(tmps.values(), pieces)))
        except BaseException:
            for tmp in tmps.values():
                _unlink_quietly(tmp)
            raise
        await self._install(obj, first, [len(p) for p in pieces], tmps, etag)

    async def _install(self, obj: CachedObject, first: int, lengths: list[int],
                       tmps: dict[int, str], etag: str) -> None:
        """Move fetched blocks (`lengths[i]` bytes of block first + i, in `tmps`) into place
        once there is room; one cached meanwhile, or of a version no longer the object's, is
        dropped."""
        rec = obj.record
        bs = self.block_size
        total = sum(lengths)
        try:
            if obj.dirty:
                self._evict(total)
            else:
                await self._wait_for_room(total)
        except BaseException:
            for tmp in tmps.values():
                _unlink_quietly(tmp)
            raise
        # From here to the end nothing awaits: the checks hold when the blocks go in.
        for i, length in enumerate(lengths):
            n = first + i
            if (rec.etag != etag or n in obj.blocks or n * bs + length > rec.remote_size
                    or obj.detached and obj.open_count == 0):
                _unlink_quietly(tmps[n])
                continue  # superseded: a write, a truncate or another version got there first
            # A descriptor exists only for a block in obj.blocks, so none can be open here;
            # were one, it would point at the file being replaced.
            self._fds.close(obj, n)
            os.replace(tmps[n], obj.block_path(n))
            obj.blocks[n] = length
            self.used += length
            if not obj.dirty and not obj.detached:
                self._lru[(obj, n)] = None

    async def fill(self, obj: CachedObject) -> None:
        """Fetch every block still on the server only, so the object can be read whole locally."""
        if self.streams is not None:
            await self.streams.settle(obj)  # the server then holds what the cache let go
        bs = self.block_size
        for n in range(0, (min(obj.size, obj.record.remote_size) + bs - 1) // bs):
            await self.ensure_block(obj, n)

    # ---- writing ---------------------------------------------------------------------------

    def _mark_dirty(self, obj: CachedObject) -> None:
        obj.generation += 1
        self.on_write(obj)
        if not obj.record.dirty:
            obj.record.dirty = True
            for n in obj.blocks:
                self._lru.pop((obj, n), None)
            self._save(obj)

    async def write(self, obj: CachedObject, offset: int, data: bytes) -> None:
        bs = self.block_size
        end = offset + len(data)
        first, last = offset // bs, (end - 1) // bs
        if obj.stream is not None and self.streams is not None:
            await self.streams.before_write(obj, offset, end)
        # Room first, while nothing of the object is pinned: the blocks of its parts sent
        # (cache/streams.py) may be what makes it.
        await self._wait_for_room(len(data))
        obj.pins += 1  # the blocks fetched here must stay until they are written
        try:
            for n in (first, last):
                partial = offset > n * bs or end < min((n + 1) * bs, max(obj.size, end))
                if partial:
                    await self.ensure_block(obj, n)
        finally:
            obj.pins -= 1
        self._mark_dirty(obj)
        view = memoryview(data) if first != last else data  # slices of a view copy nothing
        for n in range(first, last + 1):
            lo = max(offset, n * bs)
            hi = min(end, (n + 1) * bs)
            piece = view if first == last else view[lo - offset:hi - offset]
            _pwrite_all(self._fds.create(obj, n), piece, lo - n * bs)
            new_len = max(obj.blocks.get(n, 0), hi - n * bs)
            self.used += new_len - obj.blocks.get(n, 0)
            obj.blocks[n] = new_len
        obj.record.size = max(obj.record.size, end)
        if self.streams is not None:
            for n in range(first, last + 1):
                obj.written[n] = obj.generation
                self._lru.pop((obj, n), None)  # a part's block sent before: pending again
            self.streams.written(obj)

    async def truncate(self, obj: CachedObject, size: int) -> None:
        if self.streams is not None:
            await self.streams.settle(obj)  # its parts hold the bytes before the cut
        bs = self.block_size
        if size < obj.size and size % bs:
            await self.ensure_block(obj, size // bs)  # its head survives the cut
        self._mark_dirty(obj)
        for n in [n for n in obj.blocks if n * bs >= size]:
            self._remove_block(obj, n)
        tail = size // bs
        if tail in obj.blocks and obj.blocks[tail] > size - tail * bs:
            os.ftruncate(self._fds[obj, tail], size - tail * bs)
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
                self._lru[(obj, n)] = None
            self.room_changed()
        self._save(obj)

    def release_blocks(self, obj: CachedObject, blocks: range, generation: int) -> None:
        """Blocks of `obj` whose data a part sent (snapshot `generation`) holds: evictable,
        unless written since."""
        for n in blocks:
            if n in obj.blocks and obj.written.get(n, -1) <= generation:
                self._lru[(obj, n)] = None
        self.room_changed()

    def pin_blocks(self, obj: CachedObject, blocks: range) -> None:
        """Released blocks whose part is to be sent again: not evictable any more."""
        for n in blocks:
            self._lru.pop((obj, n), None)

    # ---- room ------------------------------------------------------------------------------

    def dirty_bytes(self) -> int:
        return self.used - sum(self._block_len(k) for k in self._lru)

    def _block_len(self, k: tuple[CachedObject, int]) -> int:
        return k[0].blocks.get(k[1], 0)

    def _evict(self, need: int) -> None:
        """Remove the least recently used clean, unpinned blocks until `need` more bytes fit."""
        excess = self.used + need - self.cap
        victims = []
        for obj, n in self._lru:
            if excess <= 0:
                break
            if not obj.pins:
                victims.append((obj, n))
                excess -= obj.blocks[n]
        self.evictions += len(victims)
        for obj, n in victims:
            self._remove_block(obj, n)
            if not obj.blocks and obj.open_count == 0 and not obj.dirty:
                self._untrack(obj)  # nothing cached: no record needed, and none kept

    def _untrack(self, obj: CachedObject) -> None:
        if self._by_key.get((obj.record.bucket, obj.record.key)) is obj:
            del self._by_key[(obj.record.bucket, obj.record.key)]
        self.journal.remove(obj.id)

    def room_changed(self) -> None:
        """Wake waiting writers to look again (room was freed, or uploads_pending changed)."""
        self._room.set()

    async def _wait_for_room(self, need: int) -> None:
        while True:
            self._evict(need)
            if self.used + need <= self.cap or not self.uploads_pending():
                return
            if self._room.is_set():  # a fresh event, unless others already wait on this one
                self._room = trio.Event()
            await self._room.wait()


class _Slot:
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


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class BlockReader:
    """A read-only file over a snapshot of an object's blocks, for the upload worker's thread."""

    def __init__(self, cache: BlockCache, obj: CachedObject, generation: int) -> None:
        self.cache, self.obj, self.generation = cache, obj, generation
        self.size = obj.size
        self.pos = 0
        # The ranges read so far, merged: an upload's progress whatever the driver's order of
        # reads (parts in parallel) and however often it reads a range again (a retried part).
        self._covered: list[tuple[int, int]] = []
        self._covered_lock = threading.Lock()

    @property
    def done(self) -> int:
        """Bytes of the object the upload has read: the progress `mountfs status` shows."""
        with self._covered_lock:
            return sum(hi - lo for lo, hi in self._covered)

    def _cover(self, lo: int, hi: int) -> None:
        with self._covered_lock:
            kept = []
            for a, b in self._covered:
                if b < lo or a > hi:
                    kept.append((a, b))
                else:
                    lo, hi = min(lo, a), max(hi, b)
            kept.append((lo, hi))
            self._covered = sorted(kept)

    def changed(self) -> bool:
        """Whether the object was written since the snapshot (the upload must start over)."""
        return self.obj.generation != self.generation

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        buf = bytearray(max(0, end - self.pos))
        return bytes(buf[:self.readinto(buf)])

    def readinto(self, buf: bytearray | memoryview) -> int:
        """Fill `buf` from the snapshot: one copy, where read() of a large part holds two."""
        out = memoryview(buf)
        start = self.pos
        end = min(self.size, start + len(out))
        bs = self.cache.block_size
        try:
            while self.pos < end:
                b = self.pos // bs
                hi = min(end, (b + 1) * bs)
                self.cache.read_block_into(self.obj, b, self.pos - b * bs,
                                           out[self.pos - start:hi - start])
                self.pos = hi
        except FileNotFoundError as exc:
            if not self.changed():
                raise DataLost(f"block {self.pos // bs} of {self.obj.record.key} is gone from "
                               f"the cache ({exc.filename})") from None
        except OSError:
            if not self.changed():
                raise
        if self.changed():
            raise Superseded(self.obj.record.key)
        if end > start:
            self._cover(start, end)
        return end - start

    def close(self) -> None:
        pass
