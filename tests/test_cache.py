"""cache/ without a FUSE mount: block cache, journal replay and write-back queue.

Everything runs on real parts: a `LocalBackend` store in tmp_path, a cache directory, a
`WritebackQueue` in the test's nursery. Failures and races are injected by `FaultyStorage`
(tests/faulty.py), which wraps the real backend. Blocks are 4 KiB so that small data crosses
block boundaries.

Time: tests that depend on the queue's delays take the `clock` fixture, a MockClock that jumps
to the next deadline once the run loop has been idle for a moment of real time. Waiting for a
backend call in a worker thread is idle too, so a slow machine may jump the clock while one runs:
the tests assert on mock times only where no thread is under way, and guard against hangs with
`real_time_limit` rather than `trio.fail_after`, whose deadline the clock would jump to.
"""
from __future__ import annotations

import io
import itertools
import os
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from cache.block_reader import BlockReader, read_block_into
from cache.blocks import BlockCache
from cache.errors import Superseded
from cache.journal import Journal, ObjectRecord
from cache.objects import CachedObject
from cache.writeback import FSYNC_TEMP_TRIES, WritebackQueue
from faulty import FaultyStorage
from mountfs.backends.base import ObjectInfo
from mountfs.backends.local_backend import LocalBackend
from mountfs.errors import PermissionDenied, TemporaryFailure

BS = 4096
BIG = 1 << 30  # a cap never reached
BUCKET = "b"
DELAY = 5.0  # the queue's write-back delay, in MockClock seconds


# ---- helpers ---------------------------------------------------------------------------------

