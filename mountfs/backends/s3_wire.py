"""The S3 driver's fast request path: SigV4 signing and HTTP/1.1 in the AWS Common Runtime
(awscrt, C code that runs with the GIL released), driven from trio.

Owns one request at a time: its URL (from the addressing botocore chose for the bucket), its
signature, a connection from a small pool of keep-alive connections per host, the wait for the
reply (bridged from the CRT's event-loop threads to trio), and the reading of the reply into
the dicts boto3 would have returned, so the driver above keeps one shape: HEAD and write
replies as boto3's, listings as boto3's ListObjects/ListObjectsV2 results (keys URL-decoded),
errors as botocore's `ClientError` (mapped to mountfs errors in one place, s3_errors.py).
Transport failures (refused, reset, a reply cut short, no bytes for the read timeout) are
TemporaryFailure. Nothing here retries: the driver puts each request under the retry policy.

Measured against s3rver (scripts/s3clients): 0.2-0.3 ms of client CPU per HEAD where boto3
costs 2.6-3.7 ms, because botocore's per-request Python (parameter validation, endpoint rules,
event hooks, SigV4 in Python) is gone.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import email.utils
import hashlib
import http.client as httplib
import logging
import os
import threading
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, TypeVar

import trio
from awscrt import auth, http, io
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from cache.storage import Readable
from mountfs.backends.base import HEADERS, Sink, split_headers
from mountfs.errors import BackendError, ConfigError, PermissionDenied, TemporaryFailure

log = logging.getLogger(__name__)

T = TypeVar("T")

# What botocore leaves unquoted in a request path (a key's '/' stays a '/').
KEY_SAFE = "/~"
USER_META = "x-amz-meta-"
# HEAD reply headers -> boto3's names of them (as `s3_model.metadata_of` reads them).
REPLY_FIELDS = {"content-type": "ContentType", "cache-control": "CacheControl",
                "content-disposition": "ContentDisposition",
                "content-encoding": "ContentEncoding", "content-language": "ContentLanguage",
                "x-amz-storage-class": "StorageClass", "etag": "ETag"}
# A write's conditions as the driver names them (boto3's parameters) -> their headers.
CONDITION_HEADERS = {"IfMatch": "If-Match", "IfNoneMatch": "If-None-Match"}


@dataclass
class Reply:
    """One reply, its body whole."""

    status: int
    headers: dict[str, str]  # names lower-cased (the last of repeated ones)
    body: bytes  # empty when a sink took a 2xx reply's body
    raw_headers: list[tuple[str, str]] = field(default_factory=list)  # as sent
    length: int = 0  # bytes of the body received (whether kept in `body` or sunk)


@dataclass(frozen=True)
class Base:
    """Where a bucket's requests go: scheme, host, port, the path before a key, and the region
    they are signed for ("": the Wire's)."""

    scheme: str
    host: str
    port: int
    prefix: str  # "/bucket/" (path style) or "/" (virtual host)
    region: str = ""

    @classmethod
    def from_url(cls, url: str, key_marker: str, region: str = "") -> Base:
        """From the URL botocore gave a request for `key_marker` in the bucket."""
        parts = urllib.parse.urlsplit(url)
        path = urllib.parse.unquote(parts.path)
        prefix = path[:len(path) - len(key_marker)] if path.endswith(key_marker) else path
        https = parts.scheme == "https"
        return cls(parts.scheme, parts.hostname or "", parts.port or (443 if https else 80),
                   prefix if prefix.endswith("/") else prefix + "/", region)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def http_date(value: str) -> datetime.datetime | None:
    """An HTTP date (the Last-Modified of every HEAD) as an aware datetime; None if unreadable.
    The form servers send (RFC 9110's IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT") is read
    by slicing, about a tenth of `email.utils`'s cost, which reads the others."""
    parts = value.split()
    if len(parts) == 6 and parts[5] == "GMT" and parts[2] in MONTHS \
            and len(parts[4]) == 8 and parts[4][2] == parts[4][5] == ":":
        try:
            clock = parts[4]
            return datetime.datetime(int(parts[3]), MONTHS[parts[2]], int(parts[1]),
                                     int(clock[:2]), int(clock[3:5]), int(clock[6:]),
                                     tzinfo=datetime.timezone.utc)
        except ValueError:
            pass
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _tag(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _text(element: ET.Element, name: str) -> str | None:
    for child in element:
        if _tag(child) == name:
            return child.text or ""
    return None


def error_from(reply: Reply, operation: str) -> ClientError:
    """A non-2xx reply as botocore would raise it: its S3 error code, or (a HEAD's reply has no
    body) its status as the code."""
    code, message = str(reply.status), httplib.responses.get(reply.status, "")
    if reply.body:
        try:
            root = ET.fromstring(reply.body)
            code = _text(root, "Code") or code
            message = _text(root, "Message") or message
        except ET.ParseError:
            pass
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": reply.status,
                                             "HTTPHeaders": reply.headers}}, operation)


