"""Uploads of large files while they are written: a multipart upload whose parts go up as the
writer finishes them, so that the file's blocks need not all stay in the cache until it is
closed, and its upload is mostly done when it is.

Which files: a storage that takes uploads in parts (`PartStorage`), a file new or truncated to
nothing (no server version stands behind its blocks: `remote_size` 0) once it is two parts
long. Part n (from 1) covers bytes [(n-1)P, nP); it goes up once the file reaches nP if its
blocks are all cached and full (a later write into it sends it again). A sent part
whose blocks were not written meanwhile is recorded (upload id and part ETags, in the
object's journal record) and its blocks become clean-but-pending: in the LRU, evictable.

Closing queues the object as ever; its upload (`finish`) sends the parts not recorded (the
rest, the tail as the last part) and completes the upload, with the metadata and condition a
whole upload would have. Whatever needs data that only the pending upload holds first
completes it (`settle`) so that the server holds the current content, then goes on as with a
clean file: a read of an evicted block, a write into a recorded part with evicted blocks,
truncate, the fill a rename or an unlink of an open file does. A write into a recorded part
whose blocks are all cached only unrecords it (the part is sent again). Writes and truncates
wait while an upload completes, so that it stores one state of the file.

After a crash, the record's upload is completed by the journal replay (its unrecorded parts'
blocks were never evictable); if the service lost it, the file goes up whole when its blocks
are all still cached, else it is lost (DataLost, reported as the queue reports every loss).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from cache.block_reader import BlockReader
from cache.blocks import BlockCache
from cache.errors import DataLost, Superseded
from cache.objects import CachedObject
from cache.storage import Storage, StoredVersion
from cache.storage import Readable

log = logging.getLogger(__name__)

MAX_PARTS = 10_000  # S3's limit: a file past it goes up with its last part that much larger


class PartStorage(Storage, Protocol):
    """A storage that takes uploads in parts (mountfs: `Features.part_uploads`)."""

    async def begin_upload(self, bucket: str, key: str, metadata: dict[str, str]) -> str: ...

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int,
                          data: Readable, offset: int, length: int) -> str | None: ...

    async def complete_upload(self, bucket: str, key: str, upload_id: str,
                              parts: list[tuple[int, str]], size: int, metadata: dict[str, str],
                              if_match: str | None = None) -> StoredVersion | None: ...

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None: ...

    async def set_metadata(self, bucket: str, key: str,
                           metadata: dict[str, str]) -> StoredVersion: ...


@dataclass(eq=False)
class Stream:
    """One object's upload in parts, as its journal record's `upload` keeps it."""

    bucket: str
    key: str
    part: int  # bytes per part
    metadata: dict[str, str]  # what the upload was begun with
    upload_id: str = ""
    parts: dict[int, str] = field(default_factory=dict)  # sent, unchanged since: number -> ETag
    sending: set[int] = field(default_factory=set)
    readers: dict[int, PartReader] = field(default_factory=dict)  # of the parts being sent
    scanned: int = 0  # parts before this one were looked at once by `written`
    idle: trio.Event = field(default_factory=trio.Event)  # set when nothing is being sent
    settling: trio.Event | None = None  # set when the upload under way is over
    begin_lock: trio.Lock = field(default_factory=trio.Lock)

    def record(self) -> dict[str, Any]:
        return {"id": self.upload_id, "bucket": self.bucket, "key": self.key,
                "part": self.part, "metadata": self.metadata,
                "parts": sorted(self.parts.items())}

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> Stream:
        stream = cls(raw["bucket"], raw["key"], raw["part"], dict(raw["metadata"]), raw["id"],
                     {int(n): etag for n, etag in raw["parts"]})
        stream.idle.set()
        return stream


class PartReader(BlockReader):
    """The upload reader of one part: superseded only by writes into the part's blocks (the
    writer goes on writing after it while it is sent)."""

    def __init__(self, cache: BlockCache, obj: CachedObject, blocks: range) -> None:
        super().__init__(cache, obj, obj.generation)
        self.blocks = blocks

    def changed(self) -> bool:
        written = self.obj.written
        return self.obj.detached or any(written.get(n, -1) > self.generation
                                        for n in self.blocks)


class PartStreams:
    def __init__(self, cache: BlockCache, storage: PartStorage, part_size: int) -> None:
        self.cache = cache
        self.storage = storage
        self.part_size = part_size
        self.nursery: trio.Nursery | None = None  # the queue's: parts sent while writing
        # What `if_match` an upload of the object states (the queue's conditional writes).
        self.condition: Callable[[CachedObject], dict[str, Any]] = lambda obj: {}
        # The metadata an upload begun while the file is written carries, of the record's
        # (mountfs drops the times that only the writes set: attrs.without_write_times).
        self.loosen: Callable[[dict[str, str]], dict[str, str]] = dict
        self.active: set[CachedObject] = set()
        cache.streams = self

    def has(self, obj: CachedObject) -> bool:
        return obj.stream is not None or bool(obj.record.upload)

    def holds(self, obj: CachedObject, n: int) -> bool:
        """Whether block n is in a recorded part (then, if not cached, only the upload has it)."""
        stream = obj.stream
        return stream is not None and \
            n * self.cache.block_size // stream.part + 1 in stream.parts

    def done(self, obj: CachedObject) -> int:
        """Bytes of the object the upload has sent, or read to send (`mountfs status`)."""
        stream = obj.stream
        if stream is None:
            return 0
        size = obj.size
        sent = sum(max(0, min(stream.part, size - (n - 1) * stream.part)) for n in stream.parts)
        return min(size, sent + sum(reader.done for n, reader in list(stream.readers.items())
                                    if n not in stream.parts))

    def busy(self) -> bool:
        """Whether a part being sent will free room."""
        return any(obj.stream.sending for obj in self.active)

    def restore(self, obj: CachedObject) -> Stream | None:
        """The object's stream, rebuilt from its record after a restart."""
        if obj.stream is None and obj.record.upload:
            obj.stream = Stream.from_record(obj.record.upload)
            self.active.add(obj)
        return obj.stream

    # ---- while the file is written ---------------------------------------------------------

    def written(self, obj: CachedObject) -> None:
        """After each write: send the parts the file now holds whole."""
        part = self.part_size
        if (part <= 0 or obj.size < 2 * part or obj.record.remote_size or obj.detached
                or self.nursery is None or obj.record.lost):
            return
        stream = obj.stream
        if stream is None:
            if obj.record.upload:
                return  # restored at its commit
            rec = obj.record
            stream = obj.stream = Stream(rec.bucket, rec.key, part, self.loosen(rec.metadata))
            stream.idle.set()
            self.active.add(obj)
        if stream.settling is not None:
            return
        ready = min(obj.size // stream.part, MAX_PARTS - 1)
        for k in range(stream.scanned, ready):
            blocks = self._blocks(stream, k + 1)
            if all(obj.blocks.get(n) == self.cache.block_size for n in blocks):
                self._start(obj, stream, k + 1)
        stream.scanned = max(stream.scanned, ready)

    def _blocks(self, stream: Stream, number: int) -> range:
        bs = self.cache.block_size
        return range((number - 1) * stream.part // bs, number * stream.part // bs)

    def _start(self, obj: CachedObject, stream: Stream, number: int) -> None:
        assert self.nursery is not None
        stream.sending.add(number)
        if stream.idle.is_set():
            stream.idle = trio.Event()
        self.nursery.start_soon(self._send_early, obj, stream, number)

    async def _send_early(self, obj: CachedObject, stream: Stream, number: int) -> None:
        try:
            await self._send(obj, stream, number, stream.part)
        except Superseded:
            pass  # written since: sent again when the file is closed
        except Exception as exc:  # the driver retried it: the upload at close sends it again
            log.warning("part %d of %s/%s failed (%s); it goes up with the rest at close",
                        number, stream.bucket, stream.key, exc)
        finally:
            stream.sending.discard(number)
            if not stream.sending:
                stream.idle.set()
            self.cache.room.changed()

    async def _send(self, obj: CachedObject, stream: Stream, number: int, length: int) -> None:
        """Send one part and record it; its blocks become evictable. Raises Superseded when
        the part was written while it was sent, DataLost when the service lost the upload."""
        await self._begin(obj, stream)
        blocks = self._blocks(stream, number)
        reader = stream.readers[number] = PartReader(self.cache, obj, blocks)
        try:
            etag = await self.storage.upload_part(stream.bucket, stream.key, stream.upload_id,
                                                  number, reader, (number - 1) * stream.part,
                                                  length)
        finally:
            if stream.readers.get(number) is reader:
                del stream.readers[number]
        if etag is None:
            raise self._gone(obj, stream)
        if reader.changed():
            raise Superseded(obj.record.key)
        stream.parts[number] = etag
        self._save(obj, stream)
        self.cache.release_blocks(obj, blocks, reader.generation)

    async def _begin(self, obj: CachedObject, stream: Stream) -> None:
        async with stream.begin_lock:
            if not stream.upload_id:
                stream.upload_id = await self.storage.begin_upload(
                    stream.bucket, stream.key, stream.metadata)
                if obj.detached:  # unlinked meanwhile: `drop` found no upload to abort
                    await self.storage.abort_upload(stream.bucket, stream.key,
                                                    stream.upload_id)
                    raise Superseded(obj.record.key)
                self._save(obj, stream)

    def _save(self, obj: CachedObject, stream: Stream) -> None:
        if obj.stream is stream and not obj.detached:
            obj.record.upload = stream.record()
            self.cache.save(obj)

    async def before_write(self, obj: CachedObject, offset: int, end: int) -> None:
        """A write of [offset, end) is about to change blocks of a streamed object: it waits
        for an upload that is completing; a recorded part it falls into is sent again, or,
        if some of its blocks were evicted, the upload is completed first."""
        while (stream := obj.stream) is not None and stream.settling is not None:
            await stream.settling.wait()
        if stream is None:
            return
        first, last = offset // stream.part + 1, (end - 1) // stream.part + 1
        for number in range(first, last + 1):
            if number not in stream.parts:
                continue
            blocks = self._blocks(stream, number)
            if any(n not in obj.blocks for n in blocks):
                await self.settle(obj)
                return
            del stream.parts[number]
            self.cache.pin_blocks(obj, blocks)
            self._save(obj, stream)

    # ---- completing ------------------------------------------------------------------------

    async def settle(self, obj: CachedObject) -> None:
        """Complete the object's upload now, with what was written so far: something needs
        data only the upload holds."""
        if self.has(obj):
            await self.finish(obj, self.condition(obj))

    async def finish(self, obj: CachedObject, condition: dict[str, Any]) -> int | None:
        """Send the parts not recorded and complete the upload; the cache is told the new
        version. The size uploaded; None when another call completed it meanwhile."""
        stream = self.restore(obj)
        assert stream is not None
        if stream.settling is not None:
            await stream.settling.wait()
            return None
        stream.settling = done = trio.Event()
        try:
            await stream.idle.wait()
            return await self._complete(obj, stream, condition)
        finally:
            stream.settling = None
            done.set()

    async def _complete(self, obj: CachedObject, stream: Stream,
                        condition: dict[str, Any]) -> int:
        rec = obj.record
        if (rec.bucket, rec.key) != (stream.bucket, stream.key):
            raise self._gone(obj, stream, f"renamed to {rec.key} while it was uploaded")
        generation, size = obj.generation, rec.size
        count = min(MAX_PARTS, max(1, -(-size // stream.part)))
        last = size - (count - 1) * stream.part
        for number in [n for n in stream.parts if n > count or n == count and
                       last != stream.part]:
            del stream.parts[number]  # the last part is sent as it is now
        failures: list[Exception] = []

        async def send(number: int) -> None:
            try:
                await self._send(obj, stream, number, last if number == count else stream.part)
            except Exception as exc:  # the first failure alone, as the driver's parts do
                failures.append(exc)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for number in range(1, count + 1):
                if number not in stream.parts:
                    nursery.start_soon(send, number)
        if failures:
            raise failures[0]
        version = await self.storage.complete_upload(
            stream.bucket, stream.key, stream.upload_id, sorted(stream.parts.items()), size,
            stream.metadata, **condition)
        if version is None:
            raise self._gone(obj, stream)
        final = dict(rec.metadata)
        if self.loosen(final) != stream.metadata:  # chmod, utimens since it was begun
            version = await self.storage.set_metadata(stream.bucket, stream.key, final)
        self._forget(obj)
        # Writes and truncates waited: the server holds every byte, also of evicted blocks.
        rec.remote_size = size
        self.cache.uploaded(obj, generation, version.etag, version.mtime_ns, size)
        return size

    def _gone(self, obj: CachedObject, stream: Stream,
              why: str = "the service no longer has it") -> Exception:
        """The upload cannot be completed (`why`): the file goes up whole if its blocks are
        all still cached (Superseded: the queue uploads again), else its data is lost."""
        evicted = [n for number in stream.parts for n in self._blocks(stream, number)
                   if n not in obj.blocks]
        self._forget(obj)
        if obj.detached:
            return Superseded(obj.record.key)  # unlinked: nothing to upload
        if not evicted:
            self.cache.save(obj)
            log.warning("multipart upload of %s/%s: %s; uploading it whole", stream.bucket,
                        stream.key, why)
            return Superseded(obj.record.key)
        lost = DataLost(f"multipart upload {stream.upload_id} of {stream.bucket}/{stream.key}: "
                        f"{why}, and {len(evicted)} blocks of it left the cache")
        self.cache.mark_lost(obj, str(lost))  # never uploaded with holes where they were
        return lost

    def _forget(self, obj: CachedObject) -> None:
        obj.stream = None
        obj.record.upload = {}
        self.active.discard(obj)

    def drop(self, obj: CachedObject) -> None:
        """The object was unlinked, replaced or given up: abort its upload."""
        stream = obj.stream or (Stream.from_record(obj.record.upload)
                                if obj.record.upload else None)
        self._forget(obj)
        if stream is not None and stream.upload_id and self.nursery is not None:
            self.nursery.start_soon(self._abort, stream)

    async def _abort(self, stream: Stream) -> None:
        try:
            await self.storage.abort_upload(stream.bucket, stream.key, stream.upload_id)
        except Exception as exc:  # left to the service's lifecycle rules
            log.warning("could not abort the multipart upload of %s/%s: %s", stream.bucket,
                        stream.key, exc)