def pattern(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def block_files(cache_dir: Path) -> defaultdict[str, dict[int, int]]:
    """{object id: {block number: bytes}} of the block files on disk."""
    out: defaultdict[str, dict[int, int]] = defaultdict(dict)
    for f in (cache_dir / "blocks").iterdir():
        obj_id, _, n = f.name.partition(".")
        if n.isdigit():
            out[obj_id][int(n)] = f.stat().st_size
    return out


def disk_usage(cache_dir: Path) -> int:
    return sum(sum(blocks.values()) for blocks in block_files(cache_dir).values())


def new_cache(cache_dir: Path, storage: FaultyStorage,
              cap: int = BIG) -> tuple[BlockCache, list[CachedObject]]:
    """A cache over `cache_dir` as a mount starts one: loaded, with the dirty objects to queue."""
    cache = BlockCache(cache_dir, storage, cap, BS)  # type: ignore[arg-type]
    return cache, cache.load()


async def start_queue(nursery: trio.Nursery, cache: BlockCache,
                      storage: FaultyStorage) -> WritebackQueue:
    queue = WritebackQueue(cache, storage, DELAY, workers=2)  # type: ignore[arg-type]
    await nursery.start(queue.run)
    return queue


async def put(backend: LocalBackend, key: str, data: bytes) -> ObjectInfo:
    """Store an object on the server directly (another client wrote it)."""
    return await backend.write_object(BUCKET, key, io.BytesIO(data), len(data), {})


async def on_server(backend: LocalBackend, key: str) -> bytes:
    return await backend.read_object(BUCKET, key, 0, BIG)


def open_remote(cache: BlockCache, info: ObjectInfo) -> CachedObject:
    return cache.open_object(BUCKET, info.key, info.size, info.etag, info.mtime_ns)


async def create(cache: BlockCache, key: str, data: bytes, offset: int = 0) -> CachedObject:
    """A new object holding `data` at `offset`, dirty and not yet committed."""
    obj = cache.create_object(BUCKET, key, {})
    await cache.write(obj, offset, data)
    return obj


async def contents(cache: BlockCache, obj: CachedObject) -> bytes:
    return await cache.read(obj, 0, obj.size + 1)


def patched(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


@asynccontextmanager
async def real_time_limit(seconds: float = 10) -> AsyncIterator[None]:
    """Fail the block if it runs `seconds` of real time: a hang fails, whatever the clock does."""
    async def watchdog() -> None:
        await trio.to_thread.run_sync(time.sleep, seconds, cancellable=True)
        raise AssertionError(f"still waiting after {seconds}s of real time")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog)
        yield
        nursery.cancel_scope.cancel()


# ---- fixtures --------------------------------------------------------------------------------

@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    (tmp_path / "store" / BUCKET).mkdir(parents=True)
    return LocalBackend(str(tmp_path / "store"))


@pytest.fixture
def storage(backend: LocalBackend) -> FaultyStorage:
    return FaultyStorage(backend)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def cache(cache_dir: Path, storage: FaultyStorage) -> BlockCache:
    return new_cache(cache_dir, storage)[0]


@pytest.fixture
async def queue(nursery: trio.Nursery, cache: BlockCache,
                storage: FaultyStorage) -> WritebackQueue:
    return await start_queue(nursery, cache, storage)


@pytest.fixture
async def remote(backend: LocalBackend) -> tuple[ObjectInfo, bytes]:
    """An object of 3 1/2 blocks on the server, not cached."""
    data = pattern(3 * BS + BS // 2, seed=1)
    return await put(backend, "remote", data), data


# ---- 1. reading, writing, truncating ---------------------------------------------------------

@pytest.mark.parametrize("offset,size", [(0, 3 * BS), (1000, 3 * BS), (BS - 1, 2), (BS, BS)])
async def test_write_across_block_boundaries_reads_back(cache: BlockCache, cache_dir: Path,
                                                        offset: int, size: int) -> None:
    data = pattern(size)
    obj = await create(cache, "f", data, offset)

    assert obj.size == offset + size
    assert await contents(cache, obj) == bytes(offset) + data
    # Every range read, whatever blocks it spans, is that slice of the data.
    for lo, hi in [(offset, offset + 1), (BS - 10, BS + 10), (offset + size - 3, offset + size)]:
        assert await cache.read(obj, lo, hi - lo) == (bytes(offset) + data)[lo:hi]
    files = block_files(cache_dir)[obj.id]
    assert sorted(files) == list(range(offset // BS, (offset + size - 1) // BS + 1))
    assert cache.used == disk_usage(cache_dir)


async def test_sparse_write_leaves_holes_that_read_as_zeros(cache: BlockCache,
                                                            cache_dir: Path) -> None:
    obj = await create(cache, "f", b"head")
    await cache.write(obj, 3 * BS + 5, b"tail")

    assert obj.size == 3 * BS + 9
    assert await contents(cache, obj) == b"head" + bytes(3 * BS + 1) + b"tail"
    assert sorted(block_files(cache_dir)[obj.id]) == [0, 3]  # blocks 1 and 2 take no space


@pytest.mark.parametrize("where", ["local", "server"])
async def test_truncate_shrink_then_grow_reads_zeros(cache: BlockCache, backend: LocalBackend,
                                                     storage: FaultyStorage, where: str) -> None:
    data = pattern(3 * BS + 100)
    if where == "local":
        obj = await create(cache, "f", data)
    else:
        obj = open_remote(cache, await put(backend, "f", data))
    cut = BS + 100

    await cache.truncate(obj, cut)
    assert await contents(cache, obj) == data[:cut]
    await cache.truncate(obj, len(data))

    assert obj.size == len(data)
    assert await contents(cache, obj) == data[:cut] + bytes(len(data) - cut)
    # Blocks past the cut are holes now: never fetched from the server.
    assert sorted(storage.reads) == ([] if where == "local" else [("f", 0, BS), ("f", BS, BS)])


@pytest.mark.parametrize("offset,length,fetched", [
    (BS + 100, 10, [BS]),  # inside one block
    (BS - 5, 10, [0, BS]),  # across a boundary: the heads and tails of both blocks
    (BS, BS, []),  # a whole block: nothing to keep
    (3 * BS, BS // 2, []),  # the whole last (short) block
    (3 * BS + 10, BS, [3 * BS]),  # the last block's head, extending the object
])
async def test_partial_write_to_server_object_fetches_the_block_first(
        cache: BlockCache, storage: FaultyStorage, remote: tuple[ObjectInfo, bytes],
        offset: int, length: int, fetched: list[int]) -> None:
    info, data = remote
    obj = open_remote(cache, info)
    new = pattern(length, seed=2)

    await cache.write(obj, offset, new)

    assert [off for _, off, _ in storage.reads] == fetched
    assert obj.dirty
    assert await contents(cache, obj) == patched(data, offset, new)


async def test_read_of_server_object_fetches_ranges_and_counts_hits(
        cache: BlockCache, storage: FaultyStorage, remote: tuple[ObjectInfo, bytes]) -> None:
    info, data = remote
    obj = open_remote(cache, info)

    assert await cache.read(obj, BS - 10, 2 * BS) == data[BS - 10:3 * BS - 10]
    assert storage.reads == [("remote", 0, BS), ("remote", BS, BS), ("remote", 2 * BS, BS)]
    assert (cache.hits, cache.misses) == (0, 3)

    assert await cache.read(obj, 0, 3 * BS) == data[:3 * BS]
    assert len(storage.reads) == 3  # all from disk
    assert (cache.hits, cache.misses) == (3, 3)

    assert await cache.read(obj, 3 * BS, BS) == data[3 * BS:]  # the short last block
    assert storage.reads[-1] == ("remote", 3 * BS, BS // 2)
    assert await cache.read(obj, len(data), 10) == b""
    assert not obj.dirty


async def test_concurrent_readers_of_a_block_fetch_it_once(
        cache: BlockCache, storage: FaultyStorage, remote: tuple[ObjectInfo, bytes]) -> None:
    info, data = remote
    obj = open_remote(cache, info)
    results: list[bytes] = []

    async def reader() -> None:
        results.append(await cache.read(obj, 0, 100))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(reader)

    assert results == [data[:100]] * 3
    assert storage.reads == [("remote", 0, BS)]


async def test_truncate_while_a_block_is_fetched_leaves_a_hole(
        cache: BlockCache, storage: FaultyStorage, remote: tuple[ObjectInfo, bytes]) -> None:
    """The fetch returns data the truncate made void; it must not come back as the file's."""
    info, data = remote
    obj = open_remote(cache, info)

    async def cut_and_regrow() -> None:
        await cache.truncate(obj, 0)
        await cache.truncate(obj, len(data))

    storage.during_read = cut_and_regrow
    await cache.read(obj, 2 * BS, 10)

    assert await contents(cache, obj) == bytes(len(data))


async def test_partial_write_keeps_fetched_blocks_under_a_tiny_cap(
        cache_dir: Path, storage: FaultyStorage, remote: tuple[ObjectInfo, bytes]) -> None:
    """Room made for the written bytes must not evict the blocks fetched for the same write."""
    cache, _ = new_cache(cache_dir, storage, cap=BS)
    info, data = remote
    obj = open_remote(cache, info)

    await cache.write(obj, BS - 5, b"0123456789")

    assert await contents(cache, obj) == patched(data, BS - 5, b"0123456789")
    assert cache.used == disk_usage(cache_dir)


def whole_reads_cache(cache_dir: Path, storage: FaultyStorage,
                      up_to: int | None) -> BlockCache:
    cache = BlockCache(cache_dir, storage, BIG, BS,  # type: ignore[arg-type]
                       whole_reads_up_to=up_to)
    cache.load()
    return cache


async def test_an_object_read_only_whole_is_streamed_once_for_every_reader(
        cache_dir: Path, storage: FaultyStorage, backend: LocalBackend) -> None:
    """Readers of different blocks, at once and after, share one stream from the start; each
    goes on once its own block is in; nothing is asked by ranges."""
    data = pattern(5 * BS + 123, seed=7)
    info = await put(backend, "whole", data)
    cache = whole_reads_cache(cache_dir, storage, None)
    storage.stream_piece, storage.read_delay = BS // 3, 0.001
    got: dict[int, bytes] = {}

    async def reader(n: int) -> None:
        got[n] = await cache.read(obj, n * BS, BS)

    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        obj = open_remote(cache, info)
        async with trio.open_nursery() as readers:
            for n in (4, 0, 5, 2):
                readers.start_soon(reader, n)
        assert await contents(cache, obj) == data
        nursery.cancel_scope.cancel()
    assert got == {n: data[n * BS:(n + 1) * BS] for n in (4, 0, 5, 2)}
    assert storage.streams == ["whole"]
    assert cache.misses == 6


async def test_a_failed_stream_fails_its_readers_and_the_next_read_streams_again(
        cache_dir: Path, storage: FaultyStorage, backend: LocalBackend) -> None:
    data = pattern(4 * BS, seed=8)
    info = await put(backend, "whole", data)
    cache = whole_reads_cache(cache_dir, storage, None)
    storage.stream_piece = BS
    storage.stream_error = TemporaryFailure("the service went away mid-stream")
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        obj = open_remote(cache, info)
        with pytest.raises(TemporaryFailure):
            await cache.read(obj, 3 * BS, 10)
        assert await cache.read(obj, 0, 10) == data[:10]  # the block it brought stays
        assert await contents(cache, obj) == data
        nursery.cancel_scope.cancel()
    assert storage.streams == ["whole", "whole"]


async def test_objects_over_the_whole_reads_size_are_read_by_ranges(
        cache_dir: Path, storage: FaultyStorage, backend: LocalBackend) -> None:
    small, large = pattern(2 * BS, seed=1), pattern(3 * BS, seed=2)
    small_info, large_info = await put(backend, "small", small), await put(backend, "large", large)
    cache = whole_reads_cache(cache_dir, storage, 2 * BS)
    assert await cache.read(open_remote(cache, large_info), BS, 10) == large[BS:BS + 10]
    assert await cache.read(open_remote(cache, small_info), BS, 10) == small[BS:BS + 10]
    assert storage.reads[0] == ("large", BS, BS)  # one block, by its range
    assert storage.streams == ["small"]


# ---- 2. eviction and the cap -----------------------------------------------------------------

async def test_clean_blocks_are_evicted_least_recently_used_first(
        cache_dir: Path, storage: FaultyStorage, remote: tuple[ObjectInfo, bytes]) -> None:
    cache, _ = new_cache(cache_dir, storage, cap=3 * BS)
    info, data = remote
    obj = open_remote(cache, info)
    for n in (0, 1, 2, 0):  # block 0 used again: block 1 is now the oldest
        await cache.read(obj, n * BS, 1)

    await cache.read(obj, 3 * BS, 1)  # half a block over the cap
    assert sorted(block_files(cache_dir)[obj.id]) == [0, 2, 3]

    assert await cache.read(obj, BS, BS) == data[BS:2 * BS]  # fetched again ...
    assert sorted(block_files(cache_dir)[obj.id]) == [0, 1, 3]  # ... in place of block 2
    assert cache.misses == 5
    assert cache.used == disk_usage(cache_dir) <= 3 * BS


async def test_dirty_blocks_are_never_evicted(
        cache_dir: Path, storage: FaultyStorage, remote: tuple[ObjectInfo, bytes]) -> None:
    cache, _ = new_cache(cache_dir, storage, cap=2 * BS)
    dirty_data = pattern(2 * BS, seed=3)
    dirty = await create(cache, "dirty", dirty_data)
    info, data = remote
    clean = open_remote(cache, info)

    # Each fetch evicts the clean blocks before it, never the dirty ones; with nothing else to
    # evict and no upload that could make room, it goes over the cap.
    assert await contents(cache, clean) == data
    assert await contents(cache, dirty) == dirty_data
    assert block_files(cache_dir)[dirty.id] == {0: BS, 1: BS}
    assert block_files(cache_dir)[clean.id] == {3: BS // 2}
    assert cache.used == disk_usage(cache_dir) == len(dirty_data) + BS // 2
    assert cache.room.dirty_bytes() == len(dirty_data)


async def test_used_equals_the_block_files_on_disk(
        cache_dir: Path, backend: LocalBackend, storage: FaultyStorage,
        remote: tuple[ObjectInfo, bytes]) -> None:
    cache, _ = new_cache(cache_dir, storage, cap=4 * BS)
    info, _ = remote
    a = open_remote(cache, info)
    b = await create(cache, "b", pattern(BS + 10))

    def accounted() -> bool:
        return cache.used == disk_usage(cache_dir)

    await cache.read(a, 0, 2 * BS)
    assert accounted()
    await cache.write(b, 5 * BS, b"x")  # sparse
    assert accounted()
    await cache.write(b, 10, pattern(BS))  # overwrite inside
    assert accounted()
    await cache.truncate(b, BS + 3)
    assert accounted()
    await cache.truncate(b, 7 * BS)
    assert accounted()
    await cache.read(a, 0, info.size)  # over the cap: evicts a's oldest blocks
    assert accounted()
    cache.discard(b)
    assert accounted()
    a = open_remote(cache, await put(backend, "remote", b"newer"))  # the old blocks go
    assert accounted() and cache.used == 0
    await cache.write(a, BS + 1, b"yy")  # block 1: a hole byte, then the write
    assert accounted() and cache.used == 3


async def test_writer_waits_for_uploads_when_dirty_data_fills_the_cap(
        clock: trio.testing.MockClock, cache_dir: Path, storage: FaultyStorage,
        backend: LocalBackend, nursery: trio.Nursery) -> None:
    cache, _ = new_cache(cache_dir, storage, cap=2 * BS)
    queue = await start_queue(nursery, cache, storage)
    first = await create(cache, "first", pattern(2 * BS))
    queue.commit(first)
    start = trio.current_time()
    done: list[float] = []

    async def writer(key: str) -> None:
        await create(cache, key, pattern(BS))
        done.append(trio.current_time())

    async with real_time_limit():
        async with trio.open_nursery() as writers:
            for key in ("second", "third"):  # two writers waiting at once: both must resume
                writers.start_soon(writer, key)
            await trio.sleep(DELAY / 2)
            assert done == []  # waiting, not failing and not going over the cap

    assert storage.write_times == [pytest.approx(start + DELAY)]
    assert len(done) == 2 and min(done) >= start + DELAY
    assert await on_server(backend, "first") == pattern(2 * BS)
    assert block_files(cache_dir)[first.id] == {}  # uploaded, so clean, so evicted
    assert cache.used == disk_usage(cache_dir) == 2 * BS


async def test_writer_goes_over_the_cap_when_no_upload_could_make_room(
        clock: trio.testing.MockClock, cache_dir: Path, storage: FaultyStorage,
        nursery: trio.Nursery) -> None:
    cache, _ = new_cache(cache_dir, storage, cap=2 * BS)
    queue = await start_queue(nursery, cache, storage)
    stuck = await create(cache, "stuck", pattern(2 * BS))
    storage.fail_writes(PermissionDenied("read-only bucket"), times=100)
    queue.commit(stuck)
    start = trio.current_time()

    with trio.fail_after(DELAY + 1):  # well before the failed upload's next try
        obj = await create(cache, "next", b"data")

    assert trio.current_time() == pytest.approx(start + DELAY)  # after the first try failed
    assert await contents(cache, obj) == b"data"
    assert cache.used == disk_usage(cache_dir) == 2 * BS + 4
    assert stuck.dirty and queue.status()[0]["tries"] == 1


async def test_upload_of_an_object_larger_than_the_cap_completes(
        clock: trio.testing.MockClock, cache_dir: Path, storage: FaultyStorage,
        backend: LocalBackend, nursery: trio.Nursery, remote: tuple[ObjectInfo, bytes]) -> None:
    """The upload needs the whole object local; it must not wait for room only it could free."""
    cache, _ = new_cache(cache_dir, storage, cap=2 * BS)
    queue = await start_queue(nursery, cache, storage)
    info, data = remote
    obj = open_remote(cache, info)
    await cache.write(obj, 10, b"edit")
    queue.commit(obj)

    async with real_time_limit():
        await queue.drain()

    assert await on_server(backend, "remote") == patched(data, 10, b"edit")
    assert not obj.dirty


async def test_fetch_waiting_for_room_does_not_undo_a_write(
        cache_dir: Path, storage: FaultyStorage, backend: LocalBackend) -> None:
    """A fetch waits for room before it reads (its tmp files count against the cap); a write
    of its block meanwhile must win."""
    cache, _ = new_cache(cache_dir, storage, cap=BS)
    queue = WritebackQueue(cache, storage, DELAY)  # type: ignore[arg-type]  # never run
    pending = await create(cache, "pending", pattern(BS))
    queue.commit(pending)  # the cap is full of dirty data whose upload is pending
    obj = open_remote(cache, await put(backend, "f", b"old" * 10))
    new = b"NEW" * 10

    fetched = trio.Event()

    async def on_fetch() -> None:
        fetched.set()

    storage.during_read = on_fetch
    async with real_time_limit():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.read, obj, 0, 1)
            await trio.testing.wait_all_tasks_blocked()  # the fetch waits for room
            assert not fetched.is_set(), "read over the cap"
            queue.discard(pending)  # no upload pending now: writes go on over the cap
            await cache.write(obj, 0, new)
            cache.discard(pending)  # room: the fetch goes on

    assert await contents(cache, obj) == new
    assert cache.used == disk_usage(cache_dir)


# ---- 3. remount ------------------------------------------------------------------------------

async def test_remount_reuses_blocks_of_the_same_version(
        cache: BlockCache, cache_dir: Path, storage: FaultyStorage,
        remote: tuple[ObjectInfo, bytes]) -> None:
    info, data = remote
    assert await contents(cache, open_remote(cache, info)) == data
    used = cache.used

    again, dirty = new_cache(cache_dir, storage)
    assert dirty == []
    assert again.used == used == len(data)
    obj = open_remote(again, info)
    assert await contents(again, obj) == data
    assert len(storage.reads) == 4  # the first mount's fetches only
    assert (again.hits, again.misses) == (4, 0)


async def test_remount_drops_blocks_of_another_version(
        cache: BlockCache, cache_dir: Path, storage: FaultyStorage, backend: LocalBackend,
        remote: tuple[ObjectInfo, bytes]) -> None:
    info, data = remote
    old = open_remote(cache, info)
    await cache.read(old, 0, len(data))

    newer = await put(backend, "remote", b"newer data")
    again, _ = new_cache(cache_dir, storage)
    obj = open_remote(again, newer)

    assert block_files(cache_dir)[old.id] == {}
    assert again.used == 0
    assert await contents(again, obj) == b"newer data"
    assert storage.reads[-1] == ("remote", 0, len(b"newer data"))


# ---- 4. journal replay -----------------------------------------------------------------------

async def test_committed_dirty_object_is_replayed_and_uploaded(
        clock: trio.testing.MockClock, cache: BlockCache, cache_dir: Path,
        storage: FaultyStorage, backend: LocalBackend, nursery: trio.Nursery) -> None:
    data = pattern(2 * BS + 7)
    obj = await create(cache, "f", data)
    cache.commit(obj)
    del cache  # the process dies before any upload

    again, dirty = new_cache(cache_dir, storage)
    assert [(o.record.key, o.size, o.record.committed) for o in dirty] == [("f", len(data), True)]
    queue = await start_queue(nursery, again, storage)
    for o in dirty:
        queue.commit(o, delay=0)  # as a mount replays its journal
    await queue.drain()

    assert await on_server(backend, "f") == data
    assert not dirty[0].dirty
    assert new_cache(cache_dir, storage)[1] == []  # clean in the journal too


async def test_object_written_again_after_commit_replays_its_latest_state(
        cache: BlockCache, cache_dir: Path, storage: FaultyStorage) -> None:
    obj = await create(cache, "f", b"first version")
    cache.commit(obj)
    await cache.write(obj, obj.size, b", longer")
    await cache.truncate(obj, obj.size + 5)
    cache.commit(obj)  # closed again, not uploaded yet

    _, dirty = new_cache(cache_dir, storage)
    assert [o.size for o in dirty] == [obj.size]


@pytest.mark.parametrize("offset", [0, 2 * BS + 10])
async def test_uncommitted_dirty_object_is_recovered_as_written(
        cache: BlockCache, cache_dir: Path, storage: FaultyStorage, offset: int) -> None:
    data = pattern(BS + 33)
    await create(cache, "f", data, offset)  # still open when the process dies

    again, dirty = new_cache(cache_dir, storage)
    assert len(dirty) == 1 and dirty[0].size == offset + len(data)
    assert not dirty[0].record.committed
    assert await contents(again, dirty[0]) == bytes(offset) + data


def reopened_at(cache_dir: Path, storage: FaultyStorage,
                block_size: int) -> tuple[BlockCache, list[CachedObject]]:
    """The cache dir opened by a mount asking for another block size."""
    cache = BlockCache(cache_dir, storage, BIG, block_size)  # type: ignore[arg-type]
    return cache, cache.load()


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "from-before-the-record"])
async def test_files_not_uploaded_keep_the_block_size_they_were_written_at(
        cache_dir: Path, storage: FaultyStorage, backend: LocalBackend, nursery: trio.Nursery,
        recorded: bool) -> None:
    """A mount asking for other blocks than the dir's: the blocks of files not uploaded yet
    are read at the size they were written at (a dir from before the record: 1 MiB, the only
    size mountfs used), until they are uploaded; then the dir takes the new size."""
    mib = 1024 * 1024
    data = pattern(2 * mib + 5)
    first, _ = reopened_at(cache_dir, storage, mib)
    first.commit(await create(first, "f", data))
    del first  # the process dies before the upload
    if not recorded:
        (cache_dir / "block-size").unlink()

    again, dirty = reopened_at(cache_dir, storage, 4 * mib)
    assert again.block_size == mib
    assert [await contents(again, o) for o in dirty] == [data]
    queue = await start_queue(nursery, again, storage)
    queue.commit(dirty[0], delay=0)
    await queue.drain()
    assert await on_server(backend, "f") == data

    third, _ = reopened_at(cache_dir, storage, 4 * mib)
    assert third.block_size == 4 * mib and block_files(cache_dir) == {}  # clean ones dropped
    assert (cache_dir / "block-size").read_text() == f"{4 * mib}\n"
    info = await backend.stat_object(BUCKET, "f")
    assert await contents(third, open_remote(third, info)) == data  # fetched again


@pytest.mark.parametrize("garbage", [b"", b"{not json", b'{"id": "x"}', b"[1, 2]"])
async def test_torn_journal_line_is_ignored(cache: BlockCache, cache_dir: Path,
                                            storage: FaultyStorage, garbage: bytes) -> None:
    good = await create(cache, "good", b"good data")
    bad = await create(cache, "bad", pattern(BS))
    journal_file = cache_dir / "journal"
    lines = journal_file.read_bytes().splitlines(keepends=True)
    assert b'"bad"' in lines[-1]  # the bad object's one record is the last line
    journal_file.write_bytes(b"".join(lines[:-1]) + garbage)  # torn, as by a power cut

    again, dirty = new_cache(cache_dir, storage)

    assert [o.record.key for o in dirty] == ["good"]
    assert not block_files(cache_dir)[bad.id]
    assert again.get(BUCKET, "bad") is None
    assert again.used == disk_usage(cache_dir) == len(b"good data")
    assert await contents(again, dirty[0]) == b"good data" and dirty[0].id == good.id


async def test_journal_stays_small_while_an_upload_in_parts_grows_its_record(
        cache: BlockCache, cache_dir: Path) -> None:
    """An upload in parts saves its object's record at each part sent, with every part so far:
    the log grows by the square of the parts. It is compacted by its bytes as well as its
    lines: a 10 GiB file in 1,280 parts of 8 MiB appended 37 MB, over a 2 GiB cache's cap."""
    obj = await create(cache, "big", b"x")
    etag = '"' + "0" * 32 + '"'  # as S3 quotes a part's MD5
    parts: list[list[int | str]] = []
    for number in range(1, 1281):
        parts.append([number, etag])
        obj.record.upload = {"id": "u", "bucket": BUCKET, "key": "big", "part": 8 << 20,
                             "metadata": {}, "parts": parts}
        cache.save(obj)
    assert (cache_dir / "journal").stat().st_size < 2 * 1024 * 1024
    reloaded = {r.key: r for r in Journal(cache_dir / "journal").load()}
    assert len(reloaded["big"].upload["parts"]) == 1280


@pytest.mark.parametrize("older_dirty,newer_dirty,winner", [
    (True, False, "older"),  # unuploaded data beats a newer clean record
    (False, False, "newer"),
    (True, True, "newer"),
])
async def test_of_two_records_for_one_key_the_dirty_or_newer_wins(
        cache: BlockCache, cache_dir: Path, storage: FaultyStorage,
        older_dirty: bool, newer_dirty: bool, winner: str) -> None:
    objs = {}
    for name, dirty, saved_ns in [("older", older_dirty, 1), ("newer", newer_dirty, 2)]:
        obj = await create(cache, f"tmp-{name}", name.encode())
        # Point both at one key, as a crash in the middle of a replace could leave them.
        record = ObjectRecord(obj.id, BUCKET, "f", len(name), 0, "", 0, dirty=dirty,
                              saved_ns=saved_ns)
        cache.journal.save(record)
        objs[name] = obj

    again, _ = new_cache(cache_dir, storage)

    kept = again.get(BUCKET, "f")
    assert kept is not None and kept.id == objs[winner].id
    assert await contents(again, kept) == winner.encode()
    loser = objs["older" if winner == "newer" else "newer"]
    assert not block_files(cache_dir)[loser.id]
    assert again.used == disk_usage(cache_dir) == len(winner)


# ---- 5. the write-back queue -----------------------------------------------------------------

async def test_upload_happens_after_the_delay(
        clock: trio.testing.MockClock, cache: BlockCache, queue: WritebackQueue,
        storage: FaultyStorage, backend: LocalBackend) -> None:
    obj = await create(cache, "f", pattern(BS + 1))
    queue.commit(obj)
    start = trio.current_time()

    await trio.sleep(DELAY - 0.1)
    assert storage.write_times == []
    assert [e["state"] for e in queue.status()] == ["waiting"]
    await queue.drain()

    assert storage.write_times == [pytest.approx(start + DELAY)]
    assert await on_server(backend, "f") == pattern(BS + 1)
    assert not obj.dirty and queue.status() == [] and queue.uploaded_count == 1


async def test_a_write_restarts_the_delay(
        clock: trio.testing.MockClock, cache: BlockCache, queue: WritebackQueue,
        storage: FaultyStorage, backend: LocalBackend) -> None:
    obj = await create(cache, "f", b"one")
    queue.commit(obj)
    await trio.sleep(DELAY - 1)
    await cache.write(obj, 3, b" two")
    last_write = trio.current_time()

    await queue.drain()

    assert storage.write_times == [pytest.approx(last_write + DELAY)]  # one upload, of both
    assert await on_server(backend, "f") == b"one two"


async def test_sync_uploads_now_and_returns(
        clock: trio.testing.MockClock, cache: BlockCache, queue: WritebackQueue,
        storage: FaultyStorage, backend: LocalBackend) -> None:
    obj = await create(cache, "f", b"synced")  # not even committed yet
    start = trio.current_time()

    await queue.sync(obj)

    assert storage.write_times == [start]
    assert await on_server(backend, "f") == b"synced"
    assert not obj.dirty and queue.status() == []
    await queue.sync(obj)  # nothing to do: no upload
    assert len(storage.write_times) == 1


async def test_temporary_failures_are_retried_with_backoff(
        clock: trio.testing.MockClock, cache: BlockCache, queue: WritebackQueue,
        storage: FaultyStorage, backend: LocalBackend) -> None:
    data = pattern(3 * BS + 17)
    obj = await create(cache, "f", data)
    storage.fail_writes(TemporaryFailure("503 slow down"), times=4)
    queue.commit(obj)

    await trio.sleep(DELAY + 0.1)
    assert queue.status()[0]["state"] == "retrying"
    assert queue.status()[0]["tries"] == 1
    assert "503 slow down" in queue.status()[0]["error"]
    await queue.drain()

    gaps = [b - a for a, b in zip(storage.write_times, storage.write_times[1:])]
    assert gaps == pytest.approx([0.5, 1, 2, 4])  # backoff doubles
    assert await on_server(backend, "f") == data
    assert storage.stored == [data]
    assert not obj.dirty and obj.last_error is None


@pytest.mark.parametrize("failures", [FSYNC_TEMP_TRIES - 1, FSYNC_TEMP_TRIES])
async def test_sync_rides_out_a_few_temporary_failures(
        clock: trio.testing.MockClock, cache: BlockCache, queue: WritebackQueue,
        storage: FaultyStorage, backend: LocalBackend, failures: int) -> None:
    obj = await create(cache, "f", b"data")
    storage.fail_writes(TemporaryFailure("timeout"), times=failures)

    if failures < FSYNC_TEMP_TRIES:
        await queue.sync(obj)
        assert await on_server(backend, "f") == b"data"
    else:
        with pytest.raises(TemporaryFailure, match="timeout"):
            await queue.sync(obj)
        assert obj.dirty and queue.status()[0]["tries"] == failures
        await queue.drain()  # the queue goes on trying after fsync gave up
        assert await on_server(backend, "f") == b"data"


async def test_permanent_failure_is_raised_by_sync_and_kept_queued(
        clock: trio.testing.MockClock, cache: BlockCache, queue: WritebackQueue,
        storage: FaultyStorage, backend: LocalBackend) -> None:
    obj = await create(cache, "f", b"data")
    storage.fail_writes(PermissionDenied("bucket is read-only"))

    with pytest.raises(PermissionDenied, match="read-only"):
        await queue.sync(obj)

    assert len(storage.write_times) == 1  # not retried at once
    [status] = queue.status()
    assert status["key"] == "f" and status["tries"] == 1 and status["state"] == "failed"
    assert "PermissionDenied" in status["error"] and "read-only" in status["error"]
    assert obj.dirty and isinstance(obj.last_error, PermissionDenied)
    assert [o.record.key for o in cache.dirty_under(BUCKET, "")] == ["f"]
    await queue.drain()  # retried later, and this time it works
    assert await on_server(backend, "f") == b"data"


async def test_discarded_object_is_never_uploaded(
        clock: trio.testing.MockClock, cache: BlockCache, queue: WritebackQueue,
        storage: FaultyStorage, backend: LocalBackend, cache_dir: Path) -> None:
    obj = await create(cache, "f", b"doomed")
    queue.commit(obj)
    await trio.sleep(DELAY / 2)
    queue.discard(obj)
    cache.discard(obj)
    assert queue.status() == []

    await trio.sleep(3 * DELAY)
    await queue.drain()

    assert storage.write_times == []
    assert os.listdir(Path(backend.root) / BUCKET) == []
    assert not block_files(cache_dir)[obj.id] and cache.used == 0
    assert new_cache(cache_dir, storage)[1] == []  # and not after a restart either


async def _shrink_grow(cache: BlockCache, obj: CachedObject) -> None:
    size = obj.size
    await cache.truncate(obj, 100)
    await cache.truncate(obj, size)


INTERFERENCE = {
    "write": lambda cache, obj: cache.write(obj, BS - 2, b"#" * 5),
    "extend": lambda cache, obj: cache.write(obj, obj.size, b"more"),
    "shrink-grow": _shrink_grow,
}


@pytest.mark.parametrize("when", ["mid_upload", "after_write"])
@pytest.mark.parametrize("change", sorted(INTERFERENCE))
@pytest.mark.parametrize("where", ["local", "server"])
async def test_change_during_an_upload_is_uploaded_again(
        clock: trio.testing.MockClock, cache: BlockCache, queue: WritebackQueue,
        storage: FaultyStorage, backend: LocalBackend, when: str, change: str,
        where: str) -> None:
    data = pattern(3 * BS)
    if where == "local":
        obj = await create(cache, "f", data)
    else:
        obj = open_remote(cache, await put(backend, "f", data))
        await cache.write(obj, 2 * BS, b"edit")  # block 2 is cached; blocks 0 and 1 are not
        data = patched(data, 2 * BS, b"edit")
    final: list[bytes] = []
    changed_at: list[float] = []

    async def interfere() -> None:
        await INTERFERENCE[change](cache, obj)
        final.append(await contents(cache, obj))
        changed_at.append(trio.current_time())

    setattr(storage, when, interfere)
    queue.commit(obj)
    await queue.drain()

    assert final and final[0] != data
    assert await on_server(backend, "f") == final[0]
    assert await contents(cache, obj) == final[0]
    assert not obj.dirty
    # Every version ever stored is one the file really had: never a mix.
    assert set(storage.stored) <= {data, final[0]}
    assert storage.stored[-1] == final[0]
    # The change restarted the delay, as any write does: one more upload, a delay later.
    assert storage.write_times[1:] == [pytest.approx(changed_at[0] + DELAY)]


async def test_drain_returns_once_the_queue_is_empty(
        clock: trio.testing.MockClock, cache: BlockCache, queue: WritebackQueue,
        storage: FaultyStorage) -> None:
    await queue.drain()  # nothing queued: returns at once
    queue.commit(await create(cache, "a", b"a"))
    stored_when_drained: list[bytes] = []

    async def drain() -> None:
        await queue.drain()
        stored_when_drained.extend(storage.stored)

    async with real_time_limit():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await trio.sleep(DELAY / 2)
            assert storage.write_times == [] and not stored_when_drained
            # Queued while drain() waits: it waits for this one too.
            queue.commit(await create(cache, "b", b"b"))

    assert sorted(stored_when_drained) == [b"a", b"b"]
    assert queue.status() == []


# ---- 6. BlockReader --------------------------------------------------------------------------

@pytest.fixture
async def snapshot(cache: BlockCache) -> tuple[BlockReader, CachedObject, bytes]:
    data = pattern(3 * BS + 10)
    obj = await create(cache, "f", data)
    await cache.write(obj, len(data) + BS, b"end")  # a hole in block 4
    data += bytes(BS) + b"end"
    reader, generation = cache.reader(obj)
    assert isinstance(reader, BlockReader) and generation == obj.generation
    return reader, obj, data


async def test_reader_reads_across_blocks_and_seeks(
        snapshot: tuple[BlockReader, CachedObject, bytes]) -> None:
    reader, _, data = snapshot

    assert reader.read(BS - 1) == data[:BS - 1]
    assert reader.tell() == BS - 1
    assert reader.read(BS + 2) == data[BS - 1:2 * BS + 1]
    assert reader.seek(-5, os.SEEK_END) == len(data) - 5
    assert reader.read() == data[-5:]
    assert reader.read(10) == b""
    assert reader.seek(3 * BS, os.SEEK_SET) == 3 * BS
    assert reader.seek(4, os.SEEK_CUR) == 3 * BS + 4
    assert reader.read(BS) == data[3 * BS + 4:4 * BS + 4]  # into the hole: zeros
    reader.seek(0)
    assert reader.read(-1) == data


@pytest.mark.parametrize("change", ["write", "truncate"])
async def test_reader_raises_superseded_after_a_change(
        cache: BlockCache, snapshot: tuple[BlockReader, CachedObject, bytes],
        change: str) -> None:
    reader, obj, data = snapshot
    assert reader.read(10) == data[:10]

    if change == "write":
        await cache.write(obj, 0, b"x")
    else:
        await cache.truncate(obj, 5)

    with pytest.raises(Superseded):
        reader.read(10)


# ---- 7. hot paths: kept descriptors, the fast path, read-ahead -------------------------------

def block_fds(cache_dir: Path) -> list[str]:
    """Where this process's open descriptors on block files point ('... (deleted)' once the
    file was unlinked or replaced under them)."""
    blocks = os.path.realpath(cache_dir / "blocks") + "/"
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(blocks):
            out.append(target)
    return out


def assert_no_stale_fds(cache_dir: Path) -> None:
    stale = [t for t in block_fds(cache_dir) if t.endswith(" (deleted)")]
    assert stale == [], "descriptors kept on block files that are gone"


async def test_kept_descriptors_are_bounded(cache_dir: Path, storage: FaultyStorage) -> None:
    cache = BlockCache(cache_dir, storage, BIG, BS, max_open_fds=3)  # type: ignore[arg-type]
    cache.load()
    data = pattern(10 * BS + 7)
    obj = await create(cache, "f", data)
    assert len(block_fds(cache_dir)) <= 3

    for n in random.Random(5).sample(range(11), 11):
        assert await cache.read(obj, n * BS + 3, 100) == data[n * BS + 3:n * BS + 103]
        assert len(block_fds(cache_dir)) <= 3
    assert await contents(cache, obj) == data

    cache.close()
    assert block_fds(cache_dir) == []
    await cache.write(obj, 5, b"again")  # closed descriptors open again on demand
    assert await contents(cache, obj) == patched(data, 5, b"again")


@pytest.mark.parametrize("change", ["evict", "discard", "discard_open", "truncate",
                                    "new_version", "rename", "rename_over"])
async def test_no_descriptor_outlives_its_block_file(
        cache_dir: Path, storage: FaultyStorage, backend: LocalBackend,
        remote: tuple[ObjectInfo, bytes], change: str) -> None:
    cache, _ = new_cache(cache_dir, storage, cap=2 * BS if change == "evict" else BIG)
    info, data = remote
    obj = open_remote(cache, info)
    assert await contents(cache, obj) == data  # every block fetched and its descriptor kept
    other_data = pattern(2 * BS, seed=9)
    other = await create(cache, "other", other_data)
    expect = data

    if change == "evict":
        assert await contents(cache, obj) == data  # fetched again, evicting as it goes
    elif change == "discard":
        cache.discard(obj)
        assert len(block_fds(cache_dir)) == 2  # only `other`'s
        obj, expect = other, other_data
    elif change == "discard_open":
        cache.opened(obj)
        cache.discard(obj)  # unlinked while open: its blocks stay for the open handle
        assert await contents(cache, obj) == data
        cache.closed(obj)
        assert len(block_fds(cache_dir)) == 2
        obj, expect = other, other_data
    elif change == "truncate":
        await cache.truncate(obj, BS + 10)
        await cache.write(obj, 2 * BS, b"tail")
        expect = data[:BS + 10] + bytes(BS - 10) + b"tail"
    elif change == "new_version":
        expect = pattern(2 * BS + 1, seed=7)
        new = await put(backend, "remote", expect)
        obj = open_remote(cache, new)
    elif change == "rename":
        cache.rename(obj, BUCKET, "renamed")  # block files are named by id: they stay valid
        await cache.write(obj, 1, b"x")
        expect = patched(data, 1, b"x")
    elif change == "rename_over":
        cache.rename(other, BUCKET, "remote")  # replaces obj, whose blocks are dropped
        obj, expect = other, other_data

    assert_no_stale_fds(cache_dir)
    assert await contents(cache, obj) == expect
    # What the kept descriptors read is what the files on disk hold.
    for n, length in obj.blocks.items():
        on_disk = bytearray(length)
        read_block_into(obj, n, 0, memoryview(on_disk))
        assert on_disk == expect[n * BS:n * BS + length]
    assert cache.used == disk_usage(cache_dir)
    assert_no_stale_fds(cache_dir)


async def test_reads_match_the_data_under_concurrent_writes(
        cache: BlockCache, remote: tuple[ObjectInfo, bytes]) -> None:
    """Reads of cached blocks (the fast path, no await) and of blocks still to fetch (the slow
    path) interleaved with writes and truncates: every read that no change overlapped returns
    exactly the model's bytes."""
    info, data = remote
    obj = open_remote(cache, info)
    model = bytearray(data)
    changes = 0
    checked = [0]
    rng = random.Random(11)

    async def writer() -> None:
        nonlocal changes, model
        for i in range(150):
            if i % 25 == 24:
                size = rng.randrange(0, 5 * BS)
                await cache.truncate(obj, size)
                model = model[:size] + bytearray(max(0, size - len(model)))
            else:
                off, new = rng.randrange(0, 5 * BS), rng.randbytes(rng.randrange(1, 2 * BS))
                await cache.write(obj, off, new)
                model.extend(bytes(max(0, off - len(model))))
                model[off:off + len(new)] = new
            changes += 1
            await trio.sleep(0)

    async def reader() -> None:
        for _ in range(400):
            off, length = rng.randrange(0, 5 * BS), rng.choice([1, 100, BS // 2, BS, 3 * BS])
            before = changes
            got = await cache.read(obj, off, length)
            if changes == before:
                assert got == bytes(model[off:off + length])
                checked[0] += 1
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        nursery.start_soon(reader)
        nursery.start_soon(reader)

    assert checked[0] > 400
    assert obj.size == len(model)
    assert await contents(cache, obj) == bytes(model)


def read_ahead_cache(cache_dir: Path, storage: FaultyStorage, **read_ahead: int) -> BlockCache:
    """A cache whose read-ahead takes `read_ahead` (readahead_parallel, _max_blocks,
    _run_blocks), loaded."""
    cache = BlockCache(cache_dir, storage, BIG, BS, **read_ahead)  # type: ignore[arg-type]
    cache.load()
    return cache


async def test_read_ahead_is_bounded_coalesced_and_its_window_grows(
        cache_dir: Path, storage: FaultyStorage, backend: LocalBackend) -> None:
    cache = read_ahead_cache(cache_dir, storage, readahead_parallel=3, readahead_max_blocks=16,
                             readahead_run_blocks=4)
    data = pattern(60 * BS + 5, seed=4)
    info = await put(backend, "big", data)
    storage.read_delay = 0.005
    farthest = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        obj = open_remote(cache, info)
        got = []
        for off in range(0, len(data), BS // 2):
            got.append(await cache.read(obj, off, BS // 2))
            farthest = max(farthest, obj.readahead_to - off // BS)
        nursery.cancel_scope.cancel()

    assert b"".join(got) == data
    # Three read-ahead GETs at most, and the reader's own fetch of the block it waits for.
    assert 3 <= storage.max_reads_in_flight <= 3 + 1
    assert 8 < farthest <= 16 + 1  # the window grew past the old fixed 8 blocks, up to 16
    # Every byte fetched once; read-ahead in runs of up to 4 blocks, mostly whole ones.
    ranges = sorted((off, length) for _, off, length in storage.reads)
    assert [off for off, _ in ranges] == list(itertools.accumulate(
        [0] + [length for _, length in ranges[:-1]]))
    assert sum(min(length, len(data) - off) for off, length in ranges) == len(data)
    assert all(length <= 4 * BS for _, length in ranges)
    # Most blocks in whole runs: under load the reader may catch up with a run not yet
    # started and fetch its first block itself (10 to 13 of ~18 runs whole).
    assert 4 * sum(length == 4 * BS for _, length in ranges) >= len(data) // BS // 2


async def test_read_ahead_starts_whole_runs_once_its_window_has_grown(
        cache_dir: Path, storage: FaultyStorage, backend: LocalBackend) -> None:
    """The runs a sequential reader's read-ahead plans, alone (its GETs never end and it
    reads nothing itself, so no fetch of a reader's own splits a run): they grow with the
    window up to 4 blocks, and from then on every run is whole but the object's last. A
    window that is not a multiple of the run leaves the rest for the next run, not a short
    GET of its own."""
    cache = read_ahead_cache(cache_dir, storage, readahead_parallel=64, readahead_max_blocks=10,
                             readahead_run_blocks=4)
    data = pattern(41 * BS + 5, seed=9)
    info = await put(backend, "planned", data)
    storage.read_delay = 3600
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        obj = open_remote(cache, info)
        for off in range(0, len(data), BS):
            cache.readahead.after_read(obj, off, min(off + BS, len(data)))
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    runs = sorted((off // BS, -(-length // BS)) for _, off, length in storage.reads)
    assert [first for first, _ in runs] == list(itertools.accumulate(
        [runs[0][0]] + [count for _, count in runs[:-1]])), runs  # each block once
    assert runs[-1][0] + runs[-1][1] == 42, runs  # up to the last block
    counts = [count for _, count in runs]
    grown = counts.index(4)
    assert counts[:grown] == sorted(counts[:grown]), runs  # growing
    assert set(counts[grown:-1]) == {4}, runs  # whole


async def test_fetch_overtaken_by_a_truncate_leaves_no_tmp_file(
        cache: BlockCache, cache_dir: Path, storage: FaultyStorage,
        remote: tuple[ObjectInfo, bytes]) -> None:
    info, data = remote
    obj = open_remote(cache, info)

    async def cut() -> None:
        await cache.truncate(obj, BS)

    storage.during_read = cut
    await cache.read(obj, 2 * BS, 10)
    assert await contents(cache, obj) == data[:BS]
    assert [f.name for f in (cache_dir / "blocks").iterdir() if not f.name.split(".")[-1]
            .isdigit()] == []
    assert cache.used == disk_usage(cache_dir)


async def test_write_into_a_read_ahead_run_under_way_wins(
        cache_dir: Path, storage: FaultyStorage, backend: LocalBackend) -> None:
    """A run of blocks fetched with one GET installs each block unless a write overtook it."""
    cache = read_ahead_cache(cache_dir, storage, readahead_run_blocks=4)
    data = pattern(8 * BS, seed=6)
    info = await put(backend, "remote", data)
    new = pattern(BS, seed=8)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        obj = open_remote(cache, info)
        await cache.read(obj, 0, BS // 2)  # block 0, not sequential yet: no read-ahead

        async def overwrite() -> None:
            await cache.write(obj, 2 * BS, new)  # a whole block: nothing to fetch first

        storage.during_read = overwrite
        await cache.read(obj, BS // 2, BS // 2)  # sequential: a run of blocks 1 and 2
        await trio.testing.wait_all_tasks_blocked()  # the run's GET is under way
        assert await contents(cache, obj) == patched(data, 2 * BS, new)
        nursery.cancel_scope.cancel()
    assert ("remote", BS, 2 * BS) in storage.reads


async def test_each_block_of_a_run_is_read_as_soon_as_it_is_whole(
        cache: BlockCache, cache_dir: Path, storage: FaultyStorage,
        backend: LocalBackend) -> None:
    """A run's GET puts each block in place once its bytes are in: a sequential reader
    follows the GET rather than waiting for its end, and the room held for the run shrinks
    block by block."""
    data = pattern(4 * BS, seed=10)
    info = await put(backend, "run", data)
    obj = open_remote(cache, info)
    storage.hold_after = BS + 10  # block 0 whole, block 1 begun
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.fetches.fetch, obj, 0, 4)
        await trio.testing.wait_all_tasks_blocked()  # the GET is under way
        with trio.fail_after(10):
            assert await cache.read(obj, 0, BS) == data[:BS]  # while the GET is held
        assert (cache.used, cache.reserved) == (BS, 3 * BS)

        async def read_block_1() -> None:
            got.append(await cache.read(obj, BS, BS))

        nursery.start_soon(read_block_1)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # block 1 is not whole yet
        storage.released.set()
    assert got == [data[BS:2 * BS]]
    assert await contents(cache, obj) == data
    assert storage.reads == [("run", 0, 4 * BS)]  # the one GET brought every block
    assert (cache.used, cache.reserved) == (4 * BS, 0)
    assert cache.used == disk_usage(cache_dir)


async def test_a_block_file_gone_from_disk_is_an_error_not_zeros(
        cache: BlockCache, cache_dir: Path) -> None:
    obj = await create(cache, "f", pattern(2 * BS))
    cache.close()
    (cache_dir / "blocks" / f"{obj.id}.1").unlink()
    with pytest.raises(FileNotFoundError):
        await cache.read(obj, BS, 10)
