"""The FirecREST store: an HPC system's file systems through CSCS's REST API, v2 or v1.

Owns the mapping of FirecREST onto mountfs's object stores: a system is a bucket, a key is an
absolute path without its leading '/', a directory is the marker `dir/` (writing it is
`mkdir -p`, deleting it removes the directory only when it is empty: the service's `rm` is
`rm -r`, and a marker's delete must never take a tree with it). Above the file systems a
system configures, the path components leading to them are directories of their own, and
nothing else is there. Listings come from the service's `ls -l` with each entry's mode, owner,
group and mtime as metadata in mountfs's format, so `ls -l` needs no request per entry;
symlinks are objects of mode S_IFLNK whose data is their target, as mountfs stores them
elsewhere. Files up to the direct limit move whole; larger ones through the S3 staging area
(firecrest_staged.py reads them). FirecREST keeps no user metadata: of the attributes only the
mode is stored (chmod).

The requests are a dialect's (firecrest_v2.py, firecrest_v1.py), picked at check(): the API
version given, or detected (v2 answers with an `f7t-appversion` header). This module owns the
rules, the same for both: names refused, what is looked at before an rm or a rename, symlink
targets, what is remembered from listings.
"""
from __future__ import annotations

import contextlib
import posixpath
import stat
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import trio

from cache.storage import Readable
from mountfs.backends.base import Backend, Features, ObjectInfo
from mountfs.backends.firecrest_api import DIRECT_LIMIT, Dialect, FirecrestApi
from mountfs.backends.firecrest_staged import StagedCopies
from mountfs.backends.progress import Transfers
from mountfs.backends.firecrest_v1 import V1
from mountfs.backends.firecrest_v2 import V2
from mountfs.backends.firecrest_wire import (check_name, entry_info, mode_of, path_of,
                                             stat_info, unescape)
from mountfs.backends.http import HttpPool
from mountfs.backends.oauth import TokenSource
from mountfs.errors import (BackendError, ConfigError, NoSuchBucket, NoSuchObject,
                            NotPermitted, NotSupported, PermissionDenied, TooLarge)

DIALECTS: dict[str, type[Dialect]] = {"v2": V2, "v1": V1}
REMEMBERED_MAX = 100_000  # symlink targets and large files remembered from listings
PATH_MAX = 4096
# File names a multipart part header cannot carry as they are (the WHATWG escaping of
# urllib3 is not undone by every server): such files take the staged way, whose path is a
# JSON (v2) or form (v1) field.
UNSAFE_IN_FORM = frozenset('"\\%\r\n') | frozenset(map(chr, range(32)))


