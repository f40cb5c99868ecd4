"""POSIX semantics of a real mount, driven with ordinary programs and syscalls.

Every test runs once per driver (`[local]`, `[s3]`, `[dcss]`; skipped where the driver lacks
a feature it needs): it mounts a fresh store through
/dev/fuse (fixtures in conftest.py), acts on the mount point, and checks exact results and exact
errno values; where data or metadata must reach the store, it polls the store itself (a
`stores.StorePath`; the write-back delay is 0.2 s) or unmounts and mounts again. Permission
tests run a subprocess as uid 65534 against a mount below a directory that user can reach; the
last tests are an fsx-like random exerciser of one file.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import BACKENDS, Mount, Mounter, make_store
from kits import Kit, Store
from stores import StorePath, names, tree

pytestmark = [pytest.mark.mounted, pytest.mark.backends(*BACKENDS)]

LIBC = ctypes.CDLL(None, use_errno=True)  # system calls Python's os module lacks

NOBODY = 65534


# ---- helpers -------------------------------------------------------------------------------

def wait_until(check: Callable[[], bool], timeout: float = 10.0,
               what: str | Callable[[], str] = "condition") -> None:
    """Poll `check`; `what` (or what it returns, asked only on a timeout) names the wait."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.02)


def read_or_none(path: StorePath) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def wait_store(path: StorePath, data: bytes | None, timeout: float = 10.0) -> None:
    """Poll a store object until it holds exactly `data` (None: until it is absent)."""
    if data is None:
        wait_until(lambda: not path.exists(), timeout, f"{path} to disappear")
    else:
        wait_until(lambda: read_or_none(path) == data, timeout,
                   lambda: f"{path} to hold {data!r:.80}: it holds {read_or_none(path)!r:.80}")


def wait_idle(m: Mount, timeout: float = 10.0) -> None:
    """Until the mount has nothing left to upload."""
    wait_until(lambda: m.served_status()["queued"] == 0, timeout, "the upload queue to drain")


def oserror(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The errno `fn(*args)` fails with; the test fails if it succeeds."""
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    return info.value.errno


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                          timeout=60)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc.stdout


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes that differ at every offset, so misplaced blocks show."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    """Run python `code` as uid/gid 65534 with no supplementary groups."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60)


def errno_as_nobody(action: str) -> int:
    """The errno that `action` (a python statement) fails with as nobody; 0 if it succeeds."""
    proc = as_nobody(f"""
        import os
        try:
            {action}
        except OSError as e:
            print(e.errno)
        else:
            print(0)
        """)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


# ---- the root: buckets ---------------------------------------------------------------------

@pytest.mark.requires("buckets_editable")
def test_root_lists_buckets(mounter: Mounter, store: Store) -> None:
    (store / "second").mkdir()
    (store / "second" / "obj").write_bytes(b"x")
    m = mounter.mount(store)
    # .mountfs-tmp (the local store's) is never a bucket
    assert sorted(os.listdir(m.path)) == sorted([*store.buckets, "second"])
    assert stat.S_ISDIR(os.stat(m.path / "second").st_mode)
    assert (m.path / "second" / "obj").read_bytes() == b"x"


@pytest.mark.requires("buckets_editable")
def test_mkdir_at_root_creates_bucket(mounted: Mount) -> None:
    os.mkdir(mounted.path / "newbucket")
    assert (mounted.store / "newbucket").is_dir()
    assert "newbucket" in os.listdir(mounted.path)
    write_file(mounted.path / "newbucket" / "f", b"data")
    wait_store(mounted.store / "newbucket" / "f", b"data")


def test_mkdir_at_root_existing_bucket(mounted: Mount) -> None:
    assert oserror(os.mkdir, mounted.bucket) == errno.EEXIST


@pytest.mark.requires("buckets_editable")
def test_rmdir_bucket(mounted: Mount) -> None:
    os.mkdir(mounted.path / "gone")
    os.rmdir(mounted.path / "gone")
    assert not (mounted.store / "gone").exists()
    assert "gone" not in os.listdir(mounted.path)
    assert oserror(os.stat, mounted.path / "gone") == errno.ENOENT


@pytest.mark.requires("buckets_editable")  # else EPERM: test_capabilities.py
def test_rmdir_nonempty_bucket(mounted: Mount) -> None:
    write_file(mounted.bucket / "f", b"x")
    assert oserror(os.rmdir, mounted.bucket) == errno.ENOTEMPTY
    assert mounted.stored.is_dir()
    assert mounted.bucket.joinpath("f").read_bytes() == b"x"


def test_file_at_root_is_refused(mounted: Mount) -> None:
    """Only buckets live at the root: a file there has no (bucket, key) to be stored as."""
    assert oserror(open, mounted.path / "file", "wb") == errno.EPERM
    assert oserror(os.symlink, "t", mounted.path / "link") == errno.EPERM
    assert sorted(os.listdir(mounted.path)) == mounted.store.buckets


@pytest.mark.requires("buckets_editable")
def test_mkdir_refused_bucket_name(mounted: Mount, kit: Kit) -> None:
    """A bucket name the store refuses (the kit's: the local store reserves names starting
    with '.' at its top, S3 wants 3 to 63 characters)."""
    name = kit.refused_bucket
    assert name is not None, f"the {kit.name} kit names no bucket its store refuses"
    assert oserror(os.mkdir, mounted.path / name) == errno.EINVAL
    assert name not in names(mounted.store)


def test_listing_larger_than_a_page(mounted: Mount) -> None:
    # Three pages of 1,000 (every driver's page size): a first, a middle and a last of one key.
    keys = {f"obj{i:05d}" for i in range(2001)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: (mounted.stored / k).write_bytes(k.encode()), keys))
    assert set(os.listdir(mounted.bucket)) == keys
    assert (mounted.bucket / "obj02000").read_bytes() == b"obj02000"


# ---- create, open, read, write -------------------------------------------------------------

def test_create_and_data_reaches_store(mounted: Mount) -> None:
    data = pattern(3 * 1024 * 1024 + 123)  # crosses block boundaries
    write_file(mounted.bucket / "big", data)
    assert (mounted.bucket / "big").read_bytes() == data
    assert os.stat(mounted.bucket / "big").st_size == len(data)
    wait_store(mounted.stored / "big", data)


