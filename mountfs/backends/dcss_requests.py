"""Where each request of the DCSS driver goes, and with what right: the spaces' S3 buckets and
keys, the authorize service's presigned URLs (read URLs reused, one authorize request for
readers that start together), anonymous URLs of the public space, and one S3 request over
urllib3.

Every request (to the authorize service, or to S3 with the reading of its reply) is one try
under the driver's retry policy (`retried`, the Backend's), its blocking part alone in a worker
thread.
"""
from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import trio
import urllib3

from mountfs.backends.dcss_token import Token
from mountfs.backends.dcss_wire import api_error, envelope_url, s3_error
from mountfs.backends.http import HttpPool, retry_after
from mountfs.errors import BackendError, NoSuchBucket, PermissionDenied, ReadOnly

log = logging.getLogger("mountfs.backends.dcss")  # the driver's voice

T = TypeVar("T")

SPACES = ("private", "public", "user")
AUTHORIZE_PATH = "/api/v1/dcss/authorize/{action}/{bucket}/{key}"
# A presigned read URL is used again for this long (capped by half its validity): reading a
# file block by block would otherwise ask the service once per block.
URL_REUSE = 300.0
URL_CACHE_MAX = 10_000
THREADS = 16
STREAM_CHUNK = 1024 * 1024

Retried = Callable[[str, Callable[[], Awaitable[T]]], Awaitable[T]]


class BodyStream(Protocol):
    """What a PUT's body is read from: a cache reader, or a stream of another object."""

    def read(self, n: int = -1) -> bytes: ...


# (offset, length) -> the file being written, from `offset` on, for one try of the PUT of those
# bytes: each try opens it again, so it sends the data from the start.
RangeOpener = Callable[[int, int], contextlib.AbstractAsyncContextManager[BodyStream]]


