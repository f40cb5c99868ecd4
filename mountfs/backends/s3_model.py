"""What S3 is apart from any one request: the ETag of a multipart upload, the part
sizes mountfs uploads in, and an object's metadata, headers and replies in boto3's names (the
fields boto3 takes and the replies it gives; s3_wire.py builds the same from the fast path's
raw HTTP)."""
from __future__ import annotations

import email.utils
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from mountfs.backends.base import split_headers
from mountfs.backends.s3_limits import MAX_PARTS, MIN_PART
from mountfs.errors import BackendError

log = logging.getLogger(__name__)

# The object headers mountfs keeps (base.HEADER_KEYS) as boto3 names them in requests and in
# HEAD's reply (Expires aside: HEAD's is parsed, its raw text is under HTTPHeaders).
HEADER_PARAMS = {":content-type": "ContentType", ":cache-control": "CacheControl",
                 ":content-disposition": "ContentDisposition",
                 ":content-encoding": "ContentEncoding", ":content-language": "ContentLanguage",
                 ":expires": "Expires", ":storage-class": "StorageClass"}


def multipart_etag(part_etags: list[str]) -> str:
    """The ETag S3 gives a multipart upload: the MD5 of its parts' binary MD5s, "-" count."""
    digests = b"".join(bytes.fromhex(e.strip('"')) for e in part_etags)
    return f"{hashlib.md5(digests).hexdigest()}-{len(part_etags)}"


def part_size_for(size: int) -> int:
    """Parts of at least 8 MiB, grown (in MiB steps) so that no object needs 10,000 parts."""
    need = -(-size // MAX_PARTS)
    mib = 1024 * 1024
    return max(MIN_PART, -(-need // mib) * mib)


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
