"""S3 multipart uploads: a file sent in parts in parallel (at most PARALLEL_PARTS in flight
over the driver) and completed only when every part is stored, else aborted; the parts of a
file uploaded while it is written (Backend.begin_upload, driven by the write-back queue); and
the cleaning up of uploads a killed process left unfinished."""
from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from cache.storage import Readable
from mountfs.backends.base import ObjectInfo
from mountfs.backends.s3_errors import error_code
from mountfs.backends.s3_model import etag_of, multipart_etag, object_fields, part_size_for
from mountfs.backends.s3_requests import S3Requests
from mountfs.backends.s3_wire import PartBody, Reply, part_query
from mountfs.errors import BackendError, NotSupported, TemporaryFailure

log = logging.getLogger(__name__)

# Sends one part of a multipart upload: (upload id, part number, offset, length) -> its ETag.
PartSender = Callable[[str, int, int, int], Awaitable[str]]


class S3Multipart(S3Requests):
    """The S3 driver's multipart uploads (their parts hold the slots `_part_slots`)."""

    def _file_parts(self, bucket: str, key: str, data: Readable,
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
        upload = await self._call("create_multipart_upload", Bucket=bucket, Key=key,
                                  **create)
        upload_id = upload["UploadId"]
        try:
            etags = await self._send_parts(size, functools.partial(send, upload_id))
            parts: list[dict[str, Any]] = [{"PartNumber": n, "ETag": etags[n]}
                                           for n in sorted(etags)]
            if part_etags is not None:
                part_etags.extend(p["ETag"] for p in parts)
            try:
                return await self._call("complete_multipart_upload", Bucket=bucket,
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
                    await self._call("abort_multipart_upload", Bucket=bucket,
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
                reply = await self._call("list_multipart_uploads", **kwargs)
            except NotSupported as exc:
                self._lacks("ListMultipartUploads", exc)
                return
            for upload in reply.get("Uploads", []):
                begun = upload.get("Initiated")
                if upload.get("Key") != key or begun is None \
                        or begun.timestamp() * 1e9 >= before_ns:
                    continue
                try:
                    await self._call("abort_multipart_upload", Bucket=bucket,
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
        tries it again) may have completed the upload. Then the object's ETag is the one these
        parts make, and the upload is done; else nothing says the object is ours: a temporary
        failure, so the queue uploads it again (the upload is gone, the error is no reason to
        give up)."""
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
        upload = await self._call("create_multipart_upload", Bucket=bucket, Key=key,
                                  **object_fields(metadata))
        return str(upload["UploadId"])

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int,
                          data: Readable, offset: int, length: int) -> str | None:
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
                "complete_multipart_upload", Bucket=bucket, Key=key,
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
            await self._call("abort_multipart_upload", Bucket=bucket, Key=key,
                             UploadId=upload_id)
        except BackendError as exc:
            if error_code(exc) != "NoSuchUpload":  # else gone already
                raise
