"""HTTP plumbing shared by the drivers: the client timeouts and the one set of environment
variables that sets them (the S3 driver's botocore client reads them too), a urllib3 connection
pool whose blocking requests run in trio worker threads (for the drivers that speak HTTP
themselves: DCSS, and the REST APIs of FirecREST, Metadisk and AmigoCloud to come), urllib3's
transport errors as TemporaryFailure, Retry-After, and the one map from an HTTP status to a
mountfs error class.

Nothing here retries: drivers put each request under the retry policy (retry.py).
"""
from __future__ import annotations

import email.utils
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import trio
import urllib3
from urllib3.filepost import choose_boundary, encode_multipart_formdata

from cache.storage import Readable
from mountfs.errors import (BackendError, ConfigError, NoSuchObject, NotSupported,
                            PermissionDenied, PreconditionFailed, TemporaryFailure)

log = logging.getLogger(__name__)

T = TypeVar("T")
BODY_PIECE = 1024 * 1024  # a streamed request body is read and sent in pieces of this size

# Seconds to wait for a connection, and for each reply (or the next bytes of one). The fault
# tests set short ones, so a stalled server costs them seconds.
CONNECT_TIMEOUT_ENV, READ_TIMEOUT_ENV = "MOUNTFS_CONNECT_TIMEOUT", "MOUNTFS_READ_TIMEOUT"
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0


def env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment variable `name`, else `default`."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, not {text!r}")
    return value


def timeouts() -> tuple[float, float]:
    """(connect, read) timeouts in seconds, as the environment sets them."""
    return (env_seconds(CONNECT_TIMEOUT_ENV, CONNECT_TIMEOUT),
            env_seconds(READ_TIMEOUT_ENV, READ_TIMEOUT))


def retry_after(value: str | None) -> float | None:
    """The seconds a Retry-After header asks for (delta-seconds or an HTTP date); None without
    one, or for one that cannot be read."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_error(status: int, text: str, retry_after: float | None = None) -> BackendError:
    """The error for an HTTP reply of `status` whose service has said nothing narrower;
    `text` is its message, `retry_after` what its Retry-After header asked."""
    if status in (401, 403):
        return PermissionDenied(text)
    if status == 404:
        return NoSuchObject(text)
    if status == 412:
        return PreconditionFailed(text)
    if status == 501:
        return NotSupported(text)
    if status >= 500 or status in (408, 429):
        return TemporaryFailure(text, retry_after)
    return BackendError(text)


def raise_reported(error: BackendError | None) -> None:
    """Raise the error a reply reported, if any, logged first: a missing object at DEBUG (a
    lookup's usual answer), anything else at WARNING."""
    if error is not None:
        log.log(logging.DEBUG if isinstance(error, NoSuchObject) else logging.WARNING,
                "%s", error)
        raise error


def give_back(reply: urllib3.BaseHTTPResponse) -> None:
    """Done with a streamed reply: its connection goes back to the pool if its body was read
    to the end, else it is closed (bytes left unread would be read as the status line of the
    connection's next request)."""
    if getattr(reply, "length_remaining", None) != 0:
        reply.close()
    reply.release_conn()


class HttpPool:
    """A driver's HTTP connections: a urllib3 pool that neither retries (the retry policy does)
    nor follows redirects, with the timeouts above; its blocking requests run in trio worker
    threads, no more at once than it has connections."""

    def __init__(self, connections: int, blocksize: int = 16384,
                 ca_certs: str | None = None) -> None:
        connect, read = timeouts()
        # `ca_certs`: the certificates to trust instead of the system's (AWS_CA_BUNDLE).
        self.pool = urllib3.PoolManager(maxsize=connections, retries=False, blocksize=blocksize,
                                        timeout=urllib3.Timeout(connect=connect, read=read),
                                        ca_certs=ca_certs)
        self.limiter = trio.CapacityLimiter(connections)

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn` (blocking: requests, and reading or sending their bodies) in a worker thread."""
        return await trio.to_thread.run_sync(fn, limiter=self.limiter)

    def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                body: Any = None, stream: bool = False) -> urllib3.BaseHTTPResponse:
        """Blocking: one request, and (unless `stream`) its whole reply. A failure of the
        transport (refused, reset, timed out, a reply cut short) is a TemporaryFailure; a
        reply of any status is returned."""
        try:
            return self.pool.request(method, url, headers=headers, body=body,
                                     preload_content=not stream, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            host = urllib.parse.urlsplit(url).netloc
            raise TemporaryFailure(f"{method} {host}: {exc}") from exc

    def close(self) -> None:
        self.pool.clear()


def multipart_around(fields: list[tuple[str, Any]]) -> tuple[bytes, bytes, str]:
    """A multipart/form-data body of `fields` whose last one is a file given empty, cut where
    the file's bytes go: (head, tail, its Content-Type)."""
    boundary = choose_boundary()
    whole, content_type = encode_multipart_formdata(fields, boundary)
    tail = f"\r\n--{boundary}--\r\n".encode()
    return whole[:-len(tail)], tail, content_type


def streamed_body(data: Readable, size: int, what: str, head: bytes = b"",
                  tail: bytes = b"") -> Iterator[bytes]:
    """A request body: `head`, the `size` bytes of `data` from its start, `tail`, in pieces,
    so a large file is never whole in memory. Each try of a request makes its own."""
    yield head
    data.seek(0)
    left = size
    while left:
        piece = data.read(min(BODY_PIECE, left))
        if not piece:
            raise BackendError(f"{what}: short read of the data to upload")
        left -= len(piece)
        yield piece
    yield tail
