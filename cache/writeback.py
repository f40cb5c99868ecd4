"""The write-back queue: uploads each committed object after a quiet delay, with retries.

A close commits an object and queues it `delay` seconds ahead; a new write restarts the delay,
so an editor rewriting a file in place or a program writing in bursts uploads once. A file
written whole (the namespace says so: created or truncated to 0, closed by its last writer)
waits `whole_delay` instead, by default nothing. Workers upload
consistent snapshots (see cache.blocks); a failed upload stays queued with backoff and its
error is kept on the object for the next fsync or close to report. fsync waits for the upload
of everything written before it. Nothing leaves the queue except by a successful upload, by
the object being discarded (unlinked, replaced), or by the user abandoning it (`abandon`, what
`mountfs discard` asks for). A permanent failure (access denied, no such bucket) stays queued,
is shown as "failed", and is tried again every MAX_BACKOFF seconds and at every fsync. An
upload whose data is gone from the cache (`DataLost`) fails once and is shown as "lost": never
tried again, and nothing waits for it (drain, room for writers); the journal keeps its record
until the user gives it up, so the next mount reports it too.
"""
from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import trio

from cache.blocks import BlockCache
from cache.errors import DataLost, Superseded
from cache.journal import ObjectRecord
from cache.objects import CachedObject
from cache.storage import Storage
from cache.streams import PartStorage, PartStreams
from cache.upload_entry import Entry

log = logging.getLogger(__name__)

FSYNC_TEMP_TRIES = 3  # temporary failures fsync rides out before it reports the error
RECENT_UPLOADS = 100  # kept for status watchers (see WritebackQueue.recent)