class FirecrestBackend(Backend):
    # No FIFOs or devices: the API makes files, directories and symlinks only. Of the
    # attributes only the mode is kept (chmod); `mv` renames files and trees at once; symlink
    # targets must be absolute (the API checks them as paths to act on); ls gives mtimes in
    # whole seconds and no ETag; files up to the direct limit download only whole.
    features = Features(conditional_writes=False, buckets_editable=False,
                        max_key_length=PATH_MAX - 2, special_files=False,
                        kept_attributes=frozenset({"mode"}), native_rename=True,
                        relative_symlinks=False, exact_versions=False,
                        whole_reads_up_to=DIRECT_LIMIT)

    def __init__(self, url: str, http: HttpPool, auth: TokenSource,
                 api_version: str = "auto") -> None:
        self.url, self.api_version, self.http = url.rstrip("/"), api_version, http
        self.api = FirecrestApi(self, self.url, auth, http)
        self._dialect: Dialect | None = None
        self._systems: dict[str, list[str]] | None = None
        self._links: dict[tuple[str, str], str] = {}  # symlink targets, from listings
        # Files over the direct limit, with the version (ETag) a listing or stat saw last.
        self._large: dict[tuple[str, str], str] = {}
        self.progress = Transfers()  # staged transfers under way, for `mountfs status`
        self._staged = StagedCopies(self.api, lambda: self.dialect, self.progress)

    def describe(self) -> str:
        return f"firecrest:{urllib.parse.urlsplit(self.url).netloc}"

    # ---- systems and the paths they hold ------------------------------------------------------

    @property
    def dialect(self) -> Dialect:
        assert self._dialect is not None, "check() picks the API version first"
        return self._dialect

    def _check(self, key: str) -> None:
        check_name(key, self.dialect.refused)

    async def check(self) -> None:
        """The service answers as FirecREST and takes the credentials: one try, so a wrong
        URL is one line at once rather than after the retries. Its API version (given, or
        detected) picks the dialect, whose list of systems must then be read."""
        url = self.api.endpoint("/status/systems")
        try:
            reply = await self.api.once("GET", url, "list systems")
        except PermissionDenied as exc:
            raise ConfigError(f"{self.describe()}: credentials refused: {exc}") from None
        except NoSuchObject:
            raise ConfigError(f"{self.url} is not a FirecREST service (no /status/systems)") \
                from None
        except BackendError as exc:
            raise ConfigError(f"{self.describe()}: {exc}") from None
        detected = "v2" if "f7t-appversion" in reply.headers else "v1"
        version = detected if self.api_version == "auto" else self.api_version
        self._dialect = DIALECTS[version](self.api)
        try:
            await self.systems()
        except BackendError as exc:
            hint = "" if version == detected else f"; the service looks like API {detected}: " \
                f"use --firecrest-api-version {detected} or auto"
            raise ConfigError(f"{self.describe()}: {exc}{hint}") from None

    async def systems(self) -> dict[str, list[str]]:
        """Each system's file systems (their paths), asked once."""
        if self._systems is None:
            self._systems = await self.dialect.systems()
        return self._systems

    async def file_systems(self, system: str) -> list[str]:
        found = (await self.systems()).get(system)
        if found is None:
            raise NoSuchBucket(f"no system {system!r} on {self.describe()}")
        return found

    async def where(self, system: str, path: str) -> str:
        """'inside' a file system of `system`, 'above' one (a component leading to it), or
        'outside' both."""
        norm = posixpath.normpath(path)
        for fs in await self.file_systems(system):
            if norm == fs or norm.startswith(fs.rstrip("/") + "/"):
                return "inside"
        if any(fs.startswith(norm.rstrip("/") + "/") for fs in await self.file_systems(system)):
            return "above"
        return "outside"

    async def writable_path(self, bucket: str, key: str) -> str:
        """The path of `key` to change; InvalidName or NotPermitted before any request where
        the service cannot or may not change it: above or outside the system's file systems,
        or one of them itself (its mount point is the system's, as a bucket is the store's)."""
        self._check(key)
        path = path_of(key)
        if await self.where(bucket, path) != "inside" or path in await self.file_systems(bucket):
            raise NotPermitted(f"{bucket}:{path} is no path of the system's file systems that "
                               "can be changed")
        return path

    async def check_key(self, bucket: str, key: str) -> None:
        await self.writable_path(bucket, key)

    async def list_buckets(self) -> list[str]:
        return sorted(await self.systems())

    async def create_bucket(self, bucket: str) -> None:
        raise NotSupported("FirecREST systems are the service's; none can be made")

    async def delete_bucket(self, bucket: str) -> None:
        raise NotSupported("FirecREST systems are the service's; none can be removed")

    # ---- reading the tree --------------------------------------------------------------------

    def _learn(self, info: ObjectInfo, entry: dict[str, Any]) -> None:
        """Keep what reading the object needs: a symlink's target, a file's size class."""
        where = (info.bucket, info.key)
        if len(self._links) > REMEMBERED_MAX:
            self._links.clear()
        if len(self._large) > REMEMBERED_MAX:
            self._large.clear()
        if entry.get("type") == "l":
            self._links[where] = unescape(str(entry.get("linkTarget") or ""))
        elif info.size > self.dialect.direct_limit:
            self._large[where] = info.etag

    async def list_objects(self, bucket: str, prefix: str, delimiter: str | None = "/",
                           page_size: int = 1000) -> AsyncIterator[list[ObjectInfo]]:
        head, _, name_prefix = prefix.rpartition("/")
        dir_key = head + "/" if head else ""
        found = await self._below(bucket, dir_key, delimiter is None)
        infos = sorted((i for i in found if i.key.startswith(prefix)), key=lambda i: i.key)
        if not infos and not name_prefix and dir_key:
            infos = await self._marker_if_empty(bucket, dir_key)
        for start in range(0, len(infos), page_size):
            yield infos[start:start + page_size]

    async def _below(self, bucket: str, dir_key: str, recursive: bool) -> list[ObjectInfo]:
        """What the directory `dir_key` holds (every level when `recursive`): nothing when it
        is no directory; above the file systems, the components leading to them."""
        path = path_of(dir_key) if dir_key else "/"
        place = await self.where(bucket, path)
        if place == "outside" or self.dialect.refused.search(dir_key):
            return []
        if place == "above":
            return await self._above(bucket, path, recursive)
        try:
            entries = await self.dialect.ls(bucket, path, recursive)
        except NoSuchObject:
            return []
        if len(entries) == 1 and unescape(str(entries[0].get("name", ""))) == path:
            return []  # ls of a file names it by its path: a file has nothing below it
        infos = []
        for entry in entries:
            info = entry_info(bucket, dir_key + unescape(str(entry["name"])), entry)
            self._learn(info, entry)
            infos.append(info)
        if not recursive:
            return infos
        # Every level: a directory is its marker only while it is empty, as a prefix in S3.
        parents = {i.key.rstrip("/").rpartition("/")[0] + "/" for i in infos}
        return [i if not i.is_prefix else ObjectInfo(i.bucket, i.key, 0, i.mtime_ns, "",
                                                     i.metadata)
                for i in infos if not i.is_prefix or i.key not in parents]

    async def _above(self, bucket: str, path: str, recursive: bool) -> list[ObjectInfo]:
        base = path.rstrip("/") + "/"
        below = [fs for fs in await self.file_systems(bucket) if fs.startswith(base)]
        if recursive:
            out: list[ObjectInfo] = []
            for fs in below:
                out += await self._below(bucket, fs.lstrip("/") + "/", True)
            return out
        names = {fs[len(base):].split("/")[0] for fs in below}
        return [ObjectInfo(bucket, f"{base.lstrip('/')}{name}/", is_prefix=True)
                for name in sorted(names)]

    async def _marker_if_empty(self, bucket: str, dir_key: str) -> list[ObjectInfo]:
        """The marker of the directory `dir_key`, listed under itself, when it is an empty
        directory (a listing found nothing in it)."""
        if await self.where(bucket, path_of(dir_key)) != "inside":
            return []
        try:
            out = await self.dialect.stat(bucket, path_of(dir_key))
        except NoSuchObject:
            return []
        return [stat_info(bucket, dir_key, out)] if stat.S_ISDIR(int(out["mode"])) else []

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        self._check(key)
        path = path_of(key)
        if await self.where(bucket, path) != "inside":
            raise NoSuchObject(f"{bucket}:{path}")
        if key.endswith("/"):
            out = await self.dialect.stat(bucket, path)
            if not stat.S_ISDIR(int(out["mode"])):
                raise NoSuchObject(f"{bucket}:{path} is no directory")
            return stat_info(bucket, key, out)
        entries = await self.dialect.ls(bucket, path, False)
        if len(entries) != 1 or unescape(str(entries[0].get("name", ""))) != path:
            raise NoSuchObject(f"{bucket}:{path} is a directory")
        info = entry_info(bucket, key, entries[0])
        self._learn(info, entries[0])
        return info

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        if key.endswith("/"):
            await self.stat_object(bucket, key)
            return b""
        self._check(key)
        target = self._links.get((bucket, key))
        if target is not None:
            return target.encode("utf-8", "surrogateescape")[offset:offset + length]
        if (bucket, key) not in self._large:
            try:
                data = await self.dialect.download(bucket, path_of(key))
                return data[offset:offset + length]
            except TooLarge:
                self._large[(bucket, key)] = ""
        return await self._staged.read(bucket, path_of(key), offset, length,
                                       self._large[(bucket, key)])

    async def forget(self, bucket: str, key: str) -> None:
        await self._staged.drop(bucket, path_of(key))

    # ---- changing the tree -------------------------------------------------------------------

    async def _forget(self, bucket: str, key: str) -> None:
        self._links.pop((bucket, key), None)
        self._large.pop((bucket, key), None)
        await self._staged.drop(bucket, path_of(key))

    async def write_object(self, bucket: str, key: str, data: Readable, size: int,
                           metadata: dict[str, str]) -> ObjectInfo:
        path = await self.writable_path(bucket, key)
        await self._forget(bucket, key)
        mode = mode_of(metadata)
        kind = stat.S_IFMT(mode) if mode is not None else 0
        if key.endswith("/"):
            await self.dialect.mkdir(bucket, path)
        elif kind == stat.S_IFLNK:
            target = await trio.to_thread.run_sync(lambda: data.read(size))
            return await self._symlink(bucket, key, target.decode("utf-8", "surrogateescape"))
        elif kind not in (0, stat.S_IFREG):
            raise NotSupported(f"FirecREST stores no special files ({bucket}:{path})")
        elif size <= self.dialect.direct_limit and \
                not UNSAFE_IN_FORM & set(posixpath.basename(path)):
            try:
                await self._upload_direct(bucket, path, data, size)
            except TooLarge:
                self.dialect.direct_limit = min(self.dialect.direct_limit, size - 1)
                await self._upload_staged(bucket, path, data, size)
        else:
            await self._upload_staged(bucket, path, data, size)
        return await self._chmod_to(bucket, key, mode)

    async def _upload_direct(self, bucket: str, path: str, data: Readable, size: int) -> None:
        def read() -> bytes:
            data.seek(0)
            return data.read(size)

        body = await trio.to_thread.run_sync(read)
        for first in (True, False):
            try:
                await self.dialect.upload(bucket, path, body)
                return
            except NoSuchObject:  # into a directory not made yet: S3 keys need none
                if not first:
                    raise
                await self.dialect.mkdir(bucket, posixpath.dirname(path))

    async def _upload_staged(self, bucket: str, path: str, data: Readable, size: int) -> None:
        await self.dialect.mkdir(bucket, posixpath.dirname(path))
        with self.progress.track(f"upload {bucket}:{path}", size) as transfer:
            await self.dialect.upload_staged(bucket, path, data, size, transfer)

    def transfers(self) -> list[dict[str, Any]]:
        return self.progress.snapshot()

    async def _symlink(self, bucket: str, key: str, target: str) -> ObjectInfo:
        path = path_of(key)
        try:
            current: ObjectInfo | None = await self.stat_object(bucket, key)
        except NoSuchObject:
            current = None
        if current is not None:
            if self._links.get((bucket, key)) == target:
                return current  # an earlier try made it
            await self.dialect.rm(bucket, path)  # replaced whole, as any object is
        self._check(target)
        if not target.startswith("/") or await self.where(bucket, target) != "inside":
            # The service takes only absolute targets inside the file systems: a link to
            # another target than the program's would read differently.
            raise NotSupported(f"FirecREST makes symlinks to absolute paths of its file "
                               f"systems only, not to {target!r} ({bucket}:{path})")
        await self.dialect.symlink(bucket, target, path)
        return await self.stat_object(bucket, key)

    async def _chmod_to(self, bucket: str, key: str, mode: int | None) -> ObjectInfo:
        """The object's info after giving it the permission bits of `mode` (if given)."""
        info = await self.stat_object(bucket, key)
        have = mode_of(info.metadata) or 0
        if mode is None or stat.S_IMODE(mode) == stat.S_IMODE(have) or stat.S_ISLNK(have):
            return info
        await self.dialect.chmod(bucket, path_of(key), stat.S_IMODE(mode))
        return await self.stat_object(bucket, key)

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        """Only the mode: FirecREST keeps no other attributes (owner, times, xattrs)."""
        await self.writable_path(bucket, key)
        return await self._chmod_to(bucket, key, mode_of(metadata))

    async def copy_object(self, bucket: str, key: str, dst_bucket: str,
                          dst_key: str) -> ObjectInfo:
        if bucket != dst_bucket:
            raise NotSupported("FirecREST copies within one system only")
        source = await self.stat_object(bucket, key)
        dst = await self.writable_path(dst_bucket, dst_key)
        await self._forget(dst_bucket, dst_key)
        mode = mode_of(source.metadata)
        if key.endswith("/"):
            await self.dialect.mkdir(bucket, dst)
            return await self._chmod_to(bucket, dst_key, mode)
        await self.dialect.mkdir(bucket, posixpath.dirname(dst))
        await self.dialect.cp(bucket, path_of(key), dst)
        return await self.stat_object(dst_bucket, dst_key)

    async def rename_object(self, bucket: str, key: str, dst_key: str) -> ObjectInfo:
        """`mv` of a file or a tree in one request (v2: a job; v1: `utilities/rename`). `mv`
        moves INTO a directory found at the target, so an empty one there (the namespace
        checked it is empty) is removed first."""
        self._check(key)
        src, dst = path_of(key), await self.writable_path(bucket, dst_key)
        await self.writable_path(bucket, key)
        await self._forget(bucket, key)
        await self._forget(bucket, dst_key)
        if key.endswith("/"):
            with contextlib.suppress(NoSuchObject):
                if stat.S_ISDIR(int((await self.dialect.stat(bucket, dst))["mode"])):
                    await self.delete_object(bucket, dst_key)
        await self.dialect.mv(bucket, src, dst)
        return await self.stat_object(bucket, dst_key)

    async def delete_object(self, bucket: str, key: str) -> None:
        """The service's rm is `rm -r`: a file's key removes a file or link only, a marker's an
        empty directory only (a directory with entries stays, as a prefix stays in S3 when its
        marker goes). Between the look and the rm another client could add an entry."""
        path = await self.writable_path(bucket, key)
        await self._forget(bucket, key)
        try:
            entries = await self.dialect.ls(bucket, path, False)
        except NoSuchObject:
            return
        is_file = len(entries) == 1 and unescape(str(entries[0].get("name", ""))) == path
        if key.endswith("/") and not entries or not key.endswith("/") and is_file:
            with contextlib.suppress(NoSuchObject):
                await self.dialect.rm(bucket, path)

    async def aclose(self) -> None:
        """Release the staged copies still kept (v1 invalidates them), then the connections."""
        await self._staged.release_all()
        self.http.close()
