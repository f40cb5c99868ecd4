"""Conformance of the local DCSS service (tests/servers/dcss.py) with the official Duckietown
client, dt-data-api: the real `DataClient`, pointed at the service and trusting its test key,
uploads, lists, heads, downloads and deletes in every space and splits big files into parts; and
the service refuses what DCSS and S3 refuse — bad tokens (401), missing permissions (403),
tampered or expired presigned URLs and anonymous writes (403). Listing pages past 1,000 keys
through the authorize API's extra parameters. No mount is involved.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import http.client
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import dt_authentication.token
import dt_data_api.api
import dt_data_api.storage
import dt_data_api.utils
import pytest
import requests
from dt_data_api import APIError, DataClient, TransferStatus
from dt_data_api.utils import TransferHandler

from servers.dcss import BUCKETS, REPO_ROOT, DcssService, make_keypair, make_token
from servers.s3 import free_port

PART = 256 * 1024  # the part size the client splits at, instead of 5 GiB
PUBLIC, PRIVATE, USER = BUCKETS["public"], BUCKETS["private"], BUCKETS["user"]
META = {"x-amz-meta-number-of-parts": "1", "x-amz-meta-owner-id": "1"}


@pytest.fixture
def official(dcss: DcssService, monkeypatch: pytest.MonkeyPatch) -> DcssService:
    """The official client pointed at the service (authorize API and public storage) and
    trusting the service's test key for dt1 and dt2 tokens."""
    monkeypatch.setattr(dt_data_api.api, "DATA_API_URL",
                        f"{dcss.url}/api/v1/dcss/authorize/{{action}}/{{bucket}}/{{object}}")
    # Every Storage copies this template into its _storage_url (used for public) when made.
    monkeypatch.setattr(dt_data_api.storage, "STORAGE_DIRECT_URL",
                        f"{dcss.url}/duckietown-{{bucket}}-storage/{{object}}")
    for version in ("dt1", "dt2"):
        monkeypatch.setitem(dt_authentication.token.PUBLIC_KEYS, version,
                            dcss.public_key_path.read_text())
    # The 5 GiB part size is a default argument of MultipartBytesIO, bound at import.
    monkeypatch.setattr(dt_data_api.utils.MultipartBytesIO.__init__, "__defaults__", (PART,))
    return dcss


def finished(handler: TransferHandler) -> TransferHandler:
    handler.join()
    assert handler.status == TransferStatus.FINISHED, handler.reason
    return handler


def failed(handler: TransferHandler) -> str:
    handler.join()
    assert handler.status == TransferStatus.ERROR, handler.status
    return handler.reason


def authorize(dcss: DcssService, action: str, bucket: str, key: str = "", *,
              token: str | None = None, headers: dict[str, str] | None = None,
              params: dict[str, str] | None = None) -> requests.Response:
    """A raw authorize request (the key percent-encoded, as a careful client sends it)."""
    url = f"{dcss.url}/api/v1/dcss/authorize/{action}/{bucket}/{urllib.parse.quote(key)}"
    auth = {"Authorization": f"Token {token}"} if token else {}
    return requests.get(url, headers={**auth, **(headers or {})}, params=params, timeout=30)


def presigned(dcss: DcssService, action: str, bucket: str, key: str = "", **kw: Any) -> str:
    res = authorize(dcss, action, bucket, key, token=dcss.token(1), **kw)
    assert res.status_code == 200, res.text
    assert res.json()["success"] is True
    return res.json()["result"]["url"]


def refusal(res: requests.Response) -> tuple[int, str]:
    """Status and code of an S3 error reply."""
    return res.status_code, ET.fromstring(res.content).findtext("Code") or ""


def envelope_error(res: requests.Response) -> int:
    """The status of an authorize refusal, checking it carries the error envelope."""
    body = res.json()
    assert body["success"] is False and body["result"] is None
    assert body["messages"] and all(isinstance(m, str) and m for m in body["messages"])
    return res.status_code


