"""Large files read through FirecREST's S3 staging area, for both API versions: a file is staged
once per version and its presigned URL read by ranges, again for a while (URL_REUSE, at most half
the URL's validity), so that reading a large file block by block does not stage it once per
block; a new version (another ETag from a listing or stat) is staged anew. A
staged copy no longer wanted (its file changed, a newer copy replaced it, the mount ends) is
released: v1 invalidates it, as pyfirecrest's ExternalDownload does after use.
"""
from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable

import trio

from mountfs.backends.firecrest_api import Dialect, FirecrestApi, Staged
from mountfs.backends.progress import Transfers
from mountfs.errors import BackendError, NoSuchObject, PermissionDenied

log = logging.getLogger(__name__)

URL_REUSE = 300.0  # seconds a staged copy is read again, at most
RELEASE_TIME = 10.0  # at most this long at unmount to release the copies still kept


class StagedCopies:
    """The staged copies of one service's files, by (system, path); `dialect` gives the
    dialect that stages and releases them (picked when the driver checks the service)."""

    def __init__(self, api: FirecrestApi, dialect: Callable[[], Dialect],
                 progress: Transfers) -> None:
        self.api, self.dialect, self.progress = api, dialect, progress
        # (system, path) -> (copy, reuse until, the version staged)
        self._copies: dict[tuple[str, str], tuple[Staged, float, str]] = {}

    async def read(self, system: str, path: str, offset: int, length: int,
                   version: str) -> bytes:
        """`length` bytes at `offset` of the file (fewer at its end), as of `version` (its
        ETag as last seen; "" when unknown)."""
        what = f"GET staged {system}:{path}"
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        for fresh in (False, True):
            url = await self._url(system, path, version)
            try:
                reply = await self.api.backend.retried(what, lambda: self.api.staging(
                    "GET", url, what, headers=headers))
            except (PermissionDenied, NoSuchObject):
                # The staged copy is gone or its URL expired early: stage the file again.
                await self.drop(system, path)
                if fresh:
                    raise
                continue
            return b"" if reply.status == 416 else bytes(reply.data)
        raise AssertionError("unreachable")

    async def _url(self, system: str, path: str, version: str) -> str:
        """A URL of the file's staged copy, staged now unless one of this version is still
        valid (the copy it replaces is released: a read still using it fails, and stages
        again)."""
        cached = self._copies.get((system, path))
        if cached and cached[1] > time.monotonic() and cached[2] == version:
            return cached[0].url
        with self.progress.track(f"download {system}:{path}") as transfer:
            staged = await self.dialect().stage_download(system, path, transfer)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(staged.url).query)
        valid = float(query.get("X-Amz-Expires", ["0"])[0] or 0)
        reuse = min(URL_REUSE, valid / 2) if valid else URL_REUSE
        old = self._copies.get((system, path))
        self._copies[(system, path)] = (staged, time.monotonic() + reuse, version)
        if old is not None:
            await self._release(old[0])
        return staged.url

    async def drop(self, system: str, path: str) -> None:
        """The file changed or is gone: its staged copy is no longer read."""
        dropped = self._copies.pop((system, path), None)
        if dropped is not None:
            await self._release(dropped[0])

    async def release_all(self) -> None:
        with trio.move_on_after(RELEASE_TIME):
            for staged, _, _ in list(self._copies.values()):
                await self._release(staged)
        self._copies.clear()

    async def _release(self, staged: Staged) -> None:
        """Failing costs only room in the staging area, until the copy expires there."""
        try:
            await self.dialect().release(staged)
        except BackendError as exc:
            log.info("a staged copy not released: %s", exc)
