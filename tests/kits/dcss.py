"""Kit of the `dcss` driver: the session's DCSS service (fixture `dcss`, tests/servers/dcss.py)
over its moto_server, mounted as uid 1, who may use the space `private` (the bucket tests
work in) and write `public`. The store is seen through boto3 on the moto_server behind the
service, each space by its name on the mount (`private` is `duckietown-private-storage`)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from kits import P, Kit, ProxyMaker, Store
from servers.dcss import BUCKETS, DcssService
from servers.s3 import free_port, running
from stores import S3Path, StorePath, reset_s3_server

UID = 1
NO_TOKEN_ENV = {"DT_TOKEN": "", "DUCKIETOWN_TOKEN": ""}  # only the kit's token file counts


class DcssKit(Kit):
    name = "dcss"
    bucket = "private"
    buckets = tuple(sorted(BUCKETS))  # the spaces are fixed; uid 1 sees all three

    def make_store(self, request: pytest.FixtureRequest, directory: Path) -> Store:
        # A reset first: what some tests leave (keys with NUL, say) moto cannot bulk-delete.
        reset_s3_server(request.getfixturevalue("s3_server"))
        service = request.getfixturevalue("dcss")  # makes its buckets again, empty
        directory.mkdir(parents=True, exist_ok=True)
        root = S3Path(service.s3, service.upstream, shown=BUCKETS)
        return self.store_at(root, service, service.token_file(directory, UID))

    def store_at(self, root: StorePath, service: DcssService, token_file: Path) -> Store:
        """The store `root` as the driver reaches it through `service`, with `token_file`."""
        options = {"api_url": service.url, "s3_endpoint": service.s3_endpoint,
                   "token_public_key": service.public_key_path, "token_file": token_file}
        flags = [arg for name, value in options.items()
                 for arg in (f"--{name.replace('_', '-')}", str(value))]
        return Store(self, root, "dcss:", flags, dict(NO_TOKEN_ENV), options)

    @contextlib.contextmanager
    def proxied(self, request: pytest.FixtureRequest, store: Store,
                make: ProxyMaker[P]) -> Iterator[tuple[Store, P]]:
        # The S3 requests are presigned URLs, signed for the address they go to: a service of
        # its own signs them for the proxy's, which passes them on to its S3 front. The
        # authorize requests go to it directly.
        port = free_port()
        service = request.getfixturevalue("dcss").presigning_for(f"http://127.0.0.1:{port}")
        with running(service), running(make(service.url, port)) as proxy:
            yield self.store_at(store.root, service, store.driver_options["token_file"]), proxy


KIT = DcssKit()
