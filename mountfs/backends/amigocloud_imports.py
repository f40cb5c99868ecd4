"""AmigoCloud imports: a file sent to a project by simple upload (under 8,000,000 bytes) or in
chunks (Content-Range, then `complete` with the MD5 of the whole file), its import job
started once, then followed to its end, the phases in `Transfers` for `mountfs status`. A
chunk whose reply was lost is not sent twice either (`_send_chunk`).

Started once: the request that starts an import job (the simple upload, or the chunked
upload's `complete`) is not idempotent, and AmigoCloud takes no key to make it so. When a try
of it got no reply (the connection was lost: the service may have started the job all the
same), the next try, by the retry policy or by the write-back queue's later upload, first
looks for that job among the user's jobs (`GET /me/jobs`, newest first; the list is inferred
from DRF's routes around the verified `/me/jobs/ID`) — one of this project, for a file of this
name, created since the lost try and not one this mount was told of — and follows it instead
of importing the file a second time. A service without the list is posted to again.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from cache.storage import Readable
from mountfs.backends.amigocloud_api import AmigoApi
from mountfs.backends.amigocloud_wire import CHUNK_SIZE, MAX_SIZE_SIMPLE_UPLOAD, timestamp_ns
from mountfs.backends.progress import Transfer, Transfers
from mountfs.errors import BackendError, NoSuchObject, PermissionDenied

log = logging.getLogger(__name__)

# Seconds a job's `created` (the service's clock) may be before the lost try (this host's
# clock) and still be that try's: the clocks' disagreement allowed.
CLOCK_SKEW = 30.0


class Importer:
    """Imports into the projects of one service."""

    def __init__(self, api: AmigoApi, progress: Transfers) -> None:
        self.api, self.progress = api, progress
        # (project id, file name) -> when a try that may have started its import was first
        # sent without a reply coming back; cleared when its job is known.
        self._unsure: dict[tuple[int, str], float] = {}
        self._known: set[str] = set()  # jobs this mount started and was told the id of
        # The jobs being followed, each until the import of its file is settled: an event of
        # the job's end, which may come first, waits for it (amigocloud_backend.py).
        self.following: dict[str, trio.Event] = {}

    @contextlib.asynccontextmanager
    async def importing(self, project: dict[str, Any], name: str, data: Readable, size: int,
                        what: str) -> AsyncIterator[dict[str, Any]]:
        """`data` imported into `project` as file `name`: the import job's final state (its
        `id` added), the job in `following` until the block ends."""
        with self.progress.track(what, size) as transfer:
            if size < MAX_SIZE_SIMPLE_UPLOAD:
                job = await self._simple_upload(project, name, data, size, what, transfer)
            else:
                job = await self._chunked_upload(project, name, data, size, what, transfer)
            settled = self.following[job] = trio.Event()
            try:
                yield {**await self.api.job(job, what, transfer), "id": job}
            finally:
                del self.following[job]
                settled.set()

    async def _start(self, project: dict[str, Any], name: str, what: str,
                     send: Callable[[], Awaitable[Any]]) -> str:
        """The id of the job that one try of `send` starts, under the retry policy; a try
        after one without a reply first looks for the job that one may have started."""
        unsure = (int(project["id"]), name)

        async def attempt() -> str:
            since = self._unsure.get(unsure)
            if since is not None:
                found = await self._started_since(project, name, since)
                if found is not None:
                    log.info("%s: the service had started job %s before its reply was lost",
                             what, found)
                    del self._unsure[unsure]
                    self._known.add(found)
                    return found
            self._unsure.setdefault(unsure, time.time())
            job = str((await send())["job"])
            del self._unsure[unsure]
            self._known.add(job)
            return job
        return await self.api.backend.retried(what, attempt)

    async def _started_since(self, project: dict[str, Any], name: str,
                             since: float) -> str | None:
        """The newest job of `project` importing a file `name` created since `since`, that
        this mount was not told of; None if there is none."""
        try:
            async for job in self.api.items("/me/jobs", "list jobs"):
                created = timestamp_ns(job.get("created")) / 1e9
                if created and created < since - CLOCK_SKEW:
                    return None  # newest first: the rest are older
                if str(job.get("project_id")) == str(project["id"]) and \
                        (job.get("extra") or {}).get("filename") == name and \
                        str(job["id"]) not in self._known:
                    return str(job["id"])
        except (NoSuchObject, PermissionDenied) as exc:
            log.info("cannot look for a job started before a lost reply (%s): "
                     "importing again", exc)
        return None

    async def _read(self, data: Readable, offset: int, length: int) -> bytes:
        def read() -> bytes:
            data.seek(offset)
            return data.read(length)
        return await trio.to_thread.run_sync(read)

    async def _send_chunk(self, url: str, fields: dict[str, Any], start: int, length: int,
                          size: int, what: str) -> dict[str, Any]:
        """One chunk, under the retry policy. A try after a failed one may find the service
        has the chunk already (the reply was lost): it refuses the chunk with 400 and the
        offset it has (django-chunked-upload's answer, whose replies AmigoCloud's are), which
        at the chunk's end means the chunk was taken."""
        tries = 0

        async def attempt() -> dict[str, Any]:
            nonlocal tries
            tries += 1
            reply = await self.api.request(
                "POST", url, what, fields=fields,
                headers={"Content-Range": f"bytes {start}-{start + length - 1}/{size}"},
                tolerate=(400,) if tries > 1 else ()) or {}
            if "upload_id" in reply:
                return dict(reply)
            if reply.get("offset") == start + length and "upload_id" in fields:
                log.info("%s: the service had the chunk before its reply was lost", what)
                return {"upload_id": fields["upload_id"], "offset": start + length}
            raise BackendError(f"{what}: HTTP 400: {reply.get('detail', reply)}")
        return await self.api.backend.retried(what, attempt)

    async def _simple_upload(self, project: dict[str, Any], name: str, data: Readable,
                             size: int, what: str, transfer: Transfer) -> str:
        transfer.phase = "uploading"
        body = await self._read(data, 0, size)
        job = await self._start(project, name, what, lambda: self.api.request(
            "POST", project["url"] + "/datasets/upload", what,
            fields={"datafile": (name, body)}))
        transfer.done = size
        return job

    async def _chunked_upload(self, project: dict[str, Any], name: str, data: Readable,
                              size: int, what: str, transfer: Transfer) -> str:
        """Chunks with Content-Range, the first answering the upload's id, then `complete`
        with the MD5 of the whole file, which the service checks."""
        url = project["url"] + "/datasets/chunked_upload"
        md5, upload_id, offset = hashlib.md5(), None, 0
        transfer.phase = "uploading in chunks"
        while offset < size:
            chunk = await self._read(data, offset, min(CHUNK_SIZE, size - offset))
            md5.update(chunk)
            fields: dict[str, Any] = {"datafile": (name, chunk)}
            if upload_id is not None:
                fields["upload_id"] = upload_id
            reply = await self._send_chunk(url, fields, offset, len(chunk), size,
                                           f"{what} (bytes {offset}-)")
            upload_id = upload_id or reply["upload_id"]
            offset += len(chunk)
            transfer.done = offset
        transfer.phase = "completing the upload"
        return await self._start(project, name, what, lambda: self.api.request(
            "POST", url + "/complete", what, body={"upload_id": upload_id,
                                                  "md5": md5.hexdigest()}))
