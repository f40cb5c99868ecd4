"""The S3 driver's fast request path (mountfs/backends/s3_wire.py) where the shared moto server
cannot show it: signatures and session tokens checked by a moto_server that authenticates
(credentials from a profile whose credential_process botocore refreshes, the one source of
both clients), TLS verified against AWS_CA_BUNDLE (moto_server over HTTPS with a
certificate of its own), a bucket's region followed, the environment's HTTP proxy used, and
ranged GETs written into block files as they arrive (`read_into`) when a body breaks off."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import trio
from botocore.credentials import Credentials

from cache.block_files import BlockSink
from cache.errors import ObjectChanged
from mountfs.backends.s3_backend import S3Backend
from mountfs.backends.s3_wire import Base, Wire
from mountfs.errors import BackendError, PermissionDenied, TemporaryFailure
from servers.s3 import (CREDENTIALS, S3Server, command, free_port, start_server,
                        stop_process)
from servers.s3_proxy import ProxyHandler, S3Proxy
from stores import reset_s3_server

BUCKET = "wire"


async def sunk(s3: S3Backend, key: str, offset: int, length: int) -> bytes:
    """Bytes of `key` read with `read_into` (the cache's way), by the positions handed over."""
    buf = bytearray(length)

    def sink(pos: int, data: bytes | memoryview) -> None:
        buf[pos:pos + len(data)] = data

    return bytes(buf[:await s3.read_into(BUCKET, key, offset, length, sink)])


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local S3 server's credentials in the environment, where the AWS tools find them."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[str]:
    """A moto_server of this test's own (its authentication is switched on for all)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(command(port), url + "/moto-api/", "moto_server",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        env={**os.environ, **CREDENTIALS})
    try:
        yield url
    finally:
        stop_process(proc)


def assumed_role(url: str) -> dict[str, str]:
    """Temporary credentials (with a session token) of a role allowed everything in S3, and
    the bucket made; from then on the server checks every request's signature and token."""
    clients = {name: boto3.client(name, endpoint_url=url, region_name="us-east-1",
                                  aws_access_key_id="testing", aws_secret_access_key="testing")
               for name in ("iam", "sts", "s3")}
    role = clients["iam"].create_role(RoleName="mounter", AssumeRolePolicyDocument="{}")
    clients["iam"].put_role_policy(RoleName="mounter", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    creds = clients["sts"].assume_role(RoleArn=role["Role"]["Arn"],
                                       RoleSessionName="test")["Credentials"]
    clients["s3"].create_bucket(Bucket=BUCKET)
    # Authentication on from now: the requests above were its allowance (4 without auth).
    urllib.request.urlopen(urllib.request.Request(
        f"{url}/moto-api/reset-auth", data=b"0", method="POST",
        headers={"Content-Type": "text/plain"})).close()
    return {"Version": 1, "AccessKeyId": creds["AccessKeyId"],  # type: ignore[dict-item]
            "SecretAccessKey": creds["SecretAccessKey"], "SessionToken": creds["SessionToken"],
            # Inside botocore's mandatory refresh window: it runs the process at each use.
            "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 300))}


def use_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, creds: dict[str, str]) -> Path:
    """A profile whose credentials come from a credential_process reading `creds` from a file
    (rewritten by the test); the environment holds none."""
    store = tmp_path / "creds.json"
    store.write_text(json.dumps(creds))
    config = tmp_path / "config"
    config.write_text(f"[profile temp]\nregion = us-east-1\n"
                      f"credential_process = {sys.executable} -c \"import sys; "
                      f"sys.stdout.write(open('{store}').read())\"\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    return store


async def test_session_token_signs_both_paths_and_refreshed_credentials_are_used(
        moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = assumed_role(moto)
    store = use_profile(monkeypatch, tmp_path, creds)
    s3 = S3Backend(moto, profile="temp")
    # The fast path: PUT (with metadata), HEAD, ranged GET, listing, DELETE; boto3: a copy.
    data = b"signed with a session token"
    await s3.write_object(BUCKET, "dir/file-1", io.BytesIO(data), len(data), {"mode": "33188"})
    info = await s3.stat_object(BUCKET, "dir/file-1")
    assert (info.size, (info.metadata or {}).get("mode")) == (len(data), "33188")
    assert await s3.read_object(BUCKET, "dir/file-1", 7, 4) == data[7:11]
    assert await sunk(s3, "dir/file-1", 7, 4) == data[7:11]  # a ranged GET into a sink
    await s3.copy_object(BUCKET, "dir/file-1", BUCKET, "dir/copy")
    # (moto checks signatures on the decoded path and query: a "/" in a query, a space in a key
    # fail its check for boto3 too; so plain names, and a listing without a delimiter.)
    pages = [page async for page in s3.list_objects(BUCKET, "dir", delimiter=None)]
    assert [i.key for page in pages for i in page] == ["dir/copy", "dir/file-1"]
    await s3.delete_object(BUCKET, "dir/copy")

    # The profile's process now hands out a wrong token: both paths see it at once (refreshed
    # credentials, one source), and the server refuses both (S3 says 400 InvalidToken).
    store.write_text(json.dumps({**creds, "SessionToken": creds["SessionToken"][:-4] + "AAAA"}))
    with pytest.raises(BackendError, match="InvalidToken"):
        await s3.read_object(BUCKET, "dir/file-1", 0, 4)
    with pytest.raises(BackendError, match="InvalidToken"):
        await sunk(s3, "dir/file-1", 0, 4)
    with pytest.raises(BackendError, match="InvalidToken"):
        await s3.list_buckets()
    # And a wrong secret: the signature does not match.
    store.write_text(json.dumps({**creds, "SecretAccessKey": "wrong" + creds["SecretAccessKey"]}))
    with pytest.raises(PermissionDenied):
        await s3.read_object(BUCKET, "dir/file-1", 0, 4)
    await s3.aclose()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made in `directory`."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def https_moto(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """moto_server over HTTPS with a self-signed certificate for 127.0.0.1: (URL, the cert)."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    proc = subprocess.Popen([*command(port), "-c", str(cert), "-k", str(key)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **CREDENTIALS})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server over HTTPS did not start") from None
                time.sleep(0.1)
        yield url, cert
    finally:
        stop_process(proc)


@pytest.mark.usefixtures("credentials")
async def test_https_is_verified_against_aws_ca_bundle(
        https_moto: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, cert = https_moto
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    s3 = S3Backend(url, path_style=True)
    await s3.create_bucket(BUCKET)  # boto3
    await s3.write_object(BUCKET, "k", io.BytesIO(b"tls"), 3, {})  # the fast path
    assert await s3.read_object(BUCKET, "k", 0, 3) == b"tls"
    assert await sunk(s3, "k", 0, 3) == b"tls"
    await s3.aclose()

    # Without the bundle the certificate is unknown: the connection fails (no retries here).
    monkeypatch.delenv("AWS_CA_BUNDLE")
    creds = boto3.session.Session().get_credentials()
    wire = Wire("us-east-1", lambda: creds, 1, 5, 5, None)
    with pytest.raises(TemporaryFailure, match="cannot connect"):
        await wire.request("HeadObject", "HEAD", Base.from_url(f"{url}/{BUCKET}/k", "k"), "k")
    wire.close()


@pytest.mark.usefixtures("credentials")
async def test_requests_follow_a_bucket_to_its_region(
        s3_server: S3Server) -> None:
    reset_s3_server(s3_server)
    boto3.client("s3", endpoint_url=s3_server.url, region_name="eu-west-1").create_bucket(
        Bucket="far", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3 = S3Backend(s3_server.url, region="us-east-1")
    await s3.write_object("far", "k", io.BytesIO(b"far away"), 8, {})
    assert await s3.read_object("far", "k", 4, 4) == b"away"
    # Signed for the bucket's region, as HeadBucket named it (boto3 follows redirects there).
    assert [b.region for b in s3._bases.values()] == ["eu-west-1"]
    await s3.aclose()


@pytest.mark.usefixtures("credentials")
async def test_requests_go_through_the_proxy_the_environment_names(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    reset_s3_server(s3_server)
    boto3.client("s3", endpoint_url=s3_server.url).create_bucket(Bucket=BUCKET)
    proxy = S3Proxy(s3_server.url).start()  # forwards what it is sent, counting it
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        s3 = S3Backend(s3_server.url)
        await s3.write_object(BUCKET, "k", io.BytesIO(b"proxied"), 7, {})
        assert (await s3.stat_object(BUCKET, "k")).size == 7
        # HeadBucket (boto3, which reads the same variables), then PutObject and HeadObject.
        assert sum(proxy.seen.values()) == 3
        await s3.aclose()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        s3 = S3Backend(s3_server.url)
        await s3.stat_object(BUCKET, "k")
        assert sum(proxy.seen.values()) == 3
        await s3.aclose()
    finally:
        proxy.stop()


def test_base_follows_botocore_addressing() -> None:
    assert Base.from_url("https://b.s3.eu-west-1.amazonaws.com/m", "m") == \
        Base("https", "b.s3.eu-west-1.amazonaws.com", 443, "/")
    assert Base.from_url("http://127.0.0.1:9000/b/m", "m") == \
        Base("http", "127.0.0.1", 9000, "/b/")
    assert Base("http", "h", 80, "/").host_header == "h"
    assert Base("https", "h", 8443, "/").host_header == "h:8443"


class CutGets(S3Proxy):
    """Forwards every request, but the first `times` ranged GETs get a body that breaks off
    halfway, as a server that died mid-reply leaves it; after `stall` seconds of silence, if
    given, as a server that hung. The body's bytes from `wrong_from` on are wrong (0xff), as
    if the object had been replaced, so that a test sees which bytes a second try replaced."""

    def __init__(self, upstream: str, times: int = 1, stall: float = 0.0,
                 wrong_from: int = 0) -> None:
        super().__init__(upstream)
        self.times, self.gets, self.stall, self.wrong_from = times, 0, stall, wrong_from

    def handle(self, h: ProxyHandler, op: str, body: bytes) -> None:
        if h.command != "GET" or "Range" not in h.headers:
            super().handle(h, op, body)
            return
        with self.lock:
            self.gets += 1
            cut = self.gets <= self.times
        status, headers, data = h.forward(body)
        if cut:
            wrong = data[:self.wrong_from] + b"\xff" * max(0, len(data) - self.wrong_from)
            h.answer(status, headers, wrong, send=len(data) // 2, length=len(data))
            time.sleep(self.stall)
        else:
            h.answer(status, headers, data)


@pytest.mark.usefixtures("credentials")
async def test_a_body_cut_short_is_read_again_into_the_same_blocks(
        s3_server: S3Server, tmp_path: Path) -> None:
    reset_s3_server(s3_server)
    boto3.client("s3", endpoint_url=s3_server.url).create_bucket(Bucket=BUCKET)
    data = os.urandom(2_500_000)
    # The first try brings the first block whole and right, then wrong bytes into the second.
    proxy = CutGets(s3_server.url, wrong_from=1 << 20).start()
    s3 = S3Backend(proxy.url, path_style=True)
    try:
        await s3.write_object(BUCKET, "k", io.BytesIO(data), len(data), {})
        paths = [str(tmp_path / f"block.{n}") for n in range(3)]
        whole: list[tuple[int, int]] = []
        with BlockSink(paths, 1 << 20, len(data) - 100,
                       lambda n, length: whole.append((n, length))) as sink:
            # The second try checked the whole first block and overwrote the rest.
            got = await s3.read_into(BUCKET, "k", 100, len(data) - 100, sink)
            sink.cut(got)
        assert got == len(data) - 100 and proxy.gets == 2
        assert whole == [(0, 1 << 20), (1, 1 << 20), (2, len(data) - 100 - (2 << 20))]
        assert b"".join(Path(p).read_bytes() for p in paths) == data[100:]
        assert [Path(p).stat().st_size for p in paths] == [1 << 20, 1 << 20, 2_500_000 - 100
                                                           - (2 << 20)]
        # Past the object's end: fewer bytes, nothing more handed over.
        with BlockSink(paths[:1], 1 << 20, 1000) as sink:
            assert await s3.read_into(BUCKET, "k", len(data) - 10, 1000, sink) == 10
            sink.cut(10)
        assert Path(paths[0]).read_bytes() == data[-10:]
    finally:
        await s3.aclose()
        proxy.stop()


@pytest.mark.usefixtures("credentials")
async def test_a_second_try_bringing_other_bytes_for_a_whole_block_is_a_changed_object(
        s3_server: S3Server, tmp_path: Path) -> None:
    """A block whole after the first try may already be in place and read: a second try
    that brings other bytes for it (the object replaced in between) fails the read as
    ObjectChanged rather than change the block under its readers."""
    reset_s3_server(s3_server)
    boto3.client("s3", endpoint_url=s3_server.url).create_bucket(Bucket=BUCKET)
    data = os.urandom(2_500_000)
    proxy = CutGets(s3_server.url).start()  # the first try's bytes all wrong
    s3 = S3Backend(proxy.url, path_style=True)
    try:
        await s3.write_object(BUCKET, "k", io.BytesIO(data), len(data), {})
        paths = [str(tmp_path / f"block.{n}") for n in range(3)]
        with BlockSink(paths, 1 << 20, len(data)) as sink:
            with pytest.raises(ObjectChanged):
                await s3.read_into(BUCKET, "k", 0, len(data), sink)
        assert proxy.gets == 2
        assert Path(paths[0]).read_bytes() == b"\xff" * (1 << 20)  # as the first try left it
    finally:
        await s3.aclose()
        proxy.stop()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.usefixtures("credentials")
async def test_a_body_that_stalls_costs_the_read_timeout_and_is_read_again(
        tls: bool, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body's reads keep the read timeout (kept by the kernel while a plain socket's body is
    read, by Python on TLS: body_reads.py): a server silent halfway through a body costs the
    timeout, not as long as it stays silent, and the connection reads the next body as ever."""
    monkeypatch.setenv("MOUNTFS_READ_TIMEOUT", "1")
    reset_s3_server(s3_server)
    boto3.client("s3", endpoint_url=s3_server.url).create_bucket(Bucket=BUCKET)
    data = os.urandom(2_500_000)
    certificate = self_signed(tmp_path) if tls else None
    if certificate:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(certificate[0]))
    proxy = CutGets(s3_server.url, stall=6.0, wrong_from=1 << 20).start(tls=certificate)
    s3 = S3Backend(proxy.url, path_style=True)
    try:
        await s3.write_object(BUCKET, "k", io.BytesIO(data), len(data), {})
        for _ in range(2):  # the second read on the connection the first one gave back
            paths = [str(tmp_path / f"block.{n}") for n in range(3)]
            start = time.monotonic()
            with BlockSink(paths, 1 << 20, len(data)) as sink:
                got = await s3.read_into(BUCKET, "k", 0, len(data), sink)
                sink.cut(got)
            assert time.monotonic() - start < 4.5
            assert got == len(data)
            assert b"".join(Path(p).read_bytes() for p in paths) == data
        assert proxy.gets == 3
    finally:
        await s3.aclose()
        proxy.stop()


@pytest.mark.usefixtures("credentials")
async def test_a_sink_that_fails_fails_the_read_without_retries(
        s3_server: S3Server) -> None:
    reset_s3_server(s3_server)
    boto3.client("s3", endpoint_url=s3_server.url).create_bucket(Bucket=BUCKET)
    proxy = S3Proxy(s3_server.url).start()
    s3 = S3Backend(proxy.url, path_style=True)
    calls: list[int] = []

    def full_disk(pos: int, chunk: bytes) -> None:
        calls.append(pos)
        raise OSError(28, "No space left on device")

    try:
        await s3.write_object(BUCKET, "k", io.BytesIO(b"x" * 300_000), 300_000, {})
        before = proxy.seen["other"]
        with pytest.raises(OSError, match="No space"):
            await s3.read_into(BUCKET, "k", 0, 300_000, full_disk)
        assert calls == [0]  # never called again once it failed
        # One GET: a disk error is not the server's to retry.
        assert proxy.seen["other"] == before + 1
    finally:
        await s3.aclose()
        proxy.stop()


@pytest.mark.usefixtures("credentials")
async def test_a_body_reaches_the_sink_in_large_pieces(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # Directly: urllib3 reads 256 KiB at a time (s3_download). Through a proxy, on the CRT's
    # connections: their ~16 KiB chunks are gathered into 256 KiB pieces (s3_wire).
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                 "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    reset_s3_server(s3_server)
    boto3.client("s3", endpoint_url=s3_server.url).create_bucket(Bucket=BUCKET)
    data = os.urandom(3_000_000)
    proxy = S3Proxy(s3_server.url).start()
    try:
        for piece, through in ((256 * 1024, None), (256 * 1024, proxy.url)):
            if through:
                monkeypatch.setenv("HTTP_PROXY", through)
            s3 = S3Backend(s3_server.url, path_style=True)
            calls: list[tuple[int, int]] = []
            got = bytearray(len(data))

            def sink(pos: int, chunk: bytes | memoryview) -> None:
                calls.append((pos, len(chunk)))
                got[pos:pos + len(chunk)] = chunk

            try:
                await s3.write_object(BUCKET, "k", io.BytesIO(data), len(data), {})
                before = proxy.seen["other"]
                assert await s3.read_into(BUCKET, "k", 0, len(data), sink) == len(data)
            finally:
                await s3.aclose()
            assert calls == [(pos, min(piece, len(data) - pos))
                             for pos in range(0, len(data), piece)]
            assert bytes(got) == data
            assert proxy.seen["other"] == before + (1 if through else 0)
    finally:
        proxy.stop()


async def test_a_server_that_never_replies_times_out_each_request_after_its_own_wait() -> None:
    # The read timeout counts from each request's start (then from its last bytes): one
    # begun later gives up later, and neither waits much past its own timeout.
    silent = socket.create_server(("127.0.0.1", 0))
    silent.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                accepted.append(silent.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    port = silent.getsockname()[1]
    wire = Wire("us-east-1", lambda: Credentials("a", "b"), 4, 5.0, 0.6, None)
    base = Base("http", "127.0.0.1", port, "/bucket/")
    ended: dict[str, float] = {}

    async def head(key: str, after: float) -> None:
        await trio.sleep(after)
        with pytest.raises(TemporaryFailure, match="no reply for 0.6s"):
            await wire.request("HeadObject", "HEAD", base, key)
        ended[key] = time.monotonic() - start

    start = time.monotonic()
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(head, "first", 0.0)
                nursery.start_soon(head, "later", 0.4)
    finally:
        wire.close()
        silent.close()
        for conn in accepted:
            conn.close()
    assert 0.6 <= ended["first"] < 0.95
    assert 1.0 <= ended["later"] < 1.35
