"""A local Duckietown Cloud Storage Service (DCSS) for the tests: the "authorize" REST API that
hands out presigned S3 URLs, and the S3 front those URLs point at, on one port of 127.0.0.1.

What it owns:

- the authorize API `GET /api/v1/dcss/authorize/{action}/{bucket}/{key}` (protocols.md §1.2):
  verifies the `Authorization: Token dt1-/dt2-...` token (ECDSA NIST P-192 over the base58
  payload, as dt_authentication does) against a TEST public key, applies DCSS's permissions, and
  answers `{"success": true, "messages": [], "result": {"url": "<presigned URL>"}}`, or
  `{"success": false, "messages": ["<reason>"], "result": null}` with 400/401/403/404;
- the S3 front `/<bucket>/<key>?X-Amz-...` (path style): checks a presigned URL as S3 does
  (SigV4 over method, path, the whole query and the signed headers; its expiry; its access
  key), lets unsigned GET/HEAD reach the public bucket only, and forwards what passes to a real
  S3 server (moto_server), streaming bodies both ways;
- the buckets duckietown-{public,private,user}-storage on that S3 server (made at start).

The presigned URLs are signed with credentials only this process holds, and the S3 server's
own credentials never leave it: a client reaches the buckets only as DCSS lets it.

`python -m tests.servers.dcss --port N` runs it for a person and prints the URLs, the public key
file and ready tokens; `DcssService` runs it as a subprocess for the fixtures in conftest.py.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import hmac
import http.client
import http.server
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import base58
import boto3
import ecdsa
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from .s3 import CREDENTIALS, S3Server, free_port, start_server, stop_process
from .threaded import ThreadedServer

SPACES = ("public", "private", "user")
BUCKETS = {space: f"duckietown-{space}-storage" for space in SPACES}
SPACE_OF = {bucket: space for space, bucket in BUCKETS.items()}
PUBLIC_BUCKET = BUCKETS["public"]
API_PREFIX = "/api/v1/dcss/authorize/"
# The actions (boto3 method names, as the real service takes them) and the one HTTP method the
# URL of each is good for: S3 signs the method, so a GET URL used for HEAD fails.
ACTIONS = {"list_objects_v2": "GET", "head_object": "HEAD", "get_object": "GET",
           "put_object": "PUT", "delete_object": "DELETE"}
READ_ACTIONS = frozenset({"list_objects_v2", "head_object", "get_object"})
# Listing parameters the authorize request may carry (S3's query spelling -> boto3's name).
LIST_PARAMS = {"delimiter": "Delimiter", "continuation-token": "ContinuationToken",
               "max-keys": "MaxKeys", "start-after": "StartAfter"}
META_PREFIX = "x-amz-meta-"
TOKEN_TIME_FORMAT = {"dt1": "%Y-%m-%d", "dt2": "%Y-%m-%d/%H:%M"}  # dt_authentication's
REGION = "us-east-1"
PRESIGN_EXPIRES = 3600  # boto3's default lifetime of a presigned URL
SIGV4_QUERY = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
               "X-Amz-SignedHeaders", "X-Amz-Signature")
REPO_ROOT = Path(__file__).resolve().parents[2]
# Not passed between client and S3 server: hop-by-hop headers, and what the front replaces
# (the upstream request is signed anew with the S3 server's credentials).
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te",
              "trailer", "upgrade", "expect"}
NOT_FORWARDED = HOP_BY_HOP | {"host", "authorization", "x-amz-date", "x-amz-content-sha256",
                              "x-amz-security-token"}
# Bodies are relayed in pieces of this size: the front costs both clients of a benchmark CPU on
# the same machine, and 1 MiB pieces cost it about a sixth less than 64 KiB ones (0.60-0.72 s
# of CPU per GiB a mount reads cold, from 0.72-0.88; 2026-12-04).
CHUNK = 1 << 20
# Body types moto_server reads as a form, storing an empty object (real S3 stores any body).
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


# --- tokens -------------------------------------------------------------------------------------

def make_keypair() -> tuple[ecdsa.SigningKey, str]:
    """A test key pair for Duckietown tokens: the signing key and the public key's PEM."""
    key = ecdsa.SigningKey.generate(curve=ecdsa.NIST192p)
    return key, key.get_verifying_key().to_pem().decode()


