"""Large files uploaded while they are written (cache/streams.py), through real mounts of the
S3 driver on moto: the cache cap holds, the upload shows as parts before close, reads and
rewrites of parts already sent, and a kill of the mount after close."""
from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Mount, Mounter
from kits import Store
from kits.s3 import KIT
from stores import s3_client

MiB = 1024 * 1024
PART = 5 * MiB  # the smallest part moto (and S3) takes: sent as 8 MiB, two whole blocks
CAP = 16 * MiB
SIZE = 48 * MiB + 4321  # six parts, and a short one


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return KIT.make_store(request, tmp_path / "store")


def mount(mounter: Mounter, store: Store, *options: str, cap: int = CAP) -> Mount:
    return mounter.mount(store, "--cache-size", str(cap), "--s3-part-size", str(PART),
                         *options)


def write(fd: int, start: int, end: int) -> None:
    for offset in range(start, end, MiB):
        os.write(fd, pattern(offset, min(MiB, end - offset)))


def parts(store: Store, key: str) -> int:
    """Parts the server holds of the one upload of `key` under way."""
    (upload,) = [u for u in uploads(store) if u["Key"] == key]
    return len(client(store).list_parts(Bucket=store.bucket, Key=key,
                                        UploadId=upload["UploadId"]).get("Parts", []))


