"""The S3 driver: any S3-compatible store. The frequent requests (HEAD, ranged GET, PUT and
upload parts, listing pages, DELETE) go over the fast request path of s3_wire.py (awscrt); the
rare ones (buckets, multipart create/complete/abort, copies) through boto3 in trio worker
threads. Both sign with the same botocore credentials and go where botocore's addressing says.

Owns the S3 semantics: listing (ListObjectsV2, or ListObjects v1
where a server lacks V2), ranged GETs, multipart uploads with parts sent in parallel, copies
(CopyObject, UploadPartCopy above `copy_threshold`, or a streamed copy where the server lacks
either), and the mapping of S3 error codes to mountfs errors. Credentials are found the way AWS
tools find them (environment, shared files, profile); none ever comes from the command line.
"""
from __future__ import annotations

import email.utils
import functools
import hashlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
import dataclasses
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import trio

from mountfs.backends import Scope
from mountfs.backends import Source as BackendSource
from mountfs.backends.base import IF_ABSENT, Backend, Features, ObjectInfo, Sink, split_headers
from mountfs.backends.http import retry_after, status_error, timeouts
from mountfs.backends.registry import Driver, DriverContext, Option
from mountfs.backends.s3_download import Downloads
from mountfs.backends.s3_wire import (CONDITION_HEADERS, Base, PartBody, Reply, Wire,
                                      head_fields, listing_fields, object_headers, part_query,
                                      write_fields)
from mountfs.errors import (AlreadyExists, BackendError, ConfigError, InvalidName, NoSuchBucket,
                            NoSuchObject, NotEmpty, NotSupported, PermissionDenied,
                            PreconditionFailed, PreconditionLost, QuotaExceeded,
                            TemporaryFailure, TooLarge)
from mountfs.sizes import parse_size

log = logging.getLogger(__name__)

T = TypeVar("T")
MIN_PART = 8 * 1024 * 1024
MIN_STREAM_PART = 5 * 1024 * 1024  # the smallest part but the last S3 takes
MAX_PARTS = 10_000
# Parts in flight at once, over all uploads and copies of one driver: the boto3 baseline's 8
# threads. Bounds the memory of uploads and streamed copies to PARALLEL_PARTS x part size.
PARALLEL_PARTS = 8
# Buckets whose addresses a mount of every bucket resolves at mount (`S3Backend.check`).
WARM_BUCKETS = 4
MAX_COPY = 5 * 1024**3  # the largest object CopyObject takes
MAX_OBJECT = 5 * 1024**4  # the largest object S3 stores
MAX_KEY = 1024  # bytes of UTF-8
# The object headers mountfs keeps (base.HEADER_KEYS) as boto3 names them in requests and in
# HEAD's reply (Expires aside: HEAD's is parsed, its raw text is under HTTPHeaders).
HEADER_PARAMS = {":content-type": "ContentType", ":cache-control": "CacheControl",
                 ":content-disposition": "ContentDisposition",
                 ":content-encoding": "ContentEncoding", ":content-language": "ContentLanguage",
                 ":expires": "Expires", ":storage-class": "StorageClass"}

# Sends one part of a multipart upload: (upload id, part number, offset, length) -> its ETag.
PartSender = Callable[[str, int, int, int], Awaitable[str]]

# S3 error codes; a reply whose code is not here (a HEAD's has none) is mapped by its status.
_BY_CODE: dict[str, type[BackendError]] = {
    "NoSuchBucket": NoSuchBucket,
    "NoSuchKey": NoSuchObject,
    "NotFound": NoSuchObject,
    "AccessDenied": PermissionDenied,
    "Forbidden": PermissionDenied,
    "AllAccessDisabled": PermissionDenied,
    "BucketAlreadyExists": AlreadyExists,
    "BucketAlreadyOwnedByYou": AlreadyExists,
    "BucketNotEmpty": NotEmpty,
    "InvalidBucketName": InvalidName,
    "EntityTooLarge": TooLarge,
    "QuotaExceeded": QuotaExceeded,
    "NotImplemented": NotSupported,
    # An If-Match failed: the object changed since we looked at it.
    "PreconditionFailed": PreconditionFailed,
    "SlowDown": TemporaryFailure,
    "Throttling": TemporaryFailure,
    "ThrottlingException": TemporaryFailure,
    "RequestTimeout": TemporaryFailure,
    "RequestTimeTooSkewed": TemporaryFailure,
    "InternalError": TemporaryFailure,
    "ServiceUnavailable": TemporaryFailure,
    "TooManyRequests": TemporaryFailure,
    "TooManyRequestsException": TemporaryFailure,
    "RequestLimitExceeded": TemporaryFailure,
    "RequestThrottled": TemporaryFailure,
    "BandwidthLimitExceeded": TemporaryFailure,
}


def multipart_etag(part_etags: list[str]) -> str:
    """The ETag S3 gives a multipart upload: the MD5 of its parts' binary MD5s, "-" count."""
    digests = b"".join(bytes.fromhex(e.strip('"')) for e in part_etags)
    return f"{hashlib.md5(digests).hexdigest()}-{len(part_etags)}"