def ago(**delta: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(**delta)


# --- the official client against the service ----------------------------------------------------

@pytest.mark.parametrize("space, uid", [("private", 1), ("user", 2), ("public", 1)])
def test_round_trip(official: DcssService, space: str, uid: int) -> None:
    storage = DataClient(official.token(uid)).storage(space)
    name = "dir/sub/a b+c~é.txt"  # spaces, '+' and UTF-8 in the path of every request
    stored = f"{uid}/{name}" if space == "user" else name
    data = b"hello dcss\n" * 100
    finished(storage.upload(data, name))
    assert official.s3.get_object(Bucket=BUCKETS[space], Key=stored)["Body"].read() == data

    listed = storage.list_objects("dir/")
    if space == "public":
        assert listed == [stored]  # anonymous ListObjects (v1), keys as they are
    else:
        # The presigned ListObjectsV2 URL carries boto3's encoding-type=url: keys come encoded.
        assert [urllib.parse.unquote_plus(k) for k in listed] == [stored]
    [item] = storage.list_objects("dir/", items=True)
    assert item.size == len(data) and item.etag

    meta = storage.head(name)
    assert meta["Content-Length"] == str(len(data))
    assert meta["x-amz-meta-number-of-parts"] == "1"
    assert meta["x-amz-meta-owner-id"] == str(uid)
    assert finished(storage.download(name)).data == data

    assert storage.delete(name) is True
    assert storage.list_objects("dir/") == []
    with pytest.raises(FileNotFoundError):
        storage.head(name)


def test_anonymous_client_reads_public(official: DcssService) -> None:
    data = os.urandom(3000)
    finished(DataClient(official.token(1)).storage("public").upload(data, "pub/x.bin"))
    anonymous = DataClient().storage("public")
    assert anonymous.list_objects("pub/") == ["pub/x.bin"]
    assert anonymous.head("pub/x.bin")["Content-Length"] == "3000"
    assert finished(anonymous.download("pub/x.bin")).data == data
    with pytest.raises(FileNotFoundError):
        anonymous.head("pub/missing")


def test_multipart_upload(official: DcssService) -> None:
    data = os.urandom(2 * PART + 1000)
    storage = DataClient(official.token(1)).storage("private")
    finished(storage.upload(data, "big/file.bin"))
    listing = official.s3.list_objects_v2(Bucket=PRIVATE, Prefix="big/")["Contents"]
    parts = [obj["Key"] for obj in listing]
    assert parts == ["big/file.bin.000", "big/file.bin.001", "big/file.bin.002"]
    for key, size in zip(parts, (PART, PART, 1000)):
        head = official.s3.head_object(Bucket=PRIVATE, Key=key)
        assert head["Metadata"] == {"number-of-parts": "3", "owner-id": "1"}
        assert head["ContentLength"] == size
    assert finished(storage.download("big/file.bin")).data == data


def test_plain_user_is_refused_private_and_public_writes(official: DcssService) -> None:
    client = DataClient(official.token(2))
    private = client.storage("private")
    with pytest.raises(APIError, match="Code: 403"):
        private.list_objects("")
    with pytest.raises(APIError, match="Code: 403"):
        private.head("x")
    assert "Code: 403" in failed(private.upload(b"x", "x"))
    assert "Code: 403" in failed(client.storage("public").upload(b"x", "x"))
    with pytest.raises(APIError, match="Code: 403"):
        client.storage("user", impersonate=1).list_objects("")
    assert official.s3.list_objects_v2(Bucket=PRIVATE).get("KeyCount") == 0
    assert official.s3.list_objects_v2(Bucket=PUBLIC).get("KeyCount") == 0


def test_user_space_is_per_uid(official: DcssService) -> None:
    token = official.token(2)
    for prefix in ("", "1/", "2", "20/"):
        res = authorize(official, "list_objects_v2", USER, prefix, token=token)
        assert envelope_error(res) == 403, prefix
    assert authorize(official, "list_objects_v2", USER, "2/", token=token).status_code == 200
    assert envelope_error(authorize(official, "get_object", USER, "1/f", token=token)) == 403
    assert authorize(official, "put_object", USER, "2/f", token=token).status_code == 200


# --- tokens -------------------------------------------------------------------------------------

def test_expired_tokens_are_refused(official: DcssService) -> None:
    for version in ("dt1", "dt2"):
        token = official.token(1, expires=ago(days=2), version=version)
        client = DataClient(token)  # the client accepts expired tokens: the service refuses them
        with pytest.raises(APIError, match="Code: 401"):
            client.storage("private").list_objects("")
        assert envelope_error(authorize(official, "list_objects_v2", PRIVATE, token=token)) == 401
    for version in ("dt1", "dt2"):
        fresh = official.token(1, expires=ago(days=-2), version=version)
        assert DataClient(fresh).storage("private").list_objects("") == []


def test_bad_tokens_and_requests_get_the_error_envelope(official: DcssService) -> None:
    other, _ = make_keypair()
    forged = make_token(other, 1)  # the client would refuse it locally: raw requests
    for token in (forged, "dt2-abc", "dt3-abc-def", "nonsense", forged.replace("dt2-", "dt1-")):
        assert envelope_error(authorize(official, "get_object", PUBLIC, "x", token=token)) == 401
    assert envelope_error(authorize(official, "list_objects_v2", PRIVATE)) == 401  # no token
    bearer = requests.get(f"{official.url}/api/v1/dcss/authorize/list_objects_v2/{PRIVATE}/",
                          headers={"Authorization": f"Bearer {official.token(1)}"}, timeout=30)
    assert envelope_error(bearer) == 401
    token = official.token(1)
    assert envelope_error(authorize(official, "get_object", "duckietown-x-storage", "k",
                                    token=token)) == 404
    assert envelope_error(authorize(official, "copy_object", PRIVATE, "k", token=token)) == 400
    # Public reads need no token; a valid dt1 token works as well as dt2.
    assert authorize(official, "head_object", PUBLIC, "k").status_code == 200
    assert authorize(official, "head_object", PRIVATE, "k",
                     token=official.token(1, version="dt1")).status_code == 200


# --- the S3 front checks what S3 checks ---------------------------------------------------------

def test_presigned_urls_cannot_be_altered(official: DcssService) -> None:
    official.s3.put_object(Bucket=PRIVATE, Key="k/a", Body=b"0123456789")
    url = presigned(official, "get_object", PRIVATE, "k/a")
    assert requests.get(url, timeout=30).content == b"0123456789"
    ranged = requests.get(url, headers={"Range": "bytes=2-4"}, timeout=30)
    assert (ranged.status_code, ranged.content) == (206, b"234")
    for changed in (url + "&foo=1", url.replace("/k/a?", "/k/b?"),
                    url.replace("X-Amz-Expires=3600", "X-Amz-Expires=7200")):
        assert refusal(requests.get(changed, timeout=30)) == (403, "SignatureDoesNotMatch")
    assert requests.head(url, timeout=30).status_code == 403  # a GET URL is not a HEAD URL
    assert refusal(requests.delete(url, timeout=30)) == (403, "SignatureDoesNotMatch")
    assert refusal(requests.put(url, data=b"x", timeout=30)) == (403, "SignatureDoesNotMatch")
    assert official.s3.get_object(Bucket=PRIVATE, Key="k/a")["Body"].read() == b"0123456789"

    listing = presigned(official, "list_objects_v2", PRIVATE, "k/")
    assert requests.get(listing, timeout=30).status_code == 200
    for changed in (listing.replace("prefix=k%2F", "prefix="), listing + "&delimiter=%2F"):
        assert refusal(requests.get(changed, timeout=30)) == (403, "SignatureDoesNotMatch")
    own_signature = requests.get(f"{official.url}/{PRIVATE}/k/a", timeout=30, headers={
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request"
                         ", SignedHeaders=host, Signature=00"})
    assert refusal(own_signature) == (403, "InvalidAccessKeyId")


def test_put_needs_exactly_the_signed_metadata(official: DcssService) -> None:
    url = presigned(official, "put_object", PRIVATE, "k/p", headers=META)
    missing = {"x-amz-meta-number-of-parts": "1"}
    different = {**META, "x-amz-meta-owner-id": "2"}
    for headers in (missing, different, {}):
        res = requests.put(url, data=b"data", headers=headers, timeout=30)
        assert refusal(res) == (403, "SignatureDoesNotMatch"), headers
    extra = requests.put(url, data=b"data", headers={**META, "x-amz-meta-x": "1"}, timeout=30)
    assert refusal(extra) == (403, "AccessDenied")
    assert official.s3.list_objects_v2(Bucket=PRIVATE).get("KeyCount") == 0
    assert requests.put(url, data=b"data", headers=META, timeout=30).status_code == 200
    head = official.s3.head_object(Bucket=PRIVATE, Key="k/p")
    assert head["Metadata"] == {"number-of-parts": "1", "owner-id": "1"}
    assert head["ContentLength"] == 4


def test_put_refused_before_the_body_and_any_body_type_stored(official: DcssService) -> None:
    url = urllib.parse.urlsplit(presigned(official, "put_object", PRIVATE, "k/f", headers=META))
    # `Expect: 100-continue` without the signed headers: refused before the body is sent.
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("PUT", f"{url.path}?{url.query}")
    conn.putheader("Content-Length", "4")
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    reply = conn.getresponse()
    assert (reply.status, ET.fromstring(reply.read()).findtext("Code")) \
        == (403, "SignatureDoesNotMatch")
    conn.close()
    # A body of a form type is stored as it is, with its type (moto_server alone loses it).
    body = b"a=1&b=%ff\x00\xff"
    res = requests.put(url.geturl(), data=body, timeout=30, headers={
        **META, "Content-Type": "application/x-www-form-urlencoded", "Cache-Control": "no-cache"})
    assert res.status_code == 200, res.text
    got = official.s3.get_object(Bucket=PRIVATE, Key="k/f")
    assert got["Body"].read() == body
    assert (got["ContentType"], got["CacheControl"]) \
        == ("application/x-www-form-urlencoded", "no-cache")
    assert got["Metadata"] == {"number-of-parts": "1", "owner-id": "1"}


def test_anonymous_requests_only_read_public(official: DcssService) -> None:
    s3 = official.s3
    s3.put_object(Bucket=PUBLIC, Key="p/x", Body=b"public")
    s3.put_object(Bucket=PRIVATE, Key="p/x", Body=b"private")
    base = official.s3_endpoint
    assert refusal(requests.put(f"{base}/{PUBLIC}/p/y", data=b"x", timeout=30)) \
        == (403, "AccessDenied")
    assert refusal(requests.delete(f"{base}/{PUBLIC}/p/x", timeout=30)) == (403, "AccessDenied")
    assert refusal(requests.get(f"{base}/{PRIVATE}/p/x", timeout=30)) == (403, "AccessDenied")
    assert requests.head(f"{base}/{PRIVATE}/p/x", timeout=30).status_code == 403
    assert refusal(requests.get(f"{base}/", timeout=30)) == (403, "AccessDenied")
    assert requests.get(f"{base}/{PUBLIC}/p/x", timeout=30).content == b"public"
    assert requests.head(f"{base}/{PUBLIC}/p/x", timeout=30).headers["Content-Length"] == "6"
    listing = requests.get(f"{base}/{PUBLIC}", timeout=30,
                           params={"list-type": "2", "prefix": "", "delimiter": "/"})
    assert listing.status_code == 200 and b"<Prefix>p/</Prefix>" in listing.content
    assert s3.get_object(Bucket=PUBLIC, Key="p/x")["Body"].read() == b"public"
    assert "Contents" not in s3.list_objects_v2(Bucket=PUBLIC, Prefix="p/y")


def test_presigned_urls_expire(official: DcssService) -> None:
    # X-Amz-Date counts whole seconds, so a URL of 5 s is good for at least 4: room for the
    # first GET on a loaded machine.
    short = DcssService(official.upstream, official.public_key_pem, private_users={1},
                        signing_key=official.signing_key, presign_expires=5).start()
    try:
        official.s3.put_object(Bucket=PRIVATE, Key="e", Body=b"e")
        url = presigned(short, "get_object", PRIVATE, "e")
        assert requests.get(url, timeout=30).content == b"e"
        time.sleep(6.1)
        assert refusal(requests.get(url, timeout=30)) == (403, "AccessDenied")
    finally:
        short.stop()


# --- listing past 1,000 keys --------------------------------------------------------------------

def list_page(dcss: DcssService, prefix: str, **params: str) -> ET.Element:
    url = presigned(dcss, "list_objects_v2", USER, prefix, params=params)
    res = requests.get(url, timeout=30)
    assert res.status_code == 200, res.text
    root = ET.fromstring(res.content)
    for el in root.iter():  # drop the S3 namespace for findtext
        el.tag = el.tag.rpartition("}")[2]
    return root


def decoded(root: ET.Element, path: str) -> list[str]:
    """Texts at `path`, URL-decoded: the presigned listing asked for encoding-type=url."""
    assert root.findtext("EncodingType") == "url"
    return [urllib.parse.unquote_plus(el.text or "") for el in root.findall(path)]


def test_listing_pages_through_2500_keys(official: DcssService) -> None:
    prefix = "1/many/"
    keys = [f"{prefix}k {i:04d}" for i in range(2500)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: official.s3.put_object(Bucket=USER, Key=k, Body=b""),
                      keys + [f"{prefix}sub/x", f"{prefix}sub/y"]))

    seen: list[str] = []
    prefixes: list[str] = []
    pages, token = 0, ""
    while True:
        params = {"delimiter": "/", **({"continuation-token": token} if token else {})}
        root = list_page(official, prefix, **params)
        pages += 1
        seen += decoded(root, "Contents/Key")
        prefixes += decoded(root, "CommonPrefixes/Prefix")
        token = root.findtext("NextContinuationToken") or ""
        if root.findtext("IsTruncated") != "true":
            break
    assert pages == 3
    assert seen == keys and prefixes == [f"{prefix}sub/"]

    root = list_page(official, prefix, **{"max-keys": "10", "start-after": keys[100]})
    assert decoded(root, "Contents/Key") == keys[101:111]
    assert root.findtext("IsTruncated") == "true"
    bad = authorize(official, "list_objects_v2", USER, prefix, token=official.token(1),
                    params={"max-keys": "ten"})
    assert envelope_error(bad) == 400


