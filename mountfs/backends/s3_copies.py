"""S3 copies: CopyObject, UploadPartCopy above the copy threshold, or a copy streamed through
this client where the server does neither; each conditional on the source's ETag. Also a
change of metadata, which on S3 is a copy of the object onto itself."""
from __future__ import annotations

from typing import Any

from mountfs.backends.base import ObjectInfo
from mountfs.backends.s3_limits import MIN_PART
from mountfs.backends.s3_model import Source, object_fields
from mountfs.backends.s3_multipart import PartSender, S3Multipart
from mountfs.backends.s3_wire import part_query
from mountfs.errors import NotSupported, TemporaryFailure


class S3Copies(S3Multipart):
    """The S3 driver's copies."""

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        """A copy onto itself with the new metadata (S3 has no other way), headers kept."""
        source = await self._source(bucket, key)
        return await self._copy(source, bucket, key, metadata)

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
        return await self._call("copy_object", Bucket=bucket, Key=key,
                                CopySource={"Bucket": source.bucket, "Key": source.key},
                                CopySourceIfMatch=source.etag,
                                MetadataDirective="COPY" if metadata is None else "REPLACE",
                                **replace)

    def _copied_parts(self, source: Source, bucket: str, key: str) -> PartSender:
        """Parts copied on the server (UploadPartCopy)."""
        async def send(upload_id: str, number: int, offset: int, length: int) -> str:
            reply = await self._call("upload_part_copy", Bucket=bucket, Key=key,
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
