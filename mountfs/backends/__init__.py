"""Backend drivers, and `open_backend`, which turns a SOURCE argument into a driver."""
from __future__ import annotations

from dataclasses import dataclass

from mountfs.backends.base import Backend
from mountfs.errors import ConfigError

SCHEMES = ("local", "s3")


@dataclass(frozen=True)
class BackendOptions:
    """Service options from the command line; secrets never travel this way."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    path_style: bool = False


def open_backend(source: str, options: BackendOptions = BackendOptions()) -> Backend:
    """A driver for SOURCE; ConfigError, one line, if it is wrong."""
    scheme, sep, rest = source.partition(":")
    if not sep or "/" in scheme or not scheme:
        scheme, rest = "local", source
    if scheme == "local":
        from mountfs.backends.local import LocalBackend
        return LocalBackend(rest)
    if scheme == "s3":
        from mountfs.backends.s3 import S3Backend
        if rest.strip("/"):
            raise ConfigError(f"{source}: mounting one bucket is not supported yet; mount s3:// "
                              f"and use the bucket's directory")
        return S3Backend(options.endpoint_url, options.region, options.profile,
                         options.path_style)
    raise ConfigError(f"unknown storage scheme {scheme!r} in {source!r} "
                      f"(known: {', '.join(SCHEMES)})")
