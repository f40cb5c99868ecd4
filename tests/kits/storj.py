"""Kit of the `storj` driver: the session's local Storj (fixture `storj_service`,
tests/servers/storj.py: auth service and SigV4-checking gateway) over the session's
moto_server, reset for every test, seen through boto3 on the moto_server behind it. One
grant per session: its credentials, registered once, are kept in the state dir for later
mounts, as a user's are."""
from __future__ import annotations

from pathlib import Path

import pytest

from kits import Kit, Store
from servers.storj import make_grant
from stores import S3Path, reset_s3_server, s3_client

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
        return Store(self, root, "storj://", ["--storj-auth-service", service.url],
                     {"STORJ_ACCESS": GRANT}, {"auth_service": service.url})


KIT = StorjKit()
