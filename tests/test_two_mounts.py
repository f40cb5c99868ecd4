"""Two mounts of one bucket, each with its own cache dir, used through ordinary syscalls.

What README SEMANTICS "Consistency" and "Concurrent writes" promise between mounts:

- close-to-open: a file closed (and uploaded) on mount A is read whole on mount B once B's
  metadata TTL has passed, at once with `--metadata-ttl 0`; blocks B cached of the old version
  are never served for the new one (the versions here have the same size, so only the ETag
  tells them apart);
- one mount rewriting its own file never conflicts with itself;
- two mounts writing one file: the object is always one writer's bytes whole, never a mix;
  where the store does conditional writes (the local store; S3 PutObject, and
  CompleteMultipartUpload for a new key on moto, which ignores If-Match there), the upload
  whose base version is gone does not overwrite: it is kept as `NAME.conflict-<UTC time>`
  beside the winner, a warning is logged, and the mount shows both (a driver without
  conditional writes, DCSS, lets the later close win whole);
- an edit of a file deleted on the other mount meanwhile brings it back (no conflict copy).
"""
from __future__ import annotations

import os
import re
import time

import pytest

from conftest import BACKENDS, Mount, Mounter
from kits import Store
from stores import names
from test_posix import pattern, wait_idle

pytestmark = pytest.mark.backends(*BACKENDS)

BLOCK = 64 * 1024  # small blocks: a few hundred KiB span several of them
SMALL = 5 * BLOCK + 17
MULTIPART = 9 * 1024 * 1024  # over the S3 driver's 8 MiB single-PUT limit
CONFLICT = re.compile(r"^(?P<name>.+)\.conflict-\d{8}T\d{6}Z(-\d+)?$")


def two_mounts(mounter: Mounter, store: Store, ttl: str = "1") -> tuple[Mount, Mount]:
    opts = ("--metadata-ttl", ttl, "--writeback-delay", "0.1", "--block-size", str(BLOCK))
    return mounter.mount(store, *opts, name="a"), mounter.mount(store, *opts, name="b")


def write(path: os.PathLike[str] | str, data: bytes, flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o644)
    try:
        for at in range(0, len(data), 1 << 20):
            os.write(fd, data[at:at + (1 << 20)])
    finally:
        os.close(fd)


def conflicts(store: Store, name: str) -> list[str]:
    """The conflict copies of `name` in the store's bucket."""
    out = []
    for entry in names(store.stored):
        match = CONFLICT.match(entry)
        if match and match["name"] == name:
            out.append(entry)
    return out


def log_of(m: Mount) -> str:
    return (m.cache / "mountfs.log").read_text(errors="replace")


@pytest.mark.parametrize("ttl", ["0", "1"])
def test_close_to_open_between_mounts(mounter: Mounter, store: Store, ttl: str) -> None:
    a, b = two_mounts(mounter, store, ttl)
    v1, v2 = pattern(SMALL, seed=1), pattern(SMALL, seed=2)  # one size: only the ETag differs
    write(a.bucket / "f", v1)
    wait_idle(a)
    assert (b.bucket / "f").read_bytes() == v1
    before = b.served_status()["cache"]
    assert before["used"] >= SMALL, "B keeps the blocks it read in its cache"
    write(a.bucket / "f", v2)
    wait_idle(a)
    assert (store.stored / "f").read_bytes() == v2
    time.sleep(float(ttl) + 0.2)  # B's TTL (nothing with 0)
    # Neither B's kernel (its page cache: the mtime changed) nor B's block cache (the ETag
    # changed) may serve the old version's bytes.
    assert (b.bucket / "f").read_bytes() == v2, "B served the old version"
    assert b.served_status()["cache"]["misses"] > before["misses"], "v2 was fetched"
    fd = os.open(b.bucket / "f", os.O_RDONLY)  # and again from B's block cache alone
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # drop the kernel's pages
        assert os.pread(fd, SMALL + 10, 0) == v2
    finally:
        os.close(fd)
    # A new file appears on the other mount, and a removed one goes, after the TTL too.
    write(a.bucket / "g", v1)
    wait_idle(a)
    time.sleep(float(ttl) + 0.2)
    assert "g" in os.listdir(b.bucket) and (b.bucket / "g").read_bytes() == v1
    os.unlink(a.bucket / "g")
    time.sleep(float(ttl) + 0.2)
    assert not (b.bucket / "g").exists()
    mounter.umount(a)
    mounter.umount(b)


