"""Kit of the `firecrest` driver on API v2: the session's local FirecREST service (fixture
`firecrest_v2_service`, tests/servers/firecrest.py), staging through its moto_server; the kit
`firecrest_v1` (tests/kits/firecrest_v1.py) is the same on API v1.

Its system `kit` has two file systems, `/bucket` and `/work`: the mount of `firecrest://kit`
lists both at its root (`buckets`), tests work in `/bucket`, and the transfer jobs write their
logs in the user's directory of `/work` (the system's default work dir, as on the real
service), out of the tests' way. The store is seen on the host, in the service's directory.

The contract suite calls the driver with the bucket `bucket` and keys below it, as it calls
every driver; FirecREST's buckets are systems, so the kit hands the suite the driver behind
`DirectoryAsBucket`, which only renames: bucket `bucket` is the directory `/bucket` of `kit`.
"""
from __future__ import annotations

import dataclasses
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kits import Kit, Store
from cache.storage import Readable
from mountfs.backends import Source
from mountfs.backends.base import Backend, Features, ObjectInfo
from mountfs.errors import NotSupported

T = TypeVar("T")

SYSTEM = "kit"
SYSTEMS = (f"{SYSTEM}:/bucket,/work",)  # the last is the work dir, where jobs log
DIRECT_LIMIT = 1024 * 1024  # the real v2's (pyfirecrest's MAX_DIRECT_UPLOAD_SIZE)


class FirecrestKit(Kit):
    buckets = ("bucket", "work")
    lists_metadata = True  # `ops/ls` carries mode, owner and mtime
    any_key = False  # a directory tree
    store_symlinks = True
    bucket_prefix = "bucket/"  # a directory of the system the mount shows

    def __init__(self, name: str, api: str) -> None:
        self.name, self.api = name, api

    def make_store(self, request: pytest.FixtureRequest, directory: Path) -> Store:
        service = request.getfixturevalue(f"firecrest_{self.api}_service")
        stored = service.host_path(SYSTEM, f"/{self.bucket}")
        for entry in stored.iterdir():  # fresh: what earlier tests left goes
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return Store(self, service.host_path(SYSTEM, "/"), f"firecrest://{SYSTEM}",
                     ["--firecrest-api-version", self.api],
                     env={**service.environment(), "FIRECREST_TOKEN": ""},
                     driver_options={"api_version": self.api})

    async def open(self, store: Store) -> Source:
        source = await super().open(store)
        return Source(DirectoryAsBucket(source.backend, SYSTEM), source.scope)


class DirectoryAsBucket(Backend):
    """`backend` with each top directory of its bucket `system` as a bucket of its own: the
    keys of bucket B are the keys below `B/` of `system`. Nothing else changes."""

    def __init__(self, backend: Backend, system: str) -> None:
        self.backend, self.system = backend, system

    @property  # type: ignore[override]
    def features(self) -> Features:
        return self.backend.features

    def describe(self) -> str:
        return self.backend.describe()

    def _out(self, bucket: str, info: ObjectInfo) -> ObjectInfo:
        return dataclasses.replace(info, bucket=bucket, key=info.key[len(bucket) + 1:])

    async def _call(self, bucket: str, call: Callable[[], Awaitable[ObjectInfo]]) -> ObjectInfo:
        return self._out(bucket, await call())

    async def list_buckets(self) -> list[str]:
        return [info.key.rstrip("/") async for info in self._top()]

    async def _top(self) -> AsyncIterator[ObjectInfo]:
        async for page in self.backend.list_objects(self.system, ""):
            for info in page:
                if info.is_prefix:
                    yield info

    async def create_bucket(self, bucket: str) -> None:
        raise NotSupported("the kit's buckets are the system's file systems")

    async def delete_bucket(self, bucket: str) -> None:
        raise NotSupported("the kit's buckets are the system's file systems")

    async def list_objects(self, bucket: str, prefix: str, delimiter: str | None = "/",
                           page_size: int = 1000) -> AsyncIterator[list[ObjectInfo]]:
        async for page in self.backend.list_objects(self.system, f"{bucket}/{prefix}",
                                                    delimiter, page_size):
            found = [self._out(bucket, info) for info in page if info.key != f"{bucket}/"]
            if found:
                yield found

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        return await self._call(bucket, lambda: self.backend.stat_object(
            self.system, f"{bucket}/{key}"))

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        return await self.backend.read_object(self.system, f"{bucket}/{key}", offset, length)

    async def write_object(self, bucket: str, key: str, data: Readable, size: int,
                           metadata: dict[str, str], **condition: Any) -> ObjectInfo:
        return await self._call(bucket, lambda: self.backend.write_object(
            self.system, f"{bucket}/{key}", data, size, metadata, **condition))

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        return await self._call(bucket, lambda: self.backend.set_metadata(
            self.system, f"{bucket}/{key}", metadata))

    async def delete_object(self, bucket: str, key: str) -> None:
        await self.backend.delete_object(self.system, f"{bucket}/{key}")

    async def copy_object(self, bucket: str, key: str, dst_bucket: str,
                          dst_key: str) -> ObjectInfo:
        return await self._call(dst_bucket, lambda: self.backend.copy_object(
            self.system, f"{bucket}/{key}", self.system, f"{dst_bucket}/{dst_key}"))

    async def rename_object(self, bucket: str, key: str, dst_key: str) -> ObjectInfo:
        return await self._call(bucket, lambda: self.backend.rename_object(
            self.system, f"{bucket}/{key}", f"{bucket}/{dst_key}"))

    async def aclose(self) -> None:
        await self.backend.aclose()


KIT = FirecrestKit("firecrest", "v2")
