"""A fault-injecting HTTP proxy between a client and an S3 server (moto_server in the tests) or
the DCSS service (tests/servers/dcss.py, whose authorize API and S3 front share one address).

`FaultProxy(upstream, rate=0.2, seed=1).start()` (or `python -m tests.servers.faults --port N
--upstream URL --rate 0.2`) forwards requests like `S3Proxy`, and answers a share `rate` of
them with a fault instead, drawn from `kinds`:

| kind      | what the client gets                                                     | upstream |
| --------- | ------------------------------------------------------------------------ | -------- |
| 500       | 500 InternalError                                                        | not sent |
| 503       | 503 ServiceUnavailable                                                   | not sent |
| slowdown  | 503 SlowDown                                                             | not sent |
| 429       | 429 TooManyRequests                                                      | not sent |
| stall     | nothing for `stall` seconds (past the client's read timeout), then FIN  | either   |
| reset     | the reply's headers and half its body, then a TCP RST                    | applied  |
| truncate  | the reply's headers (Content-Length of the whole) and half its body, FIN | applied  |

An error reply speaks the service's format: S3's XML error document, or on the DCSS authorize
API (`/api/v1/dcss/authorize/...`) its JSON envelope `{"success": false, "messages": [...],
"result": null}`; with `retry_after` set (a header value, "0"), each carries it as Retry-After.

"applied": the request reached the server and took effect, only the reply is lost — the case a
client must survive by retrying idempotently (a PUT stored twice, a multipart upload completed
whose Complete reply never came back). A stall is half the time before forwarding, half after.
A reply without a body (a PUT's) is cut by claiming a body it does not send; a HEAD's reply is
cut off whole (reset before any byte).

Decisions come from `random.Random(seed)`, one draw per request in arrival order: the same seed
gives the same sequence of faults (which request gets which depends on the client's order).
`injected` counts the faults by kind, `seen` (from S3Proxy) the requests.

`list_delay` (seconds) holds every ListObjectsV2 request that long before forwarding it, and
`list_max_keys` (0: as asked) makes the server answer it in pages of that many keys, so a test
can see a listing arrive page by page; `list_times` records when each one came in.
`put_delay` (seconds) holds every PutObject that long after its body arrived, before forwarding
it: the upload is then past the client's last chance to take it back, and not stored yet.

`bandwidth` (bytes per second, 0: unlimited) throttles how fast each request's body is read
from the client, so a test can watch an upload in flight (its progress in `mountfs status`).
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import re
import signal
import socket
import sys
import time
from collections.abc import Iterable

from .dcss import API_PREFIX
from .s3_proxy import ProxyHandler, S3Proxy, error_body

THROTTLE_PIECE = 64 * 1024  # a throttled body is read in pieces this big
RECEIVE_BUFFER = 1024 * 1024  # SO_RCVBUF of the proxy's client connections


class ThrottledHandler(ProxyHandler):
    """Reads a request's body no faster than the proxy's `bandwidth`, then goes on as usual."""

    proxy: FaultProxy

    def setup(self) -> None:
        super().setup()
        # A bounded receive window: loopback's autotuned buffers (several MiB each way) would
        # take a whole 8 MiB part before the throttled reading of its body begins.
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)

    def do_any(self) -> None:
        rate = self.proxy.bandwidth
        length = int(self.headers.get("Content-Length") or 0)
        if not rate or not length:
            super().do_any()
            return
        pieces = []
        start = time.monotonic()
        got = 0
        while got < length:
            piece = self.rfile.read(min(THROTTLE_PIECE, length - got))
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
            ahead = got / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        self.dispatch(b"".join(pieces))

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_any

KINDS = ("500", "503", "slowdown", "429", "stall", "reset", "truncate")
# kind -> (status, S3 error code) of the faults that are an error reply
ERRORS = {"500": (500, "InternalError"), "503": (503, "ServiceUnavailable"),
          "slowdown": (503, "SlowDown"), "429": (429, "TooManyRequests")}


def fault_reply(path: str, code: str) -> tuple[dict[str, str], bytes]:
    """(headers, body) of an injected error, in the format of the service `path` is on."""
    message = "injected by the fault proxy"
    if path.startswith(API_PREFIX):
        return {"Content-Type": "application/json"}, json.dumps(
            {"success": False, "messages": [f"{code}: {message}"], "result": None}).encode()
    return {"Content-Type": "application/xml"}, error_body(code, path, message)


class FaultProxy(S3Proxy):
    handler_class = ThrottledHandler

    def __init__(self, upstream: str, rate: float = 0.2, seed: int = 0,
                 kinds: Iterable[str] = KINDS, stall: float = 3.0,
                 port: int | None = None) -> None:
        super().__init__(upstream, port=port)
        self.kinds = tuple(kinds)
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"fault kinds are {', '.join(KINDS)}; not {sorted(unknown)}")
        self.rate, self.stall = rate, stall
        self.random = random.Random(seed)
        self.injected: collections.Counter[str] = collections.Counter()
        self.requests = 0
        # A permanent fault, on top of the random ones: every PUT or POST to a key (uploads,
        # copies, multipart steps; not bucket creation) is answered 403 AccessDenied.
        self.deny_writes = False
        self.bandwidth = 0  # bytes per second a request body is read at; 0: unlimited
        self.list_delay = 0.0
        self.put_delay = 0.0
        self.list_max_keys = 0
        self.list_times: list[float] = []  # time.monotonic() of each ListObjectsV2 request
        self.retry_after: str | None = None  # the Retry-After header of error replies

    def draw(self) -> tuple[str | None, bool]:
        """The fault for the next request (None: forward it), and whether a stall comes after
        forwarding. Always three draws, so the sequence depends on the seed alone."""
        with self.lock:
            self.requests += 1
            hit, kind, after = self.random.random(), self.random.choice(self.kinds), \
                self.random.random() < 0.5
            if hit >= self.rate:
                return None, False
            self.injected[kind] += 1
            return kind, after

    def handle(self, h: ProxyHandler, op: str, body: bytes) -> None:
        if self.deny_writes and h.command in ("PUT", "POST") and "/" in h.url_path.strip("/"):
            with self.lock:
                self.injected["denied"] += 1
            h.answer(403, {"Content-Type": "application/xml"},
                     error_body("AccessDenied", h.url_path, "Access Denied (fault proxy)"))
            return
        if op == "PutObject" and self.put_delay:
            time.sleep(self.put_delay)
        if op == "ListObjectsV2":
            with self.lock:
                self.list_times.append(time.monotonic())
            if self.list_delay or self.list_max_keys:
                time.sleep(self.list_delay)
                path = h.path
                if self.list_max_keys:  # moto checks no signature: the query may change
                    path = re.sub(r"([?&]max-keys=)\d+", rf"\g<1>{self.list_max_keys}", path)
                h.answer(*h.forward(body, path))
                return
        kind, after = self.draw()
        if kind is None:
            super().handle(h, op, body)
        elif kind in ERRORS:
            status, code = ERRORS[kind]
            headers, data = fault_reply(h.url_path, code)
            if self.retry_after is not None:
                headers["Retry-After"] = self.retry_after
            h.answer(status, headers, data)
        elif kind == "stall":
            if after:
                h.forward(body)
            time.sleep(self.stall)
            h.drop()
        else:
            status, headers, data = h.forward(body)
            if h.command == "HEAD":
                # No body to cut short, and its Content-Length is the object's size, which must
                # not be altered (that would be a server lying, not failing): cut off the reply.
                h.reset()
            elif kind == "reset":
                h.answer(status, headers, data, send=len(data) // 2, length=len(data))
                h.reset()
            else:  # truncate: half the body, or a body claimed that never comes
                h.answer(status, headers, data, send=len(data) // 2,
                         length=len(data) if data else 64)

    def report(self) -> str:
        total = sum(self.injected.values())
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.injected.items()))
        return f"{total} faults injected in {self.requests} requests ({kinds or 'none'})"


class LoseReplies(S3Proxy):
    """Forwards every request, but of the requests of `method` whose path matches `path` (a
    regular expression), the `times` after the first `skip` lose their reply: the request
    takes effect upstream, then the connection is reset before any byte of the reply (the
    case of a non-idempotent request a client must not repeat blindly). `lost` counts them."""

    def __init__(self, upstream: str, method: str, path: str, times: int = 1, skip: int = 0,
                 port: int | None = None) -> None:
        super().__init__(upstream, port=port)
        self.method, self.path, self.times, self.skip = method, re.compile(path), times, skip
        self.matched = self.lost = 0

    def handle(self, h: ProxyHandler, op: str, body: bytes) -> None:
        with self.lock:
            match = h.command == self.method and bool(self.path.search(h.url_path))
            self.matched += match
            lose = match and self.matched > self.skip and self.lost < self.times
            self.lost += lose
        if not lose:
            super().handle(h, op, body)
            return
        h.forward(body)
        h.reset()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.faults",
                                     description="A fault-injecting proxy in front of S3.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the S3 server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--rate", type=float, default=0.2, help="share of requests faulted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma separated: " + ",".join(KINDS))
    parser.add_argument("--stall", type=float, default=3.0, help="seconds a stall lasts")
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.upstream, args.rate, args.seed, args.kinds.split(","), args.stall,
                       port=args.port).start()
    print(f"fault proxy on {proxy.url} -> {args.upstream}, rate {args.rate}, seed {args.seed}",
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(10)
            print(proxy.report(), flush=True)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        print(proxy.report(), flush=True)
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
