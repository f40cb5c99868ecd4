"""The DCSS driver's store (its declaration is dcss.py): Duckietown Cloud Storage, S3 buckets
behind a token-checking authorize service.

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

import contextlib
import datetime
import email.utils
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import urllib3

from cache.storage import Readable
from mountfs.backends.base import (HEADERS, Backend, Features, ObjectInfo, Sink,
                                   split_headers)
from mountfs.backends.body_reads import stream_into
from mountfs.backends.dcss import DEFAULT_API_URL, DEFAULT_PART_SIZE, DEFAULT_S3_ENDPOINT
from mountfs.backends.dcss_requests import (SPACES, STREAM_CHUNK, BodyStream, DcssRequests,
                                            RangeOpener)
from mountfs.backends.dcss_token import TOKEN_ENV, Token
from mountfs.backends.dcss_wire import (META_OWNER, META_PARTS, ListedObject, ListingPage,
                                        PartFolder, PartRun, combined_etag, parse_listing,
                                        part_key)
from mountfs.backends.s3_limits import MAX_KEY as S3_MAX_KEY
from mountfs.backends.http import give_back
from mountfs.errors import (BackendError, ConfigError, NoSuchObject, NotSupported,
                            PermissionDenied, TemporaryFailure)

log = logging.getLogger("mountfs.backends.dcss")  # the driver's voice (its name in log lines)

T = TypeVar("T")

AMZ_META = "x-amz-meta-"


class DcssBackend(Backend):
    def __init__(self, token: Token | None, api_url: str = DEFAULT_API_URL,
                 s3_endpoint: str = DEFAULT_S3_ENDPOINT, part_size: int = DEFAULT_PART_SIZE,
                 bucket_prefix: str = "") -> None:
        self.token = token
        self.features = Features(
            buckets_editable=False, writable=token is not None, server_side_copy=False,
            # S3's limit, less the `<uid>/` before every key of the user space
            max_key_length=S3_MAX_KEY - len(f"{token.uid}/" if token else ""),
            why_read_only=f"anonymous: writes need a Duckietown token (--token-file FILE, or "
                          f"{' or '.join(TOKEN_ENV)} in the environment)")
        self.api_url = api_url.rstrip("/")
        self.part_size = part_size
        self.requests = DcssRequests(token, self.api_url, s3_endpoint, bucket_prefix,
                                     self.retried)
        # Part sizes of files stored as KEY.000, KEY.001, …, learnt from listings and stats.
        self._layouts: dict[tuple[str, str], list[int]] = {}

    def describe(self) -> str:
        host = urllib.parse.urlsplit(self.api_url).netloc
        who = f"uid {self.token.uid}" if self.token else "anonymous"
        return f"dcss:{host} ({who})"

    # ---- spaces ----------------------------------------------------------------------------

    async def check(self) -> None:
        try:
            if self.token is not None:
                await self.requests.authorize("list_objects_v2", "user", "", {"max-keys": "1"})
            await self.requests.s3("GET", self.requests.public_url(
                "public", "", {"list-type": "2", "max-keys": "1"}), "list public")
        except PermissionDenied as exc:
            raise ConfigError(f"{self.describe()}: refused: {exc}") from None
        except NoSuchObject as exc:
            raise ConfigError(f"{self.api_url} is not a DCSS authorize service ({exc})") from None
        except BackendError as exc:
            raise ConfigError(f"{self.describe()}: {exc}") from None

    async def list_buckets(self) -> list[str]:
        return list(self.requests.spaces)

    async def create_bucket(self, bucket: str) -> None:
        raise NotSupported(f"DCSS has the spaces {', '.join(SPACES)}; no others can be made")

    async def delete_bucket(self, bucket: str) -> None:
        raise NotSupported("DCSS spaces cannot be removed")

    # ---- listing ---------------------------------------------------------------------------

    async def list_objects(self, bucket: str, prefix: str, delimiter: str | None = "/",
                           page_size: int = 1000) -> AsyncIterator[list[ObjectInfo]]:
        space = bucket
        s3_prefix = self.requests.s3_key(space, prefix)
        folder = PartFolder()
        seen_prefixes: set[str] = set()
        token: str | None = None
        after: str | None = None  # the last key of the page before
        while True:
            page = await self._list_page(space, s3_prefix, delimiter, page_size, token)
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
                    out.append(ObjectInfo(space, self.requests.mount_key(space, s3_dir),
                                          is_prefix=True))
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

    async def _list_page(self, space: str, s3_prefix: str, delimiter: str | None,
                         page_size: int, token: str | None) -> ListingPage:
        query = {"max-keys": str(page_size)}
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        if space == "public":
            url = self.requests.public_url(space, "", {"list-type": "2", "prefix": s3_prefix,
                                                       **query})
        else:
            url = await self.requests.authorize("list_objects_v2", space,
                                                self.requests.mount_key(space, s3_prefix), query)
        reply = await self.requests.s3("GET", url, f"list {space}/{s3_prefix}")
        return parse_listing(reply.data)

    def _listed(self, space: str, obj: ListedObject) -> ObjectInfo:
        return ObjectInfo(space, self.requests.mount_key(space, obj.key), obj.size,
                          iso_ns(obj.last_modified), obj.etag)

    async def _settle(self, space: str, item: ListedObject | PartRun) -> list[ObjectInfo]:
        """A listed object as it is; a run of parts as its one file, if the first part says
        it is a file of that many parts and no object of the base name hides it (the official
        client reads that first); else the parts as they are."""
        if isinstance(item, ListedObject):
            return [self._listed(space, item)]
        if not item.base_listed and len(item.parts) >= 2:
            key = self.requests.mount_key(space, item.base)
            try:
                first = await self._head(space, part_key(key, 0))
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

    async def _head(self, space: str, key: str) -> dict[str, str]:
        """The object's reply headers, names lower-cased (metadata as x-amz-meta-NAME)."""
        reply = await self.requests.read_request("head_object", space, key)
        return {name.lower(): value for name, value in reply.headers.items()}

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        return await self._stat(bucket, key)

    async def _stat(self, space: str, key: str) -> ObjectInfo:
        try:
            headers = await self._head(space, key)
            self._layouts.pop((space, key), None)
            return self._info(space, key, [headers])
        except NoSuchObject:
            if key.endswith("/"):
                raise  # a directory's marker: never stored in parts (no lookup pays a probe)
            first = await self._head(space, part_key(key, 0))  # NoSuchObject: there is neither
        count = int(first.get(AMZ_META + META_PARTS, "1"))
        parts = [first] + [await self._head(space, part_key(key, i)) for i in range(1, count)]
        self._layouts[(space, key)] = [int(p.get("content-length", 0)) for p in parts]
        return self._info(space, key, parts)

    def _info(self, space: str, key: str, parts: list[dict[str, str]]) -> ObjectInfo:
        first = parts[0]
        metadata = {name[len(AMZ_META):]: value for name, value in first.items()
                    if name.startswith(AMZ_META)
                    and name[len(AMZ_META):] not in (META_PARTS, META_OWNER)}
        metadata.update({key: first[header.lower()] for key, header in HEADERS.items()
                         if first.get(header.lower())})
        stamps = [email.utils.parsedate_to_datetime(p["last-modified"]) for p in parts
                  if p.get("last-modified")]
        etags = [p.get("etag", "").strip('"') for p in parts]
        return ObjectInfo(space, key, sum(int(p.get("content-length", 0)) for p in parts),
                          int(max(stamps).timestamp() * 1e9) if stamps else 0,
                          etags[0] if len(etags) == 1 else combined_etag(etags), metadata)

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        async def read(sizes: list[int] | None) -> bytes:
            if sizes is None:
                return await self._read_range(bucket, key, offset, length)
            return b"".join([await self._read_range(bucket, part_key(key, index), lo, hi - lo)
                             for index, lo, hi in pieces(sizes, offset, length)])

        return await self._by_layout(bucket, key, read)

    async def read_into(self, bucket: str, key: str, offset: int, length: int,
                        sink: Sink) -> int:
        # The body goes from the socket to the sink as it arrives, in the worker thread of
        # the request (as S3's: mountfs/backends/body_reads.py): no bytes of the whole
        # range, no second worker thread (the default's).
        async def read(sizes: list[int] | None) -> int:
            if sizes is None:
                return await self._range_into(bucket, key, offset, length, sink)
            done = 0
            for index, lo, hi in pieces(sizes, offset, length):
                done += await self._range_into(bucket, part_key(key, index), lo, hi - lo,
                                               shifted(sink, done))
            return done

        return await self._by_layout(bucket, key, read)

    async def _by_layout(self, bucket: str, key: str,
                         read: Callable[[list[int] | None], Awaitable[T]]) -> T:
        """`read(part sizes)` of the file as last seen (None: stored whole)."""
        try:
            return await read(self._layouts.get((bucket, key)))
        except NoSuchObject:
            # Never read, or split or joined since we looked: look again (NoSuchObject if
            # there is neither KEY nor KEY.000), then read what is there now.
            await self._stat(bucket, key)
            return await read(self._layouts.get((bucket, key)))

    async def _read_range(self, space: str, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        # The GET and the reading of its body are one try: a body that broke off is asked
        # for again.
        span = f"bytes={offset}-{offset + length - 1}"
        reply = await self.requests.read_request("get_object", space, key, {"Range": span})
        return b"" if reply.status == 416 else reply.data  # 416: at or past the end

    async def _range_into(self, space: str, key: str, offset: int, length: int,
                          sink: Sink) -> int:
        """Bytes [offset, offset + length) of `key` to `sink`; how many there were."""
        if length <= 0:
            return 0
        what = f"GET {space}/{key}"
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}

        def once(url: str) -> int:
            # One try: the GET and its body (a body that broke off is asked for again, and
            # written over from its start).
            reply = self.requests.s3_once("GET", url, what, headers, stream=True)
            try:
                # 416: at or past the end
                return 0 if reply.status == 416 else stream_into(reply, sink)
            except urllib3.exceptions.HTTPError as exc:
                raise TemporaryFailure(f"{what}: {exc}") from exc
            finally:
                give_back(reply)

        return await self.requests.reading("get_object", space, key, what, once)

    # ---- writes ----------------------------------------------------------------------------

    async def write_object(self, bucket: str, key: str, data: Readable, size: int,
                           metadata: dict[str, str]) -> ObjectInfo:
        @contextlib.asynccontextmanager
        async def from_data(offset: int, length: int) -> AsyncIterator[BodyStream]:
            data.seek(offset)
            yield data

        return await self._write(bucket, key, from_data, size, metadata)

    async def _write(self, space: str, key: str, open_range: RangeOpener, size: int,
                     metadata: dict[str, str]) -> ObjectInfo:
        """Store the `size` bytes `open_range` gives as `key`: one object, or (over the part
        size) the objects KEY.000, KEY.001, …. Readers find the old version until the new one
        is whole: the official client looks for KEY first, so parts are written before KEY
        is removed, and KEY before old parts are."""
        count = max(1, -(-size // self.part_size))
        lengths = [min(self.part_size, size - i * self.part_size) for i in range(count)]
        old = self._layouts.get((space, key))
        names = [key] if count == 1 else [part_key(key, i) for i in range(count)]
        etags = []
        for index, (name, length) in enumerate(zip(names, lengths)):
            etags.append(await self._put(space, name, open_range, index * self.part_size,
                                         length, count, metadata))
        if count == 1:
            self._layouts.pop((space, key), None)
        else:
            self._layouts[(space, key)] = lengths
            await self._delete(space, key)
        for index in range(count if count > 1 else 0, len(old or [])):
            await self._delete(space, part_key(key, index))
        self.requests.forget_read_urls(space, key)
        return ObjectInfo(space, key, size, time.time_ns(),
                          etags[0] if count == 1 else combined_etag(etags), dict(metadata))

    async def _put(self, space: str, key: str, open_range: RangeOpener, offset: int,
                   length: int, count: int, metadata: dict[str, str]) -> str:
        """PUT the `length` bytes from `offset` as one object, with the metadata the official
        client sends; its ETag."""
        assert self.token is not None
        user, standard = split_headers(metadata)
        meta = {AMZ_META + name: value for name, value in user.items()}
        meta[AMZ_META + META_PARTS] = str(count)
        meta[AMZ_META + META_OWNER] = str(self.token.uid)
        url = await self.requests.authorize("put_object", space, key, headers=meta)
        # Content-Type and the like are not signed (the official client's URLs sign the
        # metadata only); an x-amz- header would have to be: the storage class stays behind.
        plain = {HEADERS[k]: v for k, v in standard.items() if not HEADERS[k].startswith("x-")}
        what = f"PUT {space}/{key}"
        headers = {"Content-Length": str(length), **meta, **plain}

        async def one_try() -> urllib3.BaseHTTPResponse:
            async with open_range(offset, length) as data:
                body = Slice(data, length)
                return await self.requests.http.run(
                    lambda: self.requests.s3_once("PUT", url, what, headers, body))

        reply = await self.retried(what, one_try)
        return str(reply.headers.get("ETag", "")).strip('"')

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        return await self._rewrite(bucket, key, bucket, key, metadata)

    async def copy_object(self, bucket: str, key: str, dst_bucket: str,
                          dst_key: str) -> ObjectInfo:
        return await self._rewrite(bucket, key, dst_bucket, dst_key, None)

    async def _rewrite(self, space: str, key: str, dst_space: str, dst_key: str,
                       metadata: dict[str, str] | None) -> ObjectInfo:
        """Stream `key` into `dst_key` (DCSS has no server-side copy), with `metadata` or the
        source's own: each try of each PUT reads its bytes from the source by ranged GETs."""
        src = await self._stat(space, key)
        layout = self._layouts.get((space, key))
        sizes = layout or [src.size]
        names = [part_key(key, i) for i in range(len(sizes))] if layout else [key]

        @contextlib.asynccontextmanager
        async def from_source(offset: int, length: int) -> AsyncIterator[BodyStream]:
            replies: list[urllib3.BaseHTTPResponse] = []
            try:
                for index, lo, hi in pieces(sizes, offset, length):
                    replies.append(await self._source_range(space, names[index], lo, hi))
                yield ObjectStream(replies)
            finally:
                for reply in replies:
                    give_back(reply)

        return await self._write(dst_space, dst_key, from_source, src.size,
                                 src.metadata or {} if metadata is None else metadata)

    async def _source_range(self, space: str, key: str, lo: int,
                            hi: int) -> urllib3.BaseHTTPResponse:
        """A streamed GET of bytes [lo, hi) of `key`, which must all be there."""
        reply = await self.requests.read_request("get_object", space, key,
                                                 {"Range": f"bytes={lo}-{hi - 1}"}, stream=True)
        if reply.status != 206:  # 416: the source shrank since its stat
            give_back(reply)
            raise BackendError(f"GET {space}/{key}: HTTP {reply.status} for bytes {lo}-{hi - 1}")
        return reply

    async def delete_object(self, bucket: str, key: str) -> None:
        sizes = self._layouts.pop((bucket, key), None)
        for index in range(len(sizes or [])):
            await self._delete(bucket, part_key(key, index))
        await self._delete(bucket, key)
        self.requests.forget_read_urls(bucket, key)

    async def _delete(self, space: str, key: str) -> None:
        url = await self.requests.authorize("delete_object", space, key)
        await self.requests.s3("DELETE", url, f"DELETE {space}/{key}")

    async def aclose(self) -> None:
        self.requests.close()


def shifted(sink: Sink, at: int) -> Sink:
    """`sink` for bytes that come `at` bytes into its range."""
    return lambda pos, data: sink(at + pos, data)


def pieces(sizes: list[int], offset: int, length: int) -> Iterator[tuple[int, int, int]]:
    """Where bytes [offset, offset + length) of a file stored as parts of `sizes` lie: (part
    index, start, end) within each part they touch, in order."""
    start = 0
    for index, size in enumerate(sizes):
        lo, hi = max(offset, start), min(offset + length, start + size)
        if lo < hi:
            yield index, lo - start, hi - start
        start += size


class Slice:
    """`length` bytes of a file from its current position, as a body urllib3 streams."""

    def __init__(self, data: BodyStream, length: int) -> None:
        self.data, self.left = data, length

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        chunk = self.data.read(n) if n else b""
        if len(chunk) != n:
            raise BackendError(f"short read: {len(chunk)} of {n} bytes")
        self.left -= n
        return chunk


class ObjectStream:
    """Streamed GET replies, read one after another as one file."""

    def __init__(self, replies: list[urllib3.BaseHTTPResponse]) -> None:
        self.replies, self.index = replies, 0

    def read(self, n: int = -1) -> bytes:
        chunks, want = [], n
        while want != 0 and self.index < len(self.replies):
            chunk = self.replies[self.index].read(STREAM_CHUNK if want < 0 else want)
            if chunk:
                chunks.append(chunk)
                want = want - len(chunk) if want > 0 else want
            else:
                self.index += 1
        return b"".join(chunks)


def iso_ns(text: str) -> int:
    """Nanoseconds since the epoch of an S3 listing's LastModified (ISO 8601, UTC)."""
    if not text:
        return 0
    stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(stamp.timestamp() * 1e9)