def make_token(key: ecdsa.SigningKey, uid: int, *, expires: datetime.datetime | None = None,
               version: str = "dt2") -> str:
    """A token as dt_authentication's DuckietownToken.generate makes it: `expires` (UTC if
    naive) is written in the version's format, which drops the time (dt1) or the seconds (dt2)."""
    if version not in TOKEN_TIME_FORMAT:
        raise ValueError(f"unknown token version {version!r}")
    exp = None
    if expires is not None:
        if expires.tzinfo is not None:
            expires = expires.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        exp = expires.strftime(TOKEN_TIME_FORMAT[version])
    payload: dict[str, Any] = {"uid": uid, "exp": exp}
    if version == "dt2":
        payload["scope"] = []  # generate() always writes one for dt2
    data = json.dumps(payload, sort_keys=True).encode()
    signature = key.sign(data)  # python-ecdsa's defaults: SHA-1, raw r||s, as the client's
    return f"{version}-{base58.b58encode(data).decode()}-{base58.b58encode(signature).decode()}"


class ApiError(Exception):
    """A refusal of the authorize API: its HTTP status and the message it reports."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def utcnow() -> datetime.datetime:
    """Now in UTC, naive: token expiry dates are naive UTC."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def token_uid(token: str, key: ecdsa.VerifyingKey) -> int:
    """The uid of a well-formed, well-signed, unexpired token; ApiError(401) otherwise."""
    parts = token.split("-")
    if len(parts) != 3:
        raise ApiError(401, "Invalid token: it should be three dash-separated parts")
    version, payload58, signature58 = parts
    if version not in TOKEN_TIME_FORMAT:
        raise ApiError(401, f"Invalid token: version '{version}' not supported")
    try:
        data, signature = base58.b58decode(payload58), base58.b58decode(signature58)
    except ValueError:
        raise ApiError(401, "Invalid token: not base58") from None
    if not verified(key, signature, data):
        raise ApiError(401, "Invalid token: bad signature")
    try:
        payload = json.loads(data)
    except ValueError:
        raise ApiError(401, "Invalid token: the payload is not JSON") from None
    if not isinstance(payload, dict) or not {"uid", "exp"} <= payload.keys() \
            or type(payload["uid"]) is not int:
        raise ApiError(401, "Invalid token: the payload lacks an integer 'uid' and 'exp'")
    check_expiry(payload["exp"], version)
    return payload["uid"]


def verified(key: ecdsa.VerifyingKey, signature: bytes, data: bytes) -> bool:
    try:
        return bool(key.verify(signature, data))
    except Exception:  # BadSignatureError, or one of several errors for a malformed signature
        return False


def check_expiry(exp: object, version: str) -> None:
    if exp is None:
        return  # a token that never expires
    try:
        expires = datetime.datetime.strptime(exp, TOKEN_TIME_FORMAT[version])  # type: ignore
    except (TypeError, ValueError):
        raise ApiError(401, f"Invalid token: bad expiration date {exp!r}") from None
    if expires < utcnow():
        raise ApiError(401, f"Expired token: it expired on {exp}")


# --- permissions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """Who may do what: anyone reads public, `public_writers` write it; `private_users` do
    anything in private; in user, a uid does anything below `<uid>/` and nothing else."""

    public_writers: frozenset[int]
    private_users: frozenset[int]

    def allows(self, uid: int | None, action: str, space: str, key: str) -> bool:
        if space == "public":
            return action in READ_ACTIONS or uid in self.public_writers
        if uid is None:
            return False
        if space == "private":
            return uid in self.private_users
        return key.startswith(f"{uid}/")


# --- presigned URLs -----------------------------------------------------------------------------

class S3Error(Exception):
    """A refusal of the S3 front, answered as S3 answers it (an XML Error document)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """The decoded (name, value) pairs of a query string. A '+' stays a '+': presigned URLs
    encode a space as %20, and S3 signs what was sent."""
    pairs = []
    for piece in raw_query.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            pairs.append((urllib.parse.unquote(name), urllib.parse.unquote(value)))
    return pairs


