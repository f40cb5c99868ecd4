"""An example driver: an object store in the memory of the process that opened it.

What adding a driver takes, shown whole: this module (a `Backend` and its `DRIVER`
declaration), found through `MOUNTFS_DRIVERS=example_driver`, and a test kit
(tests/kits/example.py). Nothing else of mountfs or of its tests changes. Its store lives only
as long as its process, so the contract suite runs on it, the mounted suites do not.

`example:NAME` opens the store NAME (made empty on first use).
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from cache.storage import Readable
from mountfs.backends import Scope, Source
from mountfs.backends.base import Backend, ObjectInfo
from mountfs.backends.registry import Driver, DriverContext
from mountfs.errors import AlreadyExists, NoSuchBucket, NoSuchObject, NotEmpty


@dataclass(frozen=True)
class Stored:
    data: bytes
    metadata: dict[str, str] = field(default_factory=dict)
    mtime_ns: int = field(default_factory=time.time_ns)

    @property
    def etag(self) -> str:
        return hashlib.md5(self.data).hexdigest()


# store name -> bucket -> key -> object: every store of this process
STORES: dict[str, dict[str, dict[str, Stored]]] = {}


class MemoryBackend(Backend):
    def __init__(self, name: str) -> None:
        self.name = name
        self.buckets = STORES.setdefault(name, {})

    def describe(self) -> str:
        return f"example:{self.name}"

    def _bucket(self, bucket: str) -> dict[str, Stored]:
        try:
            return self.buckets[bucket]
        except KeyError:
            raise NoSuchBucket(bucket) from None

    def _object(self, bucket: str, key: str) -> Stored:
        try:
            return self._bucket(bucket)[key]
        except KeyError:
            raise NoSuchObject(f"{bucket}/{key}") from None

    @staticmethod
    def _info(bucket: str, key: str, obj: Stored) -> ObjectInfo:
        return ObjectInfo(bucket, key, len(obj.data), obj.mtime_ns, obj.etag,
                          dict(obj.metadata))

    async def list_buckets(self) -> list[str]:
        return sorted(self.buckets)

    async def create_bucket(self, bucket: str) -> None:
        if bucket in self.buckets:
            raise AlreadyExists(bucket)
        self.buckets[bucket] = {}

    async def delete_bucket(self, bucket: str) -> None:
        if self._bucket(bucket):
            raise NotEmpty(bucket)
        del self.buckets[bucket]

    async def list_objects(self, bucket: str, prefix: str, delimiter: str | None = "/",
                           page_size: int = 1000) -> AsyncIterator[list[ObjectInfo]]:
        entries: dict[str, ObjectInfo] = {}
        for key, obj in self._bucket(bucket).items():
            if not key.startswith(prefix):
                continue
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut < 0:
                entries[key] = self._info(bucket, key, obj)
            else:
                entries[key[:cut + 1]] = ObjectInfo(bucket, key[:cut + 1], is_prefix=True)
        ordered = [entries[key] for key in sorted(entries)]
        for start in range(0, len(ordered), page_size):
            yield ordered[start:start + page_size]

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        return self._info(bucket, key, self._object(bucket, key))

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        return self._object(bucket, key).data[offset:offset + length]

    async def write_object(self, bucket: str, key: str, data: Readable, size: int,
                           metadata: dict[str, str]) -> ObjectInfo:
        stored = Stored(data.read(size), dict(metadata))
        self._bucket(bucket)[key] = stored
        return self._info(bucket, key, stored)

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        stored = replace(self._object(bucket, key), metadata=dict(metadata))
        self._bucket(bucket)[key] = stored
        return self._info(bucket, key, stored)

    async def delete_object(self, bucket: str, key: str) -> None:
        self._bucket(bucket).pop(key, None)

    async def copy_object(self, bucket: str, key: str, dst_bucket: str,
                          dst_key: str) -> ObjectInfo:
        stored = replace(self._object(bucket, key), mtime_ns=time.time_ns())
        self._bucket(dst_bucket)[dst_key] = stored
        return self._info(dst_bucket, dst_key, stored)


async def _open(context: DriverContext) -> Source:
    return Source(MemoryBackend(context.rest), Scope())


DRIVER = Driver(name="example", schemes=("example",), open=_open,
                summary="example:NAME: objects in the mount process's memory (a demonstration)")