def head_fields(reply: Reply) -> dict[str, Any]:
    """A HEAD (or GET) reply's headers as boto3's HeadObject result: size, LastModified (a
    datetime), ETag, user metadata (names as sent) and the headers mountfs keeps."""
    fields: dict[str, Any] = {name: reply.headers[header]
                              for header, name in REPLY_FIELDS.items() if header in reply.headers}
    fields["ContentLength"] = int(reply.headers.get("content-length", 0))
    modified = reply.headers.get("last-modified")
    when = http_date(modified) if modified else None
    if when is not None:
        fields["LastModified"] = when
    fields["Metadata"] = {name[len(USER_META):]: value for name, value in reply.raw_headers
                          if name.lower().startswith(USER_META)}
    fields["ResponseMetadata"] = {"HTTPStatusCode": reply.status, "HTTPHeaders": reply.headers}
    return fields


def write_fields(reply: Reply) -> dict[str, Any]:
    """A PutObject / UploadPart reply as boto3's: its ETag, and its headers (the Date)."""
    return {"ETag": reply.headers.get("etag", ""),
            "ResponseMetadata": {"HTTPStatusCode": reply.status, "HTTPHeaders": reply.headers}}


def object_headers(metadata: dict[str, str]) -> dict[str, str]:
    """The request headers that store `metadata` (user metadata and the headers mountfs
    keeps), as botocore sends `s3_model.object_fields`: an unreadable Expires is not kept, a
    readable one is sent as an HTTP date in GMT."""
    user, kept = split_headers(metadata)
    headers = {USER_META + name: value for name, value in user.items()}
    for key, value in kept.items():
        if key == ":expires":
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                log.info("not keeping an unreadable Expires header: %r", value)
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.timezone.utc)
            value = email.utils.format_datetime(when.astimezone(datetime.timezone.utc),
                                                usegmt=True)
        headers[HEADERS[key]] = value
    return headers


def part_query(upload_id: str, number: int) -> dict[str, str]:
    """The query of UploadPart."""
    return {"partNumber": str(number), "uploadId": upload_id}


def listing_fields(body: bytes) -> dict[str, Any]:
    """A ListObjects / ListObjectsV2 reply as boto3's result (URL-encoded names decoded, as the
    request asked for encoding-type=url, as botocore does)."""
    root = ET.fromstring(body)
    ns = root.tag[:root.tag.find("}") + 1]  # "{http://s3.amazonaws.com/doc/2006-03-01/}" or ""
    encoded = _text(root, "EncodingType") == "url"

    def name(text: str | None) -> str:
        text = text or ""
        return urllib.parse.unquote_plus(text) if encoded else text

    reply: dict[str, Any] = {"Contents": [], "CommonPrefixes": [],
                             "IsTruncated": (_text(root, "IsTruncated") or "").lower() == "true"}
    for element in root:
        tag = _tag(element)
        if tag == "Contents":
            # findtext, in C, by the namespaced names: a page holds up to 1,000 entries.
            modified = element.findtext(ns + "LastModified")
            reply["Contents"].append({
                "Key": name(element.findtext(ns + "Key")),
                "Size": int(element.findtext(ns + "Size") or 0),
                "ETag": element.findtext(ns + "ETag") or "",
                "LastModified": _iso_time(modified) if modified else None})
        elif tag == "CommonPrefixes":
            reply["CommonPrefixes"].append({"Prefix": name(_text(element, "Prefix"))})
        elif tag == "NextContinuationToken":
            reply["NextContinuationToken"] = element.text or ""
        elif tag == "NextMarker":
            reply["NextMarker"] = name(element.text)
    return reply


