"""Kit of the `metadisk` driver: the session's local bridge (fixture `metadisk_service`,
tests/servers/metadisk.py), one activated account whose key is registered; each store is the
account with the one empty bucket `bucket`.

The store is seen in the bridge's own state (`MetadiskPath`): a bucket's files by the names
the mount's name index gives them (mountfs/backends/metadisk_names.py), other entries by
their filename, as any client of the bridge would find them.

Not mountable for the shared mounted suites: files in a bucket are flat (mkdir below a bucket
is EPERM), which most of them need; tests/test_metadisk.py mounts it instead.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kits import Kit, Store
from mountfs.backends import metadisk_names as index
from mountfs.backends.metadisk_wire import KeyPair
from servers.metadisk import Bridge, BridgeServer, Entry, content_hash, iso

EMAIL, PASSWORD = "kit@example.org", "kit password"


@dataclass
class MetadiskService:
    """The session's bridge with the kit's account and its registered key file."""

    server: BridgeServer
    key_file: Path

    @property
    def bridge(self) -> Bridge:
        return self.server.bridge

    def make_bucket(self, name: str, email: str = EMAIL) -> str:
        bridge = self.bridge
        with bridge.lock:
            bucket_id = f"{len(bridge.buckets) + int(time.time() * 1000):024x}"[-24:]
            bridge.buckets[bucket_id] = {
                "id": bucket_id, "name": name, "storage": 10, "transfer": 30,
                "status": "Active", "pubkeys": [], "user": email,
                "created": iso(bridge.clock())}
            bridge.entries[bucket_id] = {}
        return bucket_id


def start_service(directory: Path) -> MetadiskService:
    """The bridge, with the kit's account activated and a key registered (as the account
    commands would leave it: tests/test_metadisk.py runs those for real)."""
    server = BridgeServer(Bridge()).start()
    bridge = server.bridge
    bridge.app.test_client().post("/users", json={
        "email": EMAIL, "password": hashlib.sha256(PASSWORD.encode()).hexdigest()})
    bridge.users[EMAIL].activated = True
    key = KeyPair.generate()
    key_file = directory / "kit-key.pem"
    key.save(key_file)
    bridge.keys[key.public] = EMAIL
    return MetadiskService(server, key_file)


class MetadiskPath:
    """A bucket, or a name in one, of the kit's account on the bridge: `StorePath`."""

    def __init__(self, service: MetadiskService, bucket: str = "", key: str = "",
                 email: str = EMAIL) -> None:
        self.service, self.bucket, self.key, self.email = service, bucket, key, email

    @property
    def bridge(self) -> Bridge:
        return self.service.bridge

    @property
    def name(self) -> str:
        return (self.key.rstrip("/").rsplit("/", 1)[-1]) if self.key else self.bucket

    def __truediv__(self, name: str) -> MetadiskPath:
        if not self.bucket:
            return MetadiskPath(self.service, name, email=self.email)
        return MetadiskPath(self.service, self.bucket, f"{self.key.rstrip('/')}/{name}"
                            if self.key else name, self.email)

    def _bucket_id(self) -> str | None:
        return next((i for i, b in self.bridge.buckets.items()
                     if b["name"] == self.bucket and b["user"] == self.email), None)

    def hashes(self) -> set[str]:
        """The content hashes the bridge holds in this bucket (the name index's too)."""
        bucket_id = self._bucket_id()
        return set(self.bridge.entries[bucket_id]) if bucket_id else set()

    def names(self) -> index.Names:
        bucket_id = self._bucket_id()
        if bucket_id is None:
            return {}
        with self.bridge.lock:
            entries: list[dict[str, Any]] = [
                {"filename": e.filename, "hash": h, "size": self.bridge.files[h][0]}
                for h, e in self.bridge.entries[bucket_id].items()]
            indexed = index.merge(index.decode(self.bridge.content(h))
                                  for h in index.index_hashes(entries))
        return index.visible(entries, indexed, 1)

    def is_dir(self) -> bool:
        if not self.key:
            return not self.bucket or self._bucket_id() is not None
        return any(n.startswith(self.key + "/") for n in self.names())

    def exists(self) -> bool:
        return self.is_dir() or self.key in self.names()

    def read_bytes(self) -> bytes:
        named = self.names().get(self.key)
        if named is None:
            raise FileNotFoundError(f"{self.bucket}/{self.key}")
        return self.bridge.content(named.hash)

    def write_bytes(self, data: bytes) -> int:
        """As another client uploads: an entry with this filename."""
        bucket_id = self._bucket_id()
        assert bucket_id is not None, self.bucket
        with self.bridge.lock:
            the_hash = content_hash(data)
            self.bridge.files.setdefault(the_hash, (len(data), self.bridge.shard(data)))
            self.bridge.entries[bucket_id][the_hash] = Entry(self.key, "text/plain")
        return len(data)

    def mkdir(self) -> None:
        assert not self.key, "files in a Metadisk bucket are flat"
        self.service.make_bucket(self.bucket, self.email)

    def iterdir(self) -> Iterator[MetadiskPath]:
        if not self.bucket:
            for b in self.bridge.buckets.values():
                if b["user"] == self.email:
                    yield MetadiskPath(self.service, b["name"], email=self.email)
            return
        prefix = self.key + "/" if self.key else ""
        seen = set()
        for name in self.names():
            if name.startswith(prefix):
                child = name[len(prefix):].split("/", 1)[0]
                if child not in seen:
                    seen.add(child)
                    yield MetadiskPath(self.service, self.bucket, prefix + child, self.email)


class MetadiskKit(Kit):
    name = "metadisk"
    mountable = False  # see the module's docstring
    lists_metadata = True  # complete: the bridge keeps no attributes, so none are missing

    def make_store(self, request: pytest.FixtureRequest, directory: Path) -> Store:
        service: MetadiskService = request.getfixturevalue("metadisk_service")
        service.bridge.reset()
        service.make_bucket(self.bucket)
        return Store(self, MetadiskPath(service), service.server.source,
                     ["--metadisk-key-file", str(service.key_file)],
                     env={"METADISK_EMAIL": "", "METADISK_PASSWORD": ""},
                     driver_options={"key_file": service.key_file})


KIT = MetadiskKit()
