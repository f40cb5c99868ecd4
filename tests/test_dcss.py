"""The DCSS driver, mounted for real against the local DCSS service (tests/servers/dcss.py),
whose buckets live on the session's moto_server: spaces, tokens, permissions, paging, files
split in parts, and what a user sees through ordinary programs."""
from __future__ import annotations

import datetime
import errno
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ecdsa
import pytest
from dt_data_api import DataClient

from conftest import Mount, Mounter, run_cli
from servers.dcss import DcssService, make_token
from servers.s3 import S3Server, free_port
from test_dcss_service import PART, finished, official  # noqa: F401 (official: a fixture)

pytestmark = pytest.mark.mounted

WRITER, READER = 1, 2  # uid 1 may write public and use private; uid 2 has only its user space
NO_TOKEN_ENV = {"DT_TOKEN": "", "DUCKIETOWN_TOKEN": ""}


@pytest.fixture
def client(dcss: Any) -> Any:
    """boto3 straight on the S3 server behind the service: to look at what DCSS stores."""
    return dcss.s3


def bucket(space: str) -> str:
    return f"duckietown-{space}-storage"


def mount_dcss(mounter: Mounter, dcss: Any, source: str = "dcss:", *,
               token_file: Path | None = None, options: tuple[str, ...] = (),
               name: str = "mnt") -> Mount:
    path = mounter.tmp / name
    path.mkdir(exist_ok=True)
    cache = mounter.tmp / f"cache-{name}"
    args = ["--api-url", dcss.url, "--s3-endpoint", dcss.s3_endpoint,
            "--token-public-key", str(dcss.public_key_path), *options]
    if token_file is not None:
        args += ["--token-file", str(token_file)]
    m = Mount(source, path, cache, Path("/nonexistent"), options=args)
    run_cli("mount", source, str(path), "--cache-dir", str(cache), "-v", *args,
            env=NO_TOKEN_ENV)
    mounter.mounts.append(m)
    m.pid = m.served_status()["pid"]
    return m


def objects(client: Any, space: str, prefix: str = "") -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket(space),
                                                                 Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = client.get_object(Bucket=bucket(space),
                                                   Key=item["Key"])["Body"].read()
    return found


def meta(client: Any, space: str, key: str) -> dict[str, str]:
    return client.head_object(Bucket=bucket(space), Key=key)["Metadata"]


def test_anonymous_mount_reads_public_and_refuses_writes(mounter: Mounter, dcss: Any,
                                                        client: Any) -> None:
    client.put_object(Bucket=bucket("public"), Key="maps/loop.yaml", Body=b"tiles: 4\n")
    client.put_object(Bucket=bucket("private"), Key="secret", Body=b"no")
    m = mount_dcss(mounter, dcss)
    assert os.listdir(m.path) == ["public"]  # no token: no private, no user space
    assert (m.path / "public" / "maps" / "loop.yaml").read_bytes() == b"tiles: 4\n"
    assert subprocess.run(["cat", str(m.path / "public/maps/loop.yaml")], capture_output=True,
                          check=True).stdout == b"tiles: 4\n"
    for attempt in (lambda: (m.path / "public" / "new").write_bytes(b"x"),
                    lambda: (m.path / "public" / "maps" / "loop.yaml").unlink(),
                    lambda: (m.path / "public" / "dir").mkdir()):
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS
    assert "needs a Duckietown token" in (m.cache / "mountfs.log").read_text() \
        or "writes need a Duckietown token" in (m.cache / "mountfs.log").read_text()
    assert set(objects(client, "public")) == {"maps/loop.yaml"}


