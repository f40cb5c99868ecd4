"""The S3 driver on a real S3 server process (moto_server on 127.0.0.1): mounted for real, and
driven directly where a test needs what the command line does not set (copy threshold, page
size) or a server without some feature (moto behind tests/servers/s3_proxy.py)."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from conftest import Mount, Mounter, is_mounted, run_cli
from mountfs.backends.base import ObjectInfo, split_headers
from mountfs.backends.s3_backend import S3Backend
from mountfs.backends.s3_model import resume_marker
from mountfs.errors import PermissionDenied
from servers.s3 import CREDENTIALS, S3Server
from servers.s3_proxy import S3Proxy
from test_durability import assert_same_tree, stdlib_sample

MiB = 1024 * 1024
# Three parts of 8 MiB (the driver's smallest): above the 6 MiB copy threshold tests set.
BIG = 17 * MiB + 4321
Proxies = Callable[..., S3Proxy]


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def client(s3_env: S3Server):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=s3_env.url)


def mount_s3(mounter: Mounter, server: S3Server, *options: str, name: str = "mnt",
             source: str = "s3://") -> Mount:
    path = mounter.tmp / name
    path.mkdir(exist_ok=True)
    cache = mounter.tmp / f"cache-{name}"
    m = Mount(source, path, cache, Path("/nonexistent"),
              options=["--endpoint-url", server.url, *options])
    run_cli("mount", source, str(path), "--cache-dir", str(cache), "-v", *m.options)
    mounter.mounts.append(m)
    m.pid = m.status()["pid"]
    return m


@pytest.fixture
def bucket_name(client, request: pytest.FixtureRequest) -> str:  # type: ignore[no-untyped-def]
    # Valid and unique also for parametrized tests, whose names end in "[param]".
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    name = f"t-{slug}-{zlib.crc32(request.node.name.encode()):08x}"
    client.create_bucket(Bucket=name)
    return name


def body(client, bucket: str, key: str) -> bytes:  # type: ignore[no-untyped-def]
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_root_lists_buckets_and_mkdir_creates_one(mounter: Mounter, s3_env: S3Server,
                                                  client, bucket_name: str) -> None:
    m = mount_s3(mounter, s3_env)
    assert bucket_name in os.listdir(m.path)
    (m.path / "made-by-mkdir").mkdir()
    assert "made-by-mkdir" in [b["Name"] for b in client.list_buckets()["Buckets"]]
    os.rmdir(m.path / "made-by-mkdir")
    assert "made-by-mkdir" not in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_files_reach_the_server_with_s3fs_metadata(mounter: Mounter, s3_env: S3Server, client,
                                                   bucket_name: str) -> None:
    m = mount_s3(mounter, s3_env, "--writeback-delay", "0.1")
    root = m.path / bucket_name
    (root / "dir").mkdir()
    (root / "dir" / "hello.txt").write_bytes(b"hello s3")
    os.chmod(root / "dir" / "hello.txt", 0o640)
    os.utime(root / "dir" / "hello.txt", ns=(1_600_000_000_123_456_789,) * 2)
    mounter.umount(m)
    assert body(client, bucket_name, "dir/hello.txt") == b"hello s3"
    head = client.head_object(Bucket=bucket_name, Key="dir/hello.txt")
    assert int(head["Metadata"]["mode"]) == 0o100640
    assert head["Metadata"]["mtime"] == "1600000000.123456789"
    assert client.head_object(Bucket=bucket_name, Key="dir/")["ContentLength"] == 0


def test_objects_written_elsewhere_are_read_and_listed(mounter: Mounter, s3_env: S3Server,
                                                       client, bucket_name: str) -> None:
    client.put_object(Bucket=bucket_name, Key="a/b/c.txt", Body=b"deep")
    client.put_object(Bucket=bucket_name, Key="top.bin", Body=bytes(range(256)) * 40)
    m = mount_s3(mounter, s3_env)
    root = m.path / bucket_name
    assert sorted(os.listdir(root)) == ["a", "top.bin"]
    assert (root / "a" / "b" / "c.txt").read_bytes() == b"deep"
    with open(root / "top.bin", "rb") as f:
        f.seek(5000)
        assert f.read(100) == (bytes(range(256)) * 40)[5000:5100]
    st = os.stat(root / "top.bin")
    assert st.st_size == 10240 and st.st_mode & 0o777 == 0o644


def test_large_file_goes_up_in_parts_and_comes_back_whole(mounter: Mounter, s3_env: S3Server,
                                                          client, bucket_name: str,
                                                          tmp_path: Path) -> None:
    data = os.urandom(20 * 1024 * 1024 + 12345)
    m = mount_s3(mounter, s3_env, "--writeback-delay", "0.1")
    (m.path / bucket_name / "big").write_bytes(data)
    mounter.umount(m)
    etag = client.head_object(Bucket=bucket_name, Key="big")["ETag"]
    assert etag.strip('"').endswith("-3"), "expected a 3-part multipart upload"
    assert body(client, bucket_name, "big") == data
    m = mount_s3(mounter, s3_env, name="again")
    assert (m.path / bucket_name / "big").read_bytes() == data


def test_tree_copy_rename_and_remount(mounter: Mounter, s3_env: S3Server, client,
                                      bucket_name: str, tmp_path: Path) -> None:
    src = stdlib_sample(tmp_path / "src")
    m = mount_s3(mounter, s3_env, "--writeback-delay", "0.1")
    root = m.path / bucket_name
    subprocess.run(["cp", "-r", str(src / "json"), str(root / "json")], check=True)
    os.rename(root / "json", root / "json2")
    assert_same_tree(src / "json", root / "json2")
    mounter.umount(m)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket_name)["Contents"]]
    assert not [k for k in keys if k.startswith("json/")]
    assert "json2/decoder.py" in keys
    m = mount_s3(mounter, s3_env, name="fresh")
    assert_same_tree(src / "json", m.path / bucket_name / "json2")


def keys_of(client, bucket: str) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_mount_of_a_bucket_prefix_shows_and_writes_only_below_it(
        mounter: Mounter, s3_env: S3Server, client, bucket_name: str) -> None:
    for key in ("top.txt", "pre/other.txt", "pre/fix/a.txt", "pre/fix/sub/b.txt"):
        client.put_object(Bucket=bucket_name, Key=key, Body=key.encode())
    m = mount_s3(mounter, s3_env, source=f"s3://{bucket_name}/pre/fix")
    assert sorted(os.listdir(m.path)) == ["a.txt", "sub"]
    assert (m.path / "sub" / "b.txt").read_bytes() == b"pre/fix/sub/b.txt"
    (m.path / "new.txt").write_bytes(b"new")  # files may live at the root of a bucket mount
    os.mkdir(m.path / "d")
    os.rename(m.path / "a.txt", m.path / "d" / "a.txt")
    os.unlink(m.path / "sub" / "b.txt")
    mounter.umount(m)
    assert keys_of(client, bucket_name) == ["pre/fix/d/", "pre/fix/d/a.txt", "pre/fix/new.txt",
                                            "pre/other.txt", "top.txt"]
    assert body(client, bucket_name, "pre/fix/d/a.txt") == b"pre/fix/a.txt"
    assert body(client, bucket_name, "pre/fix/new.txt") == b"new"


def test_mount_of_a_bucket_has_the_bucket_as_root(mounter: Mounter, s3_env: S3Server, client,
                                                  bucket_name: str) -> None:
    client.put_object(Bucket=bucket_name, Key="f", Body=b"f")
    buckets = client.list_buckets()["Buckets"]
    m = mount_s3(mounter, s3_env, source=f"s3://{bucket_name}")
    assert os.listdir(m.path) == ["f"]
    os.mkdir(m.path / "d")  # a directory, not a bucket
    os.symlink("f", m.path / "link")
    assert os.readlink(m.path / "link") == "f"
    os.rmdir(m.path / "d")
    mounter.umount(m)
    assert client.list_buckets()["Buckets"] == buckets
    assert keys_of(client, bucket_name) == ["f", "link"]


@pytest.mark.parametrize("source, message", [
    ("s3://no-such-bucket", "no bucket 'no-such-bucket'"),
    ("s3://b//x", "the prefix must be names separated by single '/'"),
    ("s3:b", "an S3 source is s3://[BUCKET[/PREFIX]]"),
])
def test_bad_bucket_source_is_one_line(tmp_path: Path, s3_env: S3Server, source: str,
                                       message: str) -> None:
    (tmp_path / "mnt").mkdir()
    proc = run_cli("mount", source, str(tmp_path / "mnt"), "--endpoint-url", s3_env.url,
                   "--cache-dir", str(tmp_path / "c"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert not is_mounted(tmp_path / "mnt")


def test_bad_endpoint_is_one_line(tmp_path: Path, s3_env: S3Server) -> None:
    (tmp_path / "mnt").mkdir()
    proc = subprocess.run([sys.executable, "-m", "mountfs", "mount", "s3://", str(tmp_path / "mnt"),
                           "--endpoint-url", "http://127.0.0.1:9", "--cache-dir",
                           str(tmp_path / "c")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mountfs: cannot use http://127.0.0.1:9")
    assert not is_mounted(tmp_path / "mnt")


def test_bad_credentials_are_one_line(tmp_path: Path, s3_env: S3Server,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    (tmp_path / "mnt").mkdir()
    proc = subprocess.run([sys.executable, "-m", "mountfs", "mount", "s3://", str(tmp_path / "mnt"),
                           "--endpoint-url", s3_env.url, "--cache-dir", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "credentials" in proc.stderr


# ---- the driver itself ---------------------------------------------------------------------


@pytest.fixture
def s3_proxy(s3_env: S3Server) -> Iterator[Proxies]:
    """Starts proxies to the moto server (S3Proxy's options), stopped after the test."""
    proxies: list[S3Proxy] = []

    def start(**options: Any) -> S3Proxy:
        proxies.append(S3Proxy(s3_env.url, **options).start())
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.stop()


def put_source(client, bucket: str, size: int) -> bytes:  # type: ignore[no-untyped-def]
    data = os.urandom(size)
    client.put_object(Bucket=bucket, Key="src", Body=data, Metadata={"mode": "33188"},
                      ContentType="text/csv")
    return data


async def assert_as_head(s3: S3Backend, info: ObjectInfo) -> None:
    """What a write returned is what a HEAD says now (the time: within the HEAD's second)."""
    head = await s3.stat_object(info.bucket, info.key)
    assert (info.size, info.etag) == (head.size, head.etag)
    # the metadata written, headers included; the server may add headers of its own (a
    # default Content-Type)
    assert info.metadata is not None and head.metadata is not None
    assert info.metadata.items() <= head.metadata.items()
    assert split_headers(info.metadata)[0] == split_headers(head.metadata)[0]
    assert abs(info.mtime_ns - head.mtime_ns) < 2 * 10**9


def assert_copied(client, bucket: str, key: str, data: bytes,  # type: ignore[no-untyped-def]
                  parts: int = 0) -> None:
    """bucket/key holds `data` with the source's metadata, uploaded in `parts` (0: one PUT)."""
    head = client.head_object(Bucket=bucket, Key=key)
    assert body(client, bucket, key) == data
    assert head["Metadata"] == {"mode": "33188"} and head["ContentType"] == "text/csv"
    assert head["ETag"].strip('"').endswith(f"-{parts}") == bool(parts)
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_copy_above_the_threshold_goes_in_parts(s3_env: S3Server, client,
                                                      bucket_name: str) -> None:
    data = put_source(client, bucket_name, BIG)
    s3 = S3Backend(s3_env.url, copy_threshold=6 * MiB)
    info = await s3.copy_object(bucket_name, "src", bucket_name, "dst")
    assert_copied(client, bucket_name, "dst", data, parts=3)
    await assert_as_head(s3, info)


async def test_copy_below_the_threshold_is_one_copy_object(s3_proxy: Proxies, client,
                                                           bucket_name: str) -> None:
    data = put_source(client, bucket_name, 3 * MiB)
    proxy = s3_proxy()
    s3 = S3Backend(proxy.url, copy_threshold=6 * MiB)
    info = await s3.copy_object(bucket_name, "src", bucket_name, "dst")
    assert_copied(client, bucket_name, "dst", data)
    assert (proxy.seen["CopyObject"], proxy.seen["UploadPartCopy"]) == (1, 0)
    await assert_as_head(s3, info)


async def test_copy_streams_where_the_server_refuses_part_copy(s3_proxy: Proxies, client,
                                                               bucket_name: str) -> None:
    data = put_source(client, bucket_name, BIG)
    proxy = s3_proxy(refuse={"UploadPartCopy"})
    s3 = S3Backend(proxy.url, copy_threshold=6 * MiB)
    info = await s3.copy_object(bucket_name, "src", bucket_name, "dst")
    assert_copied(client, bucket_name, "dst", data, parts=3)
    await assert_as_head(s3, info)
    tried = proxy.seen["UploadPartCopy"]
    assert 1 <= tried <= 3  # the parts sent before the first refusal came back
    await s3.copy_object(bucket_name, "src", bucket_name, "again")
    assert_copied(client, bucket_name, "again", data, parts=3)
    assert proxy.seen["UploadPartCopy"] == tried, "the fallback is remembered"
    client.put_object(Bucket=bucket_name, Key="small", Body=b"s")
    await s3.copy_object(bucket_name, "small", bucket_name, "small2")
    assert proxy.seen["CopyObject"] == 1, "below the threshold CopyObject still serves"


async def test_copy_and_set_metadata_stream_without_copy_object(s3_proxy: Proxies, client,
                                                                bucket_name: str) -> None:
    data = put_source(client, bucket_name, 100_000)
    proxy = s3_proxy(refuse={"CopyObject", "UploadPartCopy"})
    s3 = S3Backend(proxy.url)
    info = await s3.copy_object(bucket_name, "src", bucket_name, "dst")
    assert_copied(client, bucket_name, "dst", data)
    await assert_as_head(s3, info)
    info = await s3.set_metadata(bucket_name, "dst", {"mode": "33152"})
    head = client.head_object(Bucket=bucket_name, Key="dst")
    assert head["Metadata"] == {"mode": "33152"} and head["ContentType"] == "text/csv"
    assert body(client, bucket_name, "dst") == data
    await assert_as_head(s3, info)
    assert proxy.seen["CopyObject"] == 1 and proxy.seen["UploadPartCopy"] == 0


async def test_a_failed_part_copy_aborts_the_upload(s3_proxy: Proxies, client,
                                                    bucket_name: str) -> None:
    put_source(client, bucket_name, BIG)
    proxy = s3_proxy(refuse={"UploadPartCopy"}, status=403, code="AccessDenied")
    s3 = S3Backend(proxy.url, copy_threshold=6 * MiB)
    for _ in range(2):  # refused, not unsupported: no fallback, the next copy tries again
        tried = proxy.seen["UploadPartCopy"]
        with pytest.raises(PermissionDenied):
            await s3.copy_object(bucket_name, "src", bucket_name, "dst")
        assert proxy.seen["UploadPartCopy"] > tried
    assert not client.list_multipart_uploads(Bucket=bucket_name).get("Uploads")
    assert "Contents" not in client.list_objects_v2(Bucket=bucket_name, Prefix="dst")


async def test_writes_return_what_head_says_without_asking(s3_proxy: Proxies, client,
                                                           bucket_name: str) -> None:
    proxy = s3_proxy()
    s3 = S3Backend(proxy.url)
    meta = {"mode": "33188", "mtime": "1600000000.5"}
    small = await s3.write_object(bucket_name, "small", io.BytesIO(b"tiny"), 4, meta)
    big = await s3.write_object(bucket_name, "big", io.BytesIO(os.urandom(9 * MiB)), 9 * MiB,
                                meta)
    assert proxy.seen["HeadObject"] == 0
    assert big.etag.endswith("-2") and big.size == 9 * MiB
    changed = await s3.set_metadata(bucket_name, "small", {"mode": "33152"})
    copied = await s3.copy_object(bucket_name, "big", bucket_name, "big2")
    assert proxy.seen["HeadObject"] == 2, "one HEAD of the source per copy, none after"
    for info in (big, changed, copied):
        await assert_as_head(s3, info)
    assert (small.size, small.etag) == (changed.size, changed.etag)  # same bytes


LISTED = ["a/1", "b1", "b2", "c/1", "c/2", "k1", "k2", "k3", "m/1", "n1", "z/1"]


def put_keys(client, bucket: str, keys: list[str]) -> None:  # type: ignore[no-untyped-def]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"x")


async def listing(s3: S3Backend, bucket: str, delimiter: str | None) -> list[list[str]]:
    """The pages of a listing, each as its names, small pages to make many."""
    return [[info.key for info in page]
            async for page in s3.list_objects(bucket, "", delimiter, page_size=2)]


def expected(keys: list[str], delimiter: str | None) -> list[str]:
    if not delimiter:
        return sorted(keys)
    return sorted({key.split("/")[0] + "/" if "/" in key else key for key in keys})


@pytest.mark.parametrize("delimiter", ["/", None])
async def test_listing_falls_back_to_v1_where_v2_is_refused(
        s3_proxy: Proxies, client, bucket_name: str, delimiter: str | None) -> None:
    put_keys(client, bucket_name, LISTED)
    proxy = s3_proxy(refuse={"ListObjectsV2"})
    s3 = S3Backend(proxy.url)
    for _ in range(2):
        pages = await listing(s3, bucket_name, delimiter)
        assert len(pages) > 1
        assert sorted(sum(pages, [])) == expected(LISTED, delimiter)  # all, each once
    assert proxy.seen["ListObjectsV2"] == 1, "the fallback is remembered"


@pytest.mark.parametrize("delimiter", ["/", None])
async def test_listing_goes_on_as_v1_where_v2_is_answered_as_v1(
        s3_proxy: Proxies, client, bucket_name: str, delimiter: str | None) -> None:
    # moto's v1 listing gives every common prefix on every page and counts only keys against
    # max-keys, so the marker S3 prescribes (the greater of last key and last prefix) skips
    # keys there when a prefix sorts after them: these prefixes sort first.
    keys = ["a/1", "b/1", "b/2", "k1", "k2", "k3", "k4", "k5"]
    put_keys(client, bucket_name, keys)
    proxy = s3_proxy(ignore_list_type=True)
    s3 = S3Backend(proxy.url)
    for _ in range(2):
        pages = await listing(s3, bucket_name, delimiter)
        assert len(pages) > 1
        assert sorted(sum(pages, [])) == expected(keys, delimiter)
    assert proxy.seen["ListObjectsV2"] == 1, "the fallback is remembered"


def test_v1_paging_goes_on_after_the_greater_of_last_key_and_last_prefix() -> None:
    page = {"Contents": [{"Key": "a"}, {"Key": "k"}], "CommonPrefixes": [{"Prefix": "m/"}]}
    assert resume_marker(page) == "m/"
    assert resume_marker({**page, "CommonPrefixes": [{"Prefix": "c/"}]}) == "k"
    assert resume_marker({**page, "NextMarker": "n"}) == "n"


async def test_upload_in_parts_driven_from_outside(s3_env: S3Server, client,
                                                   bucket_name: str) -> None:
    """The write-back queue's seam: begin, parts in any order (one sent again), complete with
    the list as write_object would; abort (moto answers UploadPart and Complete of an
    aborted upload with a 500, not NoSuchUpload: their None is not asked here)."""
    s3 = S3Backend(s3_env.url, part_size=5 * MiB)
    assert s3.features.part_uploads and s3.part_upload_size() == 5 * MiB
    data = os.urandom(11 * MiB + 7)
    meta = {"mode": "33188", ":content-type": "text/csv"}
    upload = await s3.begin_upload(bucket_name, "big", meta)
    src = io.BytesIO(data)
    parts = [(3, await s3.upload_part(bucket_name, "big", upload, 3, src, 10 * MiB, MiB + 7))]
    src2 = io.BytesIO(bytes(len(data)))  # a first version of part 1, replaced below
    await s3.upload_part(bucket_name, "big", upload, 1, src2, 0, 5 * MiB)
    listed = client.list_multipart_uploads(Bucket=bucket_name)["Uploads"]
    assert [u["UploadId"] for u in listed] == [upload]
    for n in (1, 2):
        parts.append((n, await s3.upload_part(bucket_name, "big", upload, n, src,
                                              (n - 1) * 5 * MiB, 5 * MiB)))
    info = await s3.complete_upload(bucket_name, "big", upload, parts, len(data), meta,
                                    if_match="")
    assert info is not None and info.size == len(data)
    assert body(client, bucket_name, "big") == data
    head = client.head_object(Bucket=bucket_name, Key="big")
    assert head["ETag"].strip('"') == info.etag and info.etag.endswith("-3")
    assert head["Metadata"] == {"mode": "33188"} and head["ContentType"] == "text/csv"
    gone = await s3.begin_upload(bucket_name, "x", {})
    await s3.abort_upload(bucket_name, "x", gone)
    await s3.abort_upload(bucket_name, "x", gone)  # twice: no error
    assert not client.list_multipart_uploads(Bucket=bucket_name).get("Uploads")
