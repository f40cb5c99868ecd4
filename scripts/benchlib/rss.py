"""Peaks of a mount: the memory of its process (VmRSS sampled every 50 ms in a thread, and
VmHWM, the kernel's own high-water mark, read at each sample, kept across several processes,
i.e. mounts), and the disk its cache directory takes (`PeakDisk`)."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

MiB = 1024 * 1024


def read_status_kib(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    values[name] = int(value.split()[0])
    except OSError:
        pass
    return values


@contextmanager
def sampled(sample: Callable[[], None], interval: float, name: str) -> Iterator[None]:
    """Call `sample` every `interval` seconds in a thread until the block ends, and once
    more at its end."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            sample()
            stop.wait(interval)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sample()


class PeakMemory:
    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.rss_kib = 0
        self.hwm_kib = 0

    def sample(self, pid: int) -> None:
        values = read_status_kib(pid)
        self.rss_kib = max(self.rss_kib, values.get("VmRSS", 0))
        self.hwm_kib = max(self.hwm_kib, values.get("VmHWM", 0))

    @contextmanager
    def watch(self, pid: int | None) -> Iterator[None]:
        """Sample `pid` until the block ends (nothing when the pid is unknown)."""
        if pid is None:
            yield
            return
        with sampled(lambda: self.sample(pid), self.interval, f"rss-{pid}"):
            yield

    @property
    def rss_mib(self) -> float:
        return self.rss_kib * 1024 / MiB

    @property
    def hwm_mib(self) -> float:
        return self.hwm_kib * 1024 / MiB


def disk_bytes(root: str) -> int:
    """Bytes the files below `root` take on disk (allocated blocks: sparse files count what
    they hold); files vanishing meanwhile are skipped."""
    total = 0
    for where, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(where, name)).st_blocks * 512
            except OSError:
                pass
    return total


class PeakDisk:
    """The most disk a directory took, sampled every `interval` seconds in a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_bytes = 0

    @contextmanager
    def watch(self, root: str) -> Iterator[None]:
        """Sample the disk below `root` until the block ends."""
        def sample() -> None:
            self.peak_bytes = max(self.peak_bytes, disk_bytes(root))

        with sampled(sample, self.interval, "disk-peak"):
            yield

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MiB
