"""The interface every backend driver implements, and the records it returns.

Drivers speak one service's wire protocol and raise the classes of `mountfs.errors`; they hold
no cache and run no retry loops of their own: each request goes through `Backend.retried`, the
one policy (mountfs/backends/retry.py), and the write-back queue retries whole uploads, both
asking the driver's `is_temp_failure`. Blocking clients run in trio worker threads so the FUSE
loop never stalls.
"""
from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from cache.storage import Readable, Sink
from mountfs.backends.retry import retrying
from mountfs.errors import NotSupported, TemporaryFailure

T = TypeVar("T")

# `write_object(if_match=IF_ABSENT)`: store only if no object has the key (If-None-Match: *).
IF_ABSENT = ""

# The pieces `Backend.stream_object` reads by default.
STREAM_PIECE = 8 * 1024 * 1024

# What a retry may cure, whichever driver raised it.
TEMPORARY_FAILURES = (TemporaryFailure, ConnectionError, TimeoutError)

# An object's standard headers travel in the same dict as its user metadata, under these keys:
# a user metadata name is an HTTP token, which cannot begin with ':', so they never collide.
# A driver whose service keeps them (S3: Content-Type and the rest) reports them in
# `stat_object` and stores them with `write_object`, `set_metadata` and copies, so that other
# tools' headers survive the mount's changes; a driver without them keeps them as it keeps user
# metadata, or not at all.
# Key -> the HTTP header.
CONTENT_TYPE = ":content-type"
HEADERS = {CONTENT_TYPE: "Content-Type", ":cache-control": "Cache-Control",
           ":content-disposition": "Content-Disposition", ":content-encoding": "Content-Encoding",
           ":content-language": "Content-Language", ":expires": "Expires",
           ":storage-class": "x-amz-storage-class"}


