"""The embedded default backend: a directory on disk that behaves like an object store.

Layout under `root`: each subdirectory is a bucket; each regular file below a bucket is an
object keyed by its '/'-separated path relative to the bucket directory, and each directory
inside a bucket is the directory marker object `path/` (an empty `dir/` marker is an empty
directory). User metadata lives in `user.mountfs.<key>` xattrs on the file or directory.

Puts write a temporary file in the reserved `<root>/.mountfs-tmp/` (same filesystem, so the
final rename is atomic): a reader never sees half an object. Names starting with '.' at the
root are reserved, never listed as buckets. Symlinks and other special files are not objects.

Unlike S3, deleting the last object below a directory leaves the now empty directory in place:
it stays on as a marker, so a directory the user emptied does not disappear from the mount.
"""
from __future__ import annotations

import errno
import fcntl
import filecmp
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from itertools import chain, islice
from typing import BinaryIO, TypeVar

import trio

from mountfs.backends import Scope, Source
from mountfs.backends.base import IF_ABSENT, Backend, Features, ObjectInfo
from mountfs.backends.registry import Driver, DriverContext
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

_ERRNO_ERRORS: dict[int, type[BackendError]] = {
    errno.EACCES: PermissionDenied, errno.EPERM: PermissionDenied,
    errno.ENOSPC: QuotaExceeded, errno.EDQUOT: QuotaExceeded,
    errno.ENAMETOOLONG: InvalidName, errno.EEXIST: AlreadyExists, errno.ENOTEMPTY: NotEmpty,
    errno.E2BIG: TooLarge,  # metadata beyond the filesystem's xattr size limit
}


def _map_oserror(exc: OSError, missing: type[BackendError]) -> BackendError:
    """The backend error for `exc`; `missing` is what ENOENT means to the caller."""
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return missing(str(exc))
    return _ERRNO_ERRORS.get(exc.errno or 0, BackendError)(str(exc))


def _read_meta(path: str) -> dict[str, str]:
    return {
        name[len(XATTR_PREFIX):]: os.getxattr(path, name).decode("utf-8", "replace")
        for name in os.listxattr(path)
        if name.startswith(XATTR_PREFIX)
    }


def _write_meta(path: str, metadata: dict[str, str]) -> None:
    """Replace all of the entry's metadata xattrs with `metadata`."""
    bad = [key for key in metadata if not key or "\0" in key]
    if bad:
        raise InvalidName(f"invalid metadata key {bad[0]!r}")
    for name in os.listxattr(path):
        if name.startswith(XATTR_PREFIX) and name[len(XATTR_PREFIX):] not in metadata:
            os.removexattr(path, name)
    for key, value in metadata.items():
        os.setxattr(path, XATTR_PREFIX + key, value.encode("utf-8"))


def _info(bucket: str, key: str, path: str) -> ObjectInfo:
    st = os.stat(path, follow_symlinks=False)
    marker = key.endswith("/")
    if not (_is_marker(path) if marker else stat.S_ISREG(st.st_mode)):
        raise NoSuchObject(f"{bucket}/{key}")
    # The inode changes on every put (temp file + rename), so the etag does too.
    etag = f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"
    size = 0 if marker else st.st_size
    return ObjectInfo(bucket, key, size, st.st_mtime_ns, etag, _read_meta(path))


def _is_marker(path: str) -> bool:
    """A directory stands for a marker object `dir/` when it is empty or holds metadata: a
    directory made only to hold the objects below it stands for none, as in S3."""
    try:
        with os.scandir(path) as it:
            return next(it, None) is None or bool(_read_meta(path))
    except (FileNotFoundError, NotADirectoryError):
        return False


def _copy_exact(src: BinaryIO, path: str, size: int) -> None:
    left = size
    with open(path, "wb") as dst:
        while left:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise BackendError(f"short upload: got {size - left} of {size} bytes")
            dst.write(chunk)
            left -= len(chunk)


def _inside(path: str, parent: str) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(parent) + os.sep)


