"""Kit of the `s3` driver: the session's moto_server (fixture `s3_server`), reset for every
test, seen through boto3 (`stores.S3Path`)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from kits import P, Kit, ProxyMaker, Store
from servers.s3 import CREDENTIALS, free_port, running
from stores import S3Path, StorePath, reset_s3_server, s3_client


class S3Kit(Kit):
    name = "s3"
    refused_bucket = "ab"  # S3 wants 3 to 63 characters (moto allows a leading '.')
    # moto ignores If-Match on CompleteMultipartUpload (the driver's PUT limit is 8 MiB).
    if_match_ignored_from = 8 * 1024 * 1024 + 1

    def make_store(self, request: pytest.FixtureRequest, directory: Path) -> Store:
        server = request.getfixturevalue("s3_server")
        reset_s3_server(server)
        root = S3Path(s3_client(server.url), server.url)
        (root / self.bucket).mkdir()
        return self.store_at(root, server.url)

    def store_at(self, root: StorePath, endpoint: str) -> Store:
        """The store `root` as the driver reaches it at `endpoint`."""
        return Store(self, root, "s3://", ["--endpoint-url", endpoint], dict(CREDENTIALS),
                     {"endpoint_url": endpoint})

    @contextlib.contextmanager
    def proxied(self, request: pytest.FixtureRequest, store: Store,
                make: ProxyMaker[P]) -> Iterator[tuple[Store, P]]:
        server = request.getfixturevalue("s3_server")
        with running(make(server.url, free_port())) as proxy:
            yield self.store_at(store.root, proxy.url), proxy


KIT = S3Kit()