# --- the command line ---------------------------------------------------------------------------

def test_command_line_prints_what_a_user_needs() -> None:
    """`python -m tests.servers.dcss` starts its own moto_server, prints the URLs, key file and
    token files a mount needs, serves, and stops cleanly (its files gone) on Ctrl-C."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.dcss", "--port", str(port)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE)
    try:
        out = read_until(proc, "Ctrl-C stops.", timeout=60)
        url = f"http://127.0.0.1:{port}"
        for needed in (f"--api-url {url}", f"--s3-endpoint {url}", "--token-public-key ",
                       "--token-file "):
            assert needed in out, out
        token_file = Path(out.split("--token-file ")[1].split()[0])
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        res = requests.get(f"{url}/api/v1/dcss/authorize/list_objects_v2/{PRIVATE}/",
                           headers={"Authorization": f"Token {token}"}, timeout=30)
        assert res.status_code == 200, res.text
        assert requests.get(res.json()["result"]["url"], timeout=30).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert not token_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def read_until(proc: subprocess.Popen[bytes], last_line: str, timeout: float) -> str:
    """What the process printed up to `last_line` (raw reads: no buffer hides lines from
    select)."""
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and last_line.encode() not in out:
            if sel.select(timeout=1):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
    if last_line.encode() not in out:
        raise AssertionError(f"no {last_line!r} in time: {out.decode()}")
    return out.decode()