def test_open_excl(mounted: Mount) -> None:
    path = mounted.bucket / "f"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.write(fd, b"one")
    os.close(fd)
    assert oserror(os.open, path, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert path.read_bytes() == b"one"
    # Also once the file is only on the server (uploaded, not in any listing cache).
    wait_store(mounted.stored / "f", b"one")
    assert oserror(os.open, path, os.O_CREAT | os.O_EXCL | os.O_RDWR) == errno.EEXIST


def test_open_excl_on_directory(mounted: Mount) -> None:
    os.mkdir(mounted.bucket / "d")
    assert oserror(os.open, mounted.bucket / "d", os.O_CREAT | os.O_EXCL | os.O_WRONLY) \
        == errno.EEXIST


def test_open_creat_existing_keeps_data(mounted: Mount) -> None:
    path = mounted.bucket / "f"
    write_file(path, b"hello")
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    assert os.read(fd, 100) == b"hello"
    os.close(fd)


def test_open_trunc(mounted: Mount) -> None:
    path = mounted.bucket / "f"
    write_file(path, b"a long first version")
    wait_store(mounted.stored / "f", b"a long first version")
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.write(fd, b"short")
    os.close(fd)
    assert path.read_bytes() == b"short"
    wait_store(mounted.stored / "f", b"short")


def test_open_trunc_to_empty(mounted: Mount) -> None:
    path = mounted.bucket / "f"
    write_file(path, b"content")
    wait_store(mounted.stored / "f", b"content")
    os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
    assert os.stat(path).st_size == 0
    wait_store(mounted.stored / "f", b"")


def test_open_append(mounted: Mount) -> None:
    path = mounted.bucket / "log"
    write_file(path, b"first\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"second\n")  # O_APPEND: at the end, whatever the offset
    os.write(fd, b"third\n")
    os.close(fd)
    assert path.read_bytes() == b"first\nsecond\nthird\n"
    wait_store(mounted.stored / "log", b"first\nsecond\nthird\n")
    with open(path, "ab") as f:
        f.write(b"fourth\n")
    assert path.read_bytes() == b"first\nsecond\nthird\nfourth\n"


def test_append_after_upload(mounted: Mount) -> None:
    """Appending to an object that is only on the server keeps its head."""
    (mounted.stored / "srv").write_bytes(b"from server\n")
    with open(mounted.bucket / "srv", "ab") as f:
        f.write(b"appended\n")
    assert (mounted.bucket / "srv").read_bytes() == b"from server\nappended\n"
    wait_store(mounted.stored / "srv", b"from server\nappended\n")


def test_read_write_offsets(mounted: Mount) -> None:
    path = mounted.bucket / "f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        assert os.pwrite(fd, b"abcdef", 0) == 6
        assert os.pwrite(fd, b"XY", 2) == 2
        assert os.pread(fd, 100, 0) == b"abXYef"
        assert os.pread(fd, 3, 1) == b"bXY"
        assert os.pread(fd, 10, 6) == b""  # at EOF
        assert os.pread(fd, 10, 1000) == b""  # past EOF
    finally:
        os.close(fd)
    wait_store(mounted.stored / "f", b"abXYef")


def test_write_past_eof_leaves_hole_of_zeros(mounted: Mount) -> None:
    path = mounted.bucket / "sparse"
    offset = 2 * 1024 * 1024 + 17  # the hole spans whole blocks
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"head")
        os.pwrite(fd, b"tail", offset)
        assert os.fstat(fd).st_size == offset + 4
        assert os.pread(fd, 10, 4) == bytes(10)
        assert os.pread(fd, 8, offset - 4) == bytes(4) + b"tail"
    finally:
        os.close(fd)
    expected = b"head" + bytes(offset - 4) + b"tail"
    assert path.read_bytes() == expected
    wait_store(mounted.stored / "sparse", expected)


def test_overwrite_middle_of_server_object(mounted: Mount) -> None:
    data = pattern(2 * 1024 * 1024 + 500, seed=1)
    (mounted.stored / "obj").write_bytes(data)
    fd = os.open(mounted.bucket / "obj", os.O_WRONLY)
    os.pwrite(fd, b"PATCH", 1024 * 1024 - 2)  # across a block boundary
    os.close(fd)
    expected = data[:1024 * 1024 - 2] + b"PATCH" + data[1024 * 1024 + 3:]
    assert (mounted.bucket / "obj").read_bytes() == expected
    wait_store(mounted.stored / "obj", expected)


def test_truncate_grow_and_shrink(mounted: Mount) -> None:
    path = mounted.bucket / "t"
    write_file(path, b"0123456789")
    os.truncate(path, 4)
    assert path.read_bytes() == b"0123"
    os.truncate(path, 8)
    assert os.stat(path).st_size == 8
    assert path.read_bytes() == b"0123" + bytes(4)  # the shrunk-away bytes do not come back
    wait_store(mounted.stored / "t", b"0123" + bytes(4))


def test_truncate_server_object(mounted: Mount) -> None:
    data = pattern(3 * 1024 * 1024, seed=2)
    (mounted.stored / "obj").write_bytes(data)
    os.truncate(mounted.bucket / "obj", 1024 * 1024 + 10)
    assert (mounted.bucket / "obj").read_bytes() == data[:1024 * 1024 + 10]
    wait_store(mounted.stored / "obj", data[:1024 * 1024 + 10])


def test_ftruncate(mounted: Mount) -> None:
    path = mounted.bucket / "ft"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"abcdefgh")
        os.ftruncate(fd, 3)
        assert os.fstat(fd).st_size == 3
        assert os.pread(fd, 100, 0) == b"abc"
        os.ftruncate(fd, 6)
        assert os.pread(fd, 100, 0) == b"abc" + bytes(3)
        os.pwrite(fd, b"Z", 5)
        assert os.pread(fd, 100, 0) == b"abc\0\0Z"
    finally:
        os.close(fd)
    assert os.stat(path).st_size == 6
    wait_store(mounted.stored / "ft", b"abc\0\0Z")


def test_truncate_directory(mounted: Mount) -> None:
    os.mkdir(mounted.bucket / "d")
    assert oserror(os.truncate, mounted.bucket / "d", 0) == errno.EISDIR


# ---- unlink ----------------------------------------------------------------------------------

def test_unlink(mounted: Mount) -> None:
    path = mounted.bucket / "f"
    write_file(path, b"x")
    wait_store(mounted.stored / "f", b"x")
    os.unlink(path)
    assert not (mounted.stored / "f").exists()
    assert oserror(os.stat, path) == errno.ENOENT
    assert os.listdir(mounted.bucket) == []
    assert oserror(os.unlink, path) == errno.ENOENT


def test_unlink_while_open(mounted: Mount) -> None:
    path = mounted.bucket / "open"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"before")
        os.unlink(path)
        assert oserror(os.stat, path) == errno.ENOENT
        assert "open" not in os.listdir(mounted.bucket)
        assert os.pread(fd, 100, 0) == b"before"
        os.pwrite(fd, b" after", 6)
        assert os.pread(fd, 100, 0) == b"before after"
        assert os.fstat(fd).st_size == 12
    finally:
        os.close(fd)
    time.sleep(0.6)  # three write-back delays: an upload would have happened by now
    wait_idle(mounted)
    assert not (mounted.stored / "open").exists()
    assert oserror(os.stat, path) == errno.ENOENT


def test_unlink_while_open_uploaded_file(mounted: Mount) -> None:
    path = mounted.bucket / "f"
    data = pattern(1024 * 1024 + 10, seed=3)
    write_file(path, data)
    wait_store(mounted.stored / "f", data)
    with open(path, "rb") as f:
        os.unlink(path)
        assert not (mounted.stored / "f").exists()
        assert f.read() == data
    time.sleep(0.6)
    assert not (mounted.stored / "f").exists()


def test_unlink_while_open_not_cached(mounted: Mount) -> None:
    """An object read only in part before its unlink still reads whole through the fd."""
    data = pattern(3 * 1024 * 1024 + 99, seed=7)
    (mounted.stored / "srv").write_bytes(data)
    with open(mounted.bucket / "srv", "rb", buffering=0) as f:
        assert f.read(10) == data[:10]  # only the first block is fetched
        os.unlink(mounted.bucket / "srv")
        assert not (mounted.stored / "srv").exists()
        assert f.read() == data[10:]


