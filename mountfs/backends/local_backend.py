"""The local driver's store: a directory on disk that behaves like an object store.

Layout under `root`: each subdirectory is a bucket; each regular file below a bucket is an
object keyed by its '/'-separated path relative to the bucket directory, and each directory
inside a bucket is the directory marker object `path/` (an empty `dir/` marker is an empty
directory). User metadata lives in `user.mountfs.<key>` xattrs on the file or directory.

Puts write a temporary file in the reserved `<root>/.mountfs-tmp/` (same filesystem, so the
final rename is atomic): a reader never sees half an object. Names starting with '.' at the
root are reserved, never listed as buckets. Symlinks and other special files are not objects.

Every operation below a bucket works relative to directory descriptors, opened component by
component with O_NOFOLLOW (openat and friends): a key is not limited by the host's PATH_MAX
(the kernel accepts paths into the mount longer than the store's own path would be), and a
symlink planted in the store never leads outside it.

Unlike S3, deleting the last object below a directory leaves the now empty directory in place:
it stays on as a marker, so a directory the user emptied does not disappear from the mount.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import TypeVar

import trio

from cache.storage import Readable
from mountfs.backends.base import IF_ABSENT, Backend, Features, ObjectInfo
from mountfs.processes import pid_alive  # a zombie is dead: its temporary files are orphans
from mountfs.errors import (
    AlreadyExists, BackendError, ConfigError, InvalidName, NoSuchBucket, NoSuchObject, NotEmpty,
    NotSupported, PermissionDenied, PreconditionLost, QuotaExceeded, TooLarge,
)

T = TypeVar("T")

TMP_DIR = ".mountfs-tmp"
# Held (flock) across the check and the rename of a conditional put: two mounts of one store
# are two processes. A name starting with '.' at the root is never a bucket.
LOCK_FILE = ".mountfs-lock"
XATTR_PREFIX = "user.mountfs."
CHUNK = 1024 * 1024

# A directory on the way to an entry: O_PATH needs only search permission and opens nothing
# for reading; O_NOFOLLOW makes a symlink fail (ENOTDIR with O_PATH) instead of being followed.
_WALK = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# An entry whose contents, listing or xattrs are read (xattr calls need a real descriptor).
_READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

_ERRNO_ERRORS: dict[int, type[BackendError]] = {
    errno.EACCES: PermissionDenied, errno.EPERM: PermissionDenied,
    errno.ENOSPC: QuotaExceeded, errno.EDQUOT: QuotaExceeded,
    errno.ENAMETOOLONG: InvalidName, errno.EEXIST: AlreadyExists, errno.ENOTEMPTY: NotEmpty,
    errno.E2BIG: TooLarge,  # metadata beyond the filesystem's xattr size limit
}


# No such entry on the way to a name: also a symlink, met with O_NOFOLLOW (not an object).
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def _map_oserror(exc: OSError, missing: type[BackendError]) -> BackendError:
    """The backend error for `exc`; `missing` is what ENOENT means to the caller."""
    if exc.errno in _ABSENT:
        return missing(str(exc))
    return _ERRNO_ERRORS.get(exc.errno or 0, BackendError)(str(exc))


def _read_meta(fd: int) -> dict[str, str]:
    """The metadata xattrs of the entry open as `fd`."""
    return {
        name[len(XATTR_PREFIX):]: os.getxattr(fd, name).decode("utf-8", "replace")
        for name in os.listxattr(fd)
        if name.startswith(XATTR_PREFIX)
    }


def _write_meta(fd: int, metadata: dict[str, str], fresh: bool = False) -> None:
    """Replace all of the entry's metadata xattrs with `metadata` (`fresh`: the entry was just
    created and has none to remove)."""
    bad = [key for key in metadata if not key or "\0" in key]
    if bad:
        raise InvalidName(f"invalid metadata key {bad[0]!r}")
    if not fresh:
        for name in os.listxattr(fd):
            if name.startswith(XATTR_PREFIX) and name[len(XATTR_PREFIX):] not in metadata:
                os.removexattr(fd, name)
    for key, value in metadata.items():
        os.setxattr(fd, XATTR_PREFIX + key, value.encode("utf-8"))


@contextmanager
def _opened(name: str, flags: int, dir_fd: int) -> Iterator[int]:
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _entry(dir_fd: int, name: str, marker: bool) -> Iterator[tuple[int, os.stat_result]]:
    """The descriptor and status of the object `name` in `dir_fd`: a regular file, or with
    `marker` a directory. Anything else (a symlink, a FIFO, a device) is NoSuchObject, and is
    never opened."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not (stat.S_ISDIR if marker else stat.S_ISREG)(st.st_mode):
        raise NoSuchObject(name)
    with _opened(name, _READ_DIR if marker else _READ_FILE, dir_fd) as fd:
        yield fd, os.fstat(fd)  # the entry opened, which may have been replaced since