def canonical_request(method: str, raw_path: str, params: list[tuple[str, str]],
                      headers: Message, signed_headers: list[str]) -> str:
    """SigV4's canonical request for S3 query authentication. Path and query are decoded and
    encoded again, so a client that spells the same URL differently (%7E for ~) still matches."""
    def quote(s: str) -> str:
        return urllib.parse.quote(s, safe="-_.~")

    uri = urllib.parse.quote(urllib.parse.unquote(raw_path), safe="/~")
    query = "&".join(f"{n}={v}" for n, v in sorted(
        (quote(n), quote(v)) for n, v in params if n != "X-Amz-Signature"))
    lines = "".join(f"{name}:{','.join(' '.join(v.split()) for v in headers.get_all(name, []))}\n"
                    for name in signed_headers)
    return "\n".join([method, uri, query, lines, ";".join(signed_headers), "UNSIGNED-PAYLOAD"])


class UrlSigner:
    """Presigns S3 URLs pointing at the front, with credentials made up at start that only
    this process knows, and checks presigned requests against them as S3 does."""

    def __init__(self, endpoint: str, expires: int = PRESIGN_EXPIRES) -> None:
        self.access_key = "DCSS" + secrets.token_hex(8).upper()
        self._secret = secrets.token_urlsafe(30)
        self.expires = expires
        self._client = boto3.client(
            "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=self.access_key,
            aws_secret_access_key=self._secret,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))

    def presign(self, action: str, bucket: str, key: str, *,
                list_params: dict[str, Any], metadata: dict[str, str]) -> str:
        """boto3's presigned URL, as the real service presumably makes it (so a listing URL
        also carries boto3's encoding-type=url; the XML then holds URL-encoded keys)."""
        params: dict[str, Any] = {"Bucket": bucket}
        if action == "list_objects_v2":
            params.update(Prefix=key, **list_params)
        else:
            params["Key"] = key
        if metadata:
            params["Metadata"] = metadata  # signed as required x-amz-meta-* headers of the PUT
        return self._client.generate_presigned_url(action, Params=params, ExpiresIn=self.expires)

    def check(self, method: str, raw_path: str, raw_query: str, headers: Message) -> None:
        """Raises the S3Error S3 would answer unless the request is one this signer presigned,
        unchanged, unexpired, with exactly the signed x-amz-meta-* headers."""
        params = query_pairs(raw_query)
        given = dict(params)
        missing = [name for name in SIGV4_QUERY if name not in given]
        if missing or given["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
            raise S3Error(400, "AuthorizationQueryParametersError",
                          "Query-string authentication version 4 requires the X-Amz-Algorithm, "
                          "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
                          "and X-Amz-Expires parameters.")
        credential = given["X-Amz-Credential"].split("/")
        if len(credential) != 5 or credential[0] != self.access_key:
            raise S3Error(403, "InvalidAccessKeyId",
                          "The AWS Access Key Id you provided does not exist in our records.")
        try:
            signed_at = datetime.datetime.strptime(given["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
            lifetime = datetime.timedelta(seconds=int(given["X-Amz-Expires"]))
        except ValueError:
            raise S3Error(400, "AuthorizationQueryParametersError",
                          "X-Amz-Date or X-Amz-Expires is malformed.") from None
        signed_headers = given["X-Amz-SignedHeaders"].split(";")
        if any(name.lower().startswith(META_PREFIX) and name.lower() not in signed_headers
               for name in headers.keys()):
            raise S3Error(403, "AccessDenied",
                          "There were headers present in the request which were not signed")
        canonical = canonical_request(method, raw_path, params, headers, signed_headers)
        expected = self._signature(canonical, given["X-Amz-Date"], credential[1:])
        if not hmac.compare_digest(expected, given["X-Amz-Signature"]):
            raise S3Error(403, "SignatureDoesNotMatch",
                          "The request signature we calculated does not match the signature "
                          "you provided. Check your key and signing method.")
        if utcnow() > signed_at + lifetime:
            raise S3Error(403, "AccessDenied", "Request has expired")

    def _signature(self, canonical: str, amz_date: str, scope: list[str]) -> str:
        string_to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, "/".join(scope),
                                    hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self._secret).encode()
        for part in scope:  # date, region, service, "aws4_request"
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


# --- the S3 server behind the front -------------------------------------------------------------

def upstream_credentials() -> Credentials:
    """The S3 server's credentials (never given to clients): moto's, unless the environment
    names others (scripts/dcssbench runs the service over s3rver)."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return Credentials(key, secret)
    return Credentials(CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def admin_client(endpoint: str) -> Any:
    """A boto3 client on the S3 server itself, with its credentials."""
    credentials = upstream_credentials()
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=credentials.access_key,
                        aws_secret_access_key=credentials.secret_key,
                        config=Config(max_pool_connections=32, s3={"addressing_style": "path"}))


def ensure_buckets(client: Any) -> None:
    """Create the three DCSS buckets where missing (a moto reset by other tests drops them)."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS.values():
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)


class Upstream:
    """Sends requests on to the S3 server, signed with its credentials: moto refuses unsigned
    object reads (private ACL), and the client's own signature is the front's, not moto's."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        split = urllib.parse.urlsplit(self.endpoint)
        self.host, self.port = split.hostname or "127.0.0.1", split.port or 80
        self.credentials = upstream_credentials()
        self.admin = admin_client(self.endpoint)

    def signed_headers(self, method: str, target: str,
                       headers: dict[str, str]) -> list[tuple[str, str]]:
        request = AWSRequest(method=method, url=self.endpoint + target, headers=headers)
        request.context["payload_signing_enabled"] = False  # the body streams: UNSIGNED-PAYLOAD
        SigV4Auth(self.credentials, "s3", REGION).add_auth(request)
        return list(request.headers.items())

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def restore_content_type(self, bucket: str, key: str, content_type: str) -> None:
        """Give an object put as octet-stream its form type back (see `FORM_TYPES`), by a copy
        onto itself that keeps its metadata and content headers."""
        head = self.admin.head_object(Bucket=bucket, Key=key)
        kept = {name: head[name] for name in ("CacheControl", "ContentDisposition",
                                              "ContentEncoding", "ContentLanguage", "Expires")
                if name in head}
        self.admin.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                               MetadataDirective="REPLACE", ContentType=content_type,
                               Metadata=head["Metadata"], **kept)


def form_type(method: str, headers: dict[str, str]) -> tuple[str, str] | None:
    """(header name, value) of a PUT's Content-Type that moto_server would parse as a form."""
    for name, value in headers.items():
        if method == "PUT" and name.lower() == "content-type" \
                and value.split(";")[0].strip().lower() in FORM_TYPES:
            return name, value
    return None


def upstream_target(raw_path: str, raw_query: str) -> str:
    """The request's path and query without the presigned URL's X-Amz-* parameters, each
    other parameter spelled as the client sent it."""
    kept = [p for p in raw_query.split("&")
            if p and not urllib.parse.unquote(p.partition("=")[0]).startswith("X-Amz-")]
    return raw_path + ("?" + "&".join(kept) if kept else "")


# --- the service --------------------------------------------------------------------------------

class Dcss:
    """The service's state: who may do what, the token key, the URL signer, the S3 server."""

    def __init__(self, front_url: str, upstream: str, public_key_pem: str, policy: Policy,
                 presign_expires: int = PRESIGN_EXPIRES, listing_params: bool = True) -> None:
        self.policy = policy
        self.listing_params = listing_params
        self.key = ecdsa.VerifyingKey.from_pem(public_key_pem)
        self.signer = UrlSigner(front_url, presign_expires)
        self.upstream = Upstream(upstream)

    def authorize(self, raw_path: str, headers: Message) -> str:
        """The presigned URL an authorize request gets; ApiError if it gets none."""
        url = urllib.parse.urlsplit(raw_path)
        if not url.path.startswith(API_PREFIX):
            raise ApiError(404, f"No such endpoint: {url.path}")
        action, _, rest = url.path[len(API_PREFIX):].partition("/")
        bucket, _, raw_key = rest.partition("/")
        action, bucket = urllib.parse.unquote(action), urllib.parse.unquote(bucket)
        key = urllib.parse.unquote(raw_key)  # clients may percent-encode the key; '+' is a '+'
        if action not in ACTIONS:
            raise ApiError(400, f"Unknown action '{action}'; one of {', '.join(ACTIONS)}")
        if bucket not in SPACE_OF:
            raise ApiError(404, f"Unknown bucket '{bucket}'")
        if action != "list_objects_v2" and not key:
            raise ApiError(400, f"Action '{action}' needs an object key")
        uid = self.caller(headers)
        if not self.policy.allows(uid, action, SPACE_OF[bucket], key):
            if uid is None:
                raise ApiError(401, f"A token is required to {action} in '{bucket}'")
            raise ApiError(403, f"User {uid} is not allowed to {action} '{key}' in '{bucket}'")
        list_params = list_parameters(url.query) \
            if action == "list_objects_v2" and self.listing_params else {}
        metadata = {name.lower()[len(META_PREFIX):]: value for name, value in headers.items()
                    if name.lower().startswith(META_PREFIX)} if action == "put_object" else {}
        return self.signer.presign(action, bucket, key, list_params=list_params,
                                   metadata=metadata)

    def caller(self, headers: Message) -> int | None:
        """The uid of the request's token; None without one (anonymous)."""
        value = (headers.get("Authorization") or "").strip()
        if not value:
            return None
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "token" or not token.strip():
            raise ApiError(401, "Malformed Authorization header: expected 'Token <token>'")
        return token_uid(token.strip(), self.key)

    def admit(self, method: str, raw_path: str, headers: Message) -> None:
        """Raises the S3Error S3 would answer unless the S3 front may forward this request."""
        path, _, query = raw_path.partition("?")
        if headers.get("Authorization"):
            # Header-signed requests need credentials of the store, which no client holds.
            raise S3Error(403, "InvalidAccessKeyId",
                          "The AWS Access Key Id you provided does not exist in our records.")
        if any(name == "X-Amz-Signature" for name, _ in query_pairs(query)):
            self.signer.check(method, path, query, headers)
        elif not (method in ("GET", "HEAD") and bucket_of(path) == PUBLIC_BUCKET):
            raise S3Error(403, "AccessDenied", "Access Denied")
        if method == "PUT" and headers.get("Content-Length") is None:
            raise S3Error(411, "MissingContentLength",
                          "You must provide the Content-Length HTTP header.")


def bucket_of(path: str) -> str:
    return urllib.parse.unquote(path.lstrip("/").partition("/")[0])


def key_of(path: str) -> str:
    return urllib.parse.unquote(path.lstrip("/").partition("/")[2])


def list_parameters(raw_query: str) -> dict[str, Any]:
    """The listing parameters of an authorize request, by boto3 name (others are ignored)."""
    params: dict[str, Any] = {}
    for name, value in urllib.parse.parse_qsl(raw_query, keep_blank_values=True):
        if name == "max-keys":
            if not value.isdigit():
                raise ApiError(400, f"max-keys must be a non-negative integer, not {value!r}")
            params["MaxKeys"] = int(value)
        elif name in LIST_PARAMS:
            params[LIST_PARAMS[name]] = value
    return params


def error_xml(code: str, message: str, resource: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"<Resource>{escape(resource)}</Resource><RequestId>dcss-test</RequestId></Error>"
            ).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    """One client connection: `/api/...` is the authorize API, anything else the S3 front."""

    protocol_version = "HTTP/1.1"  # keep-alive, as HTTP client pools expect
    disable_nagle_algorithm = True  # headers and body go apart: no 40 ms wait for an ACK
    dcss: Dcss  # set on the subclass made for a server

    def log_message(self, format: str, *args: object) -> None:
        pass

    @property
    def is_api(self) -> bool:
        return self.path.startswith("/api/")  # bucket names never start with "api"

    def do_any(self) -> None:
        if self.is_api:
            self.api()
        else:
            self.front()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_any

    def handle_expect_100(self) -> bool:
        """Refuse before the body is sent, as S3 does for `Expect: 100-continue`."""
        if not self.is_api:
            try:
                self.dcss.admit(self.command, self.path, self.headers)
            except S3Error as exc:
                self.close_connection = True  # the client may not send the body it announced
                self.send_s3_error(exc)
                return False
        return super().handle_expect_100()

    # authorize API

    def api(self) -> None:
        self.discard_body()
        try:
            if self.command != "GET":
                raise ApiError(405, f"Method {self.command} not allowed")
            url = self.dcss.authorize(self.path, self.headers)
        except ApiError as exc:
            self.send_json(exc.status, {"success": False, "messages": [exc.message],
                                        "result": None})
            return
        self.send_json(200, {"success": True, "messages": [], "result": {"url": url}})

    def send_json(self, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # S3 front

    def front(self) -> None:
        try:
            self.dcss.admit(self.command, self.path, self.headers)
        except S3Error as exc:
            self.discard_body()
            self.send_s3_error(exc)
            return
        try:
            self.forward()
        except OSError as exc:  # the S3 server is gone: what S3 answers when it is overloaded
            self.close_connection = True  # the body may be half read
            with contextlib.suppress(OSError):
                self.send_s3_error(S3Error(503, "ServiceUnavailable", f"upstream: {exc}"))

    def forward(self) -> None:
        path, _, query = self.path.partition("?")
        target = upstream_target(path, query)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in NOT_FORWARDED}
        form = form_type(self.command, headers)
        if form:
            headers[form[0]] = "application/octet-stream"
        upstream = self.dcss.upstream
        conn = upstream.connect()
        try:
            conn.putrequest(self.command, target, skip_accept_encoding=True)
            for name, value in upstream.signed_headers(self.command, target, headers):
                conn.putheader(name, value)
            conn.endheaders()
            self.copy_body(conn)
            reply = conn.getresponse()
            if form and 200 <= reply.status < 300:
                upstream.restore_content_type(bucket_of(path), key_of(path), form[1])
            self.relay(reply)
        finally:
            conn.close()

    def copy_body(self, conn: http.client.HTTPConnection) -> None:
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(CHUNK, remaining))
            if not chunk:
                raise ConnectionError("the client closed the connection mid-body")
            conn.send(chunk)
            remaining -= len(chunk)

    def relay(self, reply: http.client.HTTPResponse) -> None:
        """Pass the S3 server's reply on: status, headers (their case kept: the official client
        looks metadata up in a plain dict) and body, streamed."""
        self.send_response_only(reply.status, reply.reason)
        for name, value in reply.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        bodiless = self.command == "HEAD" or reply.status in (204, 304)
        if reply.getheader("Content-Length") is None and not bodiless:
            self.close_connection = True  # the end of the body is the end of the connection
        self.end_headers()
        if bodiless:
            return
        while chunk := reply.read(CHUNK):
            self.wfile.write(chunk)

    def send_s3_error(self, exc: S3Error) -> None:
        body = b"" if self.command == "HEAD" else \
            error_xml(exc.code, exc.message, self.path.partition("?")[0])
        self.send_response(exc.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def discard_body(self) -> None:
        """Read a body not forwarded, so the connection can carry the next request (closing
        with unread data would reset it before the client reads the answer)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)


class Server(ThreadedServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that went away
            super().handle_error(request, client_address)


def make_server(dcss: Dcss, port: int) -> Server:
    handler = type("DcssHandler", (Handler,), {"dcss": dcss})
    return Server(("127.0.0.1", port), handler)


# --- for the fixtures ---------------------------------------------------------------------------

def write_private(path: Path, text: str) -> Path:
    """Write `text` to a file readable by its owner only (0600), as a token file should be."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # it may have existed with another mode
        f.write(text)
    return path


class DcssService:
    """The service as a subprocess (`python -m tests.servers.dcss`) in front of `s3_endpoint`.

    `url` is the authorize API's base (mountfs's --api-url), `s3_endpoint` the S3 front (its
    --s3-endpoint): the same address, unless `front_url` names another that reaches the service
    (a proxy in front, which passes the Host header on as it came): the presigned URLs then
    point there, and are checked against it. `public_key_path` holds `public_key_pem` while it runs.
    With `signing_key` (the private half of the key pair), `token()` and `token_file()` make
    tokens the service accepts. `s3` is a boto3 client on the S3 server behind it, to look at or
    prepare the buckets directly.
    """

    def __init__(self, s3_endpoint: str, public_key_pem: str, *, port: int | None = None,
                 public_writers: Iterable[int] = (), private_users: Iterable[int] = (),
                 signing_key: ecdsa.SigningKey | None = None,
                 presign_expires: int = PRESIGN_EXPIRES, listing_params: bool = True,
                 front_url: str | None = None) -> None:
        self.upstream = s3_endpoint
        self.listing_params = listing_params
        self.public_key_pem = public_key_pem
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.s3_endpoint = front_url or self.url
        self.public_writers = frozenset(public_writers)
        self.private_users = frozenset(private_users)
        self.signing_key = signing_key
        self.presign_expires = presign_expires
        self._dir = Path(tempfile.mkdtemp(prefix="dcss-"))
        self.public_key_path = self._dir / "dcss-public.pem"
        self.proc: subprocess.Popen[bytes] | None = None
        self._s3: Any = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.servers.dcss", "--port", str(self.port),
                "--s3-endpoint", self.upstream, "--public-key", str(self.public_key_path),
                "--presign-expires", str(self.presign_expires),
                "--front-url", self.s3_endpoint,
                "--public-writers", *map(str, sorted(self.public_writers)),
                "--private-users", *map(str, sorted(self.private_users)),
                *([] if self.listing_params else ["--ignore-listing-params"])]

    def start(self, timeout: float = 30) -> DcssService:
        self._dir.mkdir(exist_ok=True)
        self.public_key_path.write_text(self.public_key_pem)
        # stderr is inherited: a traceback of the service shows in the test's output.
        self.proc = start_server(self.command(), self.url + "/", "the DCSS service", timeout,
                                 cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def presigning_for(self, front_url: str) -> DcssService:
        """Another service (not started) like this one, over the same S3 server with the same
        key pair and permissions (this one's tokens are good there), presigning its URLs for
        `front_url`."""
        return DcssService(self.upstream, self.public_key_pem,
                           public_writers=self.public_writers, private_users=self.private_users,
                           signing_key=self.signing_key, presign_expires=self.presign_expires,
                           listing_params=self.listing_params, front_url=front_url)

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = admin_client(self.upstream)
        return self._s3

    def empty(self) -> None:
        """Delete every object of the three buckets (making any bucket that is missing)."""
        ensure_buckets(self.s3)
        for bucket in BUCKETS.values():
            keys = [obj["Key"] for page in self.s3.get_paginator("list_objects_v2")
                    .paginate(Bucket=bucket) for obj in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                self.s3.delete_objects(Bucket=bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    def token(self, uid: int, *, expires: datetime.datetime | None = None,
              version: str = "dt2") -> str:
        if self.signing_key is None:
            raise RuntimeError("this DcssService was given no signing_key")
        return make_token(self.signing_key, uid, expires=expires, version=version)

    def token_file(self, directory: Path | str, uid: int, *,
                   expires: datetime.datetime | None = None, version: str = "dt2") -> Path:
        """A 0600 file `directory/dcss-token-<uid>` holding a token for `uid` and a newline
        (as `echo TOKEN > file` leaves it)."""
        return write_private(Path(directory) / f"dcss-token-{uid}",
                             self.token(uid, expires=expires, version=version) + "\n")


# --- command line -------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.dcss", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=18555)
    parser.add_argument("--s3-endpoint", help="the S3 server to store in (default: start a "
                                              "moto_server of its own)")
    parser.add_argument("--public-key", type=Path, help="PEM of the key tokens are verified "
                        "with (default: make a key pair and print tokens)")
    parser.add_argument("--public-writers", type=int, nargs="*", metavar="UID",
                        help="uids that may write the public space (default: 1)")
    parser.add_argument("--private-users", type=int, nargs="*", metavar="UID",
                        help="uids that may use the private space (default: 1)")
    parser.add_argument("--ignore-listing-params", action="store_true",
                        help="sign only the prefix into listing URLs, as the real service is "
                        "presumed to (no delimiter, no continuation: one page of 1,000 keys)")
    parser.add_argument("--front-url", metavar="URL", help="the address presigned URLs point "
                        "at (default: the service's own), for a proxy in front that passes the "
                        "Host header on")
    parser.add_argument("--presign-expires", type=int, default=PRESIGN_EXPIRES,
                        metavar="SECONDS", help="lifetime of the presigned URLs")
    return parser.parse_args(argv)


@contextlib.contextmanager
def own_s3_server() -> Iterator[str]:
    server = S3Server().start()
    try:
        yield server.url
    finally:
        server.stop()


def describe(url: str, upstream: str, key_file: Path, tokens: dict[int, tuple[str, Path]],
             policy: Policy) -> str:
    """What a person needs to point mountfs (or the official client) at the service."""
    lines = [f"DCSS test service on {url} (objects stored in the S3 server at {upstream})",
             f"  authorize API  --api-url {url}   ({url}{API_PREFIX}ACTION/BUCKET/KEY)",
             f"  S3 endpoint    --s3-endpoint {url}",
             f"  public key     --token-public-key {key_file}",
             f"  buckets        {', '.join(BUCKETS.values())}",
             f"  public writers {sorted(policy.public_writers)}, "
             f"private users {sorted(policy.private_users)}, "
             "every uid: user/<uid>/"]
    for uid, (token, path) in tokens.items():
        lines += [f"  uid {uid} token  --token-file {path}", f"                 {token}"]
    if tokens:
        first = next(iter(tokens.values()))[1]
        lines.append(f"mount with: mountfs mount dcss: MNT --api-url {url} --s3-endpoint {url} "
                     f"--token-public-key {key_file} --token-file {first}")
    else:
        lines.append("tokens: sign them with the private half of the key given")
    lines.append("Ctrl-C stops.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (DcssService.stop) unwinds like Ctrl-C: the own moto_server and files go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    policy = Policy(frozenset({1} if args.public_writers is None else args.public_writers),
                    frozenset({1} if args.private_users is None else args.private_users))
    url = f"http://127.0.0.1:{args.port}"
    with contextlib.ExitStack() as stack:
        upstream = args.s3_endpoint or stack.enter_context(own_s3_server())
        tokens: dict[int, tuple[str, Path]] = {}
        key_file = args.public_key
        if key_file is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dcss-")))
            signing_key, pem = make_keypair()
            key_file = directory / "dcss-public.pem"
            key_file.write_text(pem)
            for uid in (1, 2):
                token = make_token(signing_key, uid)
                tokens[uid] = token, write_private(directory / f"dcss-token-{uid}", token + "\n")
        dcss = Dcss(args.front_url or url, upstream, key_file.read_text(), policy,
                    args.presign_expires, not args.ignore_listing_params)
        ensure_buckets(admin_client(upstream))
        server = make_server(dcss, args.port)
        stack.callback(server.server_close)
        print(describe(url, upstream, key_file, tokens, policy), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
