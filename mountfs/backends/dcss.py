"""The DCSS driver's declaration: Duckietown Cloud Storage, `dcss:[SPACE[/PREFIX]]`, its options,
and the factory of its `DcssBackend` (dcss_backend.py).

The CLI imports this module for every command: the client (urllib3, trio) is imported when a
SOURCE is opened, not here.
"""
from __future__ import annotations

import os
from pathlib import Path

from mountfs.backends import Scope, Source
from mountfs.backends.dcss_token import TOKEN_ENV, load_public_key, parse_token
from mountfs.backends.registry import Driver, DriverContext, Option
from mountfs.errors import ConfigError
from mountfs.sizes import parse_size

DEFAULT_API_URL = "https://hub.duckietown.com"
DEFAULT_S3_ENDPOINT = "https://s3.amazonaws.com"
DEFAULT_PART_SIZE = 5 * 1024**3  # the official client's MAXIMUM_ALLOWED_SIZE
# As the official client: a prefix before every bucket name, for staging deployments.
BUCKET_PREFIX_ENV = "DT_BUCKET_PREFIX"


async def _open(context: DriverContext) -> Source:
    """`dcss:` (every space the token opens) or `dcss:SPACE[/PREFIX]`, with the token found
    and checked now, so that a wrong one is one line at mount."""
    from mountfs.backends.dcss_backend import DcssBackend
    from mountfs.backends.dcss_requests import SPACES

    scope = Scope.parse(context.rest, context.source)
    if scope.bucket is not None and scope.bucket not in SPACES:
        raise ConfigError(f"{context.source}: DCSS has the spaces {', '.join(SPACES)}, "
                          f"not {scope.bucket!r}")
    text = context.secret("token_file")
    token = parse_token(text, load_public_key(context["token_public_key"])) if text else None
    if token is None and scope.bucket not in (None, "public"):
        raise ConfigError(f"{context.source}: the {scope.bucket} space needs a Duckietown token "
                          f"(--token-file FILE, or {' or '.join(TOKEN_ENV)} in the environment)")
    if context["part_size"] < 1:
        raise ConfigError("--part-size must be at least 1 byte")
    backend = DcssBackend(token, context["api_url"], context["s3_endpoint"],
                          context["part_size"], os.environ.get(BUCKET_PREFIX_ENV, ""))
    return Source(backend, scope)


DRIVER = Driver(
    name="dcss", schemes=("dcss",), open=_open,
    summary="Duckietown Cloud Storage: dcss: (every space) or dcss:SPACE[/PREFIX]; without a "
            "token, public is mounted read-only",
    options=(
        Option("token_file", "the file holding your Duckietown token", secret=True,
               env=TOKEN_ENV, parse=Path, metavar="FILE", aliases=("--token-file",)),
        Option("token_public_key", "verify tokens with this ECDSA public key (default: "
               "Duckietown's)", parse=Path, metavar="PEM", aliases=("--token-public-key",)),
        Option("api_url", "the authorize service", default=DEFAULT_API_URL, metavar="URL",
               aliases=("--api-url",), identity=True),
        Option("s3_endpoint", "where the public space is read anonymously",
               default=DEFAULT_S3_ENDPOINT, metavar="URL", aliases=("--s3-endpoint",)),
        Option("part_size", "files over SIZE are stored as KEY.000, KEY.001, ... (default 5G)",
               parse=parse_size, default=DEFAULT_PART_SIZE, metavar="SIZE",
               aliases=("--part-size",)),
    ))
