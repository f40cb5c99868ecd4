"""What the cache needs from a storage service; mountfs passes a backend driver that fits."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

# Where a read's bytes go as they arrive: sink(position in the range, data). `data` may be a
# view of a buffer the driver reuses: valid only during the call.
Sink = Callable[[int, bytes | memoryview], None]


class Readable(Protocol):
    """What an upload reads a file's bytes from: the cache's readers over its blocks
    (BlockReader), or any binary file."""

    def read(self, n: int = -1, /) -> bytes: ...

    def readinto(self, buf: bytearray | memoryview, /) -> int: ...

    def seek(self, pos: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...


class StoredVersion(Protocol):
    """What a completed upload tells about the object now on the server (read-only: drivers
    answer with frozen records)."""

    @property
    def etag(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def mtime_ns(self) -> int: ...


class Storage(Protocol):
    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes: ...

    async def read_into(self, bucket: str, key: str, offset: int, length: int,
                        sink: Sink) -> int:
        """A ranged read handed to `sink(position, data)` as it arrives (see
        `mountfs.backends.base.Backend.read_into`); the count of bytes read."""
        ...

    def stream_object(self, bucket: str, key: str) -> AsyncIterator[bytes]:
        """The object's bytes from its start, in pieces (for objects read only whole)."""
        ...

    async def write_object(
        self, bucket: str, key: str, data: Readable, size: int, metadata: dict[str, str]
    ) -> StoredVersion: ...

    async def abort_incomplete_uploads(self, bucket: str, key: str, before_ns: int) -> None:
        """Called before an object whose upload a dead process may have begun is uploaded
        again: abort what uploads begun before `before_ns` left unfinished."""

    def is_temp_failure(self, exc: BaseException) -> bool: ...
