"""Backend drivers, and `open_source`, which turns a SOURCE argument into a driver and the part
of its store the mount shows (its `Scope`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mountfs.backends.base import Backend
from mountfs.errors import BackendError, ConfigError, NoSuchBucket

SCHEMES = ("local", "s3", "dcss")


@dataclass(frozen=True)
class BackendOptions:
    """Service options from the command line; secrets never travel this way."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    path_style: bool = False
    token_file: Path | None = None
    token_public_key: Path | None = None
    api_url: str | None = None
    s3_endpoint: str | None = None
    part_size: int | None = None


@dataclass(frozen=True)
class Scope:
    """What the mount's root shows: every bucket (bucket None), or one bucket from a key prefix
    on. The prefix is empty or ends with '/'."""

    bucket: str | None = None
    prefix: str = ""

    @classmethod
    def parse(cls, path: str, source: str) -> Scope:
        """`BUCKET[/PREFIX]` as in s3://BUCKET/PREFIX; empty for every bucket."""
        bucket, _, prefix = path.strip("/").partition("/")
        parts = prefix.split("/") if prefix else []
        if any(part in ("", ".", "..") for part in parts):
            raise ConfigError(f"{source}: the prefix must be names separated by single '/'")
        return cls(bucket or None, prefix + "/" if prefix else "")



@dataclass(frozen=True)
class Source:
    backend: Backend
    scope: Scope

    def describe(self) -> str:
        """For logs and status: the driver's description, and the bucket/prefix if scoped."""
        where = self.backend.describe()
        return f"{where} {self.scope.bucket}/{self.scope.prefix}" if self.scope.bucket else where

    async def check(self) -> None:
        """Fail fast, in one line, on a wrong endpoint, credentials or bucket."""
        bucket = self.scope.bucket
        if bucket is None:
            await self.backend.check()
            return
        # Listing the bucket alone checks endpoint and credentials too, and needs no right to
        # list every bucket, which credentials scoped to one bucket often lack.
        try:
            async for _ in self.backend.list_objects(bucket, self.scope.prefix, page_size=1):
                break
        except NoSuchBucket:
            raise ConfigError(f"{self.backend.describe()}: no bucket {bucket!r}") from None
        except BackendError as exc:
            raise ConfigError(f"{self.backend.describe()}: cannot list bucket {bucket!r}: "
                              f"{exc}") from None


def open_source(source: str, options: BackendOptions = BackendOptions()) -> Source:
    """The driver and scope for SOURCE; ConfigError, one line, if it is wrong."""
    scheme, sep, rest = source.partition(":")
    if not sep or "/" in scheme or not scheme:
        scheme, rest = "local", source
    if scheme == "local":
        from mountfs.backends.local import LocalBackend
        return Source(LocalBackend(rest), Scope())
    if scheme == "s3":
        from mountfs.backends.s3 import S3Backend
        if not rest.startswith("//"):
            raise ConfigError(f"{source}: an S3 source is s3://[BUCKET[/PREFIX]]")
        scope = Scope.parse(rest[2:], source)
        return Source(S3Backend(options.endpoint_url, options.region, options.profile,
                                options.path_style), scope)
    if scheme == "dcss":
        from mountfs.backends.dcss import open_dcss
        return open_dcss(source, rest, options)
    raise ConfigError(f"unknown storage scheme {scheme!r} in {source!r} "
                      f"(known: {', '.join(SCHEMES)})")
