"""A local Storj DCS for the tests: the auth service and the S3 gateway (Gateway-MT) in front
of a moto_server, as mountfs reaches the real one.

- Auth service: `POST /v1/access` with `{"access_grant": GRANT, "public": false}` answers
  `{"access_key_id", "secret_key", "endpoint"}` (lower-case base32, 28 and 53 characters, as
  Storj's), a new pair per registration. Errors as storj/edge's httpauth answers them, in
  `text/plain`: 422 for a body that is not the JSON object, 413 past the size limit, 500
  ("error storing request in database: ...") for a grant that does not parse. The grant is
  parsed by libuplink itself (PyPI `storj-uplink`), not by mountfs's parser; a revoked grant
  (`revoke`) is refused the same way.
- Gateway: an `S3Proxy` that forwards to moto only requests signed (SigV4, checked with the
  minted secret) by credentials the auth service minted and still holds: unknown or
  `forget`-ed keys get 403 InvalidAccessKeyId, a wrong signature 403
  SignatureDoesNotMatch, a revoked grant's keys 403 AccessDenied, as the gateway answers.

`python -m tests.servers.storj --port N` runs both (auth on N, the gateway on N+1, moto on a
free port) and prints a grant and the mount command. The tests run it as a process of its own
(`StorjService`): a test process blocked in msync(2) on the mount holds the GIL (CPython's
mmap.flush does not let it go), so a gateway in one of its threads could never answer the
upload msync waits for. Tests steer it through `/test/*` requests of the auth service's port
(`StorjService.forget`, `revoke`, `refuse`, `registrations`, `list_buckets`), which the real
one lacks.
"""
from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import http.server
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import base58

from .s3 import S3Server, free_port, running, start_server, stop_process
from .s3_proxy import ProxyHandler, S3Proxy, error_body
from .threaded import ThreadedServer

REPO_ROOT = Path(__file__).resolve().parents[2]
SATELLITE = "12EayRS2V1kEsWESU9QMRseFhdxYxKicsiFmxrsLZHeLUtdps3S@127.0.0.1:7777"
MAX_BODY = 4096  # the auth service's post size limit (its default is 4 KiB)
REGION = "us-east-1"