def _iso_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def proxy_for(base: Base) -> http.HttpProxyOptions | None:
    """The proxy the environment names for `base` (HTTP_PROXY / HTTPS_PROXY, less NO_PROXY), as
    botocore reads it: the CRT forwards plain HTTP through it and tunnels TLS (CONNECT)."""
    if urllib.request.proxy_bypass(base.host):
        return None
    url = urllib.request.getproxies().get(base.scheme)
    if not url:
        return None
    proxy = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if proxy.scheme not in ("http", ""):
        raise ConfigError(f"{base.scheme} proxy {url}: only http:// proxies are supported")
    if not proxy.username:
        return http.HttpProxyOptions(proxy.hostname or "", proxy.port or 80)
    return http.HttpProxyOptions(proxy.hostname or "", proxy.port or 80,
                                 auth_type=http.HttpProxyAuthenticationType.Basic,
                                 auth_username=urllib.parse.unquote(proxy.username),
                                 auth_password=urllib.parse.unquote(proxy.password or ""))


class _Wakeups:
    """Events set in trio for callbacks on the CRT's threads, in batches: one
    `run_sync_soon` (a write to trio's wakeup socket, a callback in trio's thread) for all the
    replies that complete before trio gets to it, not one per reply. The CRT thread holds the
    GIL in bursts, so replies complete in bursts (`ls -l` of a large directory: a HEAD per
    entry, the wakeup a good part of a HEAD's cost in the mount's one thread)."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._events: list[trio.Event] = []

    def set_soon(self, event: trio.Event) -> None:
        """Set `event` in trio (from any thread)."""
        with self._lock:
            self._events.append(event)
            if len(self._events) > 1:  # a batch is already on its way
                return
        self._token.run_sync_soon(self._set_all)

    def _set_all(self) -> None:
        with self._lock:
            events, self._events = self._events, []
        for event in events:
            event.set()


_WAKEUPS: trio.lowlevel.RunVar[_Wakeups] = trio.lowlevel.RunVar("s3_wire_wakeups")


def _done(future: concurrent.futures.Future[Any]) -> trio.Event:
    """An event set in trio once a CRT future is done (its callback runs on a CRT thread)."""
    try:
        wakeups = _WAKEUPS.get()
    except LookupError:
        wakeups = _Wakeups()
        _WAKEUPS.set(wakeups)
    done = trio.Event()
    future.add_done_callback(lambda _: wakeups.set_soon(done))
    return done


@dataclass(eq=False)
class _Waiting:
    """An exchange waiting for its reply: its event (set when the reply is whole, or by the
    watchdog), when bytes last came (set on the CRT's thread), whether it stalled."""

    done: trio.Event
    last: float  # time.monotonic()
    stalled: bool = False


class _Watchdog:
    """The read timeout of a Wire's exchanges ("no bytes for `timeout` seconds"), kept by one
    task of the trio run while exchanges wait, not by a cancel scope per exchange (a good part
    of a HEAD's cost in the mount's one thread). The task sleeps until the earliest moment an
    exchange could stall; one that began since stalls later than that."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._waiting: set[_Waiting] = set()
        self._running = False

    def add(self, waiting: _Waiting) -> None:
        self._waiting.add(waiting)
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._watch, name="s3_wire read timeout")

    def remove(self, waiting: _Waiting) -> None:
        self._waiting.discard(waiting)

    async def _watch(self) -> None:
        try:
            while self._waiting:
                now = time.monotonic()
                wake = now + self.timeout
                for waiting in list(self._waiting):
                    due = waiting.last + self.timeout
                    if due <= now:
                        waiting.stalled = True
                        self._waiting.discard(waiting)
                        waiting.done.set()
                    else:
                        wake = min(wake, due)
                await trio.sleep(wake - now)
        finally:
            self._running = False


async def _wait(future: concurrent.futures.Future[T]) -> T:
    """A CRT future's result, waited for in trio."""
    if not future.done():
        await _done(future).wait()
    return future.result()


class Wire:
    """Signed S3 requests over pooled awscrt connections, at most `connections` at once."""

    def __init__(self, region: str, credentials: Callable[[], Credentials | None],
                 connections: int, connect_timeout: float, read_timeout: float,
                 ca_bundle: str | None) -> None:
        self.region = region or "us-east-1"
        self._credentials = credentials
        self.limiter = trio.CapacityLimiter(connections)
        self._watchdog = _Watchdog(read_timeout)  # the one keeper of the read timeout
        self._idle: dict[Base, list[http.HttpClientConnection]] = {}
        self._bootstrap = io.ClientBootstrap.get_or_create_static_default()
        self._socket = io.SocketOptions()
        self._socket.connect_timeout_ms = int(connect_timeout * 1000)
        self._socket.keep_alive = True
        tls = io.TlsContextOptions()
        if ca_bundle:
            tls.override_default_trust_store_from_path(ca_filepath=ca_bundle)
        self._tls = io.ClientTlsContext(tls)
        self._static: tuple[tuple[str, str, str | None], auth.AwsCredentialsProvider] | None = \
            None

    def _provider(self) -> auth.AwsCredentialsProvider:
        """The CRT's provider of botocore's credentials of this moment (refreshed by botocore
        when they are about to expire: the one source of them for both clients). A static
        one per set of credentials: a delegate would call back into Python from the CRT's
        thread at every signing."""
        creds = self._credentials()
        if creds is None:
            raise PermissionDenied("no S3 credentials found")
        frozen = creds.get_frozen_credentials()
        key = (frozen.access_key, frozen.secret_key, frozen.token)
        if self._static is None or self._static[0] != key:
            self._static = key, auth.AwsCredentialsProvider.new_static(*key)
        return self._static[1]

    async def request(self, operation: str, method: str, base: Base, key: str,
                      query: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None, body: Any = None,
                      sink: Sink | None = None) -> Reply:
        """One request; its reply if 2xx, else its error as `ClientError`. `body`: bytes or a
        seekable file-like object (a part being uploaded). `sink`: where a 2xx reply's body
        goes as it arrives (see `_Delivery`), instead of into `Reply.body`."""
        request = await self.signed(operation, method, base, key, query, headers, body)
        # A free connection is taken without `async with`'s round through trio's scheduler
        # (the exchange waits for its reply in trio, a checkpoint).
        try:
            self.limiter.acquire_nowait()
        except trio.WouldBlock:
            await self.limiter.acquire()
        try:
            reply = await self._exchange(base, request, operation, sink)
        finally:
            self.limiter.release()
        if 200 <= reply.status < 300:
            return reply
        raise error_from(reply, operation)

    async def signed(self, operation: str, method: str, base: Base, key: str,
                     query: dict[str, str] | None = None,
                     headers: dict[str, str] | None = None, body: Any = None) -> http.HttpRequest:
        """A request, signed (SigV4, by the CRT) with the credentials of this moment."""
        provider = self._provider()
        path = urllib.parse.quote(base.prefix + key, safe=KEY_SAFE)
        if query:
            path += "?" + urllib.parse.urlencode(sorted(query.items()),
                                                 quote_via=urllib.parse.quote, safe="~")
        request = http.HttpRequest(method, path, http.HttpHeaders([("Host", base.host_header)]))
        for name, value in (headers or {}).items():
            request.headers.add(name, value)
        if isinstance(body, (bytes, bytearray, memoryview)):
            request.headers.add("Content-Length", str(len(body)))
            request.body_stream = io.InputStream.wrap(BytesIO(body))
        elif body is not None:
            request.headers.add("Content-Length", str(len(body)))
            request.body_stream = io.InputStream.wrap(body)
        elif method in ("PUT", "POST"):
            request.headers.add("Content-Length", "0")
        # Over TLS the payload is not hashed (as botocore does); over plain HTTP it is: a
        # stream (a part: megabytes) in a worker thread, so that the trio thread goes on
        # serving (the CRT would hash it in the calling thread, through Python reads of 16
        # KiB), bytes by the CRT (None: hash the body; an empty body has the known hash).
        if base.scheme == "https":
            signed_body: str | None = auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD
        elif request.body_stream is None:
            signed_body = auth.AwsSignedBodyValue.EMPTY_SHA256
        elif isinstance(body, (bytes, bytearray, memoryview)):
            signed_body = None
        else:
            signed_body = await trio.to_thread.run_sync(stream_sha256, body)
        config = auth.AwsSigningConfig(
            credentials_provider=provider, region=base.region or self.region, service="s3",
            use_double_uri_encode=False, should_normalize_uri_path=False,
            signed_body_value=signed_body,
            signed_body_header_type=auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256)
        try:
            await _wait(auth.aws_sign_request(request, config))
        except PermissionDenied:
            raise
        except Exception as exc:
            raise PermissionDenied(f"cannot sign {operation}: {exc}") from exc
        return request

    async def _connection(self, base: Base) -> http.HttpClientConnection:
        idle = self._idle.get(base, [])
        while idle:
            connection = idle.pop()
            if connection.is_open():
                return connection
        tls = None
        if base.scheme == "https":
            tls = self._tls.new_connection_options()
            tls.set_server_name(base.host)
        proxy = proxy_for(base)
        try:
            return await _wait(http.HttpClientConnection.new(
                base.host, base.port, self._bootstrap, self._socket, tls, proxy))
        except Exception as exc:
            raise TemporaryFailure(f"cannot connect to {base.host_header}: {exc}") from exc

    async def _exchange(self, base: Base, request: http.HttpRequest, operation: str,
                        sink: Sink | None = None) -> Reply:
        """Send `request` on a pooled connection and read its whole reply; the connection goes
        back to the pool after a whole reply, else (an error, a cancellation) it is closed."""
        connection = await self._connection(base)
        status = [0]
        raw: list[tuple[str, str]] = []
        chunks: list[bytes] = []
        delivery = _Delivery(sink)
        waiting: _Waiting | None = None
        started = time.monotonic()  # the read timeout counts from it, then from the last bytes

        def on_response(http_stream: Any, status_code: int, headers: list[tuple[str, str]],
                        **_: Any) -> None:
            status[0] = status_code
            raw.extend(headers)
            if waiting is not None:
                waiting.last = time.monotonic()

        def on_body(http_stream: Any, chunk: bytes, **_: Any) -> None:
            # On a CRT thread: a 2xx body goes to the sink as it comes (an error's is parsed).
            if not (200 <= status[0] < 300 and delivery.give(chunk)):
                chunks.append(chunk)
            if waiting is not None:
                waiting.last = time.monotonic()

        kept = False
        try:
            stream = connection.request(request, on_response, on_body)
            future = stream.completion_future
            waiting = _Waiting(_done(future), started)
            stream.activate()
            self._watchdog.add(waiting)
            try:
                await waiting.done.wait()
            finally:
                self._watchdog.remove(waiting)
            if waiting.stalled:
                raise TemporaryFailure(f"{operation} {base.host_header}: no reply for "
                                       f"{self._watchdog.timeout:g}s")
            try:
                future.result()
            except Exception as exc:
                raise TemporaryFailure(f"{operation} {base.host_header}: {exc}") from exc
            delivery.finish()  # first: a sink's own error is not a reply cut short
            headers = {name.lower(): value for name, value in raw}
            body = b"".join(chunks)
            received = len(body) + delivery.given
            length = headers.get("content-length")
            if length is not None and request.method != "HEAD" and received != int(length):
                raise TemporaryFailure(f"{operation}: reply cut short ({received} of {length}"
                                       " bytes)")
            kept = headers.get("connection", "").lower() != "close"
            return Reply(status[0], headers, body, raw, received)
        finally:
            delivery.stop()
            if kept:
                self._idle.setdefault(base, []).append(connection)
            else:
                connection.close()

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()


class _Delivery:
    """A reply body handed to a sink from the CRT's thread, at its position in the body. Once
    stopped (the exchange is over: done, failed or cancelled) the sink is never called again,
    even by a callback that comes late, so a caller may close the files its sink writes to as
    soon as the request returns. An error the sink raised stops the delivery and is raised to
    the caller (a disk error is not the server's: it is not retried).

    The CRT hands a body over in chunks of ~16 KiB; they are gathered into a buffer of
    `batch` bytes and handed to the sink a buffer at a time (`finish` hands over the rest), so
    the sink's writes are 16x fewer and each from memory still in the CPU's cache."""

    BATCH = 256 * 1024

    def __init__(self, sink: Sink | None, batch: int = BATCH) -> None:
        self.sink = sink
        self.given = 0  # bytes received: handed to the sink, or gathered for it
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._open = sink is not None
        self._buffer = memoryview(bytearray(batch if sink is not None else 0))
        self._held = 0  # bytes of `_buffer` not yet handed over

    def give(self, chunk: bytes) -> bool:
        """Take `chunk`; False when there is no sink (the caller keeps the chunk)."""
        if self.sink is None:
            return False
        with self._lock:
            view = memoryview(chunk)
            while self._open and view:
                n = min(len(view), len(self._buffer) - self._held)
                self._buffer[self._held:self._held + n] = view[:n]
                self._held += n
                self.given += n
                view = view[n:]
                if self._held == len(self._buffer):
                    self._hand_over()
        return True

    def _hand_over(self) -> None:
        """The gathered bytes to the sink (under the lock)."""
        try:
            self.sink(self.given - self._held, self._buffer[:self._held])  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - raised in the trio task by stop()
            self.error, self._open = exc, False
        self._held = 0

    def finish(self) -> None:
        """The whole body came: hand over what is gathered, then stop."""
        with self._lock:
            if self._open and self._held:
                self._hand_over()
        self.stop()

    def stop(self) -> None:
        with self._lock:
            self._open = False
        error, self.error = self.error, None
        if error is not None:
            raise error


class PartBody:
    """One part of an upload as the file the CRT sends from: read from the shared `data` a
    chunk at a time as the request goes out, so that the data's reader sees the upload's
    progress (`mountfs status`) and a part holds one chunk in memory, not the whole part.
    One per try of the part, so that each sends it from its start. Seekable: over plain HTTP
    it is read once to hash the payload (`stream_sha256`), then rewound (the progress then
    leads by that part)."""

    CHUNK = 1024 * 1024

    def __init__(self, data: Readable, lock: threading.Lock, offset: int, length: int,
                 key: str) -> None:
        self.data, self.lock, self.offset, self.length, self.key = data, lock, offset, length, key
        self.pos = 0
        self._chunk = memoryview(b"")
        self._chunk_at = 0  # where in the part `_chunk` starts
        self.error: Exception | None = None  # what reading `data` raised, for the caller

    def __len__(self) -> int:
        return self.length

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.length}[whence]
        self.pos = min(self.length, max(0, base + pos))
        return self.pos

    def read(self, n: int = -1) -> bytes:
        left = self.length - self.pos
        view = memoryview(bytearray(left if n is None or n < 0 else max(0, min(n, left))))
        got = 0
        while got < len(view):
            got += self.readinto(view[got:])
        return bytes(view)

    def readinto(self, buf: bytearray | memoryview) -> int:
        """What the CRT calls (16 KiB at a time): one copy, from the chunk read last. A
        buffer of a chunk or more at a chunk's start (`stream_sha256`) is read into whole."""
        out = memoryview(buf).cast("B")
        n = min(len(out), self.length - self.pos)
        if n <= 0:
            return 0
        inside = self.pos - self._chunk_at
        if not 0 <= inside < len(self._chunk):
            if n >= min(self.CHUNK, self.length - self.pos):
                self._read(out[:n])
                self.pos += n
                return n
            self._fill()
            inside = 0
        n = min(n, len(self._chunk) - inside)
        out[:n] = self._chunk[inside:inside + n]
        self.pos += n
        return n

    def _fill(self) -> None:
        buf = memoryview(bytearray(min(self.CHUNK, self.length - self.pos)))
        self._read(buf)
        self._chunk, self._chunk_at = buf, self.pos

    def _read(self, buf: memoryview) -> None:
        """`buf` filled from the data at the part's position `pos`."""
        try:
            with self.lock:
                self.data.seek(self.offset + self.pos)
                got = self.data.readinto(buf)
            if got != len(buf):
                raise BackendError(f"short read of {self.key} at {self.offset + self.pos}")
        except Exception as exc:
            self.error = exc
            raise


def stream_sha256(body: Readable) -> str:
    """The hex SHA-256 of a seekable body from its start, which it is left at (hashlib lets
    go of the GIL on large buffers: a worker thread hashes while trio runs)."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(PartBody.CHUNK))
    body.seek(0)
    while n := body.readinto(view):
        digest.update(view[:n])
    body.seek(0)
    return digest.hexdigest()