def test_unlink_while_open_small_cache(mounter: Mounter, store: Store) -> None:
    """The blocks an unlinked open file still needs are not evicted to make room."""
    m = mounter.mount(store, "--cache-size", "2M")
    data = pattern(3 * 1024 * 1024 + 5, seed=9)
    (store.stored / "srv").write_bytes(data)
    (store.stored / "other").write_bytes(pattern(2 * 1024 * 1024, seed=10))
    with open(m.bucket / "srv", "rb", buffering=0) as f:
        assert f.read(10) == data[:10]
        os.unlink(m.bucket / "srv")
        assert (m.bucket / "other").read_bytes() == pattern(2 * 1024 * 1024, seed=10)
        assert f.read() == data[10:]


@pytest.mark.backends("local")  # the cache's concern: one driver is enough
def test_a_cache_dir_on_a_file_system_without_fallocate(
        request: pytest.FixtureRequest, mounter: Mounter, store: Store, tmp_path: Path) -> None:
    """Block files are given their disk at once where the cache dir's file system can
    (fallocate); where it cannot (here: in another mountfs mount) they are written as ever."""
    host = mounter.mount(make_store(request, "local", tmp_path / "host-store"), name="host")
    fd = os.open(host.bucket / "probe", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert LIBC.fallocate(fd, 0, ctypes.c_int64(0), ctypes.c_int64(4096)) == -1
        assert ctypes.get_errno() == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    m = mounter.mount(store, name="inner", cache=host.bucket / "cache")
    data = pattern(9 * 1024 * 1024 + 7, seed=11)
    (store.stored / "srv").write_bytes(data)
    assert (m.bucket / "srv").read_bytes() == data
    blocks = sorted(f.stat().st_size for f in (host.bucket / "cache" / "blocks").iterdir()
                    if f.name.split(".")[-1].isdigit())
    assert blocks == [1024 * 1024 + 7, 4 * 1024 * 1024, 4 * 1024 * 1024]


def test_rename_over_open_file(mounted: Mount) -> None:
    """A program reading the file an editor's save replaces keeps reading the old version."""
    old = pattern(3 * 1024 * 1024 + 1, seed=8)
    (mounted.stored / "doc").write_bytes(old)
    with open(mounted.bucket / "doc", "rb", buffering=0) as reader:
        assert reader.read(10) == old[:10]
        write_file(mounted.bucket / "doc.tmp", b"new version")
        os.rename(mounted.bucket / "doc.tmp", mounted.bucket / "doc")
        assert (mounted.bucket / "doc").read_bytes() == b"new version"
        wait_store(mounted.stored / "doc", b"new version")  # the old one is gone
        assert reader.read() == old[10:]
    assert (mounted.bucket / "doc").read_bytes() == b"new version"


def test_name_reused_after_unlink_while_open(mounted: Mount) -> None:
    path = mounted.bucket / "f"
    old = open(path, "wb")
    try:
        old.write(b"old data")
        old.flush()
        os.unlink(path)
        write_file(path, b"new")
    finally:
        old.close()
    assert path.read_bytes() == b"new"
    wait_store(mounted.stored / "f", b"new")
    time.sleep(0.6)
    assert (mounted.stored / "f").read_bytes() == b"new"


# ---- directories and errno -------------------------------------------------------------------

def test_mkdir_rmdir(mounted: Mount) -> None:
    d = mounted.bucket / "dir"
    os.mkdir(d, 0o750)
    st = os.stat(d)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750
    assert (mounted.stored / "dir").is_dir()  # the empty-directory marker
    os.mkdir(d / "sub")
    assert (mounted.stored / "dir" / "sub").is_dir()
    assert oserror(os.rmdir, d) == errno.ENOTEMPTY
    os.rmdir(d / "sub")
    os.rmdir(d)
    assert not (mounted.stored / "dir").exists()
    assert os.listdir(mounted.bucket) == []


def test_mkdir_existing(mounted: Mount) -> None:
    os.mkdir(mounted.bucket / "d")
    write_file(mounted.bucket / "f", b"")
    assert oserror(os.mkdir, mounted.bucket / "d") == errno.EEXIST
    assert oserror(os.mkdir, mounted.bucket / "f") == errno.EEXIST


def test_mkdir_existing_on_server_only(mounted: Mount) -> None:
    (mounted.stored / "sd").mkdir()
    (mounted.stored / "sf").write_bytes(b"")
    assert oserror(os.mkdir, mounted.bucket / "sd") == errno.EEXIST
    assert oserror(os.mkdir, mounted.bucket / "sf") == errno.EEXIST


def test_rmdir_nonempty_file_inside(mounted: Mount) -> None:
    os.mkdir(mounted.bucket / "d")
    write_file(mounted.bucket / "d" / "f", b"x")
    assert oserror(os.rmdir, mounted.bucket / "d") == errno.ENOTEMPTY
    wait_store(mounted.stored / "d" / "f", b"x")
    assert oserror(os.rmdir, mounted.bucket / "d") == errno.ENOTEMPTY
    assert (mounted.bucket / "d" / "f").read_bytes() == b"x"


def test_rmdir_file_is_enotdir(mounted: Mount) -> None:
    write_file(mounted.bucket / "f", b"x")
    assert oserror(os.rmdir, mounted.bucket / "f") == errno.ENOTDIR
    assert (mounted.bucket / "f").read_bytes() == b"x"


def test_unlink_dir_is_eisdir(mounted: Mount) -> None:
    os.mkdir(mounted.bucket / "d")
    assert oserror(os.unlink, mounted.bucket / "d") == errno.EISDIR
    assert (mounted.bucket / "d").is_dir()
    assert oserror(os.unlink, mounted.bucket) == errno.EISDIR


def test_missing_is_enoent(mounted: Mount) -> None:
    assert oserror(open, mounted.bucket / "missing", "rb") == errno.ENOENT
    assert oserror(os.stat, mounted.bucket / "missing") == errno.ENOENT
    assert oserror(os.listdir, mounted.bucket / "missing") == errno.ENOENT
    assert oserror(os.rmdir, mounted.bucket / "missing") == errno.ENOENT
    assert oserror(os.rename, mounted.bucket / "missing", mounted.bucket / "x") == errno.ENOENT
    assert oserror(open, mounted.bucket / "nodir" / "f", "wb") == errno.ENOENT
    assert oserror(os.stat, mounted.path / "nobucket") == errno.ENOENT


def test_path_through_file_is_enotdir(mounted: Mount) -> None:
    write_file(mounted.bucket / "f", b"x")
    assert oserror(open, mounted.bucket / "f" / "x", "rb") == errno.ENOTDIR
    assert oserror(open, mounted.bucket / "f" / "x", "wb") == errno.ENOTDIR
    assert oserror(os.mkdir, mounted.bucket / "f" / "d") == errno.ENOTDIR
    assert oserror(os.stat, mounted.bucket / "f" / "x") == errno.ENOTDIR
    assert oserror(os.listdir, mounted.bucket / "f") == errno.ENOTDIR


def test_open_directory_for_writing_is_eisdir(mounted: Mount) -> None:
    os.mkdir(mounted.bucket / "d")
    assert oserror(open, mounted.bucket / "d", "wb") == errno.EISDIR


def test_name_too_long(mounted: Mount) -> None:
    long = "n" * 256
    assert oserror(open, mounted.bucket / long, "wb") == errno.ENAMETOOLONG
    assert oserror(os.mkdir, mounted.bucket / long) == errno.ENAMETOOLONG
    assert oserror(os.stat, mounted.bucket / long) == errno.ENAMETOOLONG
    assert oserror(os.mkdir, mounted.path / long) == errno.ENAMETOOLONG
    write_file(mounted.bucket / "f", b"")
    assert oserror(os.rename, mounted.bucket / "f", mounted.bucket / long) == errno.ENAMETOOLONG
    assert oserror(os.symlink, "t", mounted.bucket / long) == errno.ENAMETOOLONG
    # 255 bytes is allowed, also when they are multi-byte characters.
    ok = "é" * 127 + "x"
    assert len(ok.encode()) == 255
    write_file(mounted.bucket / ok, b"ok")
    assert (mounted.bucket / ok).read_bytes() == b"ok"
    assert oserror(open, mounted.bucket / (ok + "x"), "wb") == errno.ENAMETOOLONG
    assert sorted(os.listdir(mounted.bucket)) == sorted(["f", ok])


def test_hard_link_is_eperm(mounted: Mount) -> None:
    """Object stores have no hard links (documented limit)."""
    write_file(mounted.bucket / "f", b"x")
    assert oserror(os.link, mounted.bucket / "f", mounted.bucket / "g") == errno.EPERM
    assert os.listdir(mounted.bucket) == ["f"]


def test_mknod_regular_file(mounted: Mount) -> None:
    os.mknod(mounted.bucket / "node", 0o600 | stat.S_IFREG)
    st = os.stat(mounted.bucket / "node")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 0
    wait_store(mounted.stored / "node", b"")


# ---- rename ------------------------------------------------------------------------------------

def test_rename_file(mounted: Mount) -> None:
    write_file(mounted.bucket / "a", b"data a")
    wait_store(mounted.stored / "a", b"data a")
    os.mkdir(mounted.bucket / "d")
    os.rename(mounted.bucket / "a", mounted.bucket / "d" / "b")
    assert (mounted.bucket / "d" / "b").read_bytes() == b"data a"
    assert oserror(os.stat, mounted.bucket / "a") == errno.ENOENT
    # At once, or (when the rename met the upload of `a` still finishing, whose snapshot it then
    # voids) by the upload under the new name.
    wait_store(mounted.stored / "d" / "b", b"data a")
    assert not (mounted.stored / "a").exists()


def test_rename_file_over_file(mounted: Mount) -> None:
    write_file(mounted.bucket / "a", b"new")
    write_file(mounted.bucket / "b", b"old contents")
    wait_store(mounted.stored / "a", b"new")
    wait_store(mounted.stored / "b", b"old contents")
    os.rename(mounted.bucket / "a", mounted.bucket / "b")
    assert (mounted.bucket / "b").read_bytes() == b"new"
    assert os.listdir(mounted.bucket) == ["b"]
    wait_store(mounted.stored / "b", b"new")  # as in test_rename_file
    assert not (mounted.stored / "a").exists()


def test_rename_pending_file_over_pending_file(mounted: Mount) -> None:
    write_file(mounted.bucket / "a", b"AAA")
    write_file(mounted.bucket / "b", b"BBBBBB")
    os.rename(mounted.bucket / "a", mounted.bucket / "b")
    assert (mounted.bucket / "b").read_bytes() == b"AAA"
    wait_store(mounted.stored / "b", b"AAA")
    time.sleep(0.6)
    wait_idle(mounted)
    assert (mounted.stored / "b").read_bytes() == b"AAA"
    assert not (mounted.stored / "a").exists()


def test_rename_dir_over_empty_dir(mounted: Mount) -> None:
    os.mkdir(mounted.bucket / "src")
    write_file(mounted.bucket / "src" / "f", b"f")
    os.mkdir(mounted.bucket / "dst")
    os.rename(mounted.bucket / "src", mounted.bucket / "dst")
    assert os.listdir(mounted.bucket) == ["dst"]
    assert (mounted.bucket / "dst" / "f").read_bytes() == b"f"
    wait_store(mounted.stored / "dst" / "f", b"f")
    assert not (mounted.stored / "src").exists()


def test_rename_dir_over_nonempty_dir(mounted: Mount) -> None:
    os.mkdir(mounted.bucket / "src")
    os.mkdir(mounted.bucket / "dst")
    write_file(mounted.bucket / "dst" / "keep", b"k")
    assert oserror(os.rename, mounted.bucket / "src", mounted.bucket / "dst") == errno.ENOTEMPTY
    assert (mounted.bucket / "dst" / "keep").read_bytes() == b"k"
    assert (mounted.bucket / "src").is_dir()


def test_rename_file_over_dir(mounted: Mount) -> None:
    write_file(mounted.bucket / "f", b"x")
    os.mkdir(mounted.bucket / "d")
    assert oserror(os.rename, mounted.bucket / "f", mounted.bucket / "d") == errno.EISDIR
    assert (mounted.bucket / "d").is_dir() and (mounted.bucket / "f").read_bytes() == b"x"


def test_rename_dir_over_file(mounted: Mount) -> None:
    write_file(mounted.bucket / "f", b"x")
    os.mkdir(mounted.bucket / "d")
    assert oserror(os.rename, mounted.bucket / "d", mounted.bucket / "f") == errno.ENOTDIR
    assert (mounted.bucket / "d").is_dir() and (mounted.bucket / "f").read_bytes() == b"x"


def test_rename_dir_into_itself(mounted: Mount) -> None:
    os.makedirs(mounted.bucket / "a" / "b")
    assert oserror(os.rename, mounted.bucket / "a", mounted.bucket / "a" / "b" / "c") \
        == errno.EINVAL
    assert oserror(os.rename, mounted.bucket / "a", mounted.bucket / "a" / "c") == errno.EINVAL
    assert (mounted.bucket / "a" / "b").is_dir()


def test_rename_to_itself(mounted: Mount) -> None:
    write_file(mounted.bucket / "f", b"x")
    os.rename(mounted.bucket / "f", mounted.bucket / "f")
    assert (mounted.bucket / "f").read_bytes() == b"x"


def test_rename_tree(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "0.2")
    files = {"top": b"t", "a/one": b"1" * 5000, "a/b/two": pattern(1024 * 1024 + 7),
             "a/b/c/three": b"3"}
    for rel, data in files.items():
        (m.bucket / "old" / rel).parent.mkdir(parents=True, exist_ok=True)
        write_file(m.bucket / "old" / rel, data)
    os.makedirs(m.bucket / "old" / "empty")
    os.chmod(m.bucket / "old" / "a", 0o700)  # a non-empty subdirectory keeps its attributes
    for rel, data in files.items():
        wait_store(store.stored / "old" / rel, data)
    os.rename(m.bucket / "old", m.bucket / "new")
    for rel, data in files.items():
        assert (m.bucket / "new" / rel).read_bytes() == data
        wait_store(store.stored / "new" / rel, data)
    assert (store.stored / "new" / "empty").is_dir()
    assert (m.bucket / "new" / "empty").is_dir()
    assert not (store.stored / "old").exists()
    assert os.listdir(m.bucket) == ["new"]
    assert stat.S_IMODE(os.stat(m.bucket / "new" / "a").st_mode) == 0o700
    mounter.umount(m)
    m = mounter.remount(m)
    assert os.listdir(m.bucket) == ["new"]
    assert tree(m.bucket / "new") == {"top", "empty/", "a/", "a/one", "a/b/", "a/b/two",
                                      "a/b/c/", "a/b/c/three"}
    assert stat.S_IMODE(os.stat(m.bucket / "new" / "a").st_mode) == 0o700


def test_rename_tree_with_pending_files(mounted: Mount) -> None:
    """Files written but not yet uploaded move with their directory."""
    m = mounted
    os.makedirs(m.bucket / "old" / "sub")
    write_file(m.bucket / "old" / "up", b"uploaded")
    wait_store(m.stored / "old" / "up", b"uploaded")
    write_file(m.bucket / "old" / "sub" / "p", b"pending")
    os.rename(m.bucket / "old", m.bucket / "new")
    assert (m.bucket / "new" / "sub" / "p").read_bytes() == b"pending"
    wait_store(m.stored / "new" / "sub" / "p", b"pending")
    wait_store(m.stored / "new" / "up", b"uploaded")
    wait_idle(m)
    time.sleep(0.5)
    assert not (m.stored / "old").exists()


def test_rename_before_upload(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "1", "--whole-file-delay", "1")
    write_file(m.bucket / "a", b"just written")
    os.rename(m.bucket / "a", m.bucket / "b")
    assert not (store.stored / "a").exists() and not (store.stored / "b").exists()
    assert (m.bucket / "b").read_bytes() == b"just written"
    wait_store(store.stored / "b", b"just written")
    wait_idle(m)
    assert not (store.stored / "a").exists()
    assert os.listdir(m.bucket) == ["b"]


@pytest.mark.requires("relative_symlinks")
def test_rename_pending_over_uploaded_then_unlink(mounter: Mounter, store: Store) -> None:
    """The replaced target must not come back when the renamed file is removed before its
    upload (found by the model test: a symlink target reappeared)."""
    m = mounter.mount(store, "--writeback-delay", "1", "--whole-file-delay", "1")
    os.symlink("elsewhere", m.bucket / "c")
    write_file(m.bucket / "b", b"on the server")
    wait_store(store.stored / "b", b"on the server")
    write_file(m.bucket / "a", b"pending")
    os.rename(m.bucket / "a", m.bucket / "c")
    os.unlink(m.bucket / "c")
    with open(m.bucket / "p", "wb") as f:  # the same while the file is still open
        f.write(b"pending too")
        os.rename(m.bucket / "p", m.bucket / "b")
        os.unlink(m.bucket / "b")
    assert os.listdir(m.bucket) == []
    assert names(store.stored) == []
    mounter.umount(m)
    assert os.listdir(mounter.remount(m).bucket) == []


def test_rename_open_file_then_write(mounted: Mount) -> None:
    path = mounted.bucket / "a"
    with open(path, "wb") as f:
        f.write(b"part one,")
        f.flush()
        os.rename(path, mounted.bucket / "b")
        f.write(b" part two")
    assert (mounted.bucket / "b").read_bytes() == b"part one, part two"
    wait_store(mounted.stored / "b", b"part one, part two")
    wait_idle(mounted)
    assert not (mounted.stored / "a").exists()


def test_rename_dir_with_open_file(mounted: Mount) -> None:
    os.mkdir(mounted.bucket / "d")
    with open(mounted.bucket / "d" / "f", "wb") as f:
        f.write(b"written before, ")
        f.flush()
        os.rename(mounted.bucket / "d", mounted.bucket / "e")
        f.write(b"and after the rename")
    assert (mounted.bucket / "e" / "f").read_bytes() == b"written before, and after the rename"
    wait_store(mounted.stored / "e" / "f", b"written before, and after the rename")
    wait_idle(mounted)
    assert not (mounted.stored / "d").exists()
    assert os.listdir(mounted.bucket) == ["e"]


@pytest.mark.requires("buckets_editable")
def test_rename_across_buckets(mounted: Mount) -> None:
    os.mkdir(mounted.path / "other")
    write_file(mounted.bucket / "f", b"file")
    os.makedirs(mounted.bucket / "d" / "sub")
    write_file(mounted.bucket / "d" / "sub" / "g", b"deep")
    wait_store(mounted.stored / "d" / "sub" / "g", b"deep")
    os.rename(mounted.bucket / "f", mounted.path / "other" / "f")
    os.rename(mounted.bucket / "d", mounted.path / "other" / "d")
    assert (mounted.path / "other" / "f").read_bytes() == b"file"
    assert (mounted.path / "other" / "d" / "sub" / "g").read_bytes() == b"deep"
    wait_store(mounted.store / "other" / "f", b"file")
    wait_store(mounted.store / "other" / "d" / "sub" / "g", b"deep")
    wait_idle(mounted)
    assert os.listdir(mounted.bucket) == []
    assert names(mounted.stored) == []


RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


def renameat2(src: Path, dst: Path, flags: int) -> int:
    """renameat2(2) with `flags`: 0 on success, else the errno."""
    at_fdcwd = -100
    if LIBC.renameat2(at_fdcwd, bytes(src), at_fdcwd, bytes(dst), flags) == 0:
        return 0
    return ctypes.get_errno()


def test_rename_noreplace(mounted: Mount) -> None:
    write_file(mounted.bucket / "a", b"a")
    write_file(mounted.bucket / "b", b"b")
    assert renameat2(mounted.bucket / "a", mounted.bucket / "b", RENAME_NOREPLACE) == errno.EEXIST
    assert (mounted.bucket / "b").read_bytes() == b"b"


def test_rename_exchange_unsupported(mounted: Mount) -> None:
    """RENAME_EXCHANGE cannot be done atomically on an object store (documented limit)."""
    write_file(mounted.bucket / "a", b"a")
    write_file(mounted.bucket / "b", b"b")
    assert renameat2(mounted.bucket / "a", mounted.bucket / "b", RENAME_EXCHANGE) == errno.EINVAL
    assert (mounted.bucket / "a").read_bytes() == b"a"
    assert (mounted.bucket / "b").read_bytes() == b"b"


def test_rename_whiteout_unsupported(mounted: Mount) -> None:
    """RENAME_WHITEOUT (for overlayfs) would leave a whiteout device node: not stored."""
    write_file(mounted.bucket / "a", b"a")
    assert renameat2(mounted.bucket / "a", mounted.bucket / "b", RENAME_WHITEOUT) == errno.EINVAL
    assert os.listdir(mounted.bucket) == ["a"]


def test_rename_bucket_is_refused(mounted: Mount) -> None:
    assert oserror(os.rename, mounted.bucket, mounted.path / "other") == errno.EPERM
    assert sorted(os.listdir(mounted.path)) == mounted.store.buckets


# ---- symlinks ----------------------------------------------------------------------------------

@pytest.mark.requires("relative_symlinks")
def test_symlink_readlink(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store)
    write_file(m.bucket / "target", b"through the link")
    os.symlink("target", m.bucket / "link")
    os.symlink("/absolute/elsewhere/../x", m.bucket / "abs")
    assert os.readlink(m.bucket / "link") == "target"
    assert os.readlink(m.bucket / "abs") == "/absolute/elsewhere/../x"
    st = os.lstat(m.bucket / "link")
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("target")
    assert (m.bucket / "link").read_bytes() == b"through the link"
    assert oserror(os.readlink, m.bucket / "target") == errno.EINVAL
    assert oserror(os.symlink, "x", m.bucket / "link") == errno.EEXIST
    mounter.umount(m)
    m = mounter.remount(m)
    assert os.readlink(m.bucket / "link") == "target"
    assert stat.S_ISLNK(os.lstat(m.bucket / "abs").st_mode)
    assert (m.bucket / "link").read_bytes() == b"through the link"
    os.unlink(m.bucket / "link")
    assert not (store.stored / "link").exists()
    assert (m.bucket / "target").read_bytes() == b"through the link"


@pytest.mark.requires("relative_symlinks")
def test_rename_symlink(mounted: Mount) -> None:
    os.symlink("somewhere", mounted.bucket / "l1")
    os.rename(mounted.bucket / "l1", mounted.bucket / "l2")
    assert os.readlink(mounted.bucket / "l2") == "somewhere"
    assert oserror(os.lstat, mounted.bucket / "l1") == errno.ENOENT


# ---- attributes, persisted -------------------------------------------------------------------

@pytest.mark.requires(keeps=("uid", "gid", "mtime"))
def test_chmod_chown_utime_persist(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "0.2")
    f, d = m.bucket / "f", m.bucket / "d"
    write_file(f, b"x")
    os.mkdir(d)
    wait_store(store.stored / "f", b"x")
    os.chmod(f, 0o604)
    os.chown(f, 1234, 5678)
    os.utime(f, ns=(1_000_000_000_123_456_789, 1_500_000_000_987_654_321))
    os.chmod(d, 0o711)
    os.chown(d, 42, 43)
    os.utime(d, ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_001))

    def check(m: Mount) -> None:
        st = os.stat(m.bucket / "f")
        assert stat.S_IMODE(st.st_mode) == 0o604 and stat.S_ISREG(st.st_mode)
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert st.st_mtime_ns == 1_500_000_000_987_654_321
        st = os.stat(m.bucket / "d")
        assert stat.S_IMODE(st.st_mode) == 0o711 and stat.S_ISDIR(st.st_mode)
        assert (st.st_uid, st.st_gid) == (42, 43)
        assert st.st_mtime_ns == 1_400_000_000_000_000_001

    check(m)
    mounter.umount(m)
    check(mounter.remount(m))


