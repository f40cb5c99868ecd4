"""Backend drivers (one module each, registered in `registry`), and what a SOURCE opens: a
driver and the part of its store the mount shows (`Source`, `Scope`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mountfs.errors import BackendError, ConfigError, NoSuchBucket

if TYPE_CHECKING:  # the package is imported for every command; a driver's client only to mount
    from mountfs.backends.base import Backend


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
