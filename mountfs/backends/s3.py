"""The S3 driver's declaration: any S3-compatible store, `s3://[BUCKET[/PREFIX]]`, its options,
and the factory of its `S3Backend` (s3_backend.py).

The CLI imports this module for every command: the S3 client stack (awscrt, boto3, botocore,
trio) is imported when a SOURCE is opened, not here.
"""
from __future__ import annotations

from mountfs.backends import Scope, Source
from mountfs.backends.registry import Driver, DriverContext, Option
from mountfs.backends.s3_limits import MIN_PART, MIN_STREAM_PART
from mountfs.errors import ConfigError
from mountfs.sizes import parse_size


async def _open(context: DriverContext) -> Source:
    from mountfs.backends.s3_backend import S3Backend

    if not context.rest.startswith("//"):
        raise ConfigError(f"{context.source}: an S3 source is s3://[BUCKET[/PREFIX]]")
    if context["part_size"] < MIN_STREAM_PART:
        raise ConfigError("--s3-part-size must be at least 5M (S3's smallest part)")
    backend = S3Backend(context["endpoint_url"], context["region"], context["profile"],
                        context["path_style"], part_size=context["part_size"])
    return Source(backend, Scope.parse(context.rest[2:], context.source))


DRIVER = Driver(
    name="s3", schemes=("s3",), open=_open,
    summary="s3:// (every bucket) or s3://BUCKET[/PREFIX]; credentials come from the "
            "environment or the AWS config files, never from the command line",
    options=(
        Option("endpoint_url", "an S3-compatible endpoint (default: AWS)", metavar="URL",
               aliases=("--endpoint-url",), identity=True),
        Option("region", "the region (default: from the AWS config)", aliases=("--region",)),
        Option("profile", "a profile of the AWS shared config files", aliases=("--profile",)),
        Option("path_style", "path-style bucket addressing (URL/bucket/key)", switch=True,
               default=False, aliases=("--path-style",)),
        Option("part_size", "a large file goes up in parts of SIZE while it is written "
               "(default 8M)", parse=parse_size, default=MIN_PART, metavar="SIZE"),
    ),
    secret_env=("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"))