def wait_for(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def sha256sum(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True,
                          check=True).stdout.split()[0]


def client(store: Store) -> Any:
    return s3_client(store.driver_options["endpoint_url"])


def pattern(offset: int, length: int) -> bytes:
    """Bytes that differ in every MiB (a part sent twice or out of place shows)."""
    out = bytearray()
    for mib in range(offset // MiB, (offset + length - 1) // MiB + 1):
        out += hashlib.sha256(str(mib).encode()).digest() * (MiB // 32)
    start = offset % MiB
    return bytes(out[start:start + length])


def uploads(store: Store) -> list[dict[str, Any]]:
    return client(store).list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])


def server_sha(store: Store, key: str) -> str:
    body = client(store).get_object(Bucket=store.bucket, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest()


def test_file_past_the_cap_goes_up_while_written(mounter: Mounter, store: Store) -> None:
    m = mount(mounter, store)
    target = m.bucket / "big"
    used: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            used.append(m.served_status()["cache"]["used"])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with open(target, "wb") as f:
            for offset in range(0, SIZE, MiB):
                f.write(pattern(offset, min(MiB, SIZE - offset)))
                if offset == 30 * MiB:
                    f.flush()
                    parts_seen = uploads(store)
    finally:
        done.set()
        sampler.join()
    assert [u["Key"] for u in parts_seen] == ["big"], "the upload began before close"
    assert max(used) <= CAP + 2 * MiB, f"cache used {max(used) / MiB:.1f} MiB"
    want = hashlib.sha256(pattern(0, SIZE)).hexdigest()
    mounter.umount(m)  # waits for the upload
    assert server_sha(store, "big") == want
    assert not uploads(store)
    head = client(store).head_object(Bucket=store.bucket, Key="big")
    assert head["Metadata"]["mode"] == str(0o100644)  # begun with the file's metadata
    m = mounter.remount(m)
    assert sha256sum(m.bucket / "big") == want
    assert abs((m.bucket / "big").stat().st_mtime - head["LastModified"].timestamp()) < 2


def test_read_and_rewrite_of_evicted_parts_while_open(mounter: Mounter, store: Store) -> None:
    """Data only the upload holds is read back (the upload is completed first), and a write
    into it lands; the file ends whole and right."""
    m = mount(mounter, store)
    fd = os.open(m.bucket / "big", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        write(fd, 0, 30 * MiB)
        with open(m.bucket / "big", "rb") as r:
            assert r.read(MiB) == pattern(0, MiB)  # part 1 left the cache long ago
        os.pwrite(fd, b"x" * 4096, 2 * MiB + 5)
        os.lseek(fd, 30 * MiB, os.SEEK_SET)
        write(fd, 30 * MiB, SIZE)
    finally:
        os.close(fd)
    want = bytearray(pattern(0, SIZE))
    want[2 * MiB + 5:2 * MiB + 5 + 4096] = b"x" * 4096
    mounter.umount(m)
    assert server_sha(store, "big") == hashlib.sha256(want).hexdigest()
    assert not uploads(store)


def test_rewrite_of_a_cached_part_sends_it_again(mounter: Mounter, store: Store) -> None:
    m = mount(mounter, store, cap=64 * MiB)
    fd = os.open(m.bucket / "big", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        write(fd, 0, 30 * MiB)
        wait_for(lambda: parts(store, "big") >= 2)
        os.pwrite(fd, b"y" * 100, MiB)  # into part 1, sent and still cached
        os.lseek(fd, 30 * MiB, os.SEEK_SET)
        write(fd, 30 * MiB, SIZE)
        os.utime(fd, ns=(10**18, 10**18))  # as cp -p does: stored after the upload
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    want = bytearray(pattern(0, SIZE))
    want[MiB:MiB + 100] = b"y" * 100
    mounter.umount(m)
    assert server_sha(store, "big") == hashlib.sha256(want).hexdigest()
    m = mounter.remount(m)
    st = (m.bucket / "big").stat()
    assert (st.st_mtime_ns, st.st_mode) == (10**18, 0o100600)


def test_kill_after_close_loses_nothing(mounter: Mounter, store: Store) -> None:
    """Closed with its early parts only on the server (in an upload not completed), the
    mount killed: the next mount completes the upload from its journal."""
    m = mount(mounter, store, "--whole-file-delay", "600", "--writeback-delay", "600")
    with open(m.bucket / "big", "wb") as f:
        for offset in range(0, SIZE, MiB):
            f.write(pattern(offset, min(MiB, SIZE - offset)))
    assert m.served_status()["cache"]["used"] <= CAP
    assert parts(store, "big") >= 3
    mounter.kill(m)
    m = mounter.remount(m)
    mounter.umount(m)
    assert server_sha(store, "big") == hashlib.sha256(pattern(0, SIZE)).hexdigest()
    assert not uploads(store)


def test_unlink_while_written_aborts_the_upload(mounter: Mounter, store: Store) -> None:
    m = mount(mounter, store)
    with open(m.bucket / "big", "wb") as f:
        for offset in range(0, 30 * MiB, MiB):
            f.write(pattern(offset, MiB))
        f.flush()
        wait_for(lambda: parts(store, "big") >= 1)
        os.unlink(m.bucket / "big")
    wait_for(lambda: not uploads(store))
    mounter.umount(m)
    assert "big" not in [o["Key"] for o in client(store).list_objects_v2(
        Bucket=store.bucket).get("Contents", [])]


def test_truncate_and_rename_while_written(mounter: Mounter, store: Store) -> None:
    """Both need the parts only the upload holds: it is completed first, then the file is
    cut, moved and written on as any file; nothing is left under the old name."""
    m = mount(mounter, store)
    fd = os.open(m.bucket / "big", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        write(fd, 0, 30 * MiB)
        os.ftruncate(fd, 12 * MiB + 5)
        os.rename(m.bucket / "big", m.bucket / "moved")
        os.lseek(fd, 12 * MiB + 5, os.SEEK_SET)
        os.write(fd, b"z" * MiB)
    finally:
        os.close(fd)
    want = pattern(0, 12 * MiB + 5) + b"z" * MiB
    assert (m.bucket / "moved").read_bytes() == want
    mounter.umount(m)
    assert server_sha(store, "moved") == hashlib.sha256(want).hexdigest()
    keys = [o["Key"] for o in client(store).list_objects_v2(Bucket=store.bucket)["Contents"]]
    assert keys == ["moved"] and not uploads(store)
