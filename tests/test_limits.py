"""Resource limits: a full cache disk, the cache cap, many threads at once, memory, big listings.

- A cache dir on a 32 MiB tmpfs, written past what fits: writes wait for uploads or fail with
  ENOSPC, and every file that closed without an error reaches the store intact.
- `--cache-size` below the disk: the cache dir, sampled while writing, stays within the cap
  plus one block per upload worker.
- 16 threads reading and writing their own files and one shared file: done in bounded time,
  each file's bytes what a model of the writes says.
- The mount process's RSS while 512 MiB (CI) or 4 GiB (`-m slow`, scripts/soak) go through,
  and while a directory of 20,000 objects is listed.
"""
from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import BUCKET, Mount, Mounter
from stores import AnyStore
from test_posix import pattern, wait_idle

pytestmark = pytest.mark.mounted

MiB = 1024 * 1024
WORKERS = 8  # mountfs's upload workers (MountConfig.workers)
BLOCK = MiB  # mountfs's block size (cache.blocks.DEFAULT_BLOCK_SIZE)
RSS_LIMIT = 300 * MiB


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 32 MiB tmpfs to hold a cache dir, unmounted afterwards whatever happens."""
    top = Path(tempfile.mkdtemp(prefix="mountfs-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(top)],
                   check=True)
    try:
        yield top
    finally:
        subprocess.run(["umount", "-l", str(top)], check=False)
        top.rmdir()


def disk_used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def rss(pid: int) -> int:
    """Resident set size of process `pid` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Sampler:
    """Calls `probe` every `interval` seconds in a thread while in the `with`; keeps the peak."""

    def __init__(self, probe: Callable[[], int], interval: float = 0.02) -> None:
        self.probe, self.interval = probe, interval
        self.peak, self.samples = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.probe())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self.peak = self.probe()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.probe())


def write_in_chunks(path: Path, data: bytes, chunk: int = MiB) -> None:
    with open(path, "wb") as f:
        for i in range(0, len(data), chunk):
            f.write(data[i:i + chunk])


# ---- a full cache disk and the cap ---------------------------------------------------------

def test_cache_disk_full(mounter: Mounter, store: AnyStore, small_disk: Path) -> None:
    """A mount whose cache (cap 10G, the default) is on a 32 MiB tmpfs. A 40 MiB file, which
    cannot be uploaded before it is closed, fails with ENOSPC; then 12 files of 6 MiB each
    (72 MiB) all close without error, as uploads make room, and reach the store intact; a
    remount on the same cache dir loads its journal and reads them back."""
    m = mounter.mount(store, "--writeback-delay", "0", cache=small_disk / "cache")
    big = pattern(40 * MiB, seed=99)
    with pytest.raises(OSError) as exc:
        write_in_chunks(m.bucket / "big", big)
    assert exc.value.errno == errno.ENOSPC
    files = {f"f{i}": pattern(6 * MiB, seed=i) for i in range(12)}
    for name, data in files.items():
        write_in_chunks(m.bucket / name, data)
    wait_idle(m, timeout=60)
    for name, data in files.items():
        assert (store / BUCKET / name).read_bytes() == data, name
    # what of the big file was written before the disk filled was closed, so uploaded
    kept = (store / BUCKET / "big").read_bytes()
    assert 0 < len(kept) < len(big) and big.startswith(kept)
    mounter.umount(m)
    m = mounter.remount(m)
    for name, data in files.items():
        assert (m.bucket / name).read_bytes() == data, name


def test_cache_cap_holds(mounter: Mounter, store: AnyStore, small_disk: Path) -> None:
    """`--cache-size 8M` on the 32 MiB tmpfs: 48 MiB written as 12 files, the disk's use
    sampled every 20 ms stays within the cap, one block per upload worker, and 1 MiB for the
    journal and the log."""
    cap = 8 * MiB
    base = disk_used(small_disk)
    m = mounter.mount(store, "--cache-size", "8M", "--writeback-delay", "0",
                      cache=small_disk / "cache")
    files = {f"f{i}": pattern(4 * MiB, seed=i) for i in range(12)}
    with Sampler(lambda: disk_used(small_disk) - base) as usage:
        for name, data in files.items():
            write_in_chunks(m.bucket / name, data)
        wait_idle(m, timeout=60)
    for name, data in files.items():
        assert (store / BUCKET / name).read_bytes() == data, name
    print(f"\ncache cap {cap // MiB} MiB: peak use {usage.peak / MiB:.1f} MiB "
          f"({usage.samples} samples)")
    assert usage.peak <= cap + WORKERS * BLOCK + MiB, usage.peak
    assert usage.peak > cap // 2, "the cache was never filled: the test says nothing"