class LocalBackend(Backend):
    features = Features(conditional_writes=True)

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

    # -- paths: every name is validated and resolved before it touches the disk --

    def _bucket_path(self, bucket: str) -> str:
        if (not bucket or "/" in bucket or "\0" in bucket or bucket.startswith(".")
                or len(os.fsencode(bucket)) > 255):
            raise InvalidName(f"invalid bucket name {bucket!r}")
        return os.path.join(self._root, bucket)

    def _bucket_dir(self, bucket: str) -> str:
        path = self._bucket_path(bucket)
        if os.path.islink(path) or not os.path.isdir(path):  # a symlink could leave the root
            raise NoSuchBucket(bucket)
        return path

    def _key_path(self, bucket_dir: str, key: str) -> str:
        body = key[:-1] if key.endswith("/") else key
        if (not body or "\0" in key or key.startswith("/")
                or any(part in ("", ".", "..") for part in body.split("/"))):
            raise InvalidName(f"invalid key {key!r}")
        path = os.path.join(bucket_dir, body)
        if not _inside(path, bucket_dir):  # a symlink planted inside the bucket
            raise InvalidName(f"key {key!r} leaves its bucket")
        return path

    def _object_path(self, bucket: str, key: str) -> str:
        return self._key_path(self._bucket_dir(bucket), key)

    def _tmp_file(self) -> str:
        tmp_dir = os.path.join(self._root, TMP_DIR)
        os.makedirs(tmp_dir, exist_ok=True)
        # The writer's pid in the name: a mount killed mid-put leaves its temporary file, and
        # the next mount of the store removes those whose writer is gone (`_remove_orphans`).
        fd, path = tempfile.mkstemp(dir=tmp_dir, prefix=f"{os.getpid()}.")
        os.close(fd)
        return path

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
                path = self._tmp_file()
                try:
                    os.setxattr(path, XATTR_PREFIX + "probe", b"1")
                    os.removexattr(path, XATTR_PREFIX + "probe")
                finally:
                    os.unlink(path)
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
        await self._call(lambda: os.rmdir(self._bucket_dir(bucket)), missing=NoSuchBucket)

    # -- objects --

    async def list_objects(
        self, bucket: str, prefix: str, delimiter: str | None = "/", page_size: int = 1000
    ) -> AsyncIterator[list[ObjectInfo]]:
        if delimiter not in ("/", None):
            raise NotSupported(f"delimiter {delimiter!r}")
        head, slash, name_prefix = prefix.rpartition("/")

        def start() -> Iterator[ObjectInfo]:
            bucket_dir = self._bucket_dir(bucket)
            dir_path = self._key_path(bucket_dir, head + "/") if slash else bucket_dir
            walk = self._walk(bucket, dir_path, head + slash, name_prefix, delimiter is None)
            if slash and not name_prefix and _is_marker(dir_path):
                return chain([_info(bucket, prefix, dir_path)], walk)  # as S3 lists a marker
            return walk

        # One lazy walk, advanced a page at a time in worker threads.
        walk = await self._call(start)
        while page := await self._call(lambda: list(islice(walk, page_size))):
            yield page

    def _walk(self, bucket: str, dir_path: str, key_prefix: str, name_prefix: str,
              recursive: bool) -> Iterator[ObjectInfo]:
        """Entries of `dir_path` named `name_prefix*`, in S3 key order."""
        names: list[str] = []
        try:
            with os.scandir(dir_path) as it:
                for entry in it:
                    if not entry.name.startswith(name_prefix):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        names.append(entry.name + "/")  # sorts by '/' as its key would
                    elif entry.is_file(follow_symlinks=False):
                        names.append(entry.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in sorted(names):
            key, path = key_prefix + name, os.path.join(dir_path, name.rstrip("/"))
            if name.endswith("/"):
                if not recursive:
                    yield ObjectInfo(bucket, key, is_prefix=True)
                    continue
                if _is_marker(path):
                    yield from self._info_if_there(bucket, key, path)
                yield from self._walk(bucket, path, key, "", True)
                continue
            yield from self._info_if_there(bucket, key, path)

    @staticmethod
    def _info_if_there(bucket: str, key: str, path: str) -> Iterator[ObjectInfo]:
        try:
            yield _info(bucket, key, path)
        except (FileNotFoundError, NoSuchObject):  # removed since the scan
            pass

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        return await self._call(lambda: _info(bucket, key, self._object_path(bucket, key)))

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        def read() -> bytes:
            path = self._object_path(bucket, key)
            size = _info(bucket, key, path).size
            if offset >= size:  # markers are empty
                return b""
            with open(path, "rb") as f:
                return os.pread(f.fileno(), min(length, size - offset), offset)

        return await self._call(read)

    def _put(self, bucket: str, key: str, size: int, metadata: dict[str, str],
             fill: Callable[[str], None], if_match: str | None = None) -> ObjectInfo:
        """Store an object whose data `fill` writes into the temp file it is given; `if_match`
        as in Backend.write_object (markers are never conditional)."""
        path = self._object_path(bucket, key)
        if key.endswith("/"):
            if size:
                raise InvalidName(f"directory marker {key!r} must be empty")
            try:
                os.makedirs(path, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as exc:
                raise AlreadyExists(f"{bucket}/{key}: a file is in the way") from exc
            _write_meta(path, metadata)
            return _info(bucket, key, path)
        tmp = self._tmp_file()
        try:
            fill(tmp)
            _write_meta(tmp, metadata)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if if_match is None:
                    os.rename(tmp, path)
                else:
                    return self._rename_if(bucket, key, tmp, path, if_match)
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                raise AlreadyExists(f"{bucket}/{key}: a file or directory is in the way") from exc
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return _info(bucket, key, path)

    def _rename_if(self, bucket: str, key: str, tmp: str, path: str,
                   if_match: str) -> ObjectInfo:
        """Rename `tmp` to `path` if the object there is the version `if_match` names, all under
        the store's lock; else PreconditionLost (or the object, if it already holds these very
        bytes: a retry of a put that was done)."""
        fd = os.open(os.path.join(self._root, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current: ObjectInfo | None = _info(bucket, key, path)
            except (FileNotFoundError, NoSuchObject):
                current = None
            if (current.etag if current else None) != (None if if_match == IF_ABSENT
                                                        else if_match):
                if current is not None and filecmp.cmp(tmp, path, shallow=False):
                    os.unlink(tmp)
                    return current
                raise PreconditionLost(
                    f"{bucket}/{key} is {current.etag if current else 'gone'}, not "
                    f"{if_match or 'absent'} as this put expects", exists=current is not None)
            os.rename(tmp, path)
            return _info(bucket, key, path)
        finally:
            os.close(fd)  # releases the lock

    async def write_object(
        self, bucket: str, key: str, data: BinaryIO, size: int, metadata: dict[str, str],
        if_match: str | None = None,
    ) -> ObjectInfo:
        return await self._call(
            lambda: self._put(bucket, key, size, metadata,
                              lambda tmp: _copy_exact(data, tmp, size), if_match)
        )

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        def update() -> ObjectInfo:
            path = self._object_path(bucket, key)
            _info(bucket, key, path)  # NoSuchObject unless the right kind of entry exists
            _write_meta(path, metadata)
            return _info(bucket, key, path)

        return await self._call(update)

    async def delete_object(self, bucket: str, key: str) -> None:
        def delete() -> None:
            path = self._object_path(bucket, key)
            try:
                if key.endswith("/"):
                    os.rmdir(path)
                else:
                    os.unlink(path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                pass  # no object by that key: deleting it is a success
            except OSError as exc:
                # Children keep a prefix alive in S3, so a non-empty marker is not an error;
                # the marker goes, and with it the metadata the directory held for it.
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                _write_meta(path, {})

        await self._call(delete)

    async def copy_object(
        self, bucket: str, key: str, dst_bucket: str, dst_key: str
    ) -> ObjectInfo:
        def copy() -> ObjectInfo:
            src = self._object_path(bucket, key)
            info = _info(bucket, key, src)
            fill: Callable[[str], None] = (
                (lambda tmp: None) if key.endswith("/") else (lambda tmp: shutil.copyfile(src, tmp))
            )
            return self._put(dst_bucket, dst_key, info.size, info.metadata or {}, fill)

        return await self._call(copy)


async def _open(context: DriverContext) -> Source:
    return Source(LocalBackend(context.rest), Scope())


DRIVER = Driver(
    name="local", schemes=("local",), open=_open, canonical=os.path.abspath,
    summary="local:/path/to/store, or a plain path: each subdirectory of the store is a bucket, "
            "each file below an object")