def split_headers(metadata: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(user metadata, standard headers by their keys in HEADERS) of a metadata dict."""
    user = {k: v for k, v in metadata.items() if not k.startswith(":")}
    return user, {k: v for k, v in metadata.items() if k in HEADERS}


@dataclass(frozen=True)
class ObjectInfo:
    """One listing or stat result. A prefix (`is_prefix`) is a directory: key ends with '/'."""

    bucket: str
    key: str
    size: int = 0
    mtime_ns: int = 0
    etag: str = ""
    # None: the service lists without user metadata, ask stat_object for it.
    metadata: dict[str, str] | None = field(default=None, compare=False)
    is_prefix: bool = False
    # False: `size` is not the object's but a listing's stand-in, where knowing it would cost
    # work per entry (an AmigoCloud export not made yet). Opening the file asks stat_object
    # first, and the kernel is told to ask for the attributes again.
    sized: bool = field(default=True, compare=False)


@dataclass(frozen=True)
class Change:
    """What a driver's change feed (`Backend.changes`) reports: the listing of `prefix` (a
    directory's key, '' for the bucket's top) in `bucket` changed; bucket None: the list of
    buckets changed."""

    bucket: str | None
    prefix: str = ""


@dataclass(frozen=True)
class Features:
    """What a driver can do, as the mount reads it: each field is read by the namespace, the
    mount, the write-back queue or `mountfs doctor` (and the contract suite skips by it)."""

    # False: the mount is read-only (mount.py), and the log says `why_read_only`.
    writable: bool = True
    why_read_only: str = ""  # for the log, when not writable: what the user can do about it
    # write_object takes `if_match` and raises PreconditionLost when the condition fails (a
    # driver without it is never passed the keyword): two mounts' writers keep both versions.
    conditional_writes: bool = False
    # mkdir and rmdir at a root that lists buckets create and delete buckets; else EPERM at
    # once, without asking the service.
    buckets_editable: bool = True
    # The largest object the service stores (None: no limit): a write or truncate past it
    # fails with EFBIG at once, not at the upload after close.
    max_object_size: int | None = None
    # The longest key the service stores, in UTF-8 bytes (None: only the kernel's limits): a
    # name whose key would be longer fails with ENAMETOOLONG at once, not at the upload.
    max_key_length: int | None = None
    # FIFOs, sockets and device nodes can be stored (as s3fs stores them: empty objects whose
    # mode says what they are); else mknod of one is EPERM at once, not an upload that fails.
    special_files: bool = True
    # The attributes the service keeps (attrs.py's names: mode, uid, gid, atime, mtime,
    # ctime, rdev, xattr; the standard headers by their keys in HEADERS; "other" for other
    # tools' metadata); None: all of them, in the object's metadata. One it does not keep
    # is taken as rclone takes it (shown until the entry is read again from the service),
    # except extended attributes: setxattr is ENOTSUP, not a value that silently vanishes.
    kept_attributes: frozenset[str] | None = None
    # `rename_object` moves a file, or a directory with everything below it, in one request of
    # the service's own: the namespace renames with it instead of copying and deleting each
    # object below (mountfs/rename.py).
    native_rename: bool = False
    # Symlinks can be made; else symlink is EPERM at once: a store that keeps no mode
    # (Metadisk) would read one back as a regular file holding its target.
    symlinks: bool = True
    # Symlinks may point anywhere, as the program said; else only to absolute paths (a
    # relative target is ENOTSUP at once: the service would make another link).
    relative_symlinks: bool = True
    # Each new version of an object has a new ETag. False: versions are told apart by size
    # and an mtime in whole seconds only (FirecREST's ls, as rclone on SFTP), so data cached
    # while its version's second may not be over is not trusted by a later open.
    exact_versions: bool = True
    # Objects of at most this many bytes (None: every object) the service serves only whole:
    # the cache streams such an object into its blocks from its start (`stream_object`), once
    # for all its readers, instead of asking a range per block (cache/whole.py).
    whole_reads_up_to: int | None = 0
    # copy_object copies on the service; False: the bytes go through mountfs (DCSS) or it
    # copies nothing (AmigoCloud). Said by `mountfs doctor`: renames and copies cost a
    # download and an upload.
    server_side_copy: bool = True
    # Requests worth having under way at once, about the driver's connection pool (more only
    # queue in the driver, fewer leave it idle): the write-back queue runs at least this many
    # uploads at once (small files' PUTs).
    parallel_requests: int = 16
    # Metadata reads the stat-ahead of a directory being read and stat'ed keeps in flight
    # (mountfs/statahead.py): as many as it takes to keep the service busy while the mount
    # handles the replies, which a service answering small requests fast needs more of.
    parallel_metadata_reads: int = 16
    # Multipart uploads driven from outside (`begin_upload`, `upload_part`, `complete_upload`,
    # `abort_upload`): the write-back queue uploads a large file's parts while it is being
    # written (cache/streams.py). Without it a file goes up whole after close.
    part_uploads: bool = False

    def keeps(self, attribute: str) -> bool:
        return self.kept_attributes is None or attribute in self.kept_attributes


class Backend(abc.ABC):
    """An object store: buckets holding objects named by keys, '/' as the prefix delimiter."""

    features: Features = Features()

    @abc.abstractmethod
    def describe(self) -> str:
        """A short name for logs and status: the source as the user gave it, no secrets."""

    async def check(self) -> None:
        """Fail fast (ConfigError, one line) when the source is unreachable or misconfigured."""

    @abc.abstractmethod
    async def list_buckets(self) -> list[str]: ...

    @abc.abstractmethod
    async def create_bucket(self, bucket: str) -> None: ...

    @abc.abstractmethod
    async def delete_bucket(self, bucket: str) -> None:
        """Raises NotEmpty when the bucket holds objects."""

    @abc.abstractmethod
    def list_objects(
        self, bucket: str, prefix: str, delimiter: str | None = "/", page_size: int = 1000
    ) -> AsyncIterator[list[ObjectInfo]]:
        """Pages of objects and (with a delimiter) common prefixes under `prefix`, key order."""

    @abc.abstractmethod
    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        """Raises NoSuchObject; the result carries metadata."""

    @abc.abstractmethod
    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length), fewer at the end of the object."""

    async def read_into(self, bucket: str, key: str, offset: int, length: int,
                        sink: Sink) -> int:
        """Bytes [offset, offset+length) (fewer at the end of the object) handed to
        `sink(position, data)`, position counted from `offset`; the count of bytes read.

        How the cache fetches blocks: a driver that can hands the body over as it arrives
        (S3: each chunk the CRT received, written straight into block files), so no copy of
        the whole range is made in Python. `sink` may be called from another thread, and from
        position 0 again when a try is repeated; it is never called after this returns. The
        cache's sink puts each block in place once whole, and checks a repeated try's bytes
        for those blocks: other bytes raise cache.errors.ObjectChanged out of this call. By
        default one read_object, handed over from a worker thread (the sink writes files)."""
        data = await self.read_object(bucket, key, offset, length)
        await trio.to_thread.run_sync(sink, 0, data)
        return len(data)

    async def stream_object(self, bucket: str, key: str) -> AsyncIterator[bytes]:
        """The object's bytes from its start, in pieces: how the cache reads the objects
        `features.whole_reads_up_to` names. By default ranged reads of STREAM_PIECE bytes; a
        service without ranges streams its one download."""
        offset = 0
        while True:
            piece = await self.read_object(bucket, key, offset, STREAM_PIECE)
            if piece:
                yield piece
            if len(piece) < STREAM_PIECE:
                return
            offset += len(piece)

    @abc.abstractmethod
    async def write_object(
        self, bucket: str, key: str, data: Readable, size: int, metadata: dict[str, str]
    ) -> ObjectInfo:
        """Store `size` bytes read from `data` as one whole object, atomically replacing any
        old one.

        Drivers with `features.conditional_writes` also take a keyword `if_match: str | None`:
        None stores unconditionally; IF_ABSENT ("") only if the key holds no object; an ETag
        only if the object has that ETag. Otherwise nothing is stored and PreconditionLost is
        raised (`exists`: whether an object has the key now). A retried request that finds its
        own earlier try stored (same bytes) succeeds."""

    @abc.abstractmethod
    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        """Replace the object's user metadata, keeping its data."""

    @abc.abstractmethod
    async def delete_object(self, bucket: str, key: str) -> None:
        """Idempotent: deleting a missing object succeeds."""

    @abc.abstractmethod
    async def copy_object(
        self, bucket: str, key: str, dst_bucket: str, dst_key: str
    ) -> ObjectInfo:
        """Server-side copy, data and metadata."""

    async def rename_object(self, bucket: str, key: str, dst_key: str) -> ObjectInfo:
        """With `features.native_rename`: move the object `key` to `dst_key` in the same
        bucket, or, for a marker key (ending '/'), the directory with everything below it.
        A file at `dst_key` is replaced; a directory there is empty (the namespace checked) and
        is replaced too. The result describes the object at its new name."""
        raise NotSupported(f"{self.describe()} renames by copy and delete")

    def transfers(self) -> list[dict[str, Any]]:
        """Transfers under way in several steps (`mountfs/backends/progress.py`): what each
        is, its size, the bytes sent and its phase. Drivers whose requests are single steps
        have none to show."""
        return []

    async def check_key(self, bucket: str, key: str) -> None:
        """Raise (NotPermitted, InvalidName) before a name is made that the service would
        never store, without a request where it can: else the upload after close would fail
        for ever. By default any key can be stored."""

    async def forget(self, bucket: str, key: str) -> None:
        """Drop what the driver keeps of the object's data between reads (a staged copy): the
        namespace is about to read a version it cannot tell from the last one by its ETag
        (`Features.exact_versions` False)."""

    async def abort_incomplete_uploads(self, bucket: str, key: str, before_ns: int) -> None:
        """Abort what uploads of `key` begun before `before_ns` (ns since the epoch) left on the
        service, unfinished: a process killed mid-upload cannot. Called before the journal
        replay uploads an object again. Services whose writes leave nothing behind (the local
        store removes its own temporary files at mount) need not do anything."""

    # ---- uploads in parts, driven by the write-back queue (`features.part_uploads`) ---------

    def part_upload_size(self) -> int:
        """The least size of every part but the last of an upload driven from outside (the
        cache sends whole blocks: this rounded up to its block size)."""
        raise NotSupported(f"{self.describe()} uploads objects whole")

    async def begin_upload(self, bucket: str, key: str, metadata: dict[str, str]) -> str:
        """Begin an upload of `key` in parts, the object stored with `metadata`; its id."""
        raise NotSupported(f"{self.describe()} uploads objects whole")

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int,
                          data: Readable, offset: int, length: int) -> str | None:
        """Send part `number` (from 1) of the upload: bytes [offset, offset + length) of `data`
        (a seekable file, read from a worker thread). The part's ETag; None when the service
        no longer has the upload (aborted, expired). A part sent again replaces the earlier."""
        raise NotSupported(f"{self.describe()} uploads objects whole")

    async def complete_upload(self, bucket: str, key: str, upload_id: str,
                              parts: list[tuple[int, str]], size: int, metadata: dict[str, str],
                              if_match: str | None = None) -> ObjectInfo | None:
        """Make the object of the parts (number, ETag), `size` bytes in all, as `write_object`
        would (`if_match` likewise); None when the service no longer has the upload and
        nothing says it was completed."""
        raise NotSupported(f"{self.describe()} uploads objects whole")

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Drop the upload and its parts; one the service no longer has is no error."""
        raise NotSupported(f"{self.describe()} uploads objects whole")

    async def changes(self) -> AsyncIterator[Change]:
        """The service's changes as they happen, for as long as the mount runs (mountfs/
        changes.py expires the listings they name): a driver whose service pushes events,
        or polls in their stead while they are down. By default none: listings expire by
        the metadata TTL alone."""
        return
        yield  # an async generator that yields nothing

    def changes_via(self) -> str:
        """How the change feed learns of changes now ("events", "polling"), for `mountfs
        status`; "" without a feed."""
        return ""

    def is_temp_failure(self, exc: BaseException) -> bool:
        return isinstance(exc, TEMPORARY_FAILURES)

    async def retried(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`, one request (with the reading of its reply), under the retry policy:
        tried again while it fails in a way `is_temp_failure` calls temporary. `what` names
        the request in the log. A request whose body is a stream builds it in `attempt`, so
        that each try sends it from its start."""
        return await retrying(what, attempt, self.is_temp_failure)

    async def aclose(self) -> None:
        """Release connections."""