def _info(bucket: str, key: str, dir_fd: int, name: str) -> ObjectInfo:
    """The object `key`, found as `name` in `dir_fd`."""
    with _entry(dir_fd, name, key.endswith("/")) as (fd, st):
        return _info_of(bucket, key, fd, st)


def _info_of(bucket: str, key: str, fd: int, st: os.stat_result) -> ObjectInfo:
    """The object `key`, open as `fd` (from `_entry`) with status `st`."""
    marker = key.endswith("/")
    if marker and not _is_marker(fd):
        raise NoSuchObject(f"{bucket}/{key}")
    # The inode changes on every put (temp file + rename), so the etag does too.
    etag = f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"
    return ObjectInfo(bucket, key, 0 if marker else st.st_size, st.st_mtime_ns, etag,
                      _read_meta(fd))


def _is_marker(fd: int) -> bool:
    """A directory (open as `fd`) stands for a marker object `dir/` when it is empty or holds
    metadata: a directory made only to hold the objects below it stands for none, as in S3."""
    with os.scandir(fd) as it:
        return next(it, None) is None or bool(_read_meta(fd))


def _copy_exact(src: Readable, fd: int, size: int) -> None:
    left = size
    while left:
        chunk = src.read(min(CHUNK, left))
        if not chunk:
            raise BackendError(f"short upload: got {size - left} of {size} bytes")
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
        left -= len(chunk)


def _copy_fd(src: int, dst: int) -> None:
    """Copy all of file `src` into `dst`, in the kernel."""
    offset = 0
    while sent := os.sendfile(dst, src, offset, CHUNK):
        offset += sent


def _open_dir(fd: int, name: str, key: str, create: bool, flags: int = _WALK) -> int:
    """Open the directory `name` in `fd`, on the way to `key`. `create` makes it if missing,
    and a file or a symlink in its place is AlreadyExists or InvalidName."""
    try:
        return os.open(name, flags, dir_fd=fd)
    except OSError as exc:
        if not create or exc.errno not in _ABSENT:
            raise
        if exc.errno != errno.ENOENT:
            if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise InvalidName(f"key {key!r} leads through a symlink") from exc
            raise AlreadyExists(f"{key}: a file is in the way") from exc
    try:
        os.mkdir(name, dir_fd=fd)
    except FileExistsError:
        pass  # made meanwhile by another put
    return _open_dir(fd, name, key, create, flags)


def _split(key: str) -> list[str]:
    """The path components of a valid key (a marker's without its trailing '/')."""
    body = key[:-1] if key.endswith("/") else key
    parts = body.split("/")
    if not body or "\0" in key or any(part in ("", ".", "..") for part in parts):
        raise InvalidName(f"invalid key {key!r}")
    return parts