@pytest.mark.requires("relative_symlinks", keeps=("uid", "gid"))
def test_directory_attributes_seen_through_listing(mounter: Mounter, store: Store,
                                                   kit: Kit) -> None:
    """After a remount, `ls -l` of the parent shows a directory's own mode and owner."""
    m = mounter.mount(store, "--writeback-delay", "0.2")
    os.mkdir(m.bucket / "private", 0o700)
    os.chown(m.bucket / "private", 1000, 1000)
    write_file(m.bucket / "private" / "f", b"x")  # a non-empty directory lists as a prefix
    os.symlink("private/f", m.bucket / "link")
    wait_store(store.stored / "private" / "f", b"x")
    mounter.umount(m)
    m = mounter.remount(m)
    entries = {e.name: e for e in os.scandir(m.bucket)}  # listed first, then stat'ed
    st = entries["private"].stat(follow_symlinks=False)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 1000, 1000)
    assert stat.S_ISLNK(entries["link"].stat(follow_symlinks=False).st_mode)
    # The entry type comes from the listing, which on S3 carries no metadata (README,
    # "Listings without metadata"): a symlink lists as a file there until it is stat'ed.
    assert entries["link"].is_symlink() == kit.lists_metadata
    line = [ln for ln in run("ls", "-ln", m.bucket).splitlines() if ln.endswith("private")]
    assert line[0].split()[:4] == ["drwx------", "1", "1000", "1000"]