def test_token_holder_reads_and_writes_private_and_user_spaces(
        mounter: Mounter, dcss: Any, client: Any, tmp_path: Path) -> None:
    m = mount_dcss(mounter, dcss, token_file=dcss.token_file(tmp_path, WRITER),
                   options=("--writeback-delay", "0"))
    assert sorted(os.listdir(m.path)) == ["private", "public", "user"]
    (m.path / "private" / "logs").mkdir()
    (m.path / "private" / "logs" / "run1.bag").write_bytes(b"bag" * 1000)
    (m.path / "user" / "notes.txt").write_text("mine\n")
    subprocess.run(["cp", "/etc/hostname", str(m.path / "public" / "hostname")], check=True)
    (m.path / "private" / "logs" / "run1.bag").rename(m.path / "private" / "logs" / "run2.bag")
    mounter.umount(m)

    assert objects(client, "private", "logs/run") == {"logs/run2.bag": b"bag" * 1000}
    assert objects(client, "user") == {f"{WRITER}/notes.txt": b"mine\n"}
    assert objects(client, "public")["hostname"] == Path("/etc/hostname").read_bytes()
    # What the official client writes on every object, so that it reads ours.
    info = meta(client, "user", f"{WRITER}/notes.txt")
    assert info["number-of-parts"] == "1" and info["owner-id"] == str(WRITER)

    m = mount_dcss(mounter, dcss, token_file=dcss.token_file(tmp_path, WRITER))
    assert (m.path / "user" / "notes.txt").read_text() == "mine\n"
    assert os.listdir(m.path / "private" / "logs") == ["run2.bag"]
    (m.path / "private" / "logs" / "run2.bag").unlink()
    mounter.umount(m)
    assert "logs/run2.bag" not in objects(client, "private")


def test_space_the_token_lacks_is_permission_denied(mounter: Mounter, dcss: Any, client: Any,
                                                    tmp_path: Path) -> None:
    client.put_object(Bucket=bucket("private"), Key="theirs.txt", Body=b"x")
    client.put_object(Bucket=bucket("user"), Key=f"{WRITER}/theirs.txt", Body=b"x")
    m = mount_dcss(mounter, dcss, token_file=dcss.token_file(tmp_path, READER),
                   options=("--writeback-delay", "0"))
    with pytest.raises(PermissionError):
        os.listdir(m.path / "private")
    assert os.listdir(m.path / "user") == []  # its own area only: not uid 1's files
    # Public: readable, but uid 2 may not write there; the refusal reaches the writer.
    fd = os.open(m.path / "public" / "nope.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"data")
        with pytest.raises(PermissionError):
            os.fsync(fd)
    finally:
        with pytest.raises(PermissionError):
            os.close(fd)
    assert "nope.txt" not in objects(client, "public")
    assert [e["state"] for e in m.status()["queue"]] == ["failed"]
    run_cli("discard", str(m.path), "public/nope.txt")  # else umount waits for it
    (m.path / "user" / "ok.txt").write_bytes(b"fine")
    mounter.umount(m)
    assert objects(client, "user", f"{READER}/") == {f"{READER}/ok.txt": b"fine"}


@pytest.mark.parametrize("case", ["expired", "forged", "malformed", "private without token",
                                  "unknown space", "service unreachable", "not a DCSS service"])
def test_bad_token_or_source_is_refused_at_mount_in_one_line(
        mounter: Mounter, dcss: Any, tmp_path: Path, case: str) -> None:
    token_file: Path | None = tmp_path / "token"
    source, api_url = "dcss:", dcss.url
    token = make_token(dcss.signing_key, WRITER)
    if case == "unknown space":
        source = "dcss:shared"
    elif case == "service unreachable":
        api_url = f"http://127.0.0.1:{free_port()}"
    elif case == "not a DCSS service":
        api_url = f"{dcss.url}/elsewhere"
    elif case == "expired":
        token = make_token(dcss.signing_key, WRITER,
                           expires=datetime.datetime(2024, 3, 1, 12, 0))
    elif case == "forged":
        token = make_token(ecdsa.SigningKey.generate(curve=ecdsa.NIST192p), WRITER)
    elif case == "malformed":
        token = "dt2-notatoken"
    elif case == "private without token":
        token, token_file, source = "", None, "dcss:private"
    if token_file is not None:
        token_file.write_text(token)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = ["mount", source, str(mnt), "--cache-dir", str(tmp_path / "cache"),
            "--api-url", api_url, "--s3-endpoint", dcss.s3_endpoint,
            "--token-public-key", str(dcss.public_key_path)]
    if token_file is not None:
        args += ["--token-file", str(token_file)]
    proc = run_cli(*args, check=False, env=NO_TOKEN_ENV)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    expected = {"expired": "expired on 2024-03-01 12:00 UTC", "forged": "does not verify",
                "malformed": "not of the form", "private without token": "needs a Duckietown",
                "unknown space": "not 'shared'", "service unreachable": "Connection refused",
                "not a DCSS service": "refused"}
    assert expected[case] in lines[0]
    assert not os.path.ismount(mnt)


def test_token_from_environment_and_never_in_argv(mounter: Mounter, dcss: Any, client: Any,
                                                 tmp_path: Path) -> None:
    token = make_token(dcss.signing_key, WRITER)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run_cli("mount", "dcss:user", str(mnt), "--cache-dir", str(tmp_path / "cache"),
            "--api-url", dcss.url, "--s3-endpoint", dcss.s3_endpoint,
            "--token-public-key", str(dcss.public_key_path),
            env={"DT_TOKEN": token, "DUCKIETOWN_TOKEN": ""})
    m = Mount("dcss:user", mnt, tmp_path / "cache", Path("/nonexistent"))
    mounter.mounts.append(m)
    m.pid = m.served_status()["pid"]
    (mnt / "a.txt").write_text("via env\n")
    assert token.encode() not in Path(f"/proc/{m.pid}/cmdline").read_bytes()
    mounter.umount(m)
    assert token not in (tmp_path / "cache" / "mountfs.log").read_text()
    assert objects(client, "user") == {f"{WRITER}/a.txt": b"via env\n"}


def test_listing_pages_past_1000_keys(mounter: Mounter, dcss: Any, client: Any,
                                      s3_server: S3Server, tmp_path: Path) -> None:
    names = [f"frame-{i:05d}.jpg" for i in range(1234)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: client.put_object(Bucket=bucket("private"), Key=f"big/{n}",
                                                   Body=n.encode()), names))
    client.put_object(Bucket=bucket("private"), Key="small/a/b.txt", Body=b"b")
    client.put_object(Bucket=bucket("private"), Key="small/c.txt", Body=b"c")
    m = mount_dcss(mounter, dcss, token_file=dcss.token_file(tmp_path, WRITER))
    listed = subprocess.run(["ls", "-1", str(m.path / "private" / "big")], capture_output=True,
                            text=True, check=True).stdout.split()
    assert listed == names
    assert (m.path / "private" / "big" / names[-1]).read_bytes() == names[-1].encode()

    # A service that signs only the prefix (as the real one is presumed to: the official
    # client asks for nothing else): directories are derived from the recursive listing, and
    # a listing it cannot continue fails loudly instead of repeating its first page for ever.
    plain = DcssService(s3_server.url, dcss.public_key_pem, private_users={WRITER},
                        listing_params=False).start()
    try:
        m = mount_dcss(mounter, plain, token_file=dcss.token_file(tmp_path, WRITER),
                       name="plain")
        assert sorted(os.listdir(m.path / "private" / "small")) == ["a", "c.txt"]
        assert os.listdir(m.path / "private" / "small" / "a") == ["b.txt"]
        with pytest.raises(OSError) as caught:
            os.listdir(m.path / "private" / "big")
        assert caught.value.errno == errno.EIO
        assert "the service does not continue listings" in (m.cache / "mountfs.log").read_text()
    finally:
        mounter.umount(m)
        plain.stop()


