"""The DCSS driver: Duckietown Cloud Storage, S3 buckets behind a token-checking authorize service.

Owns the DCSS protocol as the official `dt-data-api` client speaks it: the spaces `public`,
`private` and `user` shown as the mount's buckets, each stored in the S3 bucket
`duckietown-<space>-storage` (`user` keys under `<uid>/`); one authorize request
(`GET {api}/api/v1/dcss/authorize/{action}/{bucket}/{key}`, `Authorization: Token …`) for each S3
request, answered by a presigned URL; anonymous S3 reads of `public`; listings paged past 1,000
keys; and files over the part size stored as `KEY.000`, `KEY.001`, … (each with
x-amz-meta-number-of-parts), shown and read as the one file `KEY`. Requests are blocking
(urllib3) and run in trio worker threads.
"""
from __future__ import annotations

import datetime
import email.utils
import logging
import os
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

import trio
import urllib3

from mountfs.backends import Scope, Source
from mountfs.backends.base import Backend, Features, ObjectInfo
from mountfs.backends.dcss_token import TOKEN_ENV, Token, load_public_key, parse_token
from mountfs.backends.dcss_wire import (META_OWNER, META_PARTS, ListedObject, ListingPage,
                                        PartFolder, PartRun, api_error, combined_etag,
                                        envelope_url, parse_listing, part_key, s3_error)
from mountfs.backends.registry import Driver, DriverContext, Option
from mountfs.backends.s3 import CONNECT_TIMEOUT_ENV, READ_TIMEOUT_ENV, env_seconds
from mountfs.errors import (BackendError, ConfigError, NoSuchBucket, NoSuchObject,
                            NotSupported, PermissionDenied, ReadOnly, TemporaryFailure)
from mountfs.sizes import parse_size

log = logging.getLogger(__name__)

T = TypeVar("T")
SPACES = ("private", "public", "user")
DEFAULT_API_URL = "https://hub.duckietown.com"
DEFAULT_S3_ENDPOINT = "https://s3.amazonaws.com"
DEFAULT_PART_SIZE = 5 * 1024**3  # the official client's MAXIMUM_ALLOWED_SIZE
# As the official client: a prefix before every bucket name, for staging deployments.
BUCKET_PREFIX_ENV = "DT_BUCKET_PREFIX"
AUTHORIZE_PATH = "/api/v1/dcss/authorize/{action}/{bucket}/{key}"
# A presigned read URL is used again for this long (capped by half its validity): reading a
# file block by block would otherwise ask the service once per block.
URL_REUSE = 300.0
URL_CACHE_MAX = 10_000
THREADS = 16
GET_TRIES = 3  # a GET whose body broke off is asked again, as the S3 driver does
STREAM_CHUNK = 1024 * 1024
AMZ_META = "x-amz-meta-"


class Readable(Protocol):
    """What `_write` reads a file from: a cache reader, or a stream of another object."""

    def seek(self, pos: int) -> Any: ...

    def read(self, n: int = -1) -> bytes: ...


