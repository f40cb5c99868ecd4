"""The Storj DCS driver's declaration: `storj://[BUCKET[/PREFIX]]`, its options and
subcommands, the access grant read and checked (no network), and the factory of its store
(storj_backend.py: the S3 driver on Storj's gateway).

The CLI imports this module for every command: the store's client stack (the S3 driver's
awscrt, boto3, trio) is imported when a SOURCE is opened, not here.
"""
from __future__ import annotations

import datetime
import time
from pathlib import Path

from mountfs.backends import Scope, Source
from mountfs.backends.registry import Driver, DriverContext, Option
from mountfs.backends.storj_grant import ACCESS_ENV, Grant, parse
from mountfs.backends.storj_share import add_commands
from mountfs.errors import ConfigError

DEFAULT_AUTH = "https://auth.storjshare.io"


def grant_of(context: DriverContext) -> Grant:
    """The access grant of the access-file option or STORJ_ACCESS, parsed (no network)."""
    text = context.secret("access_file")
    if text is None:
        raise ConfigError(f"Storj needs an access grant: --storj-access-file FILE or "
                          f"{ACCESS_ENV}")
    grant = parse(text)
    if grant.not_after is not None and grant.not_after < time.time():
        when = datetime.datetime.fromtimestamp(grant.not_after, datetime.timezone.utc)
        raise ConfigError(f"the Storj access grant expired on {when:%Y-%m-%d %H:%M} UTC")
    return grant


def canonical(rest: str) -> str:
    return "//" + rest.strip("/")


async def _open(context: DriverContext) -> Source:
    from mountfs.backends.storj_auth import Registrations
    from mountfs.backends.storj_backend import StorjBackend, StorjSource

    if not context.rest.startswith("//"):
        raise ConfigError(f"{context.source}: a Storj source is storj://[BUCKET[/PREFIX]]")
    scope = Scope.parse(context.rest[2:], context.source)
    if context["create"] and scope.bucket is None:
        raise ConfigError("--storj-create makes the bucket of storj://BUCKET; "
                          "on storj:// make buckets with mkdir")
    grant = grant_of(context)
    registrations = Registrations(context.state_dir(), context["auth_service"])
    return StorjSource(StorjBackend(grant, registrations), scope, bool(context["create"]))


DRIVER = Driver(
    name="storj", schemes=("storj",), open=_open, canonical=canonical, commands=add_commands,
    summary="Storj DCS: storj:// (the project's buckets) or storj://BUCKET[/PREFIX]; the access "
            f"grant from --storj-access-file FILE or {ACCESS_ENV}",
    options=(
        Option("access_file", "the file holding the access grant", secret=True,
               env=(ACCESS_ENV,), parse=Path, metavar="FILE"),
        Option("auth_service", "the auth service that registers the grant for S3 "
               "credentials", default=DEFAULT_AUTH, env=("STORJ_AUTH_SERVICE",), metavar="URL",
               identity=True),
        Option("create", "create the bucket of storj://BUCKET if it is missing", switch=True,
               default=False),
    ))
