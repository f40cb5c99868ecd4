"""AmigoCloud requests: the token as the `token` query parameter of each (as python-amigocloud
sends it: the API reads no header), URLs as the client builds them (absolute hyperlinks of the
replies as they are, `/…` under `/api/v1`), the one retry policy around each, JSON and
multipart bodies, DRF's paged lists followed through `next`, jobs followed to their end, and
export links streamed. The token goes only to the service's own host: an export link, which is
its own grant, is fetched without it.
"""
from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Collection
from typing import Any

import trio
import urllib3

from mountfs.backends.amigocloud_wire import FAILURE, SUCCESS, reply_error
from mountfs.backends.base import Backend
from mountfs.backends.http import HttpPool, give_back, raise_reported, retry_after
from mountfs.backends.progress import Transfer
from mountfs.errors import BackendError, TemporaryFailure

log = logging.getLogger(__name__)

POLL_FIRST, POLL_MAX = 0.1, 2.0  # seconds between looks at a job: doubling up to the max
PIECE = 1024 * 1024  # the pieces an export is streamed in


class AmigoApi:
    """Requests to one AmigoCloud service with one token, under `backend`'s retry policy."""

    def __init__(self, backend: Backend, base_url: str, token: str, http: HttpPool) -> None:
        self.backend, self.token, self.http = backend, token, http
        self.base = base_url.rstrip("/")
        self.api = self.base + "/api/v1"
        self.host = urllib.parse.urlsplit(self.base).netloc

    def url(self, target: str, query: dict[str, Any] | None = None) -> str:
        """`target` (an absolute URL of a reply, or a path under /api/v1) with `query` and the
        token; a token already in a hyperlink (DRF's `next` keeps the request's) is replaced."""
        absolute = target if target.startswith("http") else self.api + "/" + target.lstrip("/")
        parts = urllib.parse.urlsplit(absolute)
        if parts.netloc != self.host:
            raise BackendError(f"the service named a URL on another host: {parts.netloc}")
        pairs = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "token"]
        pairs += [(k, str(v)) for k, v in (query or {}).items()] + [("token", self.token)]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(pairs)))

    async def once(self, method: str, url: str, what: str, body: bytes | None = None,
                   headers: dict[str, str] | None = None,
                   tolerate: Collection[int] = ()) -> urllib3.BaseHTTPResponse:
        """One try; the error its reply reports raised (logged without the URL), unless its
        status is one to `tolerate`: the caller reads that reply."""
        reply = await self.http.run(lambda: self.http.request(method, url, headers, body))
        if reply.status not in tolerate:
            raise_reported(reply_error(reply.status, reply.data, what,
                                       retry_after(reply.headers.get("Retry-After"))))
        return reply

    async def request(self, method: str, target: str, what: str,
                      query: dict[str, Any] | None = None, body: Any = None,
                      fields: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None,
                      tolerate: Collection[int] = ()) -> Any:
        """One try of a request, `body` as JSON or `fields` as a multipart form (a file is a
        (name, bytes) tuple); its reply's JSON (None when it has none), also that of an
        error whose status is one to `tolerate`."""
        sent = dict(headers or {})
        data: bytes | None = None
        if body is not None:
            data, sent["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif fields is not None:
            data, sent["Content-Type"] = urllib3.encode_multipart_formdata(fields)
        reply = await self.once(method, self.url(target, query), what, data, sent, tolerate)
        return json.loads(reply.data) if reply.data.strip() else None

    async def call(self, method: str, target: str, what: str,
                   query: dict[str, Any] | None = None, body: Any = None,
                   fields: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Any:
        """`request` under the retry policy."""
        return await self.backend.retried(what, lambda: self.request(
            method, target, what, query, body, fields, headers))

    async def items(self, target: str, what: str) -> AsyncIterator[dict[str, Any]]:
        """The items of a DRF list in its order, its `next` links followed as they are
        needed."""
        link: str | None = target
        while link:
            page = await self.call("GET", link, what)
            for item in page.get("results") or []:
                yield item
            link = page.get("next")

    async def pages(self, target: str, what: str) -> list[dict[str, Any]]:
        """Every item of a DRF list."""
        return [item async for item in self.items(target, what)]

    async def job(self, job_id: str, what: str, transfer: Transfer | None = None
                  ) -> dict[str, Any]:
        """The job followed until SUCCESS or FAILURE (its final state returned); its state goes
        to `transfer`'s phase meanwhile."""
        pause = POLL_FIRST
        while True:
            state = await self.call("GET", f"/me/jobs/{job_id}", f"{what}: job {job_id}")
            status = str(state.get("status", ""))
            if transfer is not None:
                transfer.phase = f"job {status or '?'}"
            if status in (SUCCESS, FAILURE):
                return state
            await trio.sleep(pause)
            pause = min(POLL_MAX, pause * 2)

    async def open_link(self, link: str, what: str) -> urllib3.BaseHTTPResponse:
        """A streamed GET of an export link (no token: the link is the grant), under the retry
        policy until its headers are in; the caller gives it back (http.give_back)."""
        async def one() -> urllib3.BaseHTTPResponse:
            reply = await self.http.run(lambda: self.http.request("GET", link, stream=True))
            if reply.status >= 300:
                body = await self.http.run(reply.read)
                give_back(reply)
                error = reply_error(reply.status, body, what)
                assert error is not None
                raise error
            return reply
        return await self.backend.retried(what, one)

    async def stream(self, reply: urllib3.BaseHTTPResponse, what: str
                     ) -> AsyncIterator[bytes]:
        """The body of a streamed reply in pieces; a connection lost midway is temporary."""
        try:
            while True:
                try:
                    piece = await self.http.run(lambda: reply.read(PIECE))
                except urllib3.exceptions.HTTPError as exc:
                    raise TemporaryFailure(f"{what}: {exc}") from exc
                if not piece:
                    return
                yield piece
        finally:
            give_back(reply)
