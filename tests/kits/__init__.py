"""Test kits: one module per driver, the one place the tests learn how a driver differs.

A kit module `tests/kits/<name>.py` defines `KIT`, an instance of a `Kit` subclass; every module
of this package is found here (`KITS`, by name), so adding a driver to the tests is adding its
kit file. A kit says:

- `name`: the driver's name, the id of the `backend` fixture (`[local]`, `[s3]`, `[dcss]`);
- `bucket`: the bucket tests work in (a directory of the mount's root);
- `make_store`: a fresh store for one test, holding that bucket, as a `Store`; servers shared
  by the session are fixtures, which the kit asks `request` for;
- the store's mount arguments (SOURCE, CLI options, environment) and the same as in-process
  driver options (`Store.open` makes the driver without a mount: the contract suite);
- how to look at the store directly (`Store.root`, a `stores.StorePath`), and `leftovers`,
  what an interrupted upload leaves in it;
- a few facts about the store that no `Features` flag states (below, on `Kit`);
- for a driver that speaks S3 to its store, how to put an `S3Proxy` in the way (`proxied`).

What the driver itself can do is its `Features` (`Store.features`), never the kit's name.
"""
from __future__ import annotations

import abc
import contextlib
import importlib
import os
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import trio

from mountfs.backends.registry import open_source
from stores import S3Path, StorePath

if TYPE_CHECKING:
    from mountfs.backends import Source
    from mountfs.backends.base import Features
    from servers.s3_proxy import S3Proxy

P = TypeVar("P", bound="S3Proxy")
# Makes a test's proxy (not started) from where it forwards to and the port it listens on.
ProxyMaker = Callable[[str, int], P]


@dataclass
class Store:
    """A fresh store for one test, as its kit made it."""

    kit: Kit
    root: StorePath  # the store seen directly: buckets at the top, as on the mount's root
    source: str  # the mount's SOURCE
    options: list[str] = field(default_factory=list)  # CLI options for the driver
    env: dict[str, str] = field(default_factory=dict)  # environment of the mount process
    driver_options: dict[str, Any] = field(default_factory=dict)  # the same, in-process

    @property
    def bucket(self) -> str:
        """The name of the bucket tests work in."""
        return self.kit.bucket

    @property
    def stored(self) -> StorePath:
        """That bucket, seen in the store."""
        return self.root / self.kit.bucket

    @property
    def buckets(self) -> list[str]:
        """What the root of a mount of this fresh store lists, sorted."""
        return sorted(self.kit.buckets)

    def __truediv__(self, name: str) -> StorePath:
        return self.root / name

    def iterdir(self) -> Iterator[StorePath]:
        return self.root.iterdir()

    def leftovers(self) -> list[str]:
        return self.kit.leftovers(self)

    @property
    def features(self) -> Features:
        """What the driver declares it can do, for this store's settings."""
        return self.kit.features(self)

    async def open(self) -> Source:
        """The driver of this store, in-process (no mount). The caller closes its backend."""
        return await self.kit.open(self)


class Kit(abc.ABC):
    """How the tests run one driver. Subclasses set the class attributes and `make_store`."""

    name: str
    bucket: str = "bucket"
    # What the root of a mount of a fresh store lists (more than `bucket` where the store has
    # fixed buckets).
    buckets: tuple[str, ...] = ("bucket",)
    # A bucket name the store refuses (mkdir at the root fails with EINVAL); None if it makes
    # no buckets.
    refused_bucket: str | None = None
    # Whether listings carry each entry's metadata (so its type: a symlink lists as one).
    lists_metadata: bool = False
    # Whether the store is a server (moto, a service in front of it): each request costs
    # milliseconds, so the long tests do fewer steps on it.
    remote: bool = True
    # Object size from which the store ignores If-Match (moto on CompleteMultipartUpload):
    # conditional uploads that large are not turned down. None: it never ignores it.
    if_match_ignored_from: int | None = None
    # Whether the store keeps any UTF-8 key ('..', '//', NUL), as S3 does, or only what a
    # directory tree can hold.
    any_key: bool = True
    # Whether files whose names hold control characters can be read and changed (FirecREST
    # v1 refuses them, as the real service does: they are listed, and EINVAL).
    control_characters: bool = True
    # Where the bucket is in the mount's scope, as a key prefix (as the log names places):
    # "" where the mount's root lists buckets.
    bucket_prefix: str = ""
    # Whether a symlink made in the store itself is one on the mount (a service of real
    # directories and links) rather than no object at all (the local store).
    store_symlinks: bool = False
    # Whether the store outlives a mount and can be seen from outside it (the mounted suites
    # look at it directly and mount it again); a store that lives in its driver's process
    # only (the example driver's memory) runs the contract suite alone.
    mountable: bool = True

    _features: Features | None = None

    @abc.abstractmethod
    def make_store(self, request: pytest.FixtureRequest, directory: Path) -> Store:
        """A fresh store holding the empty bucket `bucket`; `directory` is the test's own
        (empty or missing), for whatever the store needs on disk."""

    def proxied(self, request: pytest.FixtureRequest, store: Store,
                make: ProxyMaker[P]) -> contextlib.AbstractContextManager[tuple[Store, P]]:
        """`store` with the driver's S3 requests sent through a proxy that `make` builds:
        the store to mount (the same buckets) and the proxy, started, which forwards them
        unchanged (Host header and signature too) to where the driver would have sent them.
        Both are stopped after the block. Only for drivers that speak S3 to their store."""
        raise NotImplementedError(f"the {self.name} driver sends no S3 requests")

    def leftovers(self, store: Store) -> list[str]:
        """What unfinished uploads left in the store: on an S3 server (behind the driver or
        behind its service), multipart uploads begun and neither completed nor aborted."""
        return store.root.multipart_uploads() if isinstance(store.root, S3Path) else []

    async def open(self, store: Store) -> Source:
        """The store's driver in-process, through the driver registry, checked as the mount
        checks it. Secrets come from the environment: the caller sets `store.env` (the
        contract suite with monkeypatch)."""
        source = await open_source(store.source, store.driver_options)
        await source.check()
        return source

    def features(self, store: Store) -> Features:
        """The driver's `Features` for this kit's stores (asked of the driver once)."""
        if self._features is None:
            async def ask() -> Features:
                source = await self.open(store)
                try:
                    return source.backend.features
                finally:
                    await source.backend.aclose()
            with environment(store.env):
                self._features = trio.run(ask)
        return self._features


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """`env` set in os.environ for the block, the old values back after it."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def discover() -> dict[str, Kit]:
    """Every kit of this package by name, in module order."""
    kits: dict[str, Kit] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        kit = getattr(importlib.import_module(f"{__name__}.{info.name}"), "KIT", None)
        if isinstance(kit, Kit):
            kits[kit.name] = kit
    return kits


KITS = discover()
