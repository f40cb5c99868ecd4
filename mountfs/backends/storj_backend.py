"""The Storj DCS driver's store (its declaration is storj.py): `storj://[BUCKET[/PREFIX]]`,
through Storj's S3-compatible gateway (Gateway-MT), as Storj documents for s3fs and rclone.

The access grant (a file option, or STORJ_ACCESS; never argv) is parsed at open, before any
network use (storj_grant.py); at check it is registered with the auth service for S3
credentials and the gateway's endpoint, or the credentials kept from an earlier mount are
used (storj_auth.py), and dropped and registered again if the gateway refuses them. The
store is the S3 driver's (`S3Backend`, given those credentials) with what differs on Storj:
custom metadata entries are `user.*` attributes one each (storj_metadata.py), multipart
parts are whole multiples of Storj's 64 MiB segments, Storj's errors (limits exceeded) are
mapped, and a grant that allows no uploads mounts read-only.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from cache.storage import Readable
from mountfs.backends import Source
from mountfs.backends.base import HEADERS, ObjectInfo
from mountfs.backends.http import HttpPool
from mountfs.backends.s3_backend import S3Backend
from mountfs.backends.s3_errors import error_code
from mountfs.backends.s3_model import part_size_for
from mountfs.backends.storj_auth import Registrations, S3Credentials
from mountfs.backends.storj_grant import Grant
from mountfs.backends.storj_metadata import from_storj, to_storj
from mountfs.errors import (BackendError, ConfigError, PermissionDenied, QuotaExceeded,
                            TemporaryFailure)

log = logging.getLogger("mountfs.backends.storj")  # the driver's voice (its name in log lines)

SEGMENT = 64 * 1024 * 1024  # Storj's segment size: parts of whole segments store best
REGION = "us-east-1"  # the gateway ignores it; botocore needs one to sign
# The gateway's codes for credentials it does not know (forgotten, expired), as S3's.
REFUSED_CREDENTIALS = frozenset({"InvalidAccessKeyId"})
VERIFY_EVERY = 30.0  # seconds: how often refusals may make the driver ask whether it is them
T = TypeVar("T")
# The gateway's codes for uplink's errors that S3 has no code of its own for.
STORJ_CODES: dict[str, type[BackendError]] = {
    "BandwidthLimitExceeded": QuotaExceeded,  # uplink: bandwidth limit exceeded
    "StorageLimitExceeded": QuotaExceeded,
    "SegmentsLimitExceeded": QuotaExceeded,
    "TooManyRequests": TemporaryFailure,  # uplink: too many requests
}


class StorjBackend(S3Backend):
    """The S3 driver on Storj's gateway, with credentials from the auth service."""

    # Every other tool's custom metadata entry is the extended attribute user.<entry> here
    # (storj_metadata.py), kept as one: none is carried unseen as "other" metadata.
    features = dataclasses.replace(S3Backend.features, kept_attributes=frozenset(
        ("mode", "uid", "gid", "atime", "mtime", "ctime", "rdev", "xattr", *HEADERS)))

    def __init__(self, grant: Grant, registrations: Registrations) -> None:
        self.grant, self.registrations = grant, registrations
        self.http = HttpPool(2)
        # S3Backend.__init__ needs the credentials and the gateway's endpoint: it runs in
        # `_use`, at the first credentials (at check); later ones replace them.
        self._s3_built = False
        self._renewal = trio.Lock()
        self._renewals = 0  # how many times credentials were taken: which requests used which
        # When refusals last made the driver ask whether the gateway takes the credentials
        # (trio's clock), whatever it found: the answer stands for VERIFY_EVERY seconds.
        self._checked = -math.inf
        # The auth service's refusal of the grant when renewing credentials last asked it.
        self._refusal: ConfigError | None = None
        if not grant.writable:
            self.features = dataclasses.replace(
                StorjBackend.features, writable=False,
                why_read_only="the access grant allows no uploads (it was shared read-only)")

    def describe(self) -> str:
        return f"storj:{self.grant.satellite.rpartition('@')[2]}"

    def _use(self, credentials: S3Credentials) -> None:
        keys = (credentials.access_key_id, credentials.secret_key)
        if self._s3_built:
            self.use_credentials(keys, credentials.endpoint)
        else:
            S3Backend.__init__(self, credentials.endpoint, REGION, credentials=keys)
            self._s3_built = True
        self._renewals += 1

    async def _register_again(self) -> None:
        self.registrations.forget(self.grant)
        self._use(await self.registrations.register(self.grant, self.http))

    async def connect(self) -> None:
        """S3 credentials: kept from an earlier registration of the grant if the gateway still
        takes them, else from registering it now."""
        cached = self.registrations.cached(self.grant)
        if cached is None:
            self._use(await self.registrations.register(self.grant, self.http))
            return
        self._use(cached)
        try:
            # Kept credentials the gateway forgot or let expire (InvalidAccessKeyId) are renewed
            # in this request already, as any request's are (`retried`).
            await self.list_buckets()
        except PermissionDenied as exc:
            if self._refusal is not None:
                # Renewing them in that request asked the auth service already, which refused
                # the grant (revoked): its answer is the mount's one line, not asked twice.
                raise self._refusal from None
            # Refused otherwise (AccessDenied: the grant revoked), or renewed ones refused too.
            # This second path is the mount's alone: the gateway has not taken the kept
            # credentials once, so they are dropped and the grant registered again, and the
            # auth service says in the mount's one line whether it refuses the grant itself
            # (ConfigError). `retried` must not do so while mounted: a 403 other than
            # InvalidAccessKeyId may then be the grant's own refusal of one request (a path,
            # an operation it does not allow), which no registration cures: EACCES.
            log.info("the gateway refused the kept Storj credentials (%s): registering the "
                     "access grant again", exc)
            await self._register_again()
        except BackendError:
            pass  # the mount's check says what is wrong, in one line

    async def retried(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """The retry policy, and once more with new credentials where the gateway no longer
        takes the ones a request was refused with (the auth service forgot or expired them,
        while mounted or since an earlier mount kept them): a program sees EACCES only where
        the grant itself refuses."""
        renewals = self._renewals
        try:
            return await super().retried(what, attempt)
        except PermissionDenied:
            if not await self._renewed_since(renewals):
                raise
        return await super().retried(what, attempt)

    async def _renewed_since(self, renewals: int) -> bool:
        """Whether credentials newer than those of `renewals` are in use: registered again now
        if the gateway refuses the current ones. A refusal may be the grant's own (a path it
        does not allow), and a HEAD's names no reason: a listing of the buckets tells, at most
        once per VERIFY_EVERY seconds, and once for the refusals of many requests at once.
        What it found, taken or refused (the grant's own refusal, or revoked), stands that
        long: the requests refused meanwhile are EACCES without asking again."""
        async with self._renewal:
            if self._renewals != renewals:
                return True
            if trio.current_time() - self._checked < VERIFY_EVERY:
                return False
            refusal: PermissionDenied | None = None
            try:
                await super().retried("ListBuckets (are the credentials still taken?)",
                                      lambda: self._once("list_buckets"))
            except PermissionDenied as exc:
                refusal = exc
            self._checked = trio.current_time()
            if refusal is None or error_code(refusal) not in REFUSED_CREDENTIALS:
                return False
            log.warning("the gateway no longer takes the Storj credentials (%s): "
                        "registering the access grant again", refusal)
            try:
                await self._register_again()
            except ConfigError as refused:  # revoked: the refusal stands
                log.warning("%s", refused)
                self._refusal = refused
                return False
            self._refusal = None  # taken again (the auth service was down, not refusing)
            return True

    def translate(self, exc: BaseException) -> BaseException:
        response = getattr(exc, "response", None)
        error = response.get("Error", {}) if isinstance(response, dict) else {}
        code = str(error.get("Code", ""))
        # Gateways before v1.9 prefixed their own codes with XStorj.
        cls = STORJ_CODES.get(code.removeprefix("XStorj"))
        if cls is None:
            return super().translate(exc)
        message = str(error.get("Message", ""))
        if cls is QuotaExceeded:
            log.warning("Storj: %s: %s (the project's limit; raise it in the satellite's UI)",
                        code, message)
        return cls(f"{code}: {message}")

    def part_size(self, size: int) -> int:
        return -(-part_size_for(size) // SEGMENT) * SEGMENT

    def part_upload_size(self) -> int:
        return -(-super().part_upload_size() // SEGMENT) * SEGMENT

    @staticmethod
    def _ours(info: ObjectInfo) -> ObjectInfo:
        """An object's info with its metadata as mountfs carries it."""
        if info.metadata is None:
            return info
        return dataclasses.replace(info, metadata=from_storj(info.metadata))

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        return self._ours(await super().stat_object(bucket, key))

    async def write_object(self, bucket: str, key: str, data: Readable, size: int,
                           metadata: dict[str, str], if_match: str | None = None) -> ObjectInfo:
        return self._ours(await super().write_object(bucket, key, data, size,
                                                     to_storj(metadata), if_match=if_match))

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        return self._ours(await super().set_metadata(bucket, key, to_storj(metadata)))

    async def begin_upload(self, bucket: str, key: str, metadata: dict[str, str]) -> str:
        return await super().begin_upload(bucket, key, to_storj(metadata))

    async def complete_upload(self, bucket: str, key: str, upload_id: str,
                              parts: list[tuple[int, str]], size: int, metadata: dict[str, str],
                              if_match: str | None = None) -> ObjectInfo | None:
        info = await super().complete_upload(bucket, key, upload_id, parts, size,
                                             to_storj(metadata), if_match=if_match)
        return None if info is None else self._ours(info)

    async def copy_object(self, bucket: str, key: str, dst_bucket: str,
                          dst_key: str) -> ObjectInfo:
        return self._ours(await super().copy_object(bucket, key, dst_bucket, dst_key))

    async def aclose(self) -> None:
        self.http.close()
        await super().aclose()


@dataclasses.dataclass(frozen=True)
class StorjSource(Source):
    """Registers (or reuses) credentials first; a missing bucket of a bucket mount is made
    with --storj-create (uplink's ensure_bucket)."""

    create: bool = False

    async def check(self) -> None:
        backend = self.backend
        assert isinstance(backend, StorjBackend)
        await backend.connect()
        bucket = self.scope.bucket
        if bucket is not None and self.create:
            try:
                await backend.create_bucket(bucket)
                log.info("created the bucket %s", bucket)
            except BackendError as exc:
                if "AlreadyOwnedByYou" not in str(exc) and "AlreadyExists" not in str(exc):
                    raise ConfigError(f"{backend.describe()}: cannot create bucket "
                                      f"{bucket!r}: {exc}") from None
        try:
            await super().check()
        except ConfigError as exc:
            if bucket is not None and "no bucket" in str(exc):
                raise ConfigError(f"{exc} (--storj-create makes it)") from None
            raise