def test_file_over_part_size_is_stored_and_read_as_parts(mounter: Mounter, dcss: Any,
                                                         client: Any, tmp_path: Path) -> None:
    part = 1024 * 1024
    data = os.urandom(2 * part + 12345)
    m = mount_dcss(mounter, dcss, token_file=dcss.token_file(tmp_path, WRITER),
                   options=("--part-size", "1M", "--writeback-delay", "0"))
    (m.path / "private" / "video.mp4").write_bytes(data)
    mounter.umount(m)
    stored = objects(client, "private")
    assert sorted(stored) == ["video.mp4.000", "video.mp4.001", "video.mp4.002"]
    assert b"".join(stored[f"video.mp4.{i:03d}"] for i in range(3)) == data
    assert {meta(client, "private", k)["number-of-parts"] for k in stored} == {"3"}

    # Parts written by someone else (as the official client splits), read as one file.
    other = os.urandom(3 * part)
    for i in range(2):
        client.put_object(Bucket=bucket("private"), Key=f"dir/big.bin.{i:03d}",
                          Body=other[i * 2 * part:(i + 1) * 2 * part],
                          Metadata={"number-of-parts": "2", "owner-id": "7"})
    m = mount_dcss(mounter, dcss, token_file=dcss.token_file(tmp_path, WRITER),
                   options=("--part-size", "1M", "--writeback-delay", "0"))
    assert os.listdir(m.path / "private") == ["dir", "video.mp4"]
    assert os.listdir(m.path / "private" / "dir") == ["big.bin"]
    assert os.stat(m.path / "private" / "video.mp4").st_size == len(data)
    assert (m.path / "private" / "video.mp4").read_bytes() == data
    with open(m.path / "private" / "dir" / "big.bin", "rb") as f:
        f.seek(2 * part - 10)
        assert f.read(20) == other[2 * part - 10:2 * part + 10]  # across the part boundary
    assert (m.path / "private" / "dir" / "big.bin").read_bytes() == other
    # Shrunk below the part size: one object again, the parts gone.
    (m.path / "private" / "video.mp4").write_bytes(b"small")
    mounter.umount(m)
    stored = objects(client, "private")
    assert stored["video.mp4"] == b"small"
    assert not [k for k in stored if k.startswith("video.mp4.")]