class LocalBackend(Backend):
    features = Features(conditional_writes=True, native_rename=True)

    def __init__(self, root: str) -> None:
        self.root = root
        self._root = os.path.abspath(root)

    def describe(self) -> str:
        return f"local:{self.root}"

    async def _call(self, fn: Callable[[], T], missing: type[BackendError] = NoSuchObject) -> T:
        """Run blocking `fn` in a worker thread, turning OSError into backend errors."""

        def guarded() -> T:
            try:
                return fn()
            except OSError as exc:
                raise _map_oserror(exc, missing) from exc

        return await trio.to_thread.run_sync(guarded)

    # -- names: every name is validated, then resolved one component at a time --

    def _bucket_path(self, bucket: str) -> str:
        if (not bucket or "/" in bucket or "\0" in bucket or bucket.startswith(".")
                or len(os.fsencode(bucket)) > 255):
            raise InvalidName(f"invalid bucket name {bucket!r}")
        return os.path.join(self._root, bucket)

    @contextmanager
    def _bucket(self, bucket: str, flags: int = _WALK) -> Iterator[int]:
        """A descriptor of the bucket's directory (a symlink could leave the root: none)."""
        try:
            fd = os.open(self._bucket_path(bucket), flags)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NoSuchBucket(bucket) from exc
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _parent(self, bucket: str, key: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """(descriptor of the directory holding `key`'s entry, the entry's name). `create`
        makes the missing directories on the way (a file or a symlink in the way is
        AlreadyExists or InvalidName); else a missing one is ENOENT or ENOTDIR."""
        *dirs, name = _split(key)
        with self._bucket(bucket) as bucket_fd:
            fd = bucket_fd
            try:
                for part in dirs:
                    below = _open_dir(fd, part, key, create)
                    if fd != bucket_fd:
                        os.close(fd)
                    fd = below
                yield fd, name
            finally:
                if fd != bucket_fd:
                    os.close(fd)

    @contextmanager
    def _tmp_file(self) -> Iterator[tuple[int, int, str]]:
        """A new temporary file: (descriptor of the temporary directory, of the file, its
        name). Removed on the way out unless it was renamed away."""
        try:
            tmp_dir = os.open(os.path.join(self._root, TMP_DIR), _WALK)
        except FileNotFoundError:
            os.makedirs(os.path.join(self._root, TMP_DIR), exist_ok=True)
            tmp_dir = os.open(os.path.join(self._root, TMP_DIR), _WALK)
        try:
            while True:
                # The writer's pid in the name: a mount killed mid-put leaves its temporary
                # file, and the next mount of the store removes those whose writer is gone
                # (`_remove_orphans`).
                name = f"{os.getpid()}.{os.urandom(6).hex()}"
                try:
                    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                                 dir_fd=tmp_dir)
                    break
                except FileExistsError:
                    continue
            try:
                yield tmp_dir, fd, name
            finally:
                os.close(fd)
                try:
                    os.unlink(name, dir_fd=tmp_dir)
                except FileNotFoundError:
                    pass  # renamed into place
        finally:
            os.close(tmp_dir)

    def _remove_orphans(self) -> None:
        """Remove temporary files of puts whose process died (kill -9 mid-put); those of live
        processes, other mounts of this store among them, are theirs."""
        tmp_dir = os.path.join(self._root, TMP_DIR)
        try:
            names = os.listdir(tmp_dir)
        except FileNotFoundError:
            return
        for name in names:
            pid = name.split(".", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                try:
                    os.unlink(os.path.join(tmp_dir, name))
                except FileNotFoundError:
                    pass

    # -- checks and buckets --

    async def check(self) -> None:
        def probe() -> None:
            if not os.path.exists(self._root):
                raise ConfigError(f"{self.root}: no such directory")
            if not os.path.isdir(self._root):
                raise ConfigError(f"{self.root}: not a directory")
            if not os.access(self._root, os.W_OK | os.X_OK):
                raise ConfigError(f"{self.root}: directory is not writable")
            try:
                with self._tmp_file() as (_, fd, _):
                    os.setxattr(fd, XATTR_PREFIX + "probe", b"1")
                    os.removexattr(fd, XATTR_PREFIX + "probe")
            except OSError as exc:
                reason = ("filesystem does not support user extended attributes"
                          if exc.errno == errno.ENOTSUP else exc.strerror)
                raise ConfigError(f"{self.root}: {reason}") from exc
            self._remove_orphans()

        await trio.to_thread.run_sync(probe)

    async def list_buckets(self) -> list[str]:
        def scan() -> list[str]:
            with os.scandir(self._root) as it:
                return sorted(e.name for e in it
                              if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))

        return await self._call(scan, missing=BackendError)

    async def create_bucket(self, bucket: str) -> None:
        await self._call(lambda: os.mkdir(self._bucket_path(bucket)), missing=BackendError)

    async def delete_bucket(self, bucket: str) -> None:
        def delete() -> None:
            with self._bucket(bucket):  # NoSuchBucket for a symlink too
                os.rmdir(self._bucket_path(bucket))

        await self._call(delete, missing=NoSuchBucket)

    # -- objects --

    async def list_objects(
        self, bucket: str, prefix: str, delimiter: str | None = "/", page_size: int = 1000
    ) -> AsyncIterator[list[ObjectInfo]]:
        if delimiter not in ("/", None):
            raise NotSupported(f"delimiter {delimiter!r}")
        # One lazy walk, advanced a page at a time in worker threads.
        walk = self._listing(bucket, prefix, delimiter is None)
        try:
            while page := await self._call(lambda: list(islice(walk, page_size))):
                yield page
        finally:
            walk.close()  # its directory descriptors, now rather than at a garbage collection

    def _listing(self, bucket: str, prefix: str,
                 recursive: bool) -> Generator[ObjectInfo, None, None]:
        """The objects (and, not `recursive`, prefixes) under `prefix`, in S3 key order."""
        head, slash, name_prefix = prefix.rpartition("/")
        if not slash:
            with self._bucket(bucket, _READ_DIR) as fd:
                yield from self._walk(bucket, fd, "", name_prefix, recursive)
            return
        try:
            with self._parent(bucket, head + "/") as (parent, name):
                fd = os.open(name, _READ_DIR, dir_fd=parent)
        except OSError as exc:
            if exc.errno in _ABSENT:
                return
            raise
        try:
            if not name_prefix and _is_marker(fd):
                yield _info(bucket, prefix, fd, ".")  # as S3 lists a marker, under itself
            yield from self._walk(bucket, fd, head + slash, name_prefix, recursive)
        finally:
            os.close(fd)

    def _walk(self, bucket: str, fd: int, key_prefix: str, name_prefix: str,
              recursive: bool) -> Iterator[ObjectInfo]:
        """Entries of the directory open as `fd` named `name_prefix*`, in S3 key order."""
        names: list[str] = []
        with os.scandir(fd) as it:
            for entry in it:
                if not entry.name.startswith(name_prefix):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    names.append(entry.name + "/")  # sorts by '/' as its key would
                elif entry.is_file(follow_symlinks=False):
                    names.append(entry.name)
        for name in sorted(names):
            key = key_prefix + name
            if not name.endswith("/"):
                yield from self._info_if_there(bucket, key, fd, name)
                continue
            if not recursive:
                yield ObjectInfo(bucket, key, is_prefix=True)
                continue
            try:
                below = os.open(name[:-1], _READ_DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in _ABSENT:
                    continue  # removed or replaced since the scan
                raise
            try:
                if _is_marker(below):
                    yield from self._info_if_there(bucket, key, below, ".")
                yield from self._walk(bucket, below, key, "", True)
            finally:
                os.close(below)

    @staticmethod
    def _info_if_there(bucket: str, key: str, dir_fd: int, name: str) -> Iterator[ObjectInfo]:
        try:
            yield _info(bucket, key, dir_fd, name)
        except NoSuchObject:  # replaced since the scan
            pass
        except OSError as exc:
            if exc.errno not in _ABSENT:  # removed since the scan
                raise

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        def stat_() -> ObjectInfo:
            with self._parent(bucket, key) as (parent, name):
                return _info(bucket, key, parent, name)

        return await self._call(stat_)

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        def read() -> bytes:
            with self._parent(bucket, key) as (parent, name), \
                    _entry(parent, name, key.endswith("/")) as (fd, st):
                if key.endswith("/"):
                    _info_of(bucket, key, fd, st)  # NoSuchObject unless a marker
                    return b""  # markers are empty
                if offset >= st.st_size:
                    return b""
                return os.pread(fd, min(length, st.st_size - offset), offset)

        return await self._call(read)

    def _put(self, bucket: str, key: str, size: int, metadata: dict[str, str],
             fill: Callable[[int], None], if_match: str | None = None) -> ObjectInfo:
        """Store an object whose data `fill` writes into the temporary file (descriptor) it is
        given; `if_match` as in Backend.write_object (markers are never conditional)."""
        if key.endswith("/"):
            if size:
                raise InvalidName(f"directory marker {key!r} must be empty")
            with self._parent(bucket, key, create=True) as (parent, name):
                fd = _open_dir(parent, name, f"{bucket}/{key}", True, _READ_DIR)
                try:
                    _write_meta(fd, metadata)
                    return _info_of(bucket, key, fd, os.fstat(fd))
                finally:
                    os.close(fd)
        with self._tmp_file() as (tmp_dir, fd, tmp):
            fill(fd)
            _write_meta(fd, metadata, fresh=True)
            try:
                with self._parent(bucket, key, create=True) as (parent, name):
                    if if_match is not None:
                        return self._rename_if(bucket, key, tmp_dir, tmp, fd, parent, name,
                                               if_match)
                    os.rename(tmp, name, src_dir_fd=tmp_dir, dst_dir_fd=parent)
                    return _info(bucket, key, parent, name)
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                raise AlreadyExists(f"{bucket}/{key}: a file or directory is in the way") from exc

    def _rename_if(self, bucket: str, key: str, tmp_dir: int, tmp: str, tmp_fd: int,
                   parent: int, name: str, if_match: str) -> ObjectInfo:
        """Rename `tmp` to `name` if the object there is the version `if_match` names, all under
        the store's lock; else PreconditionLost (or the object, if it already holds these very
        bytes: a retry of a put that was done)."""
        # A descriptor of its own per put: flock excludes other open files, threads included.
        with _opened(os.path.join(self._root, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     -1) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the close
            try:
                current: ObjectInfo | None = _info(bucket, key, parent, name)
            except (FileNotFoundError, NoSuchObject):
                current = None
            if (current.etag if current else None) != \
                    (None if if_match == IF_ABSENT else if_match):
                if current is not None and _same_bytes(tmp_fd, parent, name):
                    return current
                raise PreconditionLost(
                    f"{bucket}/{key} is {current.etag if current else 'gone'}, not "
                    f"{if_match or 'absent'} as this put expects", exists=current is not None)
            os.rename(tmp, name, src_dir_fd=tmp_dir, dst_dir_fd=parent)
            return _info(bucket, key, parent, name)

    async def write_object(
        self, bucket: str, key: str, data: Readable, size: int, metadata: dict[str, str],
        if_match: str | None = None,
    ) -> ObjectInfo:
        return await self._call(
            lambda: self._put(bucket, key, size, metadata,
                              lambda fd: _copy_exact(data, fd, size), if_match)
        )

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        def update() -> ObjectInfo:
            with self._parent(bucket, key) as (parent, name), \
                    _entry(parent, name, key.endswith("/")) as (fd, st):
                _info_of(bucket, key, fd, st)  # NoSuchObject unless the right kind of entry
                _write_meta(fd, metadata)
                return _info_of(bucket, key, fd, os.fstat(fd))

        return await self._call(update)

    async def delete_object(self, bucket: str, key: str) -> None:
        def delete() -> None:
            try:
                with self._parent(bucket, key) as (parent, name):
                    try:
                        if key.endswith("/"):
                            os.rmdir(name, dir_fd=parent)
                        else:
                            os.unlink(name, dir_fd=parent)
                    except OSError as exc:
                        # Children keep a prefix alive in S3, so a non-empty marker is not an
                        # error; the marker goes, and with it the metadata the directory held.
                        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                            raise
                        with _opened(name, _READ_DIR, parent) as fd:
                            _write_meta(fd, {})
            except OSError as exc:
                if exc.errno not in (*_ABSENT, errno.EISDIR):
                    raise  # else no object by that key: deleting it is a success

        await self._call(delete)

    async def rename_object(self, bucket: str, key: str, dst_key: str) -> ObjectInfo:
        """rename(2): a file, or a directory with everything below it; an empty directory at
        the target is replaced, as rename(2) does. The inode and mtime stay, so the ETag does."""
        marker = key.endswith("/")

        def move() -> ObjectInfo:
            with self._parent(bucket, key) as (src_dir, name), \
                    self._parent(bucket, dst_key, create=True) as (dst_dir, dst_name):
                with _entry(src_dir, name, marker):
                    pass  # NoSuchObject unless a file (or, for a marker, a directory)
                os.rename(name, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
                with _entry(dst_dir, dst_name, marker) as (fd, st):
                    if marker:  # (a directory holding objects is no marker object)
                        return ObjectInfo(bucket, dst_key, mtime_ns=st.st_mtime_ns,
                                          is_prefix=True)
                    return _info_of(bucket, dst_key, fd, st)

        return await self._call(move)

    async def copy_object(
        self, bucket: str, key: str, dst_bucket: str, dst_key: str
    ) -> ObjectInfo:
        def copy() -> ObjectInfo:
            with self._parent(bucket, key) as (parent, name), \
                    _entry(parent, name, key.endswith("/")) as (src, st):
                info = _info_of(bucket, key, src, st)
                fill: Callable[[int], None] = (
                    (lambda fd: None) if key.endswith("/") else (lambda fd: _copy_fd(src, fd))
                )
                return self._put(dst_bucket, dst_key, info.size, info.metadata or {}, fill)

        return await self._call(copy)


def _same_bytes(fd: int, dir_fd: int, name: str) -> bool:
    """Whether the file open as `fd` holds the same bytes as `name` in `dir_fd`."""
    with _opened(name, _READ_FILE, dir_fd) as other:
        if os.fstat(fd).st_size != os.fstat(other).st_size:
            return False
        offset = 0
        while True:
            mine, theirs = os.pread(fd, CHUNK, offset), os.pread(other, CHUNK, offset)
            if mine != theirs:
                return False
            if not mine:
                return True
            offset += len(mine)
