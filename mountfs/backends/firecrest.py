"""The FirecREST driver: an HPC system's file systems through CSCS's REST API (v2).

Owns the mapping of FirecREST onto mountfs's object stores: a system is a bucket, a key is an
absolute path without its leading '/', a directory is the marker `dir/` (writing it is
`mkdir -p`, deleting it removes the directory only when it is empty: `ops/rm` is `rm -r`, and a
marker's delete must never take a tree with it). Above the file systems a system configures,
the path components leading to them are directories of their own, and nothing else is there.
Listings come from `ops/ls` with each entry's mode, owner, group and mtime as metadata in
mountfs's format, so `ls -l` needs no request per entry; symlinks are objects of mode S_IFLNK
whose data is their target, as mountfs stores them elsewhere. Files up to the direct limit move
by `ops/upload`/`ops/download`; larger ones through the S3 staging area (`transfer/upload`,
`transfer/download`), a staged download read by ranges and reused while its URL is valid.
FirecREST keeps no user metadata: of the attributes only the mode is stored (chmod).
"""
from __future__ import annotations

import contextlib
import logging
import posixpath
import stat
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import trio

from mountfs.backends import Scope, Source
from mountfs.backends.base import Backend, Features, ObjectInfo
from mountfs.backends.firecrest_api import FirecrestApi, ranged
from mountfs.backends.firecrest_wire import (check_name, entry_info, mode_of, path_of,
                                             stat_info, unescape)
from mountfs.backends.http import HttpPool
from mountfs.backends.oauth import ClientCredentials, StaticToken, TokenSource
from mountfs.backends.registry import Driver, DriverContext, Option
from mountfs.errors import (BackendError, ConfigError, NoSuchBucket, NoSuchObject,
                            NotPermitted, NotSupported, PermissionDenied, TooLarge)

log = logging.getLogger(__name__)

THREADS = 16
# pyfirecrest's MAX_DIRECT_UPLOAD_SIZE; a smaller limit is learnt from the service's 413.
DIRECT_LIMIT = 1024 * 1024
# A staged download's URL is read again for this long (capped by half its validity): reading
# a large file block by block must not stage it once per block.
URL_REUSE = 300.0
REMEMBERED_MAX = 100_000  # symlink targets and large files remembered from listings
PATH_MAX = 4096
# File names a multipart part header cannot carry as they are (the WHATWG escaping of
# urllib3 is not undone by every server): such files take the staged way, whose path is JSON.
UNSAFE_IN_FORM = frozenset('"\\%\r\n') | frozenset(map(chr, range(32)))