def test_official_client_and_mountfs_read_each_others_files(
        mounter: Mounter, official: Any, tmp_path: Path) -> None:
    """The real dt-data-api client (see test_dcss_service.py for how it is pointed at the local
    service): what it uploads, mountfs shows; what mountfs writes, it downloads."""
    client_storage = DataClient(official.token(WRITER)).storage("private")
    small, big = b"written by dt-data-api\n", os.urandom(2 * PART + 1000)
    finished(client_storage.upload(small, "shared/small.txt"))
    finished(client_storage.upload(big, "shared/big.bin"))  # big.bin.000, .001, .002

    m = mount_dcss(mounter, official, token_file=official.token_file(tmp_path, WRITER),
                   options=("--part-size", str(PART), "--writeback-delay", "0"))
    shared = m.path / "private" / "shared"
    assert sorted(os.listdir(shared)) == ["big.bin", "small.txt"]
    assert os.stat(shared / "big.bin").st_size == len(big)
    assert (shared / "small.txt").read_bytes() == small
    assert (shared / "big.bin").read_bytes() == big
    mine, mine_big = b"written through the mount\n", os.urandom(3 * PART + 7)
    (shared / "mine.txt").write_bytes(mine)
    (shared / "mine.bin").write_bytes(mine_big)
    (m.path / "user" / "mine.txt").write_bytes(mine)
    mounter.umount(m)

    assert sorted(client_storage.list_objects("shared/")) == [
        "shared/big.bin.000", "shared/big.bin.001", "shared/big.bin.002",
        "shared/mine.bin.000", "shared/mine.bin.001", "shared/mine.bin.002",
        "shared/mine.bin.003", "shared/mine.txt", "shared/small.txt"]
    assert finished(client_storage.download("shared/mine.txt")).data == mine
    assert finished(client_storage.download("shared/mine.bin")).data == mine_big
    user_storage = DataClient(official.token(WRITER)).storage("user")
    assert finished(user_storage.download("mine.txt")).data == mine
    assert client_storage.head("shared/mine.txt")["x-amz-meta-owner-id"] == str(WRITER)
    assert client_storage.delete("shared/small.txt")

    m = mount_dcss(mounter, official, token_file=official.token_file(tmp_path, WRITER),
                   options=("--part-size", str(PART)))
    assert sorted(os.listdir(m.path / "private" / "shared")) == ["big.bin", "mine.bin",
                                                                 "mine.txt"]


def test_status_shows_upload_progress(mounter: Mounter, dcss: Any, client: Any,
                                      tmp_path: Path) -> None:
    """What the official client's TransferHandler reports, `mountfs status` shows: how much of
    an upload is sent. 24 parts of 1 MiB, each authorized and PUT in turn, take a while."""
    data = os.urandom(24 * 1024 * 1024)
    m = mount_dcss(mounter, dcss, token_file=dcss.token_file(tmp_path, WRITER),
                   options=("--part-size", "1M", "--writeback-delay", "0"))
    (m.path / "user" / "big.bin").write_bytes(data)
    seen: list[float] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        entries = m.served_status()["queue"]
        if not entries:
            break
        if entries[0]["state"] == "uploading":
            seen.append(entries[0]["percent"])
        time.sleep(0.02)
    assert any(0 < p < 100 for p in seen), f"no progress between 0 and 100%: {seen}"
    assert seen == sorted(seen), f"progress went back: {seen}"
    mounter.umount(m)
    stored = objects(client, "user")
    assert b"".join(stored[f"{WRITER}/big.bin.{i:03d}"] for i in range(24)) == data