@pytest.mark.requires(keeps=("uid", "gid", "mtime"))
def test_attributes_of_pending_file_persist(mounter: Mounter, store: Store) -> None:
    """chmod/chown/utime on a file not uploaded yet travel with its upload."""
    m = mounter.mount(store, "--writeback-delay", "1", "--whole-file-delay", "1")
    f = m.bucket / "f"
    write_file(f, b"pending")
    os.chmod(f, 0o751)
    os.chown(f, 7, 8)
    os.utime(f, ns=(0, 1_234_567_890_000_000_000))
    mounter.umount(m)
    assert (store.stored / "f").read_bytes() == b"pending"
    m = mounter.remount(m)
    st = os.stat(m.bucket / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) \
        == (0o751, 7, 8, 1_234_567_890_000_000_000)


def test_utime_then_write_while_open(mounted: Mount) -> None:
    """A write after utime sets a current mtime, as POSIX says."""
    f = mounted.bucket / "f"
    write_file(f, b"x")
    os.utime(f, ns=(0, 10**18))
    assert os.stat(f).st_mtime_ns == 10**18
    before = time.time_ns()
    with open(f, "ab") as fh:
        fh.write(b"y")
    assert os.stat(f).st_mtime_ns >= before - 10**9


def test_touch_sets_current_time(mounted: Mount) -> None:
    f = mounted.bucket / "f"
    write_file(f, b"x")
    os.utime(f, ns=(0, 10**18))
    before = time.time_ns()
    run("touch", f)  # utimensat(UTIME_NOW)
    assert before - 10**9 <= os.stat(f).st_mtime_ns <= time.time_ns() + 10**9


