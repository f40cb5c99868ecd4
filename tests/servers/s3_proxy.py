"""An HTTP proxy in front of an S3 server that takes features away, to test the driver's
fallbacks on a server that lacks them (as s3rver lacks UploadPartCopy, old stores ListObjectsV2).

`S3Proxy(upstream, refuse={"UploadPartCopy"}).start()` listens on a free port of 127.0.0.1 in a
thread and forwards every request unchanged (Host header and signature included) except:

- an operation in `refuse` ("CopyObject", "UploadPartCopy", "ListObjectsV2") is answered with
  `status` and an S3 XML error of `code` (default: 501 NotImplemented, as s3rver answers);
- with `ignore_list_type`, `list-type=2` is dropped from listings, so the server answers V1
  (a server older than ListObjectsV2).

`seen` counts the requests by operation (those three, "HeadObject", "HeadBucket" and "other"),
refused or not.
Subclasses change what is answered by overriding `S3Proxy.handle` (tests/servers/faults.py
injects faults there); `ProxyHandler` offers the ways to answer: forward, answer, answer part
of a body, reset the connection.
"""
from __future__ import annotations

import collections
import http.client
import http.server
import socket
import ssl
import struct
import threading
import urllib.parse
from pathlib import Path
from typing import TypeVar
from xml.sax.saxutils import escape

from .s3 import free_port
from .threaded import ThreadedServer

# Hop-by-hop headers, and Expect (the proxy has the whole body before it forwards).
NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection"}

Reply = tuple[int, dict[str, str], bytes]  # status, headers, body
AUTHORIZE_PREFIX = "/api/v1/dcss/authorize/"  # DCSS's API, when the proxy stands before it


def operation(method: str, query: dict[str, list[str]], copy: bool, path: str = "") -> str:
    """The S3 operation a request is, as far as these tests care (`copy`: it names a source;
    `path`: the URL's path, path-style, which tells a HEAD of a bucket from one of an object).
    A DCSS authorize request is "authorize <action>"."""
    if path.startswith(AUTHORIZE_PREFIX):
        return f"authorize {path[len(AUTHORIZE_PREFIX):].partition('/')[0]}"
    if method == "PUT" and copy:
        return "UploadPartCopy" if "partNumber" in query else "CopyObject"
    if method == "PUT" and "/" in path.strip("/") and "partNumber" not in query:
        return "PutObject"
    if method == "GET" and query.get("list-type") == ["2"]:
        return "ListObjectsV2"
    if method == "HEAD":
        return "HeadObject" if "/" in path.strip("/") else "HeadBucket"
    return "other"


def error_body(code: str, resource: str, message: str = "refused by the test proxy") -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"<Resource>{escape(resource)}</Resource><RequestId>s3-proxy</RequestId></Error>"
            ).encode()


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """One client connection; `proxy` (set per server) decides what each request gets."""

    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects
    # A reply's headers and body are written apart: with Nagle's algorithm against the client's
    # delayed ACK, every reply with a body (a listing) would wait 40 ms.
    disable_nagle_algorithm = True
    proxy: S3Proxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_any(self) -> None:
        self.dispatch(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def dispatch(self, body: bytes) -> None:
        """Count the request (with its whole `body`) by its S3 operation and hand it to the
        proxy."""
        op = operation(self.command, self.query, "x-amz-copy-source" in self.headers,
                       self.url_path)
        with self.proxy.lock:
            self.proxy.seen[op] += 1
        self.proxy.handle(self, op, body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_any

    @property
    def url_path(self) -> str:
        return urllib.parse.urlsplit(self.path).path

    @property
    def query(self) -> dict[str, list[str]]:
        """The request's query (a new dict at each call: the caller may change it)."""
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query,
                                     keep_blank_values=True)

    def forward(self, body: bytes, path: str | None = None) -> Reply:
        """Send the request upstream as it came (to `path` if given); the whole reply."""
        upstream = self.proxy.upstream
        conn = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port,
                                          timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in NOT_FORWARDED}
            conn.request(self.command, path or self.path, body if body else None, headers)
            reply = conn.getresponse()
            data = reply.read()
            return reply.status, {k: v for k, v in reply.getheaders()
                                  if k.lower() not in NOT_FORWARDED}, data
        finally:
            conn.close()

    def answer(self, status: int, headers: dict[str, str], data: bytes,
               send: int | None = None, length: int | None = None) -> None:
        """Reply with `data`, or only its first `send` bytes under a Content-Length of
        `length` (default: what `data` is) — a body cut short, after which the connection is
        closed, as a server that died mid-reply leaves it."""
        self.send_response_only(status)  # no Date and Server of its own: upstream's
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        if length is None:
            # HEAD: the length of the body a GET would have, sent by the server.
            given = headers.get("Content-Length", headers.get("content-length"))
            length = int(given) if self.command == "HEAD" and given else len(data)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data if send is None else data[:send])
        if send is not None:
            self.wfile.flush()
            self.close_connection = True

    def reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), after whatever was written."""
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # detach + close: the fd closes now (RST), though rfile and wfile still refer to it.
        fd = self.connection.detach()
        socket.close(fd)
        self.close_connection = True

    def drop(self) -> None:
        """Close the connection without answering (FIN)."""
        self.close_connection = True


P = TypeVar("P", bound="S3Proxy")


class S3Proxy:
    handler_class: type[ProxyHandler] = ProxyHandler  # what answers each connection

    def __init__(self, upstream: str, refuse: frozenset[str] | set[str] = frozenset(),
                 ignore_list_type: bool = False, status: int = 501,
                 code: str = "NotImplemented", port: int | None = None) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.refuse, self.ignore_list_type = set(refuse), ignore_list_type
        self.status, self.code = status, code
        self.seen: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()  # handlers run in threads of their own
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedServer | None = None

    def start(self: P, tls: tuple[Path, Path] | None = None) -> P:
        """Serve; over TLS with `tls` (a certificate and its key): then `url` is https."""
        handler = type("Handler", (self.handler_class,), {"proxy": self})
        self._server = ThreadedServer(("127.0.0.1", self.port), handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.url = f"https://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def handle(self, h: ProxyHandler, op: str, body: bytes) -> None:
        """Answer one request: refused, or forwarded (a V2 listing maybe as V1)."""
        if op in self.refuse:
            h.answer(self.status, {"Content-Type": "application/xml"},
                     error_body(self.code, h.url_path))
            return
        path = h.path
        if op == "ListObjectsV2" and self.ignore_list_type:
            query = h.query
            del query["list-type"]
            path = urllib.parse.urlsplit(path)._replace(
                query=urllib.parse.urlencode(query, doseq=True)).geturl()
        h.answer(*h.forward(body, path))
