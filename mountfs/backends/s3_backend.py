"""The S3 driver's store: any S3-compatible one. The frequent requests (HEAD, ranged GET, PUT
and upload parts, listing pages, DELETE) go over the fast request path of s3_wire.py (awscrt); the
rare ones (buckets, multipart create/complete/abort, copies) through boto3 in trio worker
threads. Both sign with the same botocore credentials and go where botocore's addressing says
(s3_requests.py).

Owns what the driver is made of: buckets, listing (ListObjectsV2, or ListObjects v1 where a
server lacks V2), ranged GETs, whole-object writes and deletes. Built on
multipart uploads with parts sent in parallel (s3_multipart.py), copies (s3_copies.py), and
the one mapping of S3 error codes to mountfs errors (s3_errors.py). Credentials are found the
way AWS tools find them (environment, shared files, profile); none ever comes from the command
line. The driver's declaration (options, factory) is s3.py.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import trio

from cache.storage import Readable
from mountfs.backends.base import ObjectInfo, Sink
from mountfs.backends.s3_copies import S3Copies
from mountfs.backends.s3_errors import error_code
from mountfs.backends.s3_limits import MIN_PART
from mountfs.backends.s3_model import (etag_of, metadata_of, multipart_etag, object_fields,
                                       resume_marker)
from mountfs.backends.s3_wire import listing_fields
from mountfs.errors import (BackendError, ConfigError, NotSupported, PermissionDenied,
                            TemporaryFailure)

log = logging.getLogger("mountfs.backends.s3")  # the driver's voice (its name in log lines)

# Buckets whose addresses a mount of every bucket resolves at mount (`S3Backend.check`).
WARM_BUCKETS = 4


class S3Backend(S3Copies):
    """The S3 driver."""

    def _info(self, bucket: str, key: str, meta: dict[str, Any]) -> ObjectInfo:
        """From a HEAD reply (with metadata) or a listing entry (without)."""
        mtime = meta.get("LastModified")
        return ObjectInfo(
            bucket, key, int(meta.get("ContentLength", meta.get("Size", 0))),
            int(mtime.timestamp() * 1e9) if mtime else 0,
            etag_of(meta),
            metadata_of(meta) if "Metadata" in meta else None,
        )

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
        reply = await self._call("list_buckets")
        return sorted(b["Name"] for b in reply.get("Buckets", []))

    async def create_bucket(self, bucket: str) -> None:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        await self._call("create_bucket", **kwargs)

    async def delete_bucket(self, bucket: str) -> None:
        await self._call("delete_bucket", Bucket=bucket)

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
        # The body goes to the sink (the cache's block files) as it arrives, a piece at a time
        # (s3_download.py): no list of chunks, no join, no second write from a worker thread.
        if length <= 0:
            return 0
        try:
            return (await self._get(bucket, key, offset, length, sink=sink)).length
        except BackendError as exc:
            if error_code(exc) == "InvalidRange":
                return 0
            raise

    async def write_object(self, bucket: str, key: str, data: Readable, size: int,
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

    async def delete_object(self, bucket: str, key: str) -> None:
        await self._send("DeleteObject", "DELETE", bucket, key)
