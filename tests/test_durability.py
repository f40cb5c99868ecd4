"""Nothing a program was told is written gets lost: kill -9, remount, unmount, copy a real tree.

Each test runs once per driver (`[local]`, `[s3]`, `[dcss]`) and checks the store itself
(conftest.py)."""
from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import BACKENDS, Mount, Mounter, is_mounted
from kits import Store
from stores import StorePath, tree
from test_posix import wait_store

pytestmark = pytest.mark.backends(*BACKENDS)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def payload(i: int) -> bytes:
    return (f"file {i} ".encode() * (1 + 997 * i))[: 3000 * i + 7]


def test_kill_after_close_loses_no_file(mounter: Mounter, store: Store) -> None:
    # A long delay keeps every upload queued when the process dies.
    m = mounter.mount(store, "--writeback-delay", "60", "--whole-file-delay", "60",
                      "--block-size", "4096")
    (m.bucket / "d").mkdir()
    for i in range(20):
        (m.bucket / "d" / f"f{i}").write_bytes(payload(i))
    assert not (store.stored / "d" / "f5").exists(), "uploaded before the kill: test is void"
    mounter.kill(m)
    assert not is_mounted(m.path)

    m = mounter.remount(m)
    mounter.umount(m)  # drains the replayed queue
    for i in range(20):
        assert (store.stored / "d" / f"f{i}").read_bytes() == payload(i)
    assert not store.leftovers(), "a partial upload was left behind"


def test_kill_while_a_file_is_open_keeps_what_was_written(mounter: Mounter,
                                                          store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "60", "--whole-file-delay", "60")
    f = open(m.bucket / "open.bin", "wb")
    f.write(b"x" * 10000)
    f.flush()
    mounter.kill(m)
    try:
        f.close()
    except OSError:
        pass  # the mount is gone; the kernel may refuse the final flush
    m = mounter.remount(m)
    mounter.umount(m)
    assert (store.stored / "open.bin").read_bytes() == b"x" * 10000


def test_fsync_uploads_before_returning(mounted: Mount) -> None:
    path = mounted.bucket / "synced"
    with open(path, "wb") as f:
        f.write(b"durable")
        f.flush()
        os.fsync(f.fileno())
        assert (mounted.stored / "synced").read_bytes() == b"durable"


def test_sigterm_drains_the_queue_then_unmounts(mounter: Mounter, store: Store) -> None:
    # A delay longer than wait_for's timeout: the stopping mount uploads without waiting it out.
    m = mounter.mount(store, "--writeback-delay", "300", "--whole-file-delay", "300")
    (m.bucket / "late").write_bytes(b"queued at SIGTERM")
    os.kill(m.pid, 15)
    wait_for(lambda: not is_mounted(m.path))
    assert (store.stored / "late").read_bytes() == b"queued at SIGTERM"


def test_fusermount_unmount_still_uploads(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "300", "--whole-file-delay", "300")
    (m.bucket / "late").write_bytes(b"queued at fusermount -u")
    subprocess.run(["fusermount3", "-u", str(m.path)], check=True)
    # Until it holds the data, not merely exists: FirecREST's upload writes the file in place,
    # so it can be seen empty while the upload is under way.
    wait_store(store.stored / "late", b"queued at fusermount -u", timeout=30)


def stdlib_sample(dest: Path) -> Path:
    """A few packages of the Python standard library: real names, sizes and nesting (~65
    files, flat and two levels deep; asyncio, 33 more files in one flat directory, added
    nothing but time)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for name in ("json", "email", "importlib", "http"):
        shutil.copytree(root / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "os.py", dest / "os.py")
    return dest


def assert_same_tree(a: Path, b: Path) -> None:
    result = subprocess.run(["diff", "-r", str(a), str(b)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[:2000]
    cmp = filecmp.dircmp(a, b)
    assert cmp.left_list == cmp.right_list


def assert_store_holds_tree(src: Path, stored: StorePath) -> None:
    """The store has every directory and file of `src`, byte for byte, and nothing else."""
    entries = tree(src)
    assert tree(stored) == entries
    for rel in sorted(entries):
        if not rel.endswith("/"):
            assert (stored / rel).read_bytes() == (src / rel).read_bytes(), rel


def test_copy_tree_unmount_remount_diff_clean(mounter: Mounter, store: Store,
                                              tmp_path: Path) -> None:
    src = stdlib_sample(tmp_path / "src")
    m = mounter.mount(store, "--writeback-delay", "0.2")
    subprocess.run(["cp", "-r", str(src), str(m.bucket / "lib")], check=True)
    assert_same_tree(src, m.bucket / "lib")
    mounter.umount(m)
    assert_store_holds_tree(src, store.stored / "lib")
    m = mounter.remount(m)
    assert_same_tree(src, m.bucket / "lib")
    # A fresh cache reads everything from the store again.
    mounter.umount(m)
    m = mounter.mount(store, name="fresh")
    assert_same_tree(src, m.bucket / "lib")