def _varint(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def make_grant(satellite: str = SATELLITE) -> str:
    """A fresh access grant as the satellite's UI makes one: an unrestricted API key (a
    macaroon with a random head) and a root encryption key, serialized as uplink does.
    (libuplink makes grants only by asking a satellite; it parses and shares these.)"""
    macaroon = (b"\x02" + b"\x02" + _varint(32) + os.urandom(32) + b"\x00" + b"\x00"
                + b"\x06" + _varint(32) + os.urandom(32))
    encryption = _field(1, os.urandom(32)) + _varint(3 << 3) + _varint(2)  # AES-GCM paths
    scope = _field(1, satellite.encode()) + _field(2, macaroon) + _field(3, encryption)
    return base58.b58encode_check(b"\x00" + scope).decode()


def libuplink_parses(grant: str) -> str | None:
    """None if libuplink parses the grant, else its error."""
    from storj_uplink.uplink import Uplink

    try:
        Uplink().parse_access(grant)
    except Exception as exc:  # storj_uplink's exceptions
        return str(getattr(exc, "details", exc)).splitlines()[0]  # not its Go stack
    return None


def _base32(n: int) -> str:
    return base64.b32encode(secrets.token_bytes(n)).decode().lower().rstrip("=")


class Credentials:
    """What the auth service minted, shared with the gateway."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: dict[str, tuple[str, str]] = {}  # access key id -> (secret, grant)
        self.revoked: set[str] = set()
        # Requests to register a grant, by grant, taken or refused: how often a mount asked.
        self.registrations: collections.Counter[str] = collections.Counter()

    def asked(self, grant: str) -> None:
        with self.lock:
            self.registrations[grant] += 1

    def mint(self, grant: str) -> tuple[str, str]:
        key, secret = _base32(18)[:28], _base32(34)[:53]
        with self.lock:
            self.keys[key] = secret, grant
        return key, secret


class AuthHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: Local

    def log_message(self, format: str, *args: object) -> None:
        pass

    def text(self, status: int, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.json_reply(self.state.test_get(self.path))

    def json_reply(self, found: Any) -> None:
        body = json.dumps(found).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.path.startswith("/test/"):
            return self.json_reply(self.state.test_post(self.path,
                                                        json.loads(self.rfile.read(length))))
        if self.path != "/v1/access":
            self.rfile.read(length)
            return self.text(404, "404 page not found")
        if length > MAX_BODY:
            self.close_connection = True
            return self.text(413, "http: request body too large")
        try:
            request = json.loads(self.rfile.read(length))
            grant = request["access_grant"]
            public = request.get("public", False)
            if not isinstance(grant, str) or not isinstance(public, bool):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return self.text(422, "invalid request body")
        self.state.credentials.asked(grant)
        problem = libuplink_parses(grant)
        if problem is None and grant in self.state.credentials.revoked:
            problem = "uplink: access grant revoked"  # the satellite says so at registration
        if problem is not None:
            return self.text(500, f"error storing request in database: {problem}")
        key, secret = self.state.credentials.mint(grant)
        self.json_reply({"access_key_id": key, "secret_key": secret,
                         "endpoint": self.state.endpoint})

    def do_OPTIONS(self) -> None:
        self.send_response(200)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
        self.send_header("Content-Length", "0")
        self.end_headers()


_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/([^,]+), ?SignedHeaders=([^,]+), ?"
                   r"Signature=([0-9a-f]+)")


def signature_of(h: ProxyHandler, secret: str, scope: str, signed: str, body: bytes) -> str:
    """The SigV4 signature of the request `h` got, as its client would have made it with
    `secret` (botocore's signer over the headers the client signed)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as Creds

    date, region, service, _ = scope.split("/")
    headers = {name: h.headers[name] for name in signed.split(";") if name in h.headers}
    request = AWSRequest(h.command, f"http://{h.headers['host']}{h.path}", headers, body)
    request.context["timestamp"] = h.headers["x-amz-date"]
    signer = S3SigV4Auth(Creds("-", secret), service, region)
    canonical = signer.canonical_request(request)
    return str(signer.signature(signer.string_to_sign(request, canonical), request))


class Gateway(S3Proxy):
    """The gateway: only the auth service's credentials, by their signatures."""

    credentials: Credentials
    # ListBuckets requests, refused or not (S3Proxy counts them as "other"): the driver asks
    # one to tell whether the gateway still takes its credentials.
    list_buckets = 0

    def handle(self, h: ProxyHandler, op: str, body: bytes) -> None:
        if h.command == "GET" and h.url_path == "/":
            with self.lock:
                self.list_buckets += 1
        refusal = self.refusal(h, body)
        if refusal is not None:
            code, message = refusal
            h.answer(403, {"Content-Type": "application/xml"},
                     error_body(code, h.url_path, message))
            return
        super().handle(h, op, body)

    def refusal(self, h: ProxyHandler, body: bytes) -> tuple[str, str] | None:
        found = _AUTH.fullmatch(h.headers.get("Authorization", "").strip())
        if found is None:
            return "AccessDenied", "Access Denied."
        key, scope, signed, signature = found.groups()
        with self.credentials.lock:
            known = self.credentials.keys.get(key)
            revoked = known is not None and known[1] in self.credentials.revoked
        if known is None:
            return ("InvalidAccessKeyId",
                    "The Access Key Id you provided does not exist in our records.")
        if revoked:
            return "AccessDenied", "Access Denied."
        if signature != signature_of(h, known[0], scope, signed, body):
            return ("SignatureDoesNotMatch", "The request signature we calculated does not "
                    "match the signature you provided.")
        return None


class Local:
    """Auth service and gateway over the moto_server at `upstream`, in threads of the
    process that runs `main`; `test_get`/`test_post` answer the tests' `/test/*` requests.
    The auth service hands out `endpoint` as the gateway's (default: the gateway itself)."""

    def __init__(self, upstream: str, port: int, gateway_port: int,
                 endpoint: str | None = None) -> None:
        self.upstream = upstream
        self.credentials = Credentials()
        self.gateway = Gateway(upstream, port=gateway_port)
        self.gateway.credentials = self.credentials
        self.endpoint = endpoint or self.gateway.url
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedServer | None = None

    def start(self) -> Local:
        handler = type("Handler", (AuthHandler,), {"state": self})
        self._server = ThreadedServer(("127.0.0.1", self.port), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.gateway.start()
        return self

    def stop(self) -> None:
        self.gateway.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def test_get(self, path: str) -> Any:
        if path == "/test/list-buckets":
            with self.gateway.lock:
                return self.gateway.list_buckets
        with self.credentials.lock:
            return dict(self.credentials.registrations)

    def test_post(self, path: str, body: dict[str, Any]) -> Any:
        creds, gateway = self.credentials, self.gateway
        with creds.lock:
            if path == "/test/forget":  # as expired credentials: InvalidAccessKeyId
                for key in [k for k, (_, g) in creds.keys.items() if g == body["grant"]]:
                    del creds.keys[key]
            elif path == "/test/revoke":  # the API key revoked on the satellite
                creds.revoked.add(body["grant"])
            elif path == "/test/unrevoke":
                creds.revoked.clear()
            elif path == "/test/refuse":  # S3Proxy's refusals: {"ops", "status", "code"}
                gateway.refuse = set(body["ops"])
                gateway.status, gateway.code = body["status"], body["code"]
        return {}


class StorjService:
    """The local Storj as a process of its own (see the module's docstring), for fixtures.
    `endpoint` names another address that reaches the gateway (a proxy in front, which
    passes the Host header on as it came): the auth service then hands it out instead."""

    def __init__(self, upstream: str, endpoint: str | None = None) -> None:
        self.upstream = upstream
        self.port, self.gateway_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.endpoint = endpoint or self.gateway_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> StorjService:
        # stderr is inherited: a traceback of the service shows in the test's output.
        self.proc = start_server(
            [sys.executable, "-m", "tests.servers.storj", "--port", str(self.port),
             "--gateway-port", str(self.gateway_port), "--s3-endpoint", self.upstream,
             "--endpoint", self.endpoint],
            self.url + "/test/registrations", "the Storj service", timeout, cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def _post(self, what: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(f"{self.url}/test/{what}", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()

    def registrations(self, grant: str | None = None) -> int:
        """How often registering `grant` (or any grant) was asked, whether the service took
        it or refused it (revoked, unparsable)."""
        with urllib.request.urlopen(f"{self.url}/test/registrations", timeout=10) as reply:
            counts: dict[str, int] = json.loads(reply.read())
        return counts.get(grant, 0) if grant is not None else sum(counts.values())

    def list_buckets(self) -> int:
        """How many ListBuckets the gateway got, refused or not."""
        with urllib.request.urlopen(f"{self.url}/test/list-buckets", timeout=10) as reply:
            return int(json.loads(reply.read()))

    def forget(self, grant: str) -> None:
        """Drop every credential minted for `grant` (as expired ones are): the gateway
        answers them InvalidAccessKeyId."""
        self._post("forget", {"grant": grant})

    def revoke(self, grant: str) -> None:
        """The grant's API key revoked on the satellite: its credentials are AccessDenied,
        and registering it again fails."""
        self._post("revoke", {"grant": grant})

    def unrevoke(self) -> None:
        self._post("unrevoke", {})

    def refuse(self, ops: set[str], status: int = 501, code: str = "NotImplemented") -> None:
        """The gateway answers the S3Proxy operations `ops` with status and code."""
        self._post("refuse", {"ops": sorted(ops), "status": status, "code": code})


def describe(service: Local, grant: str) -> str:
    return (f"Storj auth service {service.url}, gateway {service.gateway.url} "
            f"(over moto {service.upstream})\n"
            f"access grant:\n{grant}\n\n"
            f"mount:\n  STORJ_ACCESS={grant} \\\n"
            f"    mountfs mount storj:// MOUNTPOINT --storj-auth-service {service.url}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=7780,
                        help="the auth service's port; the gateway's is the next one")
    parser.add_argument("--gateway-port", type=int, help="default: the port after --port")
    parser.add_argument("--s3-endpoint", help="an S3 server to use (default: a moto_server "
                        "of its own)")
    parser.add_argument("--endpoint", help="the gateway's address the auth service hands out "
                        "(default: the gateway's own; another that reaches it: a proxy)")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the own moto_server stops too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.ExitStack() as stack:
        upstream = args.s3_endpoint or stack.enter_context(running(S3Server())).url
        service = stack.enter_context(running(Local(upstream, args.port,
                                                    args.gateway_port or args.port + 1,
                                                    args.endpoint)))
        print(describe(service, make_grant()), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
