"""Kit of the example driver (tests/example_driver.py): a store in this process's memory, found
through MOUNTFS_DRIVERS, seen directly through `MemoryPath`."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from example_driver import STORES, Stored
from kits import Kit, Store


class MemoryPath:
    """A bucket, key or key prefix of an example store: `stores.StorePath` over its dict."""

    def __init__(self, buckets: dict[str, dict[str, Stored]], path: str = "") -> None:
        self.buckets, self.path = buckets, path.strip("/")

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def __truediv__(self, name: str) -> MemoryPath:
        return MemoryPath(self.buckets, f"{self.path}/{name}")

    def _split(self) -> tuple[dict[str, Stored], str]:
        bucket, _, key = self.path.partition("/")
        return self.buckets.setdefault(bucket, {}) if key else {}, key

    def read_bytes(self) -> bytes:
        objects, key = self._split()
        if key not in objects:
            raise FileNotFoundError(self.path)
        return objects[key].data

    def write_bytes(self, data: bytes) -> int:
        objects, key = self._split()
        objects[key] = Stored(data)
        return len(data)

    def is_dir(self) -> bool:
        bucket, _, key = self.path.partition("/")
        if not key:
            return bucket in self.buckets or not bucket
        return any(k.startswith(key + "/") for k in self.buckets.get(bucket, {}))

    def exists(self) -> bool:
        objects, key = self._split()
        return key in objects or self.is_dir()

    def mkdir(self) -> None:
        objects, key = self._split()
        if key:
            objects[key + "/"] = Stored(b"")
        else:
            self.buckets.setdefault(self.path, {})

    def iterdir(self) -> Iterator[MemoryPath]:
        bucket, _, key = self.path.partition("/")
        if not bucket:
            yield from (self / name for name in sorted(self.buckets))
            return
        prefix = key + "/" if key else ""
        names = {k[len(prefix):].split("/", 1)[0] for k in self.buckets.get(bucket, {})
                 if k.startswith(prefix) and k != prefix}
        yield from (self / name for name in sorted(names))


class ExampleKit(Kit):
    name = "example"
    remote = False
    lists_metadata = True
    mountable = False  # the store is this process's memory

    def make_store(self, request: pytest.FixtureRequest, directory: Path) -> Store:
        name = uuid.uuid4().hex
        STORES[name] = {self.bucket: {}}
        return Store(self, MemoryPath(STORES[name]), f"example:{name}",
                     env={"MOUNTFS_DRIVERS": "example_driver"})


KIT = ExampleKit()
