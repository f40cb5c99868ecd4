"""A fault injector for tests: a real storage backend underneath, failures and interference on top.

`FaultyStorage` fits `cache.storage.Storage`. Every call goes to the wrapped backend; the test
can make the next write_object calls fail, or run its own code at the moments a real service
leaves open to races: while a ranged read is on the wire, in the middle of a stream, halfway through reading the data of
an upload, and after an upload was stored but before the caller hears of it. It records what
was asked of it, so tests can assert on fetches (and how many ran at once), upload times and
every version ever stored.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from cache.storage import Readable
from mountfs.backends.base import Backend, ObjectInfo, Sink

Hook = Callable[[], Awaitable[None]]


class FaultyStorage:
    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.reads: list[tuple[str, int, int]] = []  # (key, offset, length) of every read_object
        self.write_times: list[float] = []  # trio time of every write_object call
        self.stored: list[bytes] = []  # the object as stored by each successful write_object
        self._failures: list[BaseException] = []
        self.during_read: Hook | None = None  # once, while a read_object is "on the wire"
        self.mid_upload: Hook | None = None  # once, halfway through reading an upload's data
        self.after_write: Hook | None = None  # once, after an upload was stored
        self.read_delay = 0.0  # trio seconds every read_object takes, to overlap fetches
        self.reads_in_flight = 0
        self.max_reads_in_flight = 0  # the most read_object calls under way at once
        self.streams: list[str] = []  # the key of every stream_object
        self.stream_error: BaseException | None = None  # raised by the next stream, once
        self.stream_piece = 0  # bytes a stream yields at a time (0: as the backend does)
        # A read_into hands over its first `hold_after` bytes, then the rest once `released`
        # is set (None: all at once), as a GET whose body is still coming.
        self.hold_after: int | None = None
        self.released = trio.Event()

    def fail_writes(self, exc: BaseException, times: int = 1) -> None:
        """The next `times` write_object calls raise `exc` and store nothing."""
        self._failures += [exc] * times

    def is_temp_failure(self, exc: BaseException) -> bool:
        return self.inner.is_temp_failure(exc)

    async def abort_incomplete_uploads(self, bucket: str, key: str, before_ns: int) -> None:
        await self.inner.abort_incomplete_uploads(bucket, key, before_ns)

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        self.reads.append((key, offset, length))
        self.reads_in_flight += 1
        self.max_reads_in_flight = max(self.max_reads_in_flight, self.reads_in_flight)
        try:
            if self.read_delay:
                await trio.sleep(self.read_delay)
            data = await self.inner.read_object(bucket, key, offset, length)
        finally:
            self.reads_in_flight -= 1
        hook, self.during_read = self.during_read, None
        if hook is not None:
            await hook()
        return data

    async def read_into(self, bucket: str, key: str, offset: int, length: int,
                        sink: Sink) -> int:
        # Through read_object, so that its hooks and records cover the cache's fetches.
        if self.hold_after is None:
            return await Backend.read_into(self, bucket, key, offset,  # type: ignore[arg-type]
                                           length, sink)
        data = await self.read_object(bucket, key, offset, length)
        held = self.hold_after
        await trio.to_thread.run_sync(sink, 0, data[:held])
        await self.released.wait()
        await trio.to_thread.run_sync(sink, held, data[held:])
        return len(data)

    async def stream_object(self, bucket: str, key: str) -> AsyncIterator[bytes]:
        """The wrapped backend's stream, in pieces of `stream_piece` bytes, each after a
        `read_delay`; `stream_error` is raised after the first piece."""
        self.streams.append(key)
        async for piece in self.inner.stream_object(bucket, key):
            step = self.stream_piece or len(piece)
            for at in range(0, len(piece), step):
                if self.read_delay:
                    await trio.sleep(self.read_delay)
                yield piece[at:at + step]
                error, self.stream_error = self.stream_error, None
                if error is not None:
                    raise error

    async def write_object(self, bucket: str, key: str, data: Readable, size: int,
                           metadata: dict[str, str]) -> ObjectInfo:
        self.write_times.append(trio.current_time())
        if self._failures:
            raise self._failures.pop(0)
        hook, self.mid_upload = self.mid_upload, None
        if hook is not None:
            data = _Interrupted(data, hook)  # type: ignore[assignment]
        info = await self.inner.write_object(bucket, key, data, size, metadata)
        self.stored.append(await self.inner.read_object(bucket, key, 0, size + 1))
        hook, self.after_write = self.after_write, None
        if hook is not None:
            await hook()
        return info


class _Interrupted:
    """A file whose first read stops halfway to run `hook` on the trio thread, then goes on.

    Backends read upload data in a worker thread; this puts the test's code between two reads
    of one upload, as a FUSE request served meanwhile would be.
    """

    def __init__(self, f: Readable, hook: Hook) -> None:
        self._f = f
        self._hook: Hook | None = hook

    def read(self, n: int = -1) -> bytes:
        hook, self._hook = self._hook, None
        if hook is None:
            return self._f.read(n)
        head = self._f.read(1 if n < 0 else max(1, n // 2))
        trio.from_thread.run(hook)
        return head + self._f.read(-1 if n < 0 else n - len(head))

    def __getattr__(self, name: str) -> object:
        return getattr(self._f, name)