class DcssBackend(Backend):
    def __init__(self, token: Token | None, api_url: str = DEFAULT_API_URL,
                 s3_endpoint: str = DEFAULT_S3_ENDPOINT, part_size: int = DEFAULT_PART_SIZE,
                 bucket_prefix: str = "") -> None:
        self.token = token
        self.features = Features(
            buckets_editable=False, writable=token is not None,
            why_read_only=f"anonymous: writes need a Duckietown token (--token-file FILE, or "
                          f"{' or '.join(TOKEN_ENV)} in the environment)")
        self.api_url = api_url.rstrip("/")
        self.s3_endpoint = s3_endpoint.rstrip("/")
        self.part_size = part_size
        self.bucket_prefix = bucket_prefix
        self.spaces = SPACES if token is not None else ("public",)
        timeout = urllib3.Timeout(connect=env_seconds(CONNECT_TIMEOUT_ENV, 10),
                                  read=env_seconds(READ_TIMEOUT_ENV, 60))
        self.http = urllib3.PoolManager(maxsize=THREADS, timeout=timeout, retries=False,
                                        blocksize=STREAM_CHUNK)
        self._limiter = trio.CapacityLimiter(THREADS)
        self._read_urls: dict[tuple[str, str, str], tuple[str, float]] = {}
        # Part sizes of files stored as KEY.000, KEY.001, …, learnt from listings and stats.
        self._layouts: dict[tuple[str, str], list[int]] = {}

    def describe(self) -> str:
        host = urllib.parse.urlsplit(self.api_url).netloc
        who = f"uid {self.token.uid}" if self.token else "anonymous"
        return f"dcss:{host} ({who})"

    # ---- plumbing --------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _bucket(self, space: str) -> str:
        if space not in self.spaces:
            raise NoSuchBucket(space)
        return f"{self.bucket_prefix}duckietown-{space}-storage"

    def _s3_key(self, space: str, key: str) -> str:
        """The key in S3: the official client keeps every key of `user` under `<uid>/`."""
        return f"{self.token.uid}/{key}" if space == "user" and self.token else key

    def _mount_key(self, space: str, s3_key: str) -> str:
        return s3_key[len(self._s3_key(space, "")):]

    def _request(self, method: str, url: str, headers: dict[str, str] | None = None,
                 body: Any = None, stream: bool = False) -> urllib3.BaseHTTPResponse:
        try:
            return self.http.request(method, url, headers=headers, body=body,
                                     preload_content=not stream, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            host = urllib.parse.urlsplit(url).netloc
            raise TemporaryFailure(f"{method} {host}: {exc}") from exc

    def _authorize(self, action: str, space: str, key: str, query: dict[str, str] | None = None,
                   headers: dict[str, str] | None = None) -> str:
        """A presigned URL for `action` on `key`, from the authorize service."""
        if self.token is None:
            raise ReadOnly(f"DCSS {action} on {space!r} needs a token (--token-file or "
                           "DT_TOKEN)")
        path = AUTHORIZE_PATH.format(action=action, bucket=self._bucket(space),
                                     key=urllib.parse.quote(self._s3_key(space, key), safe="/"))
        url = self.api_url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        reply = self._request("GET", url, {"Authorization": f"Token {self.token.text}",
                                           **(headers or {})})
        presigned = envelope_url(reply.data) if reply.status == 200 else None
        if presigned is None:
            error = api_error(reply.status, reply.data, f"{action} {space}/{key}")
            log.warning("%s", error)
            raise error
        return presigned

    def _public_url(self, space: str, key: str, query: dict[str, str] | None = None) -> str:
        """The anonymous URL of `key` in the public bucket: virtual-hosted on AWS (as the
        official client), path-style on any other endpoint."""
        parts = urllib.parse.urlsplit(self.s3_endpoint)
        bucket, path = self._bucket(space), "/" + urllib.parse.quote(key, safe="/")
        if parts.hostname and parts.hostname.endswith("amazonaws.com"):
            netloc = f"{bucket}.{parts.netloc}"
        else:
            netloc, path = parts.netloc, f"{parts.path}/{bucket}{path}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, path,
                                        urllib.parse.urlencode(query or {}), ""))

    def _read_url(self, action: str, space: str, key: str) -> str:
        """A URL to HEAD or GET `key`: anonymous on `public`, else presigned (and reused)."""
        if space == "public":
            return self._public_url(space, key)
        cached = self._read_urls.get((action, space, key))
        now = time.monotonic()
        if cached and cached[1] > now:
            return cached[0]
        url = self._authorize(action, space, key)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        valid = float(query.get("X-Amz-Expires", ["0"])[0] or 0)
        if valid > 0:
            if len(self._read_urls) >= URL_CACHE_MAX:
                self._read_urls.clear()
            self._read_urls[(action, space, key)] = (url, now + min(URL_REUSE, valid / 2))
        return url

    def _forget_read_urls(self, space: str, key: str) -> None:
        """After a write or delete, which may leave no object KEY (gone, or parts now): its
        reused read URLs are dropped with it."""
        for action in ("head_object", "get_object"):
            self._read_urls.pop((action, space, key), None)

    def _s3(self, method: str, url: str, what: str, headers: dict[str, str] | None = None,
            body: Any = None, stream: bool = False) -> urllib3.BaseHTTPResponse:
        reply = self._request(method, url, headers, body, stream)
        if reply.status >= 300 and not (method == "GET" and reply.status == 416):
            data = reply.read() if stream else reply.data
            reply.release_conn()
            raise s3_error(reply.status, data, what)
        return reply

    def _read_request(self, action: str, space: str, key: str,
                      headers: dict[str, str] | None = None,
                      stream: bool = False) -> urllib3.BaseHTTPResponse:
        method = "HEAD" if action == "head_object" else "GET"
        url = self._read_url(action, space, key)
        try:
            return self._s3(method, url, f"{method} {space}/{key}", headers, stream=stream)
        except PermissionDenied:
            if self._read_urls.pop((action, space, key), None) is None:
                raise
            # A reused URL may have expired early (the service's clock, a revoked grant).
            return self._s3(method, self._read_url(action, space, key), f"{method} {space}/{key}",
                            headers, stream=stream)

    # ---- spaces ----------------------------------------------------------------------------

    async def check(self) -> None:
        await self._run(self._check)

    def _check(self) -> None:
        try:
            if self.token is not None:
                self._authorize("list_objects_v2", "user", "", {"max-keys": "1"})
            self._s3("GET", self._public_url("public", "", {"list-type": "2", "max-keys": "1"}),
                     "list public")
        except PermissionDenied as exc:
            raise ConfigError(f"{self.describe()}: refused: {exc}") from None
        except NoSuchObject as exc:
            raise ConfigError(f"{self.api_url} is not a DCSS authorize service ({exc})") from None
        except BackendError as exc:
            raise ConfigError(f"{self.describe()}: {exc}") from None

    async def list_buckets(self) -> list[str]:
        return list(self.spaces)

    async def create_bucket(self, bucket: str) -> None:
        raise NotSupported(f"DCSS has the spaces {', '.join(SPACES)}; no others can be made")

    async def delete_bucket(self, bucket: str) -> None:
        raise NotSupported("DCSS spaces cannot be removed")

    # ---- listing ---------------------------------------------------------------------------

    async def list_objects(self, bucket: str, prefix: str, delimiter: str | None = "/",
                           page_size: int = 1000) -> AsyncIterator[list[ObjectInfo]]:
        space = bucket
        s3_prefix = self._s3_key(space, prefix)
        folder = PartFolder()
        seen_prefixes: set[str] = set()
        token: str | None = None
        after: str | None = None  # the last key of the page before
        while True:
            page = await self._run(self._list_page, space, s3_prefix, delimiter, page_size,
                                   token)
            self._check_progress(space, s3_prefix, page, after)
            after = page.last()
            settled: list[ListedObject | PartRun] = []
            for obj in page.objects:
                rest = obj.key[len(s3_prefix):]
                if delimiter and not page.delimited and delimiter in rest:
                    # The service did not apply the delimiter: derive the directory here.
                    page.prefixes.append(s3_prefix + rest[:rest.index(delimiter) + 1])
                else:
                    settled += folder.feed(obj)
            token = page.next_token if page.truncated else None
            if token is None:
                settled += folder.finish()
            out = [info for item in settled for info in await self._settle(space, item)]
            for s3_dir in page.prefixes:
                if s3_dir not in seen_prefixes:
                    seen_prefixes.add(s3_dir)
                    out.append(ObjectInfo(space, self._mount_key(space, s3_dir), is_prefix=True))
            yield sorted(out, key=lambda info: info.key)
            if token is None:
                return

    @staticmethod
    def _check_progress(space: str, s3_prefix: str, page: ListingPage,
                        after: str | None) -> None:
        """Refuse a page that does not go on from the one before: a service that does not
        sign the continuation answers the first page again, for ever; one that gives no
        continuation would end the listing short without a word."""
        first = page.first()
        if page.truncated and not page.next_token \
                or after is not None and first is not None and first <= after:
            error = BackendError(f"DCSS listing of {space}/{s3_prefix} cannot go on past "
                                 "its first page: the service does not continue listings")
            log.error("%s", error)
            raise error

    def _list_page(self, space: str, s3_prefix: str, delimiter: str | None, page_size: int,
                   token: str | None) -> ListingPage:
        query = {"max-keys": str(page_size)}
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        if space == "public":
            url = self._public_url(space, "", {"list-type": "2", "prefix": s3_prefix, **query})
        else:
            url = self._authorize("list_objects_v2", space, self._mount_key(space, s3_prefix),
                                  query)
        return parse_listing(self._s3("GET", url, f"list {space}/{s3_prefix}").data)

    def _listed(self, space: str, obj: ListedObject) -> ObjectInfo:
        return ObjectInfo(space, self._mount_key(space, obj.key), obj.size,
                          iso_ns(obj.last_modified), obj.etag)

    async def _settle(self, space: str, item: ListedObject | PartRun) -> list[ObjectInfo]:
        """A listed object as it is; a run of parts as its one file, if the first part says
        it is a file of that many parts and no object of the base name hides it (the official
        client reads that first); else the parts as they are."""
        if isinstance(item, ListedObject):
            return [self._listed(space, item)]
        if not item.base_listed and len(item.parts) >= 2:
            key = self._mount_key(space, item.base)
            try:
                first = await self._run(self._head, space, part_key(key, 0))
            except NoSuchObject:
                first = {}
            if first.get(AMZ_META + META_PARTS) == str(len(item.parts)):
                sizes = [p.size for p in item.parts]
                self._layouts[(space, key)] = sizes
                return [ObjectInfo(space, key, sum(sizes),
                                   max(iso_ns(p.last_modified) for p in item.parts),
                                   combined_etag([p.etag for p in item.parts]))]
        return [self._listed(space, p) for p in item.parts]

    # ---- stat and read ---------------------------------------------------------------------

    def _head(self, space: str, key: str) -> dict[str, str]:
        """The object's reply headers, names lower-cased (metadata as x-amz-meta-NAME)."""
        reply = self._read_request("head_object", space, key)
        return {name.lower(): value for name, value in reply.headers.items()}

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        return await self._run(self._stat, bucket, key)

    def _stat(self, space: str, key: str) -> ObjectInfo:
        try:
            headers = self._head(space, key)
            self._layouts.pop((space, key), None)
            return self._info(space, key, [headers])
        except NoSuchObject:
            first = self._head(space, part_key(key, 0))  # NoSuchObject: there is neither
        count = int(first.get(AMZ_META + META_PARTS, "1"))
        parts = [first] + [self._head(space, part_key(key, i)) for i in range(1, count)]
        self._layouts[(space, key)] = [int(p.get("content-length", 0)) for p in parts]
        return self._info(space, key, parts)

    def _info(self, space: str, key: str, parts: list[dict[str, str]]) -> ObjectInfo:
        first = parts[0]
        metadata = {name[len(AMZ_META):]: value for name, value in first.items()
                    if name.startswith(AMZ_META)
                    and name[len(AMZ_META):] not in (META_PARTS, META_OWNER)}
        stamps = [email.utils.parsedate_to_datetime(p["last-modified"]) for p in parts
                  if p.get("last-modified")]
        etags = [p.get("etag", "").strip('"') for p in parts]
        return ObjectInfo(space, key, sum(int(p.get("content-length", 0)) for p in parts),
                          int(max(stamps).timestamp() * 1e9) if stamps else 0,
                          etags[0] if len(etags) == 1 else combined_etag(etags), metadata)

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        return await self._run(self._read, bucket, key, offset, length)

    def _read(self, space: str, key: str, offset: int, length: int) -> bytes:
        sizes = self._layouts.get((space, key))
        try:
            if sizes is None:
                return self._read_range(space, key, offset, length)
            return self._read_parts(space, key, sizes, offset, length)
        except NoSuchObject:
            # Never read, or split or joined since we looked: look again (NoSuchObject if
            # there is neither KEY nor KEY.000), then read what is there now.
            self._stat(space, key)
            sizes = self._layouts.get((space, key))
            if sizes is None:
                return self._read_range(space, key, offset, length)
            return self._read_parts(space, key, sizes, offset, length)

    def _read_parts(self, space: str, key: str, sizes: list[int], offset: int,
                    length: int) -> bytes:
        chunks, start = [], 0
        for index, size in enumerate(sizes):
            lo, hi = max(offset, start), min(offset + length, start + size)
            if lo < hi:
                chunks.append(self._read_range(space, part_key(key, index), lo - start, hi - lo))
            start += size
        return b"".join(chunks)

    def _read_range(self, space: str, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        for tries_left in reversed(range(GET_TRIES)):
            reply = self._read_request("get_object", space, key, headers, stream=True)
            try:
                if reply.status == 416:  # the range starts at or past the end
                    reply.read()  # its error document: left unread, it would poison the
                    return b""  # pooled connection for the next request (BadStatusLine)
                return reply.read()
            except urllib3.exceptions.HTTPError as exc:
                if not tries_left:
                    raise TemporaryFailure(f"GET {space}/{key}: {exc}") from exc
                log.info("GET %s/%s broke off (%s); trying again", space, key, exc)
            finally:
                reply.release_conn()
        raise AssertionError("unreachable")

    # ---- writes ----------------------------------------------------------------------------

    async def write_object(self, bucket: str, key: str, data: BinaryIO, size: int,
                           metadata: dict[str, str]) -> ObjectInfo:
        return await self._run(self._write, bucket, key, data, 0, size, metadata)

    def _write(self, space: str, key: str, data: Readable, offset: int, size: int,
               metadata: dict[str, str]) -> ObjectInfo:
        """Store `size` bytes of `data` from `offset` as `key`: one object, or (over the part
        size) the objects KEY.000, KEY.001, …. Readers find the old version until the new one
        is whole: the official client looks for KEY first, so parts are written before KEY
        is removed, and KEY before old parts are."""
        count = max(1, -(-size // self.part_size))
        lengths = [min(self.part_size, size - i * self.part_size) for i in range(count)]
        old = self._layouts.get((space, key))
        names = [key] if count == 1 else [part_key(key, i) for i in range(count)]
        etags = []
        for index, (name, length) in enumerate(zip(names, lengths)):
            data.seek(offset + index * self.part_size)
            etags.append(self._put(space, name, Slice(data, length), length, count, metadata))
        if count == 1:
            self._layouts.pop((space, key), None)
        else:
            self._layouts[(space, key)] = lengths
            self._delete(space, key)
        for index in range(count if count > 1 else 0, len(old or [])):
            self._delete(space, part_key(key, index))
        self._forget_read_urls(space, key)
        return ObjectInfo(space, key, size, time.time_ns(),
                          etags[0] if count == 1 else combined_etag(etags), dict(metadata))

    def _put(self, space: str, key: str, body: Any, length: int, count: int,
             metadata: dict[str, str]) -> str:
        """PUT one object with the metadata the official client sends; its ETag."""
        assert self.token is not None
        meta = {AMZ_META + name: value for name, value in metadata.items()}
        meta[AMZ_META + META_PARTS] = str(count)
        meta[AMZ_META + META_OWNER] = str(self.token.uid)
        url = self._authorize("put_object", space, key, headers=meta)
        reply = self._s3("PUT", url, f"PUT {space}/{key}",
                         {"Content-Length": str(length), **meta}, body)
        return str(reply.headers.get("ETag", "")).strip('"')

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        return await self._run(self._rewrite, bucket, key, bucket, key, metadata)

    async def copy_object(self, bucket: str, key: str, dst_bucket: str,
                          dst_key: str) -> ObjectInfo:
        return await self._run(self._rewrite, bucket, key, dst_bucket, dst_key, None)

    def _rewrite(self, space: str, key: str, dst_space: str, dst_key: str,
                 metadata: dict[str, str] | None) -> ObjectInfo:
        """Stream `key` into `dst_key` (DCSS has no server-side copy), with `metadata` or the
        source's own."""
        src = self._stat(space, key)
        sizes = self._layouts.get((space, key))
        names = [part_key(key, i) for i in range(len(sizes))] if sizes else [key]
        stream = ObjectStream(lambda i: self._read_request("get_object", space, names[i],
                                                           stream=True), len(names))
        try:
            return self._write(dst_space, dst_key, stream, 0, src.size,
                               src.metadata or {} if metadata is None else metadata)
        finally:
            stream.close()

    async def delete_object(self, bucket: str, key: str) -> None:
        await self._run(self._delete_file, bucket, key)

    def _delete_file(self, space: str, key: str) -> None:
        sizes = self._layouts.pop((space, key), None)
        for index in range(len(sizes or [])):
            self._delete(space, part_key(key, index))
        self._delete(space, key)
        self._forget_read_urls(space, key)

    def _delete(self, space: str, key: str) -> None:
        self._s3("DELETE", self._authorize("delete_object", space, key),
                 f"DELETE {space}/{key}")

    async def aclose(self) -> None:
        self.http.clear()


class Slice:
    """`length` bytes of a file from its current position, as a body urllib3 streams."""

    def __init__(self, data: Readable, length: int) -> None:
        self.data, self.left = data, length

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        chunk = self.data.read(n) if n else b""
        if len(chunk) != n:
            raise BackendError(f"short read: {len(chunk)} of {n} bytes")
        self.left -= n
        return chunk


class ObjectStream:
    """The bytes of objects 0..count-1, one streamed GET after another, as one file."""

    def __init__(self, open_part: Callable[[int], urllib3.BaseHTTPResponse], count: int) -> None:
        self.open_part, self.count = open_part, count
        self.index, self.reply = 0, open_part(0)

    def seek(self, pos: int) -> None:
        pass  # read front to back only: `_write` seeks to where the stream already is

    def read(self, n: int = -1) -> bytes:
        chunks, want = [], n
        while want != 0 and self.reply is not None:
            chunk = self.reply.read(STREAM_CHUNK if want < 0 else want)
            if chunk:
                chunks.append(chunk)
                want = want - len(chunk) if want > 0 else want
                continue
            self.reply.release_conn()
            self.index += 1
            self.reply = self.open_part(self.index) if self.index < self.count else None
        return b"".join(chunks)

    def close(self) -> None:
        if self.reply is not None:
            self.reply.release_conn()


def iso_ns(text: str) -> int:
    """Nanoseconds since the epoch of an S3 listing's LastModified (ISO 8601, UTC)."""
    if not text:
        return 0
    stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(stamp.timestamp() * 1e9)


async def _open(context: DriverContext) -> Source:
    """`dcss:` (every space the token opens) or `dcss:SPACE[/PREFIX]`, with the token found
    and checked now, so that a wrong one is one line at mount."""
    scope = Scope.parse(context.rest, context.source)
    if scope.bucket is not None and scope.bucket not in SPACES:
        raise ConfigError(f"{context.source}: DCSS has the spaces {', '.join(SPACES)}, "
                          f"not {scope.bucket!r}")
    text = context.secret("token_file")
    token = parse_token(text, load_public_key(context["token_public_key"])) if text else None
    if token is None and scope.bucket not in (None, "public"):
        raise ConfigError(f"{context.source}: the {scope.bucket} space needs a Duckietown token "
                          f"(--token-file FILE, or {' or '.join(TOKEN_ENV)} in the environment)")
    if context["part_size"] < 1:
        raise ConfigError("--part-size must be at least 1 byte")
    backend = DcssBackend(token, context["api_url"], context["s3_endpoint"],
                          context["part_size"], os.environ.get(BUCKET_PREFIX_ENV, ""))
    return Source(backend, scope)


DRIVER = Driver(
    name="dcss", schemes=("dcss",), open=_open,
    summary="Duckietown Cloud Storage: dcss: (every space) or dcss:SPACE[/PREFIX]; without a "
            "token, public is mounted read-only",
    options=(
        Option("token_file", "the file holding your Duckietown token", secret=True,
               env=TOKEN_ENV, parse=Path, metavar="FILE", aliases=("--token-file",)),
        Option("token_public_key", "verify tokens with this ECDSA public key (default: "
               "Duckietown's)", parse=Path, metavar="PEM", aliases=("--token-public-key",)),
        Option("api_url", "the authorize service", default=DEFAULT_API_URL, metavar="URL",
               aliases=("--api-url",), identity=True),
        Option("s3_endpoint", "where the public space is read anonymously",
               default=DEFAULT_S3_ENDPOINT, metavar="URL", aliases=("--s3-endpoint",)),
        Option("part_size", "files over SIZE are stored as KEY.000, KEY.001, ... (default 5G)",
               parse=parse_size, default=DEFAULT_PART_SIZE, metavar="SIZE",
               aliases=("--part-size",)),
    ))
