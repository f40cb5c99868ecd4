"""Kit of the `storj` driver: the session's local Storj (fixture `storj_service`,
tests/servers/storj.py: auth service and SigV4-checking gateway) over the session's
moto_server, reset for every test, seen through boto3 on the moto_server behind it. One
grant per session: its credentials, registered once, are kept in the state dir for later
mounts, as a user's are."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from kits import P, Kit, ProxyMaker, Store
from servers.s3 import free_port, running
from servers.storj import StorjService, make_grant
from stores import S3Path, StorePath, reset_s3_server, s3_client

GRANT = make_grant()


class StorjKit(Kit):
    name = "storj"
    refused_bucket = "ab"  # S3 wants 3 to 63 characters (so does Storj)
    # moto, behind the gateway, ignores If-Match on CompleteMultipartUpload.
    if_match_ignored_from = 8 * 1024 * 1024 + 1

    def make_store(self, request: pytest.FixtureRequest, directory: Path) -> Store:
        server = request.getfixturevalue("s3_server")
        service = request.getfixturevalue("storj_service")
        reset_s3_server(server)
        root = S3Path(s3_client(server.url), server.url)
        (root / self.bucket).mkdir()
        return self.store_at(root, service.url, GRANT)

    def store_at(self, root: StorePath, auth_service: str, grant: str) -> Store:
        """The store `root` as the driver reaches it with `grant` registered at `auth_service`."""
        return Store(self, root, "storj://", ["--storj-auth-service", auth_service],
                     {"STORJ_ACCESS": grant}, {"auth_service": auth_service})

    @contextlib.contextmanager
    def proxied(self, request: pytest.FixtureRequest, store: Store,
                make: ProxyMaker[P]) -> Iterator[tuple[Store, P]]:
        # The driver takes the gateway's address from the auth service: one of its own hands
        # out the proxy's. A grant of its own too: the credentials kept for the session's grant
        # name the session's gateway, and must go on doing so after this test.
        port = free_port()
        service = StorjService(request.getfixturevalue("s3_server").url,
                               endpoint=f"http://127.0.0.1:{port}")
        with running(service), running(make(service.gateway_url, port)) as proxy:
            yield self.store_at(store.root, service.url, make_grant()), proxy


KIT = StorjKit()
