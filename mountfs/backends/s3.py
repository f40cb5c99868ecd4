"""The S3 driver: any S3-compatible store through boto3, run in trio worker threads.

Owns the S3 wire details: SigV4 and XML (botocore), ListObjectsV2 paging with a delimiter,
ranged GETs, multipart uploads with parts sent in parallel, CopyObject, and the mapping of S3
error codes to mountfs errors. Credentials are found the way AWS tools find them (environment,
shared files, profile); none ever comes from the command line.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, BinaryIO, TypeVar

import trio

from mountfs.backends.base import Backend, Features, ObjectInfo
from mountfs.errors import (AlreadyExists, BackendError, ConfigError, NoSuchBucket, NoSuchObject,
                            NotEmpty, PermissionDenied, QuotaExceeded, TemporaryFailure, TooLarge)

log = logging.getLogger(__name__)

T = TypeVar("T")
MIN_PART = 8 * 1024 * 1024
MAX_PARTS = 10_000
PARALLEL_PARTS = 4

_BY_CODE: dict[str, type[BackendError]] = {
    "NoSuchBucket": NoSuchBucket,
    "NoSuchKey": NoSuchObject,
    "404": NoSuchObject,
    "NotFound": NoSuchObject,
    "AccessDenied": PermissionDenied,
    "403": PermissionDenied,
    "Forbidden": PermissionDenied,
    "AllAccessDisabled": PermissionDenied,
    "BucketAlreadyExists": AlreadyExists,
    "BucketAlreadyOwnedByYou": AlreadyExists,
    "BucketNotEmpty": NotEmpty,
    "EntityTooLarge": TooLarge,
    "QuotaExceeded": QuotaExceeded,
    "SlowDown": TemporaryFailure,
    "Throttling": TemporaryFailure,
    "ThrottlingException": TemporaryFailure,
    "RequestTimeout": TemporaryFailure,
    "RequestTimeTooSkewed": TemporaryFailure,
    "InternalError": TemporaryFailure,
    "ServiceUnavailable": TemporaryFailure,
    "503": TemporaryFailure,
    "500": TemporaryFailure,
}


def part_size_for(size: int) -> int:
    """Parts of at least 8 MiB, grown (in MiB steps) so that no object needs 10,000 parts."""
    need = -(-size // MAX_PARTS)
    mib = 1024 * 1024
    return max(MIN_PART, -(-need // mib) * mib)


class S3Backend(Backend):
    features = Features()

    def __init__(self, endpoint_url: str | None = None, region: str | None = None,
                 profile: str | None = None, path_style: bool = False, workers: int = 8) -> None:
        import boto3
        import botocore.config

        self.endpoint_url = endpoint_url
        try:
            session = boto3.session.Session(profile_name=profile, region_name=region)
        except Exception as exc:  # ProfileNotFound and friends
            raise ConfigError(f"S3 credentials: {exc}") from None
        config = botocore.config.Config(
            max_pool_connections=workers + PARALLEL_PARTS,
            retries={"mode": "standard", "max_attempts": 3},
            s3={"addressing_style": "path" if path_style else "auto"},
            connect_timeout=10, read_timeout=60,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self.region = session.region_name
        self._limiter = trio.CapacityLimiter(workers + PARALLEL_PARTS)

    def describe(self) -> str:
        return f"s3:{self.endpoint_url or 'aws'}"

    # ---- plumbing --------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs),
                                                 limiter=self._limiter)
        except Exception as exc:
            raise self.translate(exc) from exc

    def translate(self, exc: BaseException) -> BaseException:
        import botocore.exceptions as bx

        if isinstance(exc, bx.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            cls = _BY_CODE.get(code)
            if cls is None and status >= 500:
                cls = TemporaryFailure
            return (cls or BackendError)(f"{code or status}: {err.get('Message', '')}".strip())
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError,
                            bx.ReadTimeoutError, bx.ConnectTimeoutError,
                            bx.ResponseStreamingError, bx.IncompleteReadError)):
            return TemporaryFailure(str(exc))
        if isinstance(exc, bx.NoCredentialsError):
            return PermissionDenied("no S3 credentials found")
        return exc

    def _info(self, bucket: str, key: str, meta: dict[str, Any]) -> ObjectInfo:
        mtime = meta.get("LastModified")
        return ObjectInfo(
            bucket, key, int(meta.get("ContentLength", meta.get("Size", 0))),
            int(mtime.timestamp() * 1e9) if mtime else 0,
            str(meta.get("ETag", "")).strip('"'),
            meta.get("Metadata"),
        )

    # ---- buckets ---------------------------------------------------------------------------

    async def check(self) -> None:
        try:
            await self.list_buckets()
        except (TemporaryFailure, PermissionDenied, BackendError) as exc:
            where = self.endpoint_url or "AWS S3"
            raise ConfigError(f"cannot use {where}: {exc}") from None

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

    # ---- objects ---------------------------------------------------------------------------

    async def list_objects(self, bucket: str, prefix: str, delimiter: str | None = "/",
                           page_size: int = 1000) -> AsyncIterator[list[ObjectInfo]]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        while True:
            reply = await self._call(self.client.list_objects_v2, **kwargs)
            page = [self._info(bucket, c["Key"], c) for c in reply.get("Contents", [])]
            page += [ObjectInfo(bucket, p["Prefix"], is_prefix=True)
                     for p in reply.get("CommonPrefixes", [])]
            page.sort(key=lambda info: info.key)
            yield page
            token = reply.get("NextContinuationToken")
            if not reply.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        reply = await self._call(self.client.head_object, Bucket=bucket, Key=key)
        return self._info(bucket, key, reply)

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""

        def get() -> bytes:
            reply = self.client.get_object(Bucket=bucket, Key=key,
                                           Range=f"bytes={offset}-{offset + length - 1}")
            with reply["Body"] as body:
                return body.read()

        try:
            return await self._call(get)
        except BackendError as exc:
            if "InvalidRange" in str(exc):
                return b""
            raise

    async def write_object(self, bucket: str, key: str, data: BinaryIO, size: int,
                           metadata: dict[str, str]) -> ObjectInfo:
        if size <= MIN_PART:
            body = data.read(size)
            if len(body) != size:
                raise BackendError(f"short read of {key}: {len(body)} of {size} bytes")
            await self._call(self.client.put_object, Bucket=bucket, Key=key, Body=body,
                             Metadata=metadata)
        else:
            await self._multipart(bucket, key, data, size, metadata)
        return await self.stat_object(bucket, key)

    async def _multipart(self, bucket: str, key: str, data: BinaryIO, size: int,
                         metadata: dict[str, str]) -> None:
        """Parts read one at a time from `data` (it is one stream), sent in parallel; the
        object appears only when CompleteMultipartUpload succeeds, else the upload is aborted."""
        part = part_size_for(size)
        upload = await self._call(self.client.create_multipart_upload, Bucket=bucket, Key=key,
                                  Metadata=metadata)
        upload_id = upload["UploadId"]
        etags: dict[int, str] = {}
        read_lock = threading.Lock()
        sem = trio.Semaphore(PARALLEL_PARTS)

        async def send(number: int, offset: int, length: int) -> None:
            def read() -> bytes:
                with read_lock:
                    data.seek(offset)
                    return data.read(length)
            try:
                body = await trio.to_thread.run_sync(read)
                if len(body) != length:
                    raise BackendError(f"short read of {key} at {offset}")
                reply = await self._call(self.client.upload_part, Bucket=bucket, Key=key,
                                         UploadId=upload_id, PartNumber=number, Body=body)
                etags[number] = reply["ETag"]
            finally:
                sem.release()

        try:
            async with trio.open_nursery() as nursery:
                for i, offset in enumerate(range(0, size, part)):
                    await sem.acquire()
                    nursery.start_soon(send, i + 1, offset, min(part, size - offset))
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            await self._call(self.client.complete_multipart_upload, Bucket=bucket, Key=key,
                             UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self._call(self.client.abort_multipart_upload, Bucket=bucket,
                                     Key=key, UploadId=upload_id)
                except Exception as exc:
                    log.warning("could not abort multipart upload of %s: %s", key, exc)
            raise

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        await self._call(self.client.copy_object, Bucket=bucket, Key=key,
                         CopySource={"Bucket": bucket, "Key": key}, Metadata=metadata,
                         MetadataDirective="REPLACE")
        return await self.stat_object(bucket, key)

    async def delete_object(self, bucket: str, key: str) -> None:
        await self._call(self.client.delete_object, Bucket=bucket, Key=key)

    async def copy_object(self, bucket: str, key: str, dst_bucket: str,
                          dst_key: str) -> ObjectInfo:
        await self._call(self.client.copy_object, Bucket=dst_bucket, Key=dst_key,
                         CopySource={"Bucket": bucket, "Key": key}, MetadataDirective="COPY")
        return await self.stat_object(dst_bucket, dst_key)