def test_non_utf8_name(mounted: Mount) -> None:
    """Keys are UTF-8: other byte strings cannot be names (documented limit)."""
    bad = os.fsencode(mounted.bucket) + b"/\xff\xfe"
    assert oserror(os.open, bad, os.O_CREAT | os.O_WRONLY) == errno.EINVAL
    assert oserror(os.stat, bad) == errno.ENOENT
    assert oserror(os.mkdir, bad) == errno.EINVAL
    assert os.listdir(mounted.bucket) == []


def test_mtime_updates_on_write(mounted: Mount) -> None:
    f = mounted.bucket / "f"
    write_file(f, b"x")
    os.utime(f, ns=(0, 10**18))
    wait_idle(mounted)
    before = time.time_ns()
    with open(f, "r+b") as fh:
        fh.write(b"z")
    mtime = os.stat(f).st_mtime_ns
    assert before - 10**9 <= mtime <= time.time_ns() + 10**9


@pytest.mark.requires(keeps=("xattr",))
def test_xattrs(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "0.2")
    f, d = m.bucket / "f", m.bucket / "d"
    write_file(f, b"x")
    os.mkdir(d)
    os.setxattr(f, "user.colour", b"blue")
    os.setxattr(f, "user.bin", b"\x00\xff\x01")
    os.setxattr(d, "user.dir", b"yes")
    assert os.getxattr(f, "user.colour") == b"blue"
    assert os.getxattr(f, "user.bin") == b"\x00\xff\x01"
    assert sorted(os.listxattr(f)) == ["user.bin", "user.colour"]
    os.setxattr(f, "user.colour", b"red")
    assert os.getxattr(f, "user.colour") == b"red"
    os.removexattr(f, "user.bin")
    assert os.listxattr(f) == ["user.colour"]
    assert oserror(os.getxattr, f, "user.bin") == errno.ENODATA
    assert oserror(os.removexattr, f, "user.bin") == errno.ENODATA
    assert oserror(os.setxattr, f, "user.colour", b"x", os.XATTR_CREATE) == errno.EEXIST
    assert oserror(os.setxattr, f, "user.new", b"x", os.XATTR_REPLACE) == errno.ENODATA
    wait_store(store.stored / "f", b"x")
    mounter.umount(m)
    m = mounter.remount(m)
    assert os.listxattr(m.bucket / "f") == ["user.colour"]
    assert os.getxattr(m.bucket / "f", "user.colour") == b"red"
    assert os.getxattr(m.bucket / "d", "user.dir") == b"yes"
    assert (m.bucket / "f").read_bytes() == b"x"