def part_size_for(size: int) -> int:
    """Parts of at least 8 MiB, grown (in MiB steps) so that no object needs 10,000 parts."""
    need = -(-size // MAX_PARTS)
    mib = 1024 * 1024
    return max(MIN_PART, -(-need // mib) * mib)


def error_code(exc: BaseException) -> str:
    """The S3 error code behind an error `_call` translated ('' when there is none)."""
    response = getattr(exc.__cause__, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def etag_of(reply: dict[str, Any]) -> str:
    """The ETag without its quotes, the one form the cache compares."""
    return str(reply.get("ETag", "")).strip('"')


def resume_marker(reply: dict[str, Any]) -> str:
    """Where a truncated v1 listing goes on: NextMarker, which servers need send only with a
    delimiter, else (as the S3 docs say) the greater of the last key and last common prefix."""
    if reply.get("NextMarker"):
        return str(reply["NextMarker"])
    names = [c["Key"] for c in reply.get("Contents", [])[-1:]]
    names += [p["Prefix"] for p in reply.get("CommonPrefixes", [])[-1:]]
    if not names:
        raise BackendError("truncated listing page without keys: cannot page on")
    return str(max(names))


def reply_time_ns(reply: dict[str, Any]) -> int:
    """When the server stored what a write reply is about: its LastModified (copies), else the
    reply's Date header; 0 (unknown) without either."""
    stamp = reply.get("LastModified")
    if stamp is None:
        date = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        stamp = email.utils.parsedate_to_datetime(date) if date else None
    return int(stamp.timestamp() * 1e9) if stamp else 0


def metadata_of(head: dict[str, Any]) -> dict[str, str]:
    """An object's metadata as mountfs carries it: its user metadata and its headers."""
    metadata = dict(head.get("Metadata", {}))
    for key, name in HEADER_PARAMS.items():
        value = head.get(name) if name != "Expires" else \
            head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("expires")
        if value:
            metadata[key] = str(value)
    return metadata


def object_fields(metadata: dict[str, str]) -> dict[str, Any]:
    """The request fields that store `metadata` (PutObject, CreateMultipartUpload, CopyObject
    with REPLACE): user metadata and headers."""
    user, headers = split_headers(metadata)
    fields: dict[str, Any] = {"Metadata": user}
    for key, value in headers.items():
        if key == ":expires":
            try:
                fields["Expires"] = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                log.info("not keeping an unreadable Expires header: %r", value)
            continue
        fields[HEADER_PARAMS[key]] = value
    return fields


@dataclass(frozen=True)
class Source:
    """The object a copy reads, as one HEAD saw it; copies are conditional on its ETag so that
    its size and metadata hold for what is copied."""

    bucket: str
    key: str
    size: int
    etag: str  # as the server sent it, quotes included: for If-Match headers
    metadata: dict[str, str]  # user metadata and headers (`metadata_of`)

    @classmethod
    def from_head(cls, bucket: str, key: str, head: dict[str, Any]) -> Source:
        return cls(bucket, key, int(head.get("ContentLength", 0)), str(head.get("ETag", "")),
                   metadata_of(head))

    def replaced(self, metadata: dict[str, str] | None) -> dict[str, str]:
        """What a copy of it stores: its own metadata, or `metadata` with its headers where
        `metadata` names none (a caller that never read them does not drop them)."""
        if metadata is None:
            return self.metadata
        return {**split_headers(self.metadata)[1], **metadata}


class S3Backend(Backend):
    # Conditional writes: If-Match / If-None-Match on PutObject and CompleteMultipartUpload
    # (AWS since 2024, MinIO, moto in part). A server that ignores the headers stores
    # unconditionally: the later upload wins whole, as without them.
    features = Features(conditional_writes=True, max_object_size=MAX_OBJECT,
                        max_key_length=MAX_KEY, part_uploads=True)

    def __init__(self, endpoint_url: str | None = None, region: str | None = None,
                 profile: str | None = None, path_style: bool = False, workers: int = 8,
                 copy_threshold: int = MAX_COPY,
                 credentials: tuple[str, str] | None = None,
                 part_size: int = MIN_PART) -> None:
        import boto3
        import botocore.config
        import botocore.session

        self.endpoint_url = endpoint_url
        # Larger objects are copied in parts (UploadPartCopy); at most MAX_COPY.
        self.copy_threshold = min(copy_threshold, MAX_COPY)
        # The parts of a file uploaded while it is written (`part_upload_size`).
        self.upload_part_bytes = part_size
        try:
            # One botocore session: its credentials sign boto3's requests and the fast path's:
            # explicit (access key id, secret) where a driver obtained them (Storj's auth
            # service), else the AWS tools' search (environment, files, profile).
            core = botocore.session.Session(profile=profile)
            if credentials is not None:
                core.set_credentials(*credentials)
            session = boto3.session.Session(botocore_session=core, region_name=region)
        except Exception as exc:  # ProfileNotFound and friends
            raise ConfigError(f"S3 credentials: {exc}") from None
        # Every boto3 request runs in a thread of `_limiter`, so botocore never has more
        # requests under way than pooled connections (else it warns "Connection pool is full"
        # and serialises); the fast path has as many connections. Parts take at most
        # PARALLEL_PARTS of them, leaving `workers` for reads and listings while a large file
        # goes up.
        threads = workers + PARALLEL_PARTS
        # What the mount keeps under way (stat-ahead HEADs, small files' PUTs) is the pool:
        # fewer would leave connections idle, more would only queue for them.
        self.features = dataclasses.replace(self.features, parallel_requests=threads)
        connect_timeout, read_timeout = timeouts()
        config = botocore.config.Config(
            max_pool_connections=threads,
            # One try: every request goes through the one retry policy (`_call`).
            # (`max_attempts` counts the retries after the first try, `total_max_attempts` all.)
            retries={"mode": "standard", "total_max_attempts": 1},
            s3={"addressing_style": "path" if path_style else "auto"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self.region = session.region_name
        self._session, self._config = session, config
        self._regional: dict[str, Any] = {}  # clients of other regions: their buckets' URLs
        # The fast path signs with the credentials boto3 resolved (one chain: environment,
        # shared files, profile, refreshed when they expire) and trusts what it trusts.
        self.wire = Wire(self.region or "us-east-1", core.get_credentials, threads,
                         connect_timeout, read_timeout, core.get_config_variable("ca_bundle"))
        # Ranged GETs into the cache's block files (see s3_download).
        self.downloads = Downloads(self.wire, threads, core.get_config_variable("ca_bundle"))
        self._bases: dict[str, Base] = {}
        self._limiter = trio.CapacityLimiter(threads)
        self._part_slots = trio.Semaphore(PARALLEL_PARTS)
        # Operations this server answered NotImplemented (or the like): not asked again.
        self._unsupported: set[str] = set()

    async def aclose(self) -> None:
        self.wire.close()
        self.downloads.close()

    def describe(self) -> str:
        return f"s3:{self.endpoint_url or 'aws'}"

    # ---- plumbing --------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A boto3 request: `fn` (a client method) under the retry policy."""
        where = "/".join(str(kwargs[name]) for name in ("Bucket", "Key") if name in kwargs)
        return await self.retried(f"{fn.__name__} {where}".strip(),
                                  lambda: self._once(fn, *args, **kwargs))

    async def _once(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One try of `fn` in a worker thread, its errors translated."""
        try:
            result: T = await trio.to_thread.run_sync(lambda: fn(*args, **kwargs),
                                                      limiter=self._limiter)
            return result
        except Exception as exc:
            raise self.translate(exc) from exc

    async def _send(self, operation: str, method: str, bucket: str, key: str = "",
                    query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                    body: Any = None, sink: Sink | None = None) -> Reply:
        """A request of the fast path under the retry policy (`body`: bytes, not a stream;
        `sink`: where a 2xx reply's body goes, from its start again at each try)."""
        return await self.retried(f"{operation} {bucket}/{key}".rstrip("/"),
                                  lambda: self._send_once(operation, method, bucket, key, query,
                                                          headers, body, sink))

    async def _send_once(self, operation: str, method: str, bucket: str, key: str = "",
                         query: dict[str, str] | None = None,
                         headers: dict[str, str] | None = None, body: Any = None,
                         sink: Sink | None = None) -> Reply:
        """One try on the fast path, its errors translated."""
        try:
            base = await self._base(bucket)
            if sink is not None and method == "GET" and self.downloads.takes(base):
                return await self.downloads.get(operation, base, key, headers or {}, sink)
            return await self.wire.request(operation, method, base, key, query, headers, body,
                                           sink)
        except Exception as exc:
            raise self.translate(exc) from exc

    async def _base(self, bucket: str) -> Base:
        """Where `bucket`'s requests go, as botocore's endpoint rules say (path or virtual
        host, custom endpoint) for the bucket's region: asked once per bucket, from a
        presigned URL, as boto3 follows a bucket to its region (its redirects)."""
        base = self._bases.get(bucket)
        if base is None:
            region = await self._bucket_region(bucket)
            marker = "mountfs-key"
            url = self._client_in(region or self.region).generate_presigned_url(
                "head_object", Params={"Bucket": bucket, "Key": marker}, ExpiresIn=60)
            base = Base.from_url(url, marker, region or "")
            if region is not None:  # else asked again next time
                self._bases[bucket] = base
        return base

    async def _bucket_region(self, bucket: str) -> str | None:
        """The region a HeadBucket reply names (x-amz-bucket-region: AWS sends it even when it
        refuses or redirects), '' where the server names none, None where it could not say."""
        try:
            reply = await self._once(self.client.head_bucket, Bucket=bucket)
        except BackendError as exc:
            reply = getattr(exc.__cause__, "response", None) or {}
            headers = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            return headers.get("x-amz-bucket-region") or \
                (None if isinstance(exc, TemporaryFailure) else "")
        return str(reply.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                   .get("x-amz-bucket-region", ""))

    def _client_in(self, region: str | None) -> Any:
        """The boto3 client whose URLs are those of `region` (ours: `self.client`)."""
        if not region or region == self.region:
            return self.client
        if region not in self._regional:
            self._regional[region] = self._session.client(
                "s3", region_name=region, endpoint_url=self.endpoint_url, config=self._config)
        return self._regional[region]

    async def _head(self, bucket: str, key: str) -> dict[str, Any]:
        """HeadObject's reply, as boto3's."""
        return head_fields(await self._send("HeadObject", "HEAD", bucket, key))

    def translate(self, exc: BaseException) -> BaseException:
        import botocore.exceptions as bx

        if isinstance(exc, bx.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            meta = exc.response.get("ResponseMetadata", {})
            status = meta.get("HTTPStatusCode", 0)
            text = f"{code or status}: {err.get('Message', '')}".strip()
            asked = retry_after(meta.get("HTTPHeaders", {}).get("retry-after"))
            cls = _BY_CODE.get(code)
            if cls is None:
                return status_error(status, text, asked)
            error = cls(text)
            if isinstance(error, TemporaryFailure):
                error.retry_after = asked
            return error
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError,
                            bx.ReadTimeoutError, bx.ConnectTimeoutError,
                            bx.ResponseStreamingError, bx.IncompleteReadError)):
            return TemporaryFailure(str(exc))
        if isinstance(exc, bx.NoCredentialsError):
            return PermissionDenied("no S3 credentials found")
        return exc

    def _lacks(self, operation: str, exc: BackendError) -> None:
        """Remember that the server does not do `operation`, and say so in the log."""
        self._unsupported.add(operation)
        log.info("%s does not do %s (%s): using a fallback from now on", self.describe(),
                 operation, exc)

    def _info(self, bucket: str, key: str, meta: dict[str, Any]) -> ObjectInfo:
        """From a HEAD reply (with metadata) or a listing entry (without)."""
        mtime = meta.get("LastModified")
        return ObjectInfo(
            bucket, key, int(meta.get("ContentLength", meta.get("Size", 0))),
            int(mtime.timestamp() * 1e9) if mtime else 0,
            etag_of(meta),
            metadata_of(meta) if "Metadata" in meta else None,
        )

    @staticmethod
    def _written(bucket: str, key: str, size: int, metadata: dict[str, str],
                 reply: dict[str, Any]) -> ObjectInfo:
        """What a later HEAD would say of an object just written, from the write's own reply:
        PutObject, CompleteMultipartUpload or CopyObject (which nests it in CopyObjectResult)."""
        result = reply.get("CopyObjectResult", {})
        return ObjectInfo(bucket, key, size, reply_time_ns(result) or reply_time_ns(reply),
                          etag_of(result or reply), dict(metadata))

    # ---- buckets ---------------------------------------------------------------------------

    async def check(self) -> None:
        try:
            buckets = await self.list_buckets()
        except (TemporaryFailure, PermissionDenied, BackendError) as exc:
            where = self.endpoint_url or "AWS S3"
            raise ConfigError(f"cannot use {where}: {exc}") from None
        # Where a bucket's requests go costs a HeadBucket, which some servers answer slowly
        # (s3rver: ~0.3 s, it reads the whole bucket): asked now, in parallel, for the first
        # buckets a mount of every bucket shows, so that the first `ls` does not wait for it.
        async with trio.open_nursery() as nursery:
            for bucket in buckets[:WARM_BUCKETS]:
                nursery.start_soon(self._warm_base, bucket)

    async def _warm_base(self, bucket: str) -> None:
        try:
            await self._base(bucket)
        except Exception as exc:  # asked again at the bucket's first request, which reports it
            log.debug("where %s's requests go is not known yet: %s", bucket, exc)

    async def list_buckets(self) -> list[str]:
        reply = await self._call(self.client.list_buckets)
        return sorted(b["Name"] for b in reply.get("Buckets", []))

    async def create_bucket(self, bucket: str) -> None:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        await self._call(self.client.create_bucket, **kwargs)

    async def delete_bucket(self, bucket: str) -> None:
        await self._call(self.client.delete_bucket, Bucket=bucket)

    # ---- listings --------------------------------------------------------------------------

    async def list_objects(self, bucket: str, prefix: str, delimiter: str | None = "/",
                           page_size: int = 1000) -> AsyncIterator[list[ObjectInfo]]:
        # Keys URL-encoded in the reply (as botocore asks): XML cannot carry every character.
        query = {"prefix": prefix, "max-keys": str(page_size), "encoding-type": "url"}
        if delimiter:
            query["delimiter"] = delimiter
        last: dict[str, Any] | None = None
        if "ListObjectsV2" not in self._unsupported:
            async for last in self._replies_v2(bucket, query):
                yield self._page(bucket, last)
            if last is not None and not last.get("IsTruncated"):
                return
        # V2 is unsupported: from the start, or on from a V1 answer to a V2 request.
        marker = resume_marker(last) if last is not None else None
        seen = {p["Prefix"] for p in (last or {}).get("CommonPrefixes", [])}
        async for reply in self._replies_v1(bucket, query, marker):
            # moto repeats every common prefix on every v1 page; S3 does not.
            page = [info for info in self._page(bucket, reply)
                    if not (info.is_prefix and info.key in seen)]
            seen.update(info.key for info in page if info.is_prefix)
            yield page

    def _page(self, bucket: str, reply: dict[str, Any]) -> list[ObjectInfo]:
        page = [self._info(bucket, c["Key"], c) for c in reply.get("Contents", [])]
        page += [ObjectInfo(bucket, p["Prefix"], is_prefix=True)
                 for p in reply.get("CommonPrefixes", [])]
        page.sort(key=lambda info: info.key)
        return page

    async def _list(self, operation: str, bucket: str,
                    query: dict[str, str]) -> dict[str, Any]:
        reply = await self._send(operation, "GET", bucket, query=query)
        return listing_fields(reply.body)

    async def _replies_v2(self, bucket: str,
                          query: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        """ListObjectsV2 pages; none where the server refuses V2, and the last one truncated
        where it answered as V1. What is detectable: a 501 / NotImplemented or a 400
        InvalidArgument to the first request (servers that reject list-type=2), or a truncated
        page without NextContinuationToken (servers that ignore list-type=2 and answer V1).
        An untruncated V1 answer looks like a complete V2 one, and is one."""
        try:
            reply = await self._list("ListObjectsV2", bucket, {**query, "list-type": "2"})
        except BackendError as exc:
            if not isinstance(exc, NotSupported) and error_code(exc) != "InvalidArgument":
                raise
            self._lacks("ListObjectsV2", exc)
            return
        while True:
            yield reply
            token = reply.get("NextContinuationToken")
            if not reply.get("IsTruncated"):
                return
            if not token:
                self._lacks("ListObjectsV2", BackendError("truncated page without a token"))
                return
            reply = await self._list("ListObjectsV2", bucket, {
                **query, "list-type": "2", "continuation-token": token})

    async def _replies_v1(self, bucket: str, query: dict[str, str],
                          marker: str | None) -> AsyncIterator[dict[str, Any]]:
        """ListObjects (v1) pages from after `marker` (None: from the start)."""
        while True:
            extra = {"marker": marker} if marker is not None else {}
            reply = await self._list("ListObjects", bucket, {**query, **extra})
            yield reply
            if not reply.get("IsTruncated"):
                return
            marker = resume_marker(reply)

    # ---- reads -----------------------------------------------------------------------------

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        return self._info(bucket, key, await self._head(bucket, key))

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            return (await self._get(bucket, key, offset, length)).body
        except BackendError as exc:
            if error_code(exc) == "InvalidRange":
                return b""
            raise

    async def read_into(self, bucket: str, key: str, offset: int, length: int,
                        sink: Sink) -> int:
        # The body goes from the CRT's buffers to the sink (the cache's block files) chunk by
        # chunk: no list of chunks, no join, no second write from a worker thread.
        if length <= 0:
            return 0
        try:
            return (await self._get(bucket, key, offset, length, sink=sink)).length
        except BackendError as exc:
            if error_code(exc) == "InvalidRange":
                return 0
            raise

    async def _get(self, bucket: str, key: str, offset: int, length: int,
                   if_match: str | None = None, sink: Sink | None = None) -> Reply:
        # The GET and the reading of its body are one try (the wire reads it whole, checked
        # against Content-Length): a body that broke off after the headers is asked for again
        # (into the sink from its start, overwriting what the broken try gave it).
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        if if_match is not None:
            headers["If-Match"] = if_match
        return await self._send("GetObject", "GET", bucket, key, headers=headers, sink=sink)

    # ---- writes ----------------------------------------------------------------------------

    def _condition(self, if_match: str | None) -> dict[str, str]:
        """`if_match` (see Backend.write_object) in boto3's names, where the server takes it."""
        if if_match is None or "ConditionalWrites" in self._unsupported:
            return {}
        return {"IfNoneMatch": "*"} if if_match == IF_ABSENT else {"IfMatch": f'"{if_match}"'}

    async def write_object(self, bucket: str, key: str, data: BinaryIO, size: int,
                           metadata: dict[str, str], if_match: str | None = None) -> ObjectInfo:
        condition = self._condition(if_match)
        part_etags: list[str] = []
        body = b""
        try:
            if size <= MIN_PART:
                body = data.read(size)
                if len(body) != size:
                    raise BackendError(f"short read of {key}: {len(body)} of {size} bytes")
                reply = await self._put(bucket, key, body, metadata, condition)
            else:
                reply = await self._multipart(bucket, key, size, object_fields(metadata),
                                              self._file_parts(bucket, key, data),
                                              complete=condition, part_etags=part_etags)
        except BackendError as exc:
            mine = hashlib.md5(body).hexdigest() if size <= MIN_PART else \
                multipart_etag(part_etags) if part_etags else ""
            reply = await self._condition_failed(bucket, key, condition, exc, mine)
        return self._written(bucket, key, size, metadata, reply)

    async def _condition_failed(self, bucket: str, key: str, condition: dict[str, str],
                                exc: BackendError, mine: str) -> dict[str, Any]:
        """A write under `condition` failed with `exc`: raise what that means, or return the
        object's HEAD when the object is this very write (ETag `mine`)."""
        if isinstance(exc, NotSupported) and condition:
            self._lacks("ConditionalWrites", exc)  # the next try goes without
            raise TemporaryFailure(f"conditional write of {key} refused: {exc}") from exc
        gone = isinstance(exc, NoSuchObject) and "IfMatch" in condition
        if not condition or not gone and not isinstance(exc, PreconditionFailed):
            raise exc
        # A try whose reply was lost may have stored this very upload (the retry policy
        # tries a request again once its reply broke off): then the object is ours, not a
        # conflict.
        head = await self._head_if_any(bucket, key)
        if head is not None and mine and etag_of(head) == mine:
            log.info("conditional write of %s/%s was stored by a try whose reply was lost",
                     bucket, key)
            return head
        raise PreconditionLost(f"{bucket}/{key} is no longer the version this upload "
                               f"replaces ({'gone' if gone else 'changed'})",
                               exists=not gone) from exc

    async def _put(self, bucket: str, key: str, body: bytes, metadata: dict[str, str],
                   condition: dict[str, str] | None = None) -> dict[str, Any]:
        """PutObject of `body` with `metadata`; `condition` in boto3's names (IfMatch,
        IfNoneMatch). Its reply as boto3's (ETag, and the Date header for `reply_time_ns`)."""
        headers = object_headers(metadata)
        for name, value in (condition or {}).items():
            headers[CONDITION_HEADERS[name]] = value
        reply = await self._send("PutObject", "PUT", bucket, key, headers=headers, body=body)
        return write_fields(reply)

    async def _head_if_any(self, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            return await self._head(bucket, key)
        except NoSuchObject:
            return None

    def _file_parts(self, bucket: str, key: str, data: BinaryIO,
                    read_lock: threading.Lock | None = None) -> PartSender:
        """Parts streamed from `data` as the CRT sends them (`PartBody`); `data` is one
        stream, read under one lock."""
        read_lock = read_lock or threading.Lock()

        async def send(upload_id: str, number: int, offset: int, length: int) -> str:
            async def one_try() -> Reply:
                body = PartBody(data, read_lock, offset, length, key)
                try:
                    return await self._send_once("UploadPart", "PUT", bucket, key,
                                                 part_query(upload_id, number), body=body)
                except Exception:
                    if body.error is not None:  # the CRT reports what a body raised: unwrap it
                        raise body.error from None  # (Superseded: the queue uploads again)
                    raise

            reply = await self.retried(f"UploadPart {bucket}/{key} #{number}", one_try)
            return reply.headers.get("etag", "")

        return send

    async def _multipart(self, bucket: str, key: str, size: int, create: dict[str, Any],
                         send: PartSender, complete: dict[str, str] | None = None,
                         part_etags: list[str] | None = None) -> dict[str, Any]:
        """A multipart upload of `size` bytes whose parts `send` supplies, in parallel; the
        object appears only when CompleteMultipartUpload succeeds, else the upload is aborted.
        `create`: CreateMultipartUpload's metadata and headers; `complete`: Complete's
        conditions; `part_etags` is given the parts' ETags. Returns Complete's reply."""
        upload = await self._call(self.client.create_multipart_upload, Bucket=bucket, Key=key,
                                  **create)
        upload_id = upload["UploadId"]
        try:
            etags = await self._send_parts(size, functools.partial(send, upload_id))
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            if part_etags is not None:
                part_etags.extend(p["ETag"] for p in parts)
            try:
                return await self._call(self.client.complete_multipart_upload, Bucket=bucket,
                                        Key=key, UploadId=upload_id,
                                        MultipartUpload={"Parts": parts}, **(complete or {}))
            except BackendError as exc:
                if error_code(exc) != "NoSuchUpload":
                    raise
                return await self._completed_before(bucket, key, [p["ETag"] for p in parts],
                                                    exc)
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self._call(self.client.abort_multipart_upload, Bucket=bucket,
                                     Key=key, UploadId=upload_id)
                except Exception as exc:
                    log.warning("could not abort multipart upload of %s: %s", key, exc)
            raise

    async def abort_incomplete_uploads(self, bucket: str, key: str, before_ns: int) -> None:
        """Abort the multipart uploads of exactly `key` begun before `before_ns` (by the
        server's clock: a skew can only spare a dead upload, or make another mount's Complete
        fail and be tried again, never lose data)."""
        if "ListMultipartUploads" in self._unsupported:
            return
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
        while True:
            try:
                reply = await self._call(self.client.list_multipart_uploads, **kwargs)
            except NotSupported as exc:
                self._lacks("ListMultipartUploads", exc)
                return
            for upload in reply.get("Uploads", []):
                begun = upload.get("Initiated")
                if upload.get("Key") != key or begun is None \
                        or begun.timestamp() * 1e9 >= before_ns:
                    continue
                try:
                    await self._call(self.client.abort_multipart_upload, Bucket=bucket,
                                     Key=key, UploadId=upload["UploadId"])
                except BackendError as exc:
                    if error_code(exc) != "NoSuchUpload":  # else gone already
                        raise
                log.warning("aborted an unfinished multipart upload of %s/%s begun %s "
                            "(a process killed mid-upload)", bucket, key, begun.isoformat())
            if not reply.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = reply.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = reply.get("NextUploadIdMarker", "")

    async def _completed_before(self, bucket: str, key: str, part_etags: list[str],
                                exc: BackendError) -> dict[str, Any]:
        """A Complete answered NoSuchUpload: a try of it whose reply was lost (the retry policy
        tries it again) may have completed the upload. Then the object's ETag is the one these parts make,
        and the upload is done; else nothing says the object is ours: a temporary failure, so
        the queue uploads it again (the upload is gone, the error is no reason to give up)."""
        head = await self._head_if_any(bucket, key) or {}
        if etag_of(head) == multipart_etag(part_etags):
            log.info("multipart upload of %s/%s was completed by a try whose reply was lost",
                     bucket, key)
            return head
        raise TemporaryFailure(f"multipart upload of {key} vanished: {exc}") from exc

    async def _send_parts(self, size: int,
                          send: Callable[[int, int, int], Awaitable[str]]) -> dict[int, str]:
        """Every part of `size` bytes through `send(number, offset, length)`, each while it
        holds one of the driver's part slots; their ETags by part number. The first failure
        stops the rest and is raised alone: parts in flight tend to fail together, and a group
        of errors would hide what `is_temp_failure` and the fallbacks look for."""
        part = self.part_size(size)
        etags: dict[int, str] = {}
        failures: list[Exception] = []

        async def one(number: int, offset: int, length: int) -> None:
            try:
                etags[number] = await send(number, offset, length)
            except Exception as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()
            finally:
                self._part_slots.release()

        async with trio.open_nursery() as nursery:
            for i, offset in enumerate(range(0, size, part)):
                await self._part_slots.acquire()
                nursery.start_soon(one, i + 1, offset, min(part, size - offset))
        if failures:
            raise failures[0]
        return etags

    def part_size(self, size: int) -> int:
        """The part size of a multipart upload or copy of `size` bytes (a driver for a store
        with its own segment size aligns it)."""
        return part_size_for(size)

    # ---- uploads in parts driven by the write-back queue (Backend.begin_upload) -----------

    def part_upload_size(self) -> int:
        return self.upload_part_bytes

    async def begin_upload(self, bucket: str, key: str, metadata: dict[str, str]) -> str:
        upload = await self._call(self.client.create_multipart_upload, Bucket=bucket, Key=key,
                                  **object_fields(metadata))
        return str(upload["UploadId"])

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int,
                          data: BinaryIO, offset: int, length: int) -> str | None:
        send = self._file_parts(bucket, key, data)
        async with self._part_slots:  # with the parts of whole uploads: PARALLEL_PARTS
            try:
                return await send(upload_id, number, offset, length)
            except BackendError as exc:
                if error_code(exc) != "NoSuchUpload":
                    raise
                return None

    async def complete_upload(self, bucket: str, key: str, upload_id: str,
                              parts: list[tuple[int, str]], size: int, metadata: dict[str, str],
                              if_match: str | None = None) -> ObjectInfo | None:
        condition = self._condition(if_match)
        etags = [etag for _, etag in sorted(parts)]
        try:
            reply = await self._call(
                self.client.complete_multipart_upload, Bucket=bucket, Key=key,
                UploadId=upload_id, MultipartUpload={"Parts": [
                    {"PartNumber": n, "ETag": etag} for n, etag in sorted(parts)]},
                **condition)
        except BackendError as exc:
            if error_code(exc) == "NoSuchUpload":
                # A try whose reply was lost may have completed it: then the object is ours.
                head = await self._head_if_any(bucket, key) or {}
                if etag_of(head) != multipart_etag(etags):
                    return None
                reply = head
            else:
                reply = await self._condition_failed(bucket, key, condition, exc,
                                                     multipart_etag(etags))
        return self._written(bucket, key, size, metadata, reply)

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            await self._call(self.client.abort_multipart_upload, Bucket=bucket, Key=key,
                             UploadId=upload_id)
        except BackendError as exc:
            if error_code(exc) != "NoSuchUpload":  # else gone already
                raise

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        """A copy onto itself with the new metadata (S3 has no other way), headers kept."""
        source = await self._source(bucket, key)
        return await self._copy(source, bucket, key, metadata)

    async def delete_object(self, bucket: str, key: str) -> None:
        await self._send("DeleteObject", "DELETE", bucket, key)

    # ---- copies ----------------------------------------------------------------------------

    async def copy_object(self, bucket: str, key: str, dst_bucket: str,
                          dst_key: str) -> ObjectInfo:
        source = await self._source(bucket, key)
        return await self._copy(source, dst_bucket, dst_key, None)

    async def _source(self, bucket: str, key: str) -> Source:
        """One HEAD tells the copy its size (which way to copy), metadata and headers."""
        return Source.from_head(bucket, key, await self._head(bucket, key))

    async def _copy(self, source: Source, bucket: str, key: str,
                    metadata: dict[str, str] | None) -> ObjectInfo:
        """`source` to bucket/key, on the server where it can; `metadata` None keeps the
        source's."""
        reply = await self._server_side_copy(source, bucket, key, metadata)
        kept = source.replaced(metadata)
        if reply is None:
            reply = await self._streamed_copy(source, bucket, key, kept)
        return self._written(bucket, key, source.size, kept, reply)

    async def _server_side_copy(self, source: Source, bucket: str, key: str,
                                metadata: dict[str, str] | None) -> dict[str, Any] | None:
        """CopyObject, or above `copy_threshold` a multipart copy; None (remembered) where the
        server does not do the one needed."""
        whole = source.size <= self.copy_threshold
        operation = "CopyObject" if whole else "UploadPartCopy"
        if operation in self._unsupported:
            return None
        try:
            if whole:
                return await self._copy_whole(source, bucket, key, metadata)
            create = object_fields(source.replaced(metadata))
            return await self._multipart(bucket, key, source.size, create,
                                         self._copied_parts(source, bucket, key))
        except NotSupported as exc:
            self._lacks(operation, exc)
            return None

    async def _copy_whole(self, source: Source, bucket: str, key: str,
                          metadata: dict[str, str] | None) -> dict[str, Any]:
        # A COPY keeps metadata and headers but not the storage class: name it again.
        storage_class = source.metadata.get(":storage-class")
        replace = object_fields(source.replaced(metadata)) if metadata is not None else \
            {"StorageClass": storage_class} if storage_class else {}
        return await self._call(self.client.copy_object, Bucket=bucket, Key=key,
                                CopySource={"Bucket": source.bucket, "Key": source.key},
                                CopySourceIfMatch=source.etag,
                                MetadataDirective="COPY" if metadata is None else "REPLACE",
                                **replace)

    def _copied_parts(self, source: Source, bucket: str, key: str) -> PartSender:
        """Parts copied on the server (UploadPartCopy)."""
        async def send(upload_id: str, number: int, offset: int, length: int) -> str:
            reply = await self._call(self.client.upload_part_copy, Bucket=bucket, Key=key,
                                     UploadId=upload_id, PartNumber=number,
                                     CopySource={"Bucket": source.bucket, "Key": source.key},
                                     CopySourceRange=f"bytes={offset}-{offset + length - 1}",
                                     CopySourceIfMatch=source.etag)
            return str(reply["CopyPartResult"]["ETag"])

        return send

    async def _streamed_copy(self, source: Source, bucket: str, key: str,
                             metadata: dict[str, str]) -> dict[str, Any]:
        """The copy through this client, for servers without server-side copies: ranged GETs
        fed to an upload, never more in memory than the parts in flight."""
        if source.size > MIN_PART:
            return await self._multipart(bucket, key, source.size, object_fields(metadata),
                                         self._streamed_parts(source, bucket, key))
        body = await self._source_range(source, 0, source.size) if source.size else b""
        return await self._put(bucket, key, body, metadata)

    def _streamed_parts(self, source: Source, bucket: str, key: str) -> PartSender:
        """Parts read from the source by ranged GETs, then uploaded."""
        async def send(upload_id: str, number: int, offset: int, length: int) -> str:
            body = await self._source_range(source, offset, length)
            reply = await self._send("UploadPart", "PUT", bucket, key,
                                     part_query(upload_id, number), body=body)
            return reply.headers.get("etag", "")

        return send

    async def _source_range(self, source: Source, offset: int, length: int) -> bytes:
        body = (await self._get(source.bucket, source.key, offset, length,
                                if_match=source.etag)).body
        if len(body) != length:
            raise TemporaryFailure(f"short read of {source.key} at {offset}: {len(body)} of "
                                   f"{length} bytes")
        return body


async def _open(context: DriverContext) -> BackendSource:
    if not context.rest.startswith("//"):
        raise ConfigError(f"{context.source}: an S3 source is s3://[BUCKET[/PREFIX]]")
    if context["part_size"] < MIN_STREAM_PART:
        raise ConfigError("--s3-part-size must be at least 5M (S3's smallest part)")
    backend = S3Backend(context["endpoint_url"], context["region"], context["profile"],
                        context["path_style"], part_size=context["part_size"])
    return BackendSource(backend, Scope.parse(context.rest[2:], context.source))


DRIVER = Driver(
    name="s3", schemes=("s3",), open=_open,
    summary="s3:// (every bucket) or s3://BUCKET[/PREFIX]; credentials come from the "
            "environment or the AWS config files, never from the command line",
    options=(
        Option("endpoint_url", "an S3-compatible endpoint (default: AWS)", metavar="URL",
               aliases=("--endpoint-url",), identity=True),
        Option("region", "the region (default: from the AWS config)", aliases=("--region",)),
        Option("profile", "a profile of the AWS shared config files", aliases=("--profile",)),
        Option("path_style", "path-style bucket addressing (URL/bucket/key)", switch=True,
               default=False, aliases=("--path-style",)),
        Option("part_size", "a large file goes up in parts of SIZE while it is written "
               "(default 8M)", parse=parse_size, default=MIN_PART, metavar="SIZE"),
    ),
    secret_env=("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"))