class WritebackQueue:
    def __init__(self, cache: BlockCache, storage: Storage, delay: float,
                 workers: int = 4, whole_delay: float = 0.0, part_size: int = 0) -> None:
        self.cache = cache
        self.storage = storage
        self.delay = delay
        self.whole_delay = whole_delay
        self.workers = workers
        self.uploaded_count = 0
        # The last uploads done, (their number in uploaded_count, bucket, key, size): a watcher
        # polling the status names each upload, also one queued and done between two polls.
        self.recent: collections.deque[tuple[int, str, str, int]] = \
            collections.deque(maxlen=RECENT_UPLOADS)
        # Uploads of this process begin after this; older unfinished ones are a dead one's.
        self.started_ns = time.time_ns()
        self._entries: dict[CachedObject, Entry] = {}
        self._held: list[tuple[str, str]] = []  # (bucket, key prefix): see `held`
        self._waiting_for_hold: list[Entry] = []  # due while held: planned when a hold ends
        # Set by the namespace when the storage does conditional writes: each upload then
        # states its base (the version the data was based on), and a failed condition is
        # handed to `resolve_conflict`, which returns True once it settled it (the object
        # renamed to a conflict copy, or its base reset); the upload is then tried again.
        self.conditional = False
        self.hurried = False  # unmounting: no delays, short backoffs (see `hurry`)
        self.resolve_conflict: Callable[[CachedObject, BaseException], bool] | None = None
        # When each entry is due, earliest first: the scheduler pops what is due instead of
        # scanning every queued entry at each commit (quadratic in a copy of many files).
        # Plans go stale (an entry uploaded, discarded, or due later since): `_schedule`
        # checks each against its entry. Only a new or earlier due needs a plan of its own.
        self._plans: list[tuple[float, int, Entry]] = []
        self._plan_order = itertools.count()  # ties go first come, first served
        self._next_wake = math.inf  # when the scheduler wakes up by itself
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._send, self._recv = trio.open_memory_channel[CachedObject](math.inf)
        cache.uploads_pending = self._uploads_pending
        cache.on_write = self._written
        # part_size: the storage takes uploads in parts of that size (a PartStorage); large
        # files then go up while they are written (cache/streams.py), in parts of whole
        # blocks (S3's 5 MiB minimum goes up in parts of 8 MiB with 4 MiB blocks).
        self.streams: PartStreams | None = None
        if part_size > 0:
            whole_blocks = -(-part_size // cache.block_size) * cache.block_size
            self.streams = PartStreams(cache, cast(PartStorage, storage), whole_blocks)
            self.streams.condition = self._condition

    # ---- what the filesystem calls ---------------------------------------------------------

    def commit(self, obj: CachedObject, delay: float | None = None,
               whole: bool = False) -> None:
        """Queue a dirty object for upload after the delay (a program closed it; `whole`: it
        was written whole, and waits `whole_delay`). A `delay` given, or `whole`, also brings
        an entry queued before forward."""
        self.cache.commit(obj)
        if self.streams is not None:
            self.streams.restore(obj)  # after a restart: its upload in parts goes on
        if obj.dirty and not obj.detached:
            if delay is None and whole:
                delay = min(self.delay, self.whole_delay)
            now = trio.current_time()
            due = now + (self.delay if delay is None else delay)
            entry = self._entries.get(obj)
            if entry is None:
                entry = self._entries[obj] = Entry(obj, due, queued_at=now)
                if self._idle.is_set():  # a drain() already waiting keeps its event
                    self._idle = trio.Event()
                self._plan(entry)
            elif delay is not None and not entry.sent and due < entry.due:
                entry.due = due
                self._plan(entry)

    async def sync(self, obj: CachedObject) -> None:
        """Upload now what was written so far, and wait; raise the upload's error."""
        self.commit(obj)
        target = obj.generation
        failures_seen = 0
        while obj.dirty and obj.uploaded_generation < target and not obj.detached:
            entry = self._entries.get(obj)
            if entry is None:
                return  # discarded: nothing left to wait for
            if entry.lost:
                assert obj.last_error is not None
                raise obj.last_error
            if not entry.sent:
                entry.due = trio.current_time()
                self._plan(entry)
            tries_before = entry.tries
            await obj.attempt_done.wait()
            if obj.uploaded_generation >= target or entry.tries == tries_before:
                continue
            failures_seen += 1
            err = obj.last_error
            assert err is not None
            if not self.storage.is_temp_failure(err) or failures_seen >= FSYNC_TEMP_TRIES:
                raise err

    async def cancel_inflight(self, obj: CachedObject) -> None:
        """Return once no upload of `obj` is under way, stopping any (its name is about to
        change or vanish). When none is, return without a checkpoint, so the caller can rename
        or drop the object before the queue starts another upload under the old name."""
        while (entry := self._entries.get(obj)) is not None and entry.sent:
            obj.generation += 1
            await obj.attempt_done.wait()

    @contextlib.asynccontextmanager
    async def held(self, bucket: str, prefix: str) -> AsyncIterator[None]:
        """No upload of an object whose key begins with `prefix` runs inside the block: those
        under way are stopped first, and none starts until it ends (the service is moving
        that tree: an upload under the old name would bring it back, one under the new name
        could be moved into it)."""
        where = (bucket, prefix)
        self._held.append(where)
        try:
            for obj in self.cache.objects_under(bucket, prefix):
                await self.cancel_inflight(obj)
            yield
        finally:
            self._held.remove(where)
            waiting, self._waiting_for_hold = self._waiting_for_hold, []
            for entry in waiting:
                self._plan(entry)  # (one still held is set aside again by the scheduler)

    def _is_held(self, obj: CachedObject) -> bool:
        rec = obj.record
        return any(rec.bucket == bucket and rec.key.startswith(prefix)
                   for bucket, prefix in self._held)

    def discard(self, obj: CachedObject) -> None:
        if self.streams is not None:
            self.streams.drop(obj)
        if self._entries.pop(obj, None) is not None:
            done, obj.attempt_done = obj.attempt_done, trio.Event()
            done.set()  # a sync() waiting on this object learns it is gone
        self._check_idle()

    def hurry(self) -> None:
        """Upload everything queued now, and from now on commit without the delay and retry
        temporary failures within HURRIED_BACKOFF: someone waits for the queue to drain
        (`mountfs umount`). Permanent failures keep their minute: hurrying cannot cure them."""
        self.hurried = True
        self.delay = self.whole_delay = 0.0
        now = trio.current_time()
        for entry in self._entries.values():
            if not entry.sent and not entry.permanent and not entry.lost:
                entry.due = min(entry.due, now)
                self._plan(entry)

    def upload_now(self, chosen: Callable[[str, str], bool]) -> None:
        """Upload now, without the delay or the backoff, every queued object whose (bucket,
        key) is `chosen`, failed ones too (as an fsync would): `mountfs sync` waits for them.
        Unlike `hurry`, later commits keep the delay."""
        now = trio.current_time()
        for entry in self._entries.values():
            rec = entry.obj.record
            if not entry.sent and not entry.lost and chosen(rec.bucket, rec.key):
                entry.due = min(entry.due, now)
                self._plan(entry)

    async def drain(self) -> None:
        """Wait until every queued object is uploaded."""
        await self._idle.wait()

    async def abandon(self, bucket: str, key: str) -> bool:
        """Give up the queued upload of bucket/key and drop its data from the cache (the user
        chose to lose it, e.g. after a permanent failure). False: nothing of that name queued."""
        for obj in list(self._entries):
            if (obj.record.bucket, obj.record.key) == (bucket, key):
                await self.cancel_inflight(obj)
                log.warning("upload of %s/%s abandoned by the user: its data is dropped",
                            bucket, key)
                self.discard(obj)
                self.cache.discard(obj)
                return True
        return False

    def summary(self) -> dict[str, float]:
        """Counts for the metrics: files queued, of which failed for good or lost, and how
        long the one queued longest has waited (seconds; 0 when none is)."""
        now = trio.current_time()
        entries = self._entries.values()
        return {"queued": len(self._entries),
                "failed": sum(e.permanent or e.lost for e in entries),
                "oldest_age": max((now - e.queued_at for e in entries), default=0.0)}

    def status(self) -> list[dict[str, Any]]:
        now = trio.current_time()
        return [entry.row(now, self.streams.done(entry.obj) if self.streams else None)
                for entry in self._entries.values()]

    # ---- the machinery ---------------------------------------------------------------------

    def _uploads_pending(self) -> bool:
        """Whether an upload could free room: one not tried yet, or failed only for now, or a
        part of a file being written."""
        if self.streams is not None and self.streams.busy():
            return True
        return any(entry.awaited and (entry.tries == 0 or entry.obj.last_error is not None
                                      and self.storage.is_temp_failure(entry.obj.last_error))
                   for entry in self._entries.values())

    def _written(self, obj: CachedObject) -> None:
        entry = self._entries.get(obj)
        if entry is not None and not entry.sent:
            entry.due = trio.current_time() + self.delay

    def _check_idle(self) -> None:
        if not any(entry.awaited for entry in self._entries.values()):
            self._idle.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._check_idle()
        async with trio.open_nursery() as nursery:
            if self.streams is not None:
                self.streams.nursery = nursery
            for _ in range(self.workers):
                nursery.start_soon(self._worker)
            task_status.started()
            await self._schedule()

    def _plan(self, entry: Entry) -> None:
        """Have the scheduler look at `entry` when it is due (it is new, or due earlier)."""
        heapq.heappush(self._plans, (entry.due, next(self._plan_order), entry))
        if entry.due < self._next_wake:
            self._wake.set()

    async def _schedule(self) -> None:
        while True:
            now = trio.current_time()
            while self._plans and self._plans[0][0] <= now:
                _, _, entry = heapq.heappop(self._plans)
                if entry.sent or self._entries.get(entry.obj) is not entry:
                    continue  # under way (its worker plans it again), or gone
                if entry.due > now:  # written to since: due later
                    heapq.heappush(self._plans, (entry.due, next(self._plan_order), entry))
                    continue
                if self._held and self._is_held(entry.obj):
                    self._waiting_for_hold.append(entry)
                    continue
                entry.sent = True
                self._send.send_nowait(entry.obj)
            self._next_wake = self._plans[0][0] if self._plans else math.inf
            with trio.move_on_at(self._next_wake):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _worker(self) -> None:
        async for obj in self._recv:
            entry = self._entries.get(obj)
            if entry is None:
                continue
            try:
                await self._upload(entry)
            finally:
                entry.sent = False
                entry.reader = None
                done, obj.attempt_done = obj.attempt_done, trio.Event()
                done.set()
                if self._entries.get(obj) is entry:  # to upload again, or to retry
                    self._plan(entry)
                self._check_idle()
                self.cache.room.changed()  # a failure may leave no upload that could free room

    async def _upload(self, entry: Entry) -> None:
        obj = entry.obj
        if obj.detached or not obj.dirty:
            self._entries.pop(obj, None)
            return
        rec = obj.record
        try:
            if rec.lost:
                raise DataLost(rec.lost)
            # A kill -9 mid-upload leaves a multipart upload neither completed nor aborted
            # (stored, and billed, for good): abort it before uploading again (one whose
            # parts the journal recorded is completed instead).
            if obj.recovered and not rec.upload:
                await self.storage.abort_incomplete_uploads(rec.bucket, rec.key,
                                                            self.started_ns)
            obj.recovered = False
            if self.streams is not None and self.streams.has(obj):
                size = await self.streams.finish(obj, self._condition(obj))
                if size is not None:
                    self._uploaded(entry, size)
                return
            await self.cache.fill(obj)
            reader, generation = self.cache.reader(obj)
            entry.reader = reader
            version = await self.storage.write_object(rec.bucket, rec.key, reader, reader.size,
                                                      dict(rec.metadata),
                                                      **self._condition(obj))
        except Superseded:
            entry.due = trio.current_time() + self.delay
            return
        except DataLost as exc:
            entry.lost_data(exc)
            self.cache.mark_lost(obj, str(exc))
            return
        except Exception as exc:  # every failure is kept and retried, never dropped
            if obj.detached:
                self._entries.pop(obj, None)
                return
            if self.resolve_conflict is not None and self.resolve_conflict(obj, exc):
                entry.due = trio.current_time()  # settled: upload again at once
                return
            entry.failed(exc, trio.current_time(),
                         permanent=not self.storage.is_temp_failure(exc), hurried=self.hurried)
            return
        self.cache.uploaded(obj, generation, version.etag, version.mtime_ns, reader.size)
        self._uploaded(entry, reader.size)

    def _condition(self, obj: CachedObject) -> dict[str, Any]:
        return {"if_match": base_version(obj.record)} if self.conditional else {}

    def _uploaded(self, entry: Entry, size: int) -> None:
        obj = entry.obj
        self.uploaded_count += 1
        self.recent.append((self.uploaded_count, obj.record.bucket, obj.record.key, size))
        if not entry.succeeded(trio.current_time(), self.delay):
            self._entries.pop(obj, None)


def base_version(rec: ObjectRecord) -> str | None:
    """What an upload of `rec` replaces: the ETag of the server version its data was based on
    (read, or uploaded last by this cache), "" (IF_ABSENT) for an object that was not on the
    server, None (no condition) where that ETag is unknown."""
    if not rec.on_server:
        return ""
    return rec.etag or None
