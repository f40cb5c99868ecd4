"""Backend drivers, and `open_backend`, which turns a SOURCE argument into a driver."""
from __future__ import annotations

from mountfs.backends.base import Backend
from mountfs.errors import ConfigError


def open_backend(source: str) -> Backend:
    """A driver for SOURCE (`local:/path`, or a bare directory path); ConfigError if it is wrong."""
    from mountfs.backends.local import LocalBackend

    scheme, sep, rest = source.partition(":")
    if sep and scheme == "local":
        return LocalBackend(rest)
    if sep and "/" not in scheme and scheme:
        raise ConfigError(f"unknown storage scheme {scheme!r} in {source!r} (known: local)")
    return LocalBackend(source)
