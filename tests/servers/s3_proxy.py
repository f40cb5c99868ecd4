"""An HTTP proxy in front of an S3 server that takes features away, to test the driver's
fallbacks on a server that lacks them (as s3rver lacks UploadPartCopy, old stores ListObjectsV2).

`S3Proxy(upstream, refuse={"UploadPartCopy"}).start()` listens on a free port of 127.0.0.1 in a
thread and forwards every request unchanged (Host header and signature included) except:

- an operation in `refuse` ("CopyObject", "UploadPartCopy", "ListObjectsV2") is answered with
  `status` and an S3 XML error of `code` (default: 501 NotImplemented, as s3rver answers);
- with `ignore_list_type`, `list-type=2` is dropped from listings, so the server answers V1
  (a server older than ListObjectsV2).

`seen` counts the requests by operation (those three, "HeadObject", and "other"), refused or not.
"""
from __future__ import annotations

import collections
import http.client
import http.server
import threading
import urllib.parse
from xml.sax.saxutils import escape

from servers.s3 import free_port

# Hop-by-hop headers, and Expect (the proxy has the whole body before it forwards).
NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection"}


def operation(method: str, query: dict[str, list[str]], copy: bool) -> str:
    """The S3 operation a request is, as far as these tests care (`copy`: it names a source)."""
    if method == "PUT" and copy:
        return "UploadPartCopy" if "partNumber" in query else "CopyObject"
    if method == "GET" and query.get("list-type") == ["2"]:
        return "ListObjectsV2"
    if method == "HEAD":
        return "HeadObject"
    return "other"


def error_body(code: str, resource: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(code)}</Code><Message>refused by the test proxy</Message>"
            f"<Resource>{escape(resource)}</Resource><RequestId>s3-proxy</RequestId></Error>"
            ).encode()


class S3Proxy:
    def __init__(self, upstream: str, refuse: frozenset[str] | set[str] = frozenset(),
                 ignore_list_type: bool = False, status: int = 501,
                 code: str = "NotImplemented") -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.refuse, self.ignore_list_type = set(refuse), ignore_list_type
        self.status, self.code = status, code
        self.seen: collections.Counter[str] = collections.Counter()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> S3Proxy:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port),
                                                       self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
                op = operation(self.command, query, "x-amz-copy-source" in self.headers)
                proxy.seen[op] += 1
                if op in proxy.refuse:
                    self.answer(proxy.status, {"Content-Type": "application/xml"},
                                error_body(proxy.code, url.path))
                    return
                path = self.path
                if op == "ListObjectsV2" and proxy.ignore_list_type:
                    del query["list-type"]
                    path = url._replace(query=urllib.parse.urlencode(query, doseq=True)).geturl()
                self.forward(path, body)

            def forward(self, path: str, body: bytes) -> None:
                conn = http.client.HTTPConnection(proxy.upstream.hostname or "127.0.0.1",
                                                  proxy.upstream.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in NOT_FORWARDED}
                    conn.request(self.command, path, body if body else None, headers)
                    reply = conn.getresponse()
                    data = reply.read()
                    self.answer(reply.status, {k: v for k, v in reply.getheaders()
                                               if k.lower() not in NOT_FORWARDED}, data)
                finally:
                    conn.close()

            def answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response_only(status)  # no Date and Server of its own: upstream's
                for name, value in headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                # HEAD: the length of the body a GET would have, sent by the server.
                length = headers.get("Content-Length", headers.get("content-length"))
                self.send_header("Content-Length",
                                 str(length if self.command == "HEAD" and length else len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_any

        return Handler
