"""How the S3 driver sends a request: the botocore session and its credentials, boto3 for
the rare requests (in trio worker threads) and the fast path of s3_wire.py (awscrt) for the
frequent ones, where each bucket's requests go, each under the one retry policy with its
errors translated once (s3_errors.py); and the requests every part of the driver shares
(HEAD, ranged GET, PutObject, and what a failed conditional write means)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, TypeVar

import trio

from mountfs.backends.base import IF_ABSENT, Backend, Features, ObjectInfo, Sink
from mountfs.backends.http import timeouts
from mountfs.backends.s3_download import Downloads
from mountfs.backends.s3_errors import translate
from mountfs.backends.s3_limits import MAX_COPY, MAX_KEY, MAX_OBJECT, MIN_PART
from mountfs.backends.s3_model import etag_of, reply_time_ns
from mountfs.backends.s3_wire import (CONDITION_HEADERS, Base, Reply, Wire, head_fields,
                                      object_headers, write_fields)
from mountfs.errors import (BackendError, ConfigError, NoSuchObject, NotSupported,
                            PreconditionFailed, PreconditionLost, TemporaryFailure)

log = logging.getLogger(__name__)

T = TypeVar("T")
# Parts in flight at once, over all uploads and copies of one driver: the boto3 baseline's 8
# threads. Bounds the memory of uploads and streamed copies to PARALLEL_PARTS x part size.
PARALLEL_PARTS = 8
# HEADs the stat-ahead keeps in flight (`ls -l`, rsync): s3rver answers a HEAD in well under a
# millisecond, and with 16 in flight it stood idle 5% of an `ls -l` of 10,000 while the mount
# handled replies (2 cores, 2026-12-05). HEADs alone through this driver, 5,000 per point:
# 16 in flight 1,750/s, 48 in flight 1,880-2,250/s, and s3rver's CPU per HEAD fell from
# 0.62 to 0.52-0.62 ms (it takes more requests per turn of its event loop). `ls -l` of
# 10,000, 4 paired rounds, time over s3fs's: 0.86-1.10 with 16, 0.73-0.92 with 48.
# s3fs keeps 20 HEADs in flight; a service farther away than 127.0.0.1 needs more, not fewer.
PARALLEL_METADATA_READS = 48


class S3Requests(Backend):
    """The S3 driver's requests (S3Backend is the driver; s3_multipart.py and s3_copies.py
    add what they are made of)."""

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
        # The uploads the mount keeps under way (small files' PUTs) are boto3's pool: fewer
        # would leave connections idle, more would only queue for them.
        self.features = dataclasses.replace(self.features, parallel_requests=threads,
                                            parallel_metadata_reads=PARALLEL_METADATA_READS)
        # The fast path's connections: enough for the stat-ahead's HEADs, or for the uploads
        # and reads under way (through the one limiter of the Wire).
        connections = max(threads, PARALLEL_METADATA_READS)
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
        self._core, self._session, self._config = core, session, config
        self._regional: dict[str, Any] = {}  # clients of other regions: their buckets' URLs
        # The fast path signs with the credentials boto3 resolved (one chain: environment,
        # shared files, profile, refreshed when they expire) and trusts what it trusts.
        self.wire = Wire(self.region or "us-east-1", core.get_credentials, connections,
                         connect_timeout, read_timeout, core.get_config_variable("ca_bundle"))
        # Ranged GETs into the cache's block files (see s3_download).
        self.downloads = Downloads(self.wire, connections,
                                   core.get_config_variable("ca_bundle"))
        self._bases: dict[str, Base] = {}
        self._limiter = trio.CapacityLimiter(threads)
        self._part_slots = trio.Semaphore(PARALLEL_PARTS)
        # Operations this server answered NotImplemented (or the like): not asked again.
        self._unsupported: set[str] = set()

    def use_credentials(self, credentials: tuple[str, str], endpoint_url: str | None) -> None:
        """Sign from now on with `credentials` (access key id, secret) at `endpoint_url`: a
        driver that obtains its credentials renews them while it is mounted. Requests under
        way end with the credentials they began with; the fast path takes the session's at
        each request, boto3's clients are made again."""
        self._core.set_credentials(*credentials)
        if endpoint_url != self.endpoint_url:
            self.endpoint_url = endpoint_url
            self._bases.clear()
        self.client = self._session.client("s3", endpoint_url=endpoint_url, config=self._config)
        self._regional.clear()

    async def aclose(self) -> None:
        self.wire.close()
        self.downloads.close()

    def describe(self) -> str:
        return f"s3:{self.endpoint_url or 'aws'}"

    # ---- plumbing --------------------------------------------------------------------------

    async def _call(self, operation: str, **kwargs: Any) -> Any:
        """A boto3 request: `operation` (the client method's name) under the retry policy."""
        where = "/".join(str(kwargs[name]) for name in ("Bucket", "Key") if name in kwargs)
        return await self.retried(f"{operation} {where}".strip(),
                                  lambda: self._once(operation, **kwargs))

    async def _once(self, operation: str, **kwargs: Any) -> Any:
        """One try of `operation` in a worker thread, its errors translated. The client is
        the one of this try: credentials renewed meanwhile (`use_credentials`) sign it."""
        fn = getattr(self.client, operation)
        try:
            return await trio.to_thread.run_sync(lambda: fn(**kwargs), limiter=self._limiter)
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
            reply = await self._once("head_bucket", Bucket=bucket)
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
        return translate(exc)

    def _lacks(self, operation: str, exc: BackendError) -> None:
        """Remember that the server does not do `operation`, and say so in the log."""
        self._unsupported.add(operation)
        log.info("%s does not do %s (%s): using a fallback from now on", self.describe(),
                 operation, exc)

    @staticmethod
    def _written(bucket: str, key: str, size: int, metadata: dict[str, str],
                 reply: dict[str, Any]) -> ObjectInfo:
        """What a later HEAD would say of an object just written, from the write's own reply:
        PutObject, CompleteMultipartUpload or CopyObject (which nests it in CopyObjectResult)."""
        result = reply.get("CopyObjectResult", {})
        return ObjectInfo(bucket, key, size, reply_time_ns(result) or reply_time_ns(reply),
                          etag_of(result or reply), dict(metadata))

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