def test_rewrites_on_one_mount_never_conflict(mounter: Mounter, store: Store) -> None:
    a, b = two_mounts(mounter, store, "0")
    # Rewritten while its upload runs, truncated and rewritten, written again after the upload:
    # each upload's base is this mount's previous upload.
    for seed in range(4):
        write(a.bucket / "f", pattern(SMALL + seed, seed=seed))
    wait_idle(a)
    with open(a.bucket / "f", "r+b") as f:
        f.truncate(100)
        f.write(b"x" * 10)
    wait_idle(a)
    write(a.bucket / "f", pattern(SMALL, seed=9))
    wait_idle(a)
    # Later closes on the other mount win whole: sequential writers never conflict either.
    write(b.bucket / "f", pattern(SMALL, seed=10))
    wait_idle(b)
    write(a.bucket / "f", pattern(SMALL, seed=11))
    wait_idle(a)
    assert (store.stored / "f").read_bytes() == pattern(SMALL, seed=11)
    assert conflicts(store, "f") == []
    assert "conflict" not in log_of(a) + log_of(b)
    mounter.umount(a)
    mounter.umount(b)


def conditional(store: Store, size: int, new: bool) -> bool:
    """Whether the store turns the second upload down: never without the driver's
    conditional writes; else local always, S3 on PutObject, and on CompleteMultipartUpload
    only with If-None-Match (moto ignores If-Match there: the kit says from which size)."""
    if not store.features.conditional_writes:
        return False
    ignored_from = store.kit.if_match_ignored_from
    return ignored_from is None or size < ignored_from or new


@pytest.mark.parametrize("new", [True, False], ids=["new", "existing"])
@pytest.mark.parametrize("size", [SMALL, MULTIPART], ids=["small", "multipart"])
def test_two_writers_of_one_file(mounter: Mounter, store: Store, size: int,
                                 new: bool) -> None:
    a, b = two_mounts(mounter, store, "1")
    if not new:
        write(a.bucket / "f", pattern(1000, seed=0))
        wait_idle(a)
        # Both read it: their edits are based on this version.
        assert (a.bucket / "f").read_bytes() == (b.bucket / "f").read_bytes()
    else:
        assert not (a.bucket / "f").exists() and not (b.bucket / "f").exists()
    data_a, data_b = pattern(size, seed=101), pattern(size + 3, seed=102)
    # Both open before either closes: A's upload happens first, B's is based on what B saw.
    fd_a = os.open(a.bucket / "f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    fd_b = os.open(b.bucket / "f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                   | (os.O_EXCL if new else 0), 0o644)
    for fd, data in ((fd_a, data_a), (fd_b, data_b)):
        for at in range(0, len(data), 1 << 20):
            os.write(fd, data[at:at + (1 << 20)])
    os.close(fd_a)
    wait_idle(a, timeout=60)
    os.close(fd_b)
    wait_idle(b, timeout=60)
    stored = (store.stored / "f").read_bytes()
    assert stored in (data_a, data_b), "the object mixes the two writers"
    kept = conflicts(store, "f")
    if conditional(store, size, new):
        # The first upload won; the second one's base was gone, so it was kept aside.
        assert stored == data_a
        assert len(kept) == 1, kept
        assert (store.stored / kept[0]).read_bytes() == data_b
        assert "conflict" in log_of(b) and kept[0] in log_of(b)
        # B's view at once, A's after its TTL: the winner under the name, B's copy beside it.
        assert (b.bucket / "f").read_bytes() == data_a
        assert (b.bucket / kept[0]).read_bytes() == data_b
        assert {"f", kept[0]} <= set(os.listdir(b.bucket))
        time.sleep(1.2)  # A's TTL
        assert {"f", kept[0]} <= set(os.listdir(a.bucket))
        assert (a.bucket / kept[0]).read_bytes() == data_b
        assert (a.bucket / "f").read_bytes() == data_a
    else:  # the store ignored the condition: the later close wins whole
        assert stored == data_b and kept == []
    mounter.umount(a)
    mounter.umount(b)


def test_edit_of_a_file_deleted_elsewhere_brings_it_back(mounter: Mounter,
                                                         store: Store) -> None:
    a, b = two_mounts(mounter, store, "5")
    write(a.bucket / "f", pattern(SMALL, seed=1))
    wait_idle(a)
    assert (b.bucket / "f").read_bytes() == pattern(SMALL, seed=1)
    os.unlink(a.bucket / "f")
    assert not (store.stored / "f").exists()
    # B still sees the version it read (its TTL) and rewrites it: the edit is kept.
    write(b.bucket / "f", pattern(SMALL, seed=2))
    wait_idle(b)
    assert (store.stored / "f").read_bytes() == pattern(SMALL, seed=2)
    assert conflicts(store, "f") == []
    mounter.umount(a)
    mounter.umount(b)
