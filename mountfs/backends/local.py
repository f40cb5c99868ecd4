"""The local driver, the embedded default: `local:/path/to/store` or a plain path, a directory
on disk that behaves like an object store (local_backend.py).

Only the declaration: the CLI imports it for every command, so the store's code (and trio)
is imported when a SOURCE is opened.
"""
from __future__ import annotations

import os

from mountfs.backends import Scope, Source
from mountfs.backends.registry import Driver, DriverContext


async def _open(context: DriverContext) -> Source:
    from mountfs.backends.local_backend import LocalBackend

    return Source(LocalBackend(context.rest), Scope())


DRIVER = Driver(
    name="local", schemes=("local",), open=_open, canonical=os.path.abspath,
    summary="local:/path/to/store, or a plain path: each subdirectory of the store is a bucket, "
            "each file below an object")
