"""FirecREST API v2 requests: the bearer token on each (a 401 renews it and tries once more),
the one retry policy around each, JSON and multipart bodies, scheduler jobs followed to their
end with their logs read for the outcome, and the S3 staging area (presigned multipart part
URLs and a complete URL up; a presigned URL read by ranges down).

The driver (firecrest.py) says what to ask; this module owns how it is asked.
"""
from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any, BinaryIO

import trio
import urllib3

from mountfs.backends.base import Backend
from mountfs.backends.firecrest_wire import (JOB_ENDED, JOB_POLL_FIRST, JOB_POLL_MAX,
                                             JOB_SUCCESS, api_error, job_log_error)
from mountfs.backends.http import HttpPool, retry_after
from mountfs.backends.oauth import TokenSource
from mountfs.errors import BackendError, NoSuchObject

log = logging.getLogger(__name__)

OK = (200, 201, 204)


class FirecrestApi:
    """Requests to one FirecREST service, each under `backend`'s retry policy."""

    def __init__(self, backend: Backend, url: str, auth: TokenSource, http: HttpPool) -> None:
        self.backend, self.url, self.auth, self.http = backend, url.rstrip("/"), auth, http

    def endpoint(self, path: str, query: dict[str, Any] | None = None) -> str:
        return self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")

    async def once(self, method: str, url: str, what: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        """One try: the request with a token, again with a new one if the service refused
        it (401) and the token source can renew; an error for any failure status."""
        for renewed in (False, True):
            token = await self.auth.token()
            sent = {"Authorization": f"Bearer {token}", **(headers or {})}
            reply = await self.http.run(lambda: self.http.request(method, url, sent, body))
            if reply.status == 401 and not renewed and self.auth.refused(token):
                log.info("%s: token refused (HTTP 401), trying once more with a new one", what)
                continue
            break
        if reply.status not in OK:
            error = api_error(reply.status, reply.data, what,
                              retry_after(reply.headers.get("Retry-After")))
            log.log(logging.DEBUG if isinstance(error, NoSuchObject) else logging.WARNING,
                    "%s", error)
            raise error
        return reply

    async def call(self, method: str, path: str, what: str, query: dict[str, Any] | None = None,
                   body: Any = None, form: dict[str, Any] | None = None) -> Any:
        """A request under the retry policy: `body` as JSON or `form` as multipart; the
        reply's JSON (None when it has none)."""
        headers: dict[str, str] = {}
        data: bytes | None = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif form is not None:
            data, headers["Content-Type"] = urllib3.encode_multipart_formdata(form)
        url = self.endpoint(path, query)
        reply = await self.backend.retried(what, lambda: self.once(method, url, what, data,
                                                                   headers))
        if not reply.data or reply.headers.get("Content-Type", "").find("json") < 0:
            return reply.data if method == "GET" else None
        return json.loads(reply.data)

    # ---- scheduler jobs ------------------------------------------------------------------------

    async def follow(self, system: str, job: dict[str, Any], what: str) -> None:
        """Wait until the transfer job `job` (a reply's `transferJob`) has ended, then read
        its output log for the outcome, as pyfirecrest does (a job COMPLETEs also when its
        command failed); the error log says why it failed."""
        job_id = job["jobId"]
        pause = JOB_POLL_FIRST
        while True:
            answer = await self.call("GET", f"/compute/{system}/jobs/{job_id}",
                                     f"{what} (job {job_id})")
            states = [j.get("status", {}).get("state") for j in answer.get("jobs", [])]
            if states and all(s in JOB_ENDED for s in states):
                break
            await trio.sleep(pause)
            pause = min(JOB_POLL_MAX, pause * 2)
        logs = job.get("logs", {})
        try:
            output = await self.read_small(system, logs["outputLog"], f"{what}: output log")
        except NoSuchObject:
            output = b""  # a job cancelled before it ran writes none
        if any(s.encode() in output for s in JOB_SUCCESS):
            return
        try:
            error = await self.read_small(system, logs["errorLog"], f"{what}: error log")
        except NoSuchObject:
            error = b""
        raise job_log_error(error.decode("utf-8", "replace"), what)

    async def read_small(self, system: str, path: str, what: str) -> bytes:
        """A file up to the direct limit, whole (`ops/download`)."""
        data = await self.call("GET", f"/filesystem/{system}/ops/download", what,
                               {"path": path})
        return data if isinstance(data, bytes) else json.dumps(data).encode()

    # ---- the staging area ----------------------------------------------------------------------

    async def upload_parts(self, directives: dict[str, Any], data: BinaryIO, size: int,
                           what: str) -> None:
        """Send `size` bytes of `data` to the presigned part URLs, each part read again from
        its offset for every try, then complete the multipart upload."""
        urls: list[str] = directives["partsUploadUrls"]
        part = int(directives.get("maxPartSize") or -(-size // max(1, len(urls))))
        etags = []
        for number, url in enumerate(urls, 1):
            offset = (number - 1) * part
            length = max(0, min(part, size - offset))

            def read(offset: int = offset, length: int = length) -> bytes:
                data.seek(offset)
                chunk = data.read(length)
                if len(chunk) != length:
                    raise BackendError(f"{what}: short read of the data to upload")
                return chunk

            async def put(url: str = url, number: int = number) -> str:
                chunk = await trio.to_thread.run_sync(read)
                reply = await self.staging("PUT", url, f"{what}: part {number}", chunk)
                return str(reply.headers.get("ETag", ""))

            etags.append(await self.backend.retried(f"{what}: part {number}", put))
        body = "<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
            for n, etag in enumerate(etags, 1)) + "</CompleteMultipartUpload>"
        complete = directives["completeUploadUrl"]
        await self.backend.retried(f"{what}: complete", lambda: self.staging(
            "POST", complete, f"{what}: complete", body.encode()))

    async def staging(self, method: str, url: str, what: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        """One request to a presigned URL of the staging area (no token: the URL is the
        grant); a GET's 416 (a range past the end) is no error."""
        reply = await self.http.run(lambda: self.http.request(method, url, headers, body))
        if reply.status >= 300 and not (method == "GET" and reply.status == 416):
            raise api_error(reply.status, reply.data, what,
                            retry_after(reply.headers.get("Retry-After")))
        return reply


def ranged(offset: int, length: int) -> dict[str, str]:
    return {"Range": f"bytes={offset}-{offset + length - 1}"}