def test_unknown_xattr_namespace_is_refused(mounted: Mount) -> None:
    f = mounted.bucket / "f"
    write_file(f, b"x")
    # setxattr(2): "ENOTSUP: the namespace prefix of name is not valid". (trusted.* and
    # security.* are kept: test_fidelity.py.)
    assert oserror(os.setxattr, f, "nonesuch.x", b"1") == errno.ENOTSUP
    assert oserror(os.getxattr, f, "trusted.x") == errno.ENODATA
    assert os.listxattr(f) == []


# ---- statfs, mmap ------------------------------------------------------------------------------

def test_statfs(mounted: Mount) -> None:
    st = os.statvfs(mounted.path)
    assert st.f_namemax == 255
    assert st.f_bsize > 0 and st.f_frsize > 0
    assert st.f_bavail > 0 and st.f_bfree >= st.f_bavail and st.f_blocks >= st.f_bfree
    assert os.statvfs(mounted.bucket).f_namemax == 255
    out = run("df", "-P", mounted.path)
    assert str(mounted.path) in out


def test_mmap_read(mounted: Mount) -> None:
    data = pattern(1024 * 1024 + 4096 * 3 + 5, seed=4)
    (mounted.stored / "m").write_bytes(data)
    with open(mounted.bucket / "m", "rb") as f:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            assert len(mm) == len(data)
            assert mm[:100] == data[:100]
            assert mm[1024 * 1024 - 10:1024 * 1024 + 10] == data[1024 * 1024 - 10:1024 * 1024 + 10]
            assert mm[:] == data


def test_mmap_write_shared(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "0.2")
    path = m.bucket / "m"
    size = 3 * 4096 + 100
    write_file(path, bytes(size))
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
            mm[0:5] = b"hello"
            mm[4096:4101] = b"world"
            mm[size - 3:size] = b"end"
            mm.flush()  # msync(MS_SYNC)
    finally:
        os.close(fd)
    expected = bytearray(size)
    expected[0:5], expected[4096:4101], expected[size - 3:] = b"hello", b"world", b"end"
    assert path.read_bytes() == bytes(expected)
    wait_store(store.stored / "m", bytes(expected))
    mounter.umount(m)
    m = mounter.remount(m)
    assert (m.bucket / "m").read_bytes() == bytes(expected)


# ---- ordinary programs ---------------------------------------------------------------------------

def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "README": b"readme\n",
        "src/main.py": b"print('hi')\n" * 100,
        "src/pkg/__init__.py": b"",
        "src/pkg/data.bin": pattern(1024 * 1024 + 300, seed=5),
        "docs/a/b/c/deep.txt": b"deep\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "empty").mkdir()
    return files


def test_cp_r_and_diff(mounted: Mount, tmp_path: Path) -> None:
    src = tmp_path / "src-tree"
    files = make_tree(src)
    run("cp", "-r", src, mounted.bucket / "copy")
    run("diff", "-r", src, mounted.bucket / "copy")
    assert tree(mounted.bucket / "copy") == tree(src)
    for rel, data in files.items():
        wait_store(mounted.stored / "copy" / rel, data)
    assert tree(mounted.stored / "copy") == tree(src)
    # and back out again
    run("cp", "-r", mounted.bucket / "copy", tmp_path / "back")
    run("diff", "-r", src, tmp_path / "back")


@pytest.mark.requires("relative_symlinks")  # cp -a of a tree with a link
def test_find(mounted: Mount, tmp_path: Path) -> None:
    src = tmp_path / "src-tree"
    make_tree(src)
    os.symlink("README", src / "link")
    run("cp", "-a", src, mounted.bucket / "t")
    for kind, count in (("f", 5), ("d", 8), ("l", 1)):
        found = sorted(run("find", ".", "-type", kind, cwd=mounted.bucket / "t").split())
        assert found == sorted(run("find", ".", "-type", kind, cwd=src).split())
        assert len(found) == count, found
    # cp -a kept the modes and times
    st_src, st_mnt = os.stat(src / "src" / "main.py"), os.stat(mounted.bucket / "t/src/main.py")
    assert (st_mnt.st_mode, st_mnt.st_mtime_ns) == (st_src.st_mode, st_src.st_mtime_ns)
    assert run("find", ".", "-name", "deep.txt", cwd=mounted.bucket).split() \
        == ["./t/docs/a/b/c/deep.txt"]


