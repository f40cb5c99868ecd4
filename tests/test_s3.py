"""The S3 driver on a real S3 server process (moto_server on 127.0.0.1), mounted for real."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from conftest import Mount, Mounter, is_mounted, run_cli
from servers.s3 import CREDENTIALS, S3Server
from test_durability import assert_same_tree, stdlib_sample


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def client(s3_env: S3Server):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=s3_env.url)


def mount_s3(mounter: Mounter, server: S3Server, *options: str, name: str = "mnt") -> Mount:
    path = mounter.tmp / name
    path.mkdir(exist_ok=True)
    cache = mounter.tmp / f"cache-{name}"
    m = Mount("s3://", path, cache, Path("/nonexistent"),
              options=["--endpoint-url", server.url, *options])
    run_cli("mount", "s3://", str(path), "--cache-dir", str(cache), "-v", *m.options)
    mounter.mounts.append(m)
    m.pid = m.status()["pid"]
    return m


@pytest.fixture
def bucket_name(client, request: pytest.FixtureRequest) -> str:  # type: ignore[no-untyped-def]
    name = "t-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
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
