"""FirecREST requests, for both API versions: the bearer token on each (a 401 renews it and
tries once more), the one retry policy around each, JSON, form and multipart bodies, the
errors of every reply read in one place (firecrest_wire.reply_error), polling of what the
service runs in the background (v2 jobs, v1 tasks), and requests to the presigned URLs of the
S3 staging area.

`Dialect` is what the driver asks of an API version; firecrest_v2.py and firecrest_v1.py spell
it. The driver (firecrest.py) says what to ask, a dialect how it is asked, this module how it
is sent.
"""
from __future__ import annotations

import abc
import json
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
import urllib3

from cache.storage import Readable
from mountfs.backends.base import Backend
from mountfs.backends.firecrest_wire import POLL_FIRST, POLL_MAX, api_error, reply_error
from mountfs.backends.http import HttpPool, raise_reported, retry_after
from mountfs.backends.oauth import TokenSource
from mountfs.backends.progress import Transfer

log = logging.getLogger(__name__)

T = TypeVar("T")
# pyfirecrest's MAX_DIRECT_UPLOAD_SIZE (v2); a smaller limit is learnt from the service.
DIRECT_LIMIT = 1024 * 1024


class FirecrestApi:
    """Requests to one FirecREST service, each under `backend`'s retry policy."""

    def __init__(self, backend: Backend, url: str, auth: TokenSource, http: HttpPool) -> None:
        self.backend, self.url, self.auth, self.http = backend, url.rstrip("/"), auth, http

    def endpoint(self, path: str, query: dict[str, Any] | None = None) -> str:
        return self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")

    async def once(self, method: str, url: str, what: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        """One try: the request with a token, again with a new one if the service refused
        it (401) and the token source can renew; an error for any failure the reply reports."""
        for renewed in (False, True):
            token = await self.auth.token()
            sent = {"Authorization": f"Bearer {token}", **(headers or {})}
            reply = await self.http.run(lambda: self.http.request(method, url, sent, body))
            if reply.status == 401 and not renewed and self.auth.refused(token):
                log.info("%s: token refused (HTTP 401), trying once more with a new one", what)
                continue
            break
        raise_reported(reply_error(reply.status, reply.headers, reply.data, what,
                                   retry_after(reply.headers.get("Retry-After"))))
        return reply

    async def request(self, method: str, path: str, what: str,
                      query: dict[str, Any] | None = None, body: Any = None,
                      form: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        """A request under the retry policy: `body` as JSON, or `form` as a form (urlencoded,
        as pyfirecrest sends v1's, or multipart when a field is a file: a tuple)."""
        sent = dict(headers or {})
        data: bytes | None = None
        if body is not None:
            data, sent["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif form is not None and any(isinstance(v, tuple) for v in form.values()):
            data, sent["Content-Type"] = urllib3.encode_multipart_formdata(form)
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        url = self.endpoint(path, query)
        return await self.backend.retried(what, lambda: self.once(method, url, what, data, sent))

    async def call(self, method: str, path: str, what: str, query: dict[str, Any] | None = None,
                   body: Any = None, form: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Any:
        """`request`, and its reply's JSON (None when it has none)."""
        reply = await self.request(method, path, what, query, body, form, headers)
        if not reply.data or "json" not in reply.headers.get("Content-Type", ""):
            return None
        return json.loads(reply.data)

    async def poll(self, probe: Callable[[], Awaitable[T | None]]) -> T:
        """`probe` again, waiting longer each time, until it returns something."""
        pause = POLL_FIRST
        while (found := await probe()) is None:
            await trio.sleep(pause)
            pause = min(POLL_MAX, pause * 2)
        return found

    async def staging(self, method: str, url: str, what: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        """One request to a presigned URL of the staging area (no token: the URL is the
        grant); a GET's 416 (a range past the end) is no error."""
        reply = await self.http.run(lambda: self.http.request(method, url, headers, body))
        if reply.status >= 300 and not (method == "GET" and reply.status == 416):
            raise api_error(reply.status, reply.data, what,
                            retry_after(reply.headers.get("Retry-After")))
        return reply


@dataclass(frozen=True)
class Staged:
    """A file's copy in the staging area: `url`, a presigned GET read by ranges; `ticket`,
    what releases the copy (v1: its task, invalidated), None where nothing needs to."""

    url: str
    ticket: str | None = None


class Dialect(abc.ABC):
    """What the driver asks of one API version, for a system (the driver's bucket) and an
    absolute path in it. Each request goes through `api`, so under the retry policy."""

    version: str
    refused: re.Pattern[str]  # characters of a path it cannot carry (firecrest_wire.check_name)

    def __init__(self, api: FirecrestApi) -> None:
        self.api = api
        self.direct_limit = DIRECT_LIMIT  # the largest file ops/upload and ops/download move

    @abc.abstractmethod
    async def systems(self) -> dict[str, list[str]]:
        """Each system's file systems (their paths); the v1 dialect also learns the direct
        limit here."""

    @abc.abstractmethod
    async def ls(self, system: str, path: str, recursive: bool) -> list[dict[str, Any]]:
        """`ls -l` of a directory (every level when `recursive`) or of a file (one entry named
        by `path`), hidden files and numeric owners included, in v2's spelling."""

    @abc.abstractmethod
    async def stat(self, system: str, path: str) -> dict[str, Any]:
        """`stat` of `path` (not followed): mode, uid, gid, size, mtime..."""

    @abc.abstractmethod
    async def mkdir(self, system: str, path: str) -> None:
        """`mkdir -p`."""

    @abc.abstractmethod
    async def rm(self, system: str, path: str) -> None:
        """`rm -r`."""

    @abc.abstractmethod
    async def chmod(self, system: str, path: str, mode: int) -> None: ...

    @abc.abstractmethod
    async def symlink(self, system: str, target: str, link: str) -> None: ...

    @abc.abstractmethod
    async def mv(self, system: str, src: str, dst: str) -> None:
        """`mv` of a file or a tree, to its end (INTO a directory found at `dst`)."""

    @abc.abstractmethod
    async def cp(self, system: str, src: str, dst: str) -> None:
        """`cp` of a file, to its end."""

    @abc.abstractmethod
    async def upload(self, system: str, path: str, data: bytes) -> None:
        """A file up to the direct limit, whole; TooLarge when the service finds it over."""

    @abc.abstractmethod
    async def download(self, system: str, path: str) -> bytes:
        """A file up to the direct limit, whole; TooLarge when it is over."""

    @abc.abstractmethod
    async def upload_staged(self, system: str, path: str, data: Readable, size: int,
                            transfer: Transfer) -> None:
        """`size` bytes of `data` through the staging area, until the file is in place; the
        bytes sent and the phase go to `transfer`."""

    @abc.abstractmethod
    async def stage_download(self, system: str, path: str, transfer: Transfer) -> Staged:
        """A copy of the file in the staging area, once it is there; the phase goes to
        `transfer`."""

    async def release(self, staged: Staged) -> None:
        """Done with a staged copy (v2: nothing to do; its copy expires)."""