def test_mv_within_and_into_mount(mounted: Mount, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_bytes(b"from outside")
    run("mv", tmp_path / "outside.txt", mounted.bucket / "inside.txt")
    assert not (tmp_path / "outside.txt").exists()
    os.mkdir(mounted.bucket / "dir")
    run("mv", mounted.bucket / "inside.txt", mounted.bucket / "dir")
    assert (mounted.bucket / "dir" / "inside.txt").read_bytes() == b"from outside"
    run("mv", mounted.bucket / "dir", mounted.bucket / "moved")
    assert os.listdir(mounted.bucket) == ["moved"]
    wait_store(mounted.stored / "moved" / "inside.txt", b"from outside")
    wait_idle(mounted)
    assert names(mounted.stored) == ["moved"]


def test_rm_r(mounted: Mount, tmp_path: Path) -> None:
    src = tmp_path / "src-tree"
    files = make_tree(src)
    run("cp", "-r", src, mounted.bucket / "t")
    for rel, data in files.items():
        wait_store(mounted.stored / "t" / rel, data)
    run("rm", "-r", mounted.bucket / "t")
    assert os.listdir(mounted.bucket) == []
    assert names(mounted.stored) == []


def test_rm_r_before_upload(mounter: Mounter, store: Store, tmp_path: Path) -> None:
    m = mounter.mount(store, "--writeback-delay", "1", "--whole-file-delay", "1")
    make_tree(tmp_path / "src-tree")
    run("cp", "-r", tmp_path / "src-tree", m.bucket / "t")
    run("rm", "-r", m.bucket / "t")
    assert os.listdir(m.bucket) == []
    time.sleep(1.5)
    wait_idle(m)
    assert names(store.stored) == []


def test_ls_l_chmod_touch_stat(mounted: Mount) -> None:
    f = mounted.bucket / "file.txt"
    run("touch", f)
    assert f.exists() and os.stat(f).st_size == 0
    write_file(f, b"12345")
    run("chmod", "640", f)
    run("touch", "-m", "-d", "2001-02-03 04:05:06 UTC", f)
    line = run("ls", "-l", "--time-style=+%Y", mounted.bucket).splitlines()[1]
    fields = line.split()
    assert fields[0] == "-rw-r-----"
    assert fields[4] == "5" and fields[5] == "2001" and fields[6] == "file.txt"
    assert run("stat", "-c", "%s %a %F %Y", f).strip() == "5 640 regular file 981173106"
    os.mkdir(mounted.bucket / "d", 0o755)
    assert run("stat", "-c", "%a %F", mounted.bucket / "d").strip() == "755 directory"


def test_dd(mounted: Mount, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = pattern(5 * 1024 * 1024 + 1234, seed=6)
    src.write_bytes(data)
    subprocess.run(["dd", f"if={src}", f"of={mounted.bucket / 'dd.bin'}", "bs=64k",
                    "status=none"], check=True)
    assert (mounted.bucket / "dd.bin").read_bytes() == data
    # conv=notrunc overwrite in the middle, seek in 1 KiB blocks
    subprocess.run(["dd", "if=/dev/zero", f"of={mounted.bucket / 'dd.bin'}", "bs=1k",
                    "seek=1000", "count=3", "conv=notrunc", "status=none"], check=True)
    expected = data[:1000 * 1024] + bytes(3 * 1024) + data[1003 * 1024:]
    out = subprocess.run(["dd", f"if={mounted.bucket / 'dd.bin'}", "bs=1M", "status=none"],
                         check=True, capture_output=True).stdout
    assert out == expected
    wait_store(mounted.stored / "dd.bin", expected)


@pytest.mark.requires("relative_symlinks")
def test_ln_s_program(mounted: Mount) -> None:
    write_file(mounted.bucket / "t", b"target")
    run("ln", "-s", "t", mounted.bucket / "l")
    assert run("readlink", mounted.bucket / "l").strip() == "t"
    assert run("cat", mounted.bucket / "l") == "target"
    assert run("ls", "-l", mounted.bucket / "l").split()[0].startswith("l")


# ---- permissions (default_permissions) ---------------------------------------------------------

@pytest.fixture
def open_mounter() -> Iterator[Mounter]:
    """Mounts below a directory other users can reach (pytest's tmp_path is root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="mountfs-posix-"))
    top.chmod(0o755)
    mounter = Mounter(top)
    try:
        yield mounter
    finally:
        mounter.cleanup()
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def open_store(request: pytest.FixtureRequest, backend: str, open_mounter: Mounter) -> Store:
    return make_store(request, backend, open_mounter.tmp / "store")


def test_other_users_need_allow_other(open_mounter: Mounter, open_store: Store) -> None:
    m = open_mounter.mount(open_store)
    write_file(m.bucket / "f", b"x")
    os.chmod(m.bucket / "f", 0o644)
    assert errno_as_nobody(f"os.stat({str(m.path.parent)!r})") == 0  # the way there is open
    assert errno_as_nobody(f"os.stat({str(m.bucket / 'f')!r})") == errno.EACCES


def test_permissions(open_mounter: Mounter, open_store: Store) -> None:
    mounter, store = open_mounter, open_store
    m = mounter.mount(store, "--allow-other", "--writeback-delay", "0.2")
    pub, priv = m.bucket / "public", m.bucket / "private"
    write_file(pub, b"everyone")
    os.chmod(pub, 0o644)
    write_file(priv, b"secret")
    os.chmod(priv, 0o600)
    proc = as_nobody(f"print(open({str(pub)!r}).read())")
    assert proc.returncode == 0 and proc.stdout == "everyone\n", proc.stderr
    assert errno_as_nobody(f"open({str(pub)!r}, 'ab')") == errno.EACCES
    assert errno_as_nobody(f"open({str(priv)!r}, 'rb')") == errno.EACCES
    assert errno_as_nobody(f"open({str(m.bucket / 'new')!r}, 'wb')") == errno.EACCES
    assert errno_as_nobody(f"os.unlink({str(pub)!r})") == errno.EACCES
    assert errno_as_nobody(f"os.chmod({str(pub)!r}, 0o666)") == errno.EPERM
    assert errno_as_nobody(f"os.truncate({str(pub)!r}, 0)") == errno.EACCES
    assert pub.read_bytes() == b"everyone"
    # a directory nobody owns: nobody can create there, root's files stay root's
    os.mkdir(m.bucket / "shared")
    os.chown(m.bucket / "shared", NOBODY, NOBODY)
    new = m.bucket / "shared" / "mine"
    assert errno_as_nobody(f"open({str(new)!r}, 'wb').write(b'by nobody')") == 0
    st = os.stat(new)
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    wait_store(store.stored / "shared" / "mine", b"by nobody")


# ---- read-only mount ---------------------------------------------------------------------------

def test_read_only(mounter: Mounter, store: Store) -> None:
    (store.stored / "f").write_bytes(b"content")
    (store.stored / "d").mkdir()
    m = mounter.mount(store, "--read-only")
    f, d = m.bucket / "f", m.bucket / "d"
    assert f.read_bytes() == b"content"
    assert sorted(os.listdir(m.bucket)) == ["d", "f"]
    with open(f, "rb") as fh:
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            assert mm[:] == b"content"
    attempts: dict[str, Callable[[], Any]] = {
        "create": lambda: open(m.bucket / "new", "wb"),
        "write": lambda: open(f, "r+b"),
        "append": lambda: open(f, "ab"),
        "trunc": lambda: os.truncate(f, 0),
        "mkdir": lambda: os.mkdir(m.bucket / "nd"),
        "mkbucket": lambda: os.mkdir(m.path / "nb"),
        "rmdir": lambda: os.rmdir(d),
        "unlink": lambda: os.unlink(f),
        "rename": lambda: os.rename(f, m.bucket / "g"),
        "symlink": lambda: os.symlink("f", m.bucket / "l"),
        "chmod": lambda: os.chmod(f, 0o600),
        "chown": lambda: os.chown(f, 1, 1),
        "utime": lambda: os.utime(f, ns=(0, 0)),
        "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
    }
    codes = {name: oserror(fn) for name, fn in attempts.items()}
    assert codes == {name: errno.EROFS for name in attempts}
    assert (store.stored / "f").read_bytes() == b"content"
    assert names(store.stored) == ["d", "f"]
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o644


# ---- a random read/write/truncate/mmap exerciser (fsx-like) ------------------------------

@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_io_against_model(mounter: Mounter, store: Store, seed: int) -> None:
    """Random pwrite/pread/truncate/mmap on one file, with reopens and uploads in between,
    checked step by step against a bytearray; at the end the store and a remount agree."""
    rng = random.Random(seed)
    bs = 4096  # small blocks, so random offsets cross block boundaries often
    m = mounter.mount(store, "--block-size", str(bs), "--writeback-delay", "0.05")
    path = m.bucket / "fsx"
    model = bytearray()
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for step in range(300):
            op = rng.choice(["write", "write", "read", "truncate", "ftruncate", "mmap_read",
                             "mmap_write", "reopen", "settle"])
            where = f"seed {seed} step {step} {op}"
            if op == "write":
                off, n = rng.randrange(0, 6 * bs), rng.randrange(1, 2 * bs)
                data = rng.randbytes(n)
                assert os.pwrite(fd, data, off) == n, where
                if off > len(model):
                    model.extend(bytes(off - len(model)))
                model[off:off + n] = data
            elif op == "read":
                off, n = rng.randrange(0, 7 * bs), rng.randrange(1, 3 * bs)
                assert os.pread(fd, n, off) == bytes(model[off:off + n]), where
            elif op in ("truncate", "ftruncate"):
                size = rng.randrange(0, 6 * bs)
                if op == "truncate":
                    os.truncate(path, size)
                else:
                    os.ftruncate(fd, size)
                model = model[:size] + bytearray(max(0, size - len(model)))
            elif op in ("mmap_read", "mmap_write") and model:
                with mmap.mmap(fd, len(model), mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE) as mm:
                    if op == "mmap_read":
                        assert mm[:] == bytes(model), where
                    else:
                        off = rng.randrange(0, len(model))
                        data = rng.randbytes(min(rng.randrange(1, bs), len(model) - off))
                        mm[off:off + len(data)] = data
                        model[off:off + len(data)] = data
                        mm.flush()
            elif op == "reopen":
                os.close(fd)
                fd = os.open(path, os.O_RDWR)
            elif op == "settle":
                os.close(fd)
                wait_store(store.stored / "fsx", bytes(model))
                fd = os.open(path, os.O_RDWR)
            assert os.fstat(fd).st_size == len(model), where
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(model)
    wait_store(store.stored / "fsx", bytes(model))
    mounter.umount(m)
    m = mounter.remount(m)
    assert (m.bucket / "fsx").read_bytes() == bytes(model)