class DcssRequests:
    def __init__(self, token: Token | None, api_url: str, s3_endpoint: str, bucket_prefix: str,
                 retried: Retried) -> None:
        self.token = token
        self.api_url = api_url
        self.s3_endpoint = s3_endpoint.rstrip("/")
        self.bucket_prefix = bucket_prefix
        self.retried = retried
        self.spaces = SPACES if token is not None else ("public",)
        self.http = HttpPool(THREADS, blocksize=STREAM_CHUNK)
        self._read_urls: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._authorizing: dict[tuple[str, str, str], trio.Event] = {}  # read URLs asked for

    def bucket(self, space: str) -> str:
        if space not in self.spaces:
            raise NoSuchBucket(space)
        return f"{self.bucket_prefix}duckietown-{space}-storage"

    def s3_key(self, space: str, key: str) -> str:
        """The key in S3: the official client keeps every key of `user` under `<uid>/`."""
        return f"{self.token.uid}/{key}" if space == "user" and self.token else key

    def mount_key(self, space: str, s3_key: str) -> str:
        return s3_key[len(self.s3_key(space, "")):]

    async def authorize(self, action: str, space: str, key: str,
                        query: dict[str, str] | None = None,
                        headers: dict[str, str] | None = None) -> str:
        """A presigned URL for `action` on `key`, from the authorize service."""
        if self.token is None:
            raise ReadOnly(f"DCSS {action} on {space!r} needs a token (--token-file or "
                           "DT_TOKEN)")
        path = AUTHORIZE_PATH.format(action=action, bucket=self.bucket(space),
                                     key=urllib.parse.quote(self.s3_key(space, key), safe="/"))
        url = self.api_url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        sent = {"Authorization": f"Token {self.token.text}", **(headers or {})}
        what = f"{action} {space}/{key}"

        def once() -> str:
            reply = self.http.request("GET", url, sent)
            presigned = envelope_url(reply.data) if reply.status == 200 else None
            if presigned is None:
                raise api_error(reply.status, reply.data, what,
                                retry_after(reply.headers.get("Retry-After")))
            return presigned

        try:
            return await self.retried(f"authorize {what}", lambda: self.http.run(once))
        except BackendError as exc:
            log.warning("%s", exc)
            raise

    def public_url(self, space: str, key: str, query: dict[str, str] | None = None) -> str:
        """The anonymous URL of `key` in the public bucket: virtual-hosted on AWS (as the
        official client), path-style on any other endpoint."""
        parts = urllib.parse.urlsplit(self.s3_endpoint)
        bucket, path = self.bucket(space), "/" + urllib.parse.quote(key, safe="/")
        if parts.hostname and parts.hostname.endswith("amazonaws.com"):
            netloc = f"{bucket}.{parts.netloc}"
        else:
            netloc, path = parts.netloc, f"{parts.path}/{bucket}{path}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, path,
                                        urllib.parse.urlencode(query or {}), ""))

    async def read_url(self, action: str, space: str, key: str) -> str:
        """A URL to HEAD or GET `key`: anonymous on `public`, else presigned (and reused)."""
        if space == "public":
            return self.public_url(space, key)
        name = (action, space, key)
        while True:
            cached = self._read_urls.get(name)
            if cached and cached[1] > time.monotonic():
                return cached[0]
            # The first GETs of a cold read start together (the reader's block and its
            # read-ahead): one authorize request answers them all, the others wait for it
            # (and ask themselves if it brought no URL to reuse: a refusal).
            pending = self._authorizing.get(name)
            if pending is None:
                break
            await pending.wait()
        done = self._authorizing[name] = trio.Event()
        try:
            url = await self.authorize(action, space, key)
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
            valid = float(query.get("X-Amz-Expires", ["0"])[0] or 0)
            if valid > 0:
                if len(self._read_urls) >= URL_CACHE_MAX:
                    self._read_urls.clear()
                self._read_urls[name] = (url, time.monotonic() + min(URL_REUSE, valid / 2))
        finally:
            del self._authorizing[name]
            done.set()
        return url

    def forget_read_urls(self, space: str, key: str) -> None:
        """After a write or delete, which may leave no object KEY (gone, or parts now): its
        reused read URLs are dropped with it."""
        for action in ("head_object", "get_object"):
            self._read_urls.pop((action, space, key), None)

    def s3_once(self, method: str, url: str, what: str, headers: dict[str, str] | None = None,
                body: BodyStream | None = None, stream: bool = False) -> urllib3.BaseHTTPResponse:
        """Blocking: one S3 request, and its reply unless that is an error (a GET's 416, a
        range past the end, is not)."""
        reply = self.http.request(method, url, headers, body, stream)
        if reply.status >= 300 and not (method == "GET" and reply.status == 416):
            data = reply.read() if stream else reply.data
            reply.release_conn()
            raise s3_error(reply.status, data, what,
                           retry_after(reply.headers.get("Retry-After")))
        return reply

    async def s3(self, method: str, url: str, what: str, headers: dict[str, str] | None = None,
                 stream: bool = False) -> urllib3.BaseHTTPResponse:
        """An S3 request without a body, under the retry policy."""
        return await self.retried(what, lambda: self.http.run(
            lambda: self.s3_once(method, url, what, headers, stream=stream)))

    async def read_request(self, action: str, space: str, key: str,
                           headers: dict[str, str] | None = None,
                           stream: bool = False) -> urllib3.BaseHTTPResponse:
        method = "HEAD" if action == "head_object" else "GET"
        what = f"{method} {space}/{key}"
        return await self.reading(action, space, key, what, lambda url: self.s3_once(
            method, url, what, headers, stream=stream))

    async def reading(self, action: str, space: str, key: str, what: str,
                      once: Callable[[str], T]) -> T:
        """`once(url)` (blocking: a request to a read URL of `key`, and the reading of its
        reply) under the retry policy, in a worker thread."""
        async def attempt() -> T:
            url = await self.read_url(action, space, key)
            return await self.retried(what, lambda: self.http.run(lambda: once(url)))

        try:
            return await attempt()
        except PermissionDenied:
            if self._read_urls.pop((action, space, key), None) is None:
                raise
            # A reused URL may have expired early (the service's clock, a revoked grant).
            return await attempt()

    def close(self) -> None:
        self.http.close()