class FirecrestBackend(Backend):
    # No FIFOs or devices: the API makes files, directories and symlinks only.
    # Of the attributes only the mode is kept (chmod); `mv` renames files and trees at once;
    # symlink targets must be absolute paths (the API checks them as paths to act on); ls
    # gives mtimes in whole seconds, and no ETag.
    features = Features(conditional_writes=False, buckets_editable=False,
                        max_key_length=PATH_MAX - 2, special_files=False,
                        kept_attributes=frozenset({"mode"}), native_rename=True,
                        relative_symlinks=False, exact_versions=False)

    def __init__(self, url: str, http: HttpPool, auth: TokenSource,
                 api_version: str = "auto") -> None:
        self.url, self.api_version, self.http = url.rstrip("/"), api_version, http
        self.api = FirecrestApi(self, self.url, auth, http)
        self.direct_limit = DIRECT_LIMIT
        self._systems: dict[str, list[str]] | None = None
        self._links: dict[tuple[str, str], str] = {}  # symlink targets, from listings
        # Files over the direct limit, with the version (ETag) a listing or stat saw last.
        self._large: dict[tuple[str, str], str] = {}
        self._urls: dict[tuple[str, str], tuple[str, float]] = {}  # staged downloads

    def describe(self) -> str:
        return f"firecrest:{urllib.parse.urlsplit(self.url).netloc}"

    # ---- systems and the paths they hold ------------------------------------------------------

    async def check(self) -> None:
        """The service answers as FirecREST v2 and takes the credentials: one try, so a wrong
        URL is one line at once rather than after the retries."""
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
        v2 = "f7t-appversion" in reply.headers
        if self.api_version == "v1" or (self.api_version == "auto" and not v2):
            raise ConfigError(f"{self.url}: FirecREST API v1 is not supported yet (only v2)")
        await self.systems()

    async def systems(self) -> dict[str, list[str]]:
        """Each system's file systems (their paths), asked once."""
        if self._systems is None:
            answer = await self.api.call("GET", "/status/systems", "list systems")
            try:
                self._systems = {s["name"]: [fs["path"] for fs in s.get("fileSystems") or []]
                                 for s in answer["systems"]}
            except (KeyError, TypeError) as exc:
                raise BackendError(f"{self.url}/status/systems: not FirecREST v2's answer "
                                   f"({exc!r})") from None
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
        check_name(key)
        path = path_of(key)
        if await self.where(bucket, path) != "inside" or path in await self.file_systems(bucket):
            raise NotPermitted(f"{bucket}:{path} is no path of the system's file systems that "
                               "can be changed")
        return path

    async def list_buckets(self) -> list[str]:
        return sorted(await self.systems())

    async def create_bucket(self, bucket: str) -> None:
        raise NotSupported("FirecREST systems are the service's; none can be made")

    async def delete_bucket(self, bucket: str) -> None:
        raise NotSupported("FirecREST systems are the service's; none can be removed")

    # ---- reading the tree --------------------------------------------------------------------

    async def ls(self, system: str, path: str, recursive: bool = False) -> list[dict[str, Any]]:
        answer = await self.api.call("GET", f"/filesystem/{system}/ops/ls", f"ls {system}:{path}",
                                     {"path": path, "showHidden": "true", "numericUid": "true",
                                      "recursive": str(recursive).lower()})
        return list(answer.get("output") or [])

    async def stat_path(self, system: str, path: str) -> dict[str, Any]:
        answer = await self.api.call("GET", f"/filesystem/{system}/ops/stat",
                                     f"stat {system}:{path}", {"path": path})
        return dict(answer["output"])

    def _learn(self, info: ObjectInfo, entry: dict[str, Any]) -> None:
        """Keep what reading the object needs: a symlink's target, a file's size class."""
        where = (info.bucket, info.key)
        if len(self._links) > REMEMBERED_MAX:
            self._links.clear()
        if len(self._large) > REMEMBERED_MAX:
            self._large.clear()
        if entry.get("type") == "l":
            self._links[where] = unescape(str(entry.get("linkTarget") or ""))
        elif info.size > self.direct_limit:
            if self._large.get(where, info.etag) != info.etag:
                self._urls.pop(where, None)  # a new version: its staged copy is of the old
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
        if place == "outside" or "'" in dir_key:
            return []
        if place == "above":
            return await self._above(bucket, path, recursive)
        try:
            entries = await self.ls(bucket, path, recursive)
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
            out = await self.stat_path(bucket, path_of(dir_key))
        except NoSuchObject:
            return []
        return [stat_info(bucket, dir_key, out)] if stat.S_ISDIR(int(out["mode"])) else []

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        check_name(key)
        path = path_of(key)
        if await self.where(bucket, path) != "inside":
            raise NoSuchObject(f"{bucket}:{path}")
        if key.endswith("/"):
            out = await self.stat_path(bucket, path)
            if not stat.S_ISDIR(int(out["mode"])):
                raise NoSuchObject(f"{bucket}:{path} is no directory")
            return stat_info(bucket, key, out)
        entries = await self.ls(bucket, path)
        if len(entries) != 1 or unescape(str(entries[0].get("name", ""))) != path:
            raise NoSuchObject(f"{bucket}:{path} is a directory")
        info = entry_info(bucket, key, entries[0])
        self._learn(info, entries[0])
        return info

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        if key.endswith("/"):
            await self.stat_object(bucket, key)
            return b""
        check_name(key)
        target = self._links.get((bucket, key))
        if target is not None:
            return target.encode("utf-8", "surrogateescape")[offset:offset + length]
        if (bucket, key) not in self._large:
            try:
                data = await self.api.read_small(bucket, path_of(key), f"download {bucket}:/{key}")
                return data[offset:offset + length]
            except TooLarge:
                self._large[(bucket, key)] = ""
        return await self._read_staged(bucket, key, offset, length)

    async def _read_staged(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        for fresh in (False, True):
            url = await self._download_url(bucket, key)
            what = f"GET staged {bucket}:/{key}"
            try:
                reply = await self.retried(what, lambda: self.api.staging(
                    "GET", url, what, headers=ranged(offset, length)))
            except (PermissionDenied, NoSuchObject):
                # The staged copy is gone or its URL expired early: stage the file again.
                self._urls.pop((bucket, key), None)
                if fresh:
                    raise
                continue
            return b"" if reply.status == 416 else bytes(reply.data)
        raise AssertionError("unreachable")

    async def _download_url(self, bucket: str, key: str) -> str:
        """A URL of the staged copy of `key`, staged now unless one is still valid."""
        cached = self._urls.get((bucket, key))
        if cached and cached[1] > time.monotonic():
            return cached[0]
        path = path_of(key)
        what = f"stage {bucket}:{path}"
        answer = await self.api.call("POST", f"/filesystem/{bucket}/transfer/download", what,
                                     body={"sourcePath": path,
                                           "transferDirectives": {"transferMethod": "s3"}})
        await self.api.follow(bucket, answer["transferJob"], what)
        url = answer["transferDirectives"]["downloadUrl"]
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        valid = float(query.get("X-Amz-Expires", ["0"])[0] or 0)
        reuse = min(URL_REUSE, valid / 2) if valid else URL_REUSE
        self._urls[(bucket, key)] = (url, time.monotonic() + reuse)
        return url

    def forget(self, bucket: str, key: str) -> None:
        self._urls.pop((bucket, key), None)

    # ---- changing the tree -------------------------------------------------------------------

    def _forget(self, bucket: str, key: str) -> None:
        self._links.pop((bucket, key), None)
        self._large.pop((bucket, key), None)
        self._urls.pop((bucket, key), None)

    async def write_object(self, bucket: str, key: str, data: BinaryIO, size: int,
                           metadata: dict[str, str]) -> ObjectInfo:
        path = await self.writable_path(bucket, key)
        self._forget(bucket, key)
        mode = mode_of(metadata)
        kind = stat.S_IFMT(mode) if mode is not None else 0
        if key.endswith("/"):
            await self.mkdir(bucket, path)
        elif kind == stat.S_IFLNK:
            target = await trio.to_thread.run_sync(lambda: data.read(size))
            return await self._symlink(bucket, key, target.decode("utf-8", "surrogateescape"))
        elif kind not in (0, stat.S_IFREG):
            raise NotSupported(f"FirecREST stores no special files ({bucket}:{path})")
        elif size <= self.direct_limit and not UNSAFE_IN_FORM & set(posixpath.basename(path)):
            try:
                await self._upload_direct(bucket, path, data, size)
            except TooLarge:
                self.direct_limit = min(self.direct_limit, size - 1)
                await self._upload_staged(bucket, path, data, size)
        else:
            await self._upload_staged(bucket, path, data, size)
        return await self._chmod_to(bucket, key, mode)

    async def mkdir(self, system: str, path: str) -> None:
        await self.api.call("POST", f"/filesystem/{system}/ops/mkdir", f"mkdir {system}:{path}",
                            body={"sourcePath": path, "parent": True})

    async def _upload_direct(self, bucket: str, path: str, data: BinaryIO, size: int) -> None:
        def read() -> bytes:
            data.seek(0)
            return data.read(size)

        body = await trio.to_thread.run_sync(read)
        parent, name = posixpath.split(path)
        for first in (True, False):
            try:
                await self.api.call("POST", f"/filesystem/{bucket}/ops/upload",
                                    f"upload {bucket}:{path}", {"path": parent},
                                    form={"file": (name, body, "application/octet-stream")})
                return
            except NoSuchObject:  # into a directory not made yet: S3 keys need none
                if not first:
                    raise
                await self.mkdir(bucket, parent)

    async def _upload_staged(self, bucket: str, path: str, data: BinaryIO, size: int) -> None:
        await self.mkdir(bucket, posixpath.dirname(path))
        what = f"staged upload {bucket}:{path}"
        answer = await self.api.call("POST", f"/filesystem/{bucket}/transfer/upload", what,
                                     body={"sourcePath": path, "transferDirectives": {
                                         "transferMethod": "s3", "fileSize": size}})
        await self.api.upload_parts(answer["transferDirectives"], data, size, what)
        await self.api.follow(bucket, answer["transferJob"], what)

    async def _symlink(self, bucket: str, key: str, target: str) -> ObjectInfo:
        path = path_of(key)
        try:
            current: ObjectInfo | None = await self.stat_object(bucket, key)
        except NoSuchObject:
            current = None
        if current is not None:
            if self._links.get((bucket, key)) == target:
                return current  # an earlier try made it
            await self._rm(bucket, path)  # replaced whole, as any object is
        check_name(target)
        if not target.startswith("/") or await self.where(bucket, target) != "inside":
            # The service takes only absolute targets inside the file systems: a link to
            # another target than the program's would read differently.
            raise NotSupported(f"FirecREST makes symlinks to absolute paths of its file "
                               f"systems only, not to {target!r} ({bucket}:{path})")
        await self.api.call("POST", f"/filesystem/{bucket}/ops/symlink",
                            f"symlink {bucket}:{path}",
                            body={"sourcePath": target, "linkPath": path})
        return await self.stat_object(bucket, key)

    async def _chmod_to(self, bucket: str, key: str, mode: int | None) -> ObjectInfo:
        """The object's info after giving it the permission bits of `mode` (if given)."""
        info = await self.stat_object(bucket, key)
        have = mode_of(info.metadata) or 0
        if mode is None or stat.S_IMODE(mode) == stat.S_IMODE(have) or stat.S_ISLNK(have):
            return info
        path = path_of(key)
        await self.api.call("PUT", f"/filesystem/{bucket}/ops/chmod", f"chmod {bucket}:{path}",
                            body={"sourcePath": path, "mode": f"{stat.S_IMODE(mode):o}"})
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
        self._forget(dst_bucket, dst_key)
        mode = mode_of(source.metadata)
        if key.endswith("/"):
            await self.mkdir(bucket, dst)
            return await self._chmod_to(bucket, dst_key, mode)
        await self.mkdir(bucket, posixpath.dirname(dst))
        what = f"cp {bucket}:{path_of(key)} {dst}"
        answer = await self.api.call("POST", f"/filesystem/{bucket}/transfer/cp", what,
                                     body={"sourcePath": path_of(key), "targetPath": dst})
        await self.api.follow(bucket, answer["transferJob"], what)
        return await self.stat_object(dst_bucket, dst_key)

    async def rename_object(self, bucket: str, key: str, dst_key: str) -> ObjectInfo:
        """`transfer/mv`, a job. `mv` moves a file or a tree INTO a directory found at the
        target, so an empty one there (the namespace checked it is empty) is removed first."""
        check_name(key)
        src, dst = path_of(key), await self.writable_path(bucket, dst_key)
        await self.writable_path(bucket, key)
        self._forget(bucket, key)
        self._forget(bucket, dst_key)
        if key.endswith("/"):
            with contextlib.suppress(NoSuchObject):
                if stat.S_ISDIR(int((await self.stat_path(bucket, dst))["mode"])):
                    await self.delete_object(bucket, dst_key)
        what = f"mv {bucket}:{src} {dst}"
        answer = await self.api.call("POST", f"/filesystem/{bucket}/transfer/mv", what,
                                     body={"sourcePath": src, "targetPath": dst})
        await self.api.follow(bucket, answer["transferJob"], what)
        return await self.stat_object(bucket, dst_key)

    async def delete_object(self, bucket: str, key: str) -> None:
        """`ops/rm` is `rm -r`: a file's key removes a file or link only, a marker's an empty
        directory only (a directory with entries stays, as a prefix stays in S3 when its
        marker goes). Between the look and the rm another client could add an entry."""
        path = await self.writable_path(bucket, key)
        self._forget(bucket, key)
        try:
            entries = await self.ls(bucket, path)
        except NoSuchObject:
            return
        is_file = len(entries) == 1 and unescape(str(entries[0].get("name", ""))) == path
        if key.endswith("/") and not entries or not key.endswith("/") and is_file:
            try:
                await self._rm(bucket, path)
            except NoSuchObject:
                pass

    async def _rm(self, bucket: str, path: str) -> None:
        await self.api.call("DELETE", f"/filesystem/{bucket}/ops/rm", f"rm {bucket}:{path}",
                            {"path": path})

    async def aclose(self) -> None:
        self.http.close()


class FirecrestSource(Source):
    """A mount of one system (or of a path in it): the system must exist and the path be a
    directory of its file systems, or the mount does not start."""

    async def check(self) -> None:
        backend = self.backend
        assert isinstance(backend, FirecrestBackend)
        await backend.check()
        system = self.scope.bucket
        if system is None:
            return
        known = await backend.systems()
        if system not in known:
            raise ConfigError(f"{backend.describe()}: no system {system!r} (systems: "
                              f"{', '.join(sorted(known)) or 'none'})")
        if not self.scope.prefix:
            return
        path = path_of(self.scope.prefix)
        place = await backend.where(system, path)
        if place == "outside":
            raise ConfigError(f"{system}:{path} is outside the file systems of {system} "
                              f"({', '.join(known[system])})")
        if place == "inside":
            try:
                if not stat.S_ISDIR(int((await backend.stat_path(system, path))["mode"])):
                    raise ConfigError(f"{system}:{path} is not a directory")
            except BackendError as exc:
                raise ConfigError(f"{system}:{path}: {exc}") from None


def canonical(rest: str) -> str:
    return "//" + rest.strip("/")


async def _open(context: DriverContext) -> Source:
    """`firecrest://` (the systems), `firecrest://SYSTEM` (its file systems) or
    `firecrest://SYSTEM/PATH`, with the credentials found now: a missing one is one line."""
    if not context.rest.startswith("//"):
        raise ConfigError(f"{context.source}: a FirecREST source is "
                          "firecrest://[SYSTEM[/ABSOLUTE/PATH]]")
    scope = Scope.parse(context.rest[2:], context.source)
    url = context["url"]
    if not url:
        raise ConfigError("FirecREST needs the service's URL: --firecrest-url URL or "
                          "FIRECREST_URL")
    http = HttpPool(THREADS)
    return FirecrestSource(FirecrestBackend(url, http, credentials(context, http),
                                            context["api_version"]), scope)


def credentials(context: DriverContext, http: HttpPool) -> TokenSource:
    """A plain token if one is given, else the client credentials (all three needed)."""
    token = context.secret("token_file")
    if token:
        return StaticToken(token)
    secret = context.secret("client_secret_file")
    missing = [what for what, value in (("a client id (FIRECREST_CLIENT_ID)", context["client_id"]),
                                        ("a client secret (FIRECREST_CLIENT_SECRET)", secret),
                                        ("a token URL (AUTH_TOKEN_URL)", context["token_url"]))
               if not value]
    if missing or secret is None:
        http.close()
        raise ConfigError("FirecREST needs a token (FIRECREST_TOKEN or --firecrest-token-file) "
                          "or client credentials: " + ", ".join(missing) + " missing")
    return ClientCredentials(http, context["token_url"], context["client_id"], secret)


def api_version(text: str) -> str:
    if text not in ("v1", "v2", "auto"):
        raise ValueError(f"the API version is v1, v2 or auto, not {text!r}")
    return text


DRIVER = Driver(
    name="firecrest", schemes=("firecrest",), open=_open, canonical=canonical,
    summary="FirecREST (HPC file systems): firecrest:// (the systems), firecrest://SYSTEM or "
            "firecrest://SYSTEM/ABSOLUTE/PATH; FIRECREST_URL, and FIRECREST_CLIENT_ID, "
            "FIRECREST_CLIENT_SECRET, AUTH_TOKEN_URL or FIRECREST_TOKEN",
    options=(
        Option("url", "the FirecREST service", env=("FIRECREST_URL",), metavar="URL",
               identity=True),
        Option("token_url", "the OAuth2 token endpoint of the client credentials",
               env=("AUTH_TOKEN_URL",), metavar="URL"),
        Option("client_id", "the OAuth2 client id", env=("FIRECREST_CLIENT_ID",), metavar="ID"),
        Option("client_secret_file", "the file holding the OAuth2 client secret",
               secret=True, env=("FIRECREST_CLIENT_SECRET",), parse=Path, metavar="FILE"),
        Option("token_file", "the file holding an access token (instead of client "
               "credentials; never renewed)", secret=True, env=("FIRECREST_TOKEN",),
               parse=Path, metavar="FILE"),
        Option("api_version", "v2, v1 or auto (v2 answers with an f7t-appversion header)",
               parse=api_version, default="auto", metavar="VERSION"),
    ))
