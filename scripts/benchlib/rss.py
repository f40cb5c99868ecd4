"""Peak memory of a mount process: VmRSS sampled every 50 ms in a thread, and VmHWM (the
kernel's own high-water mark) read at each sample, kept across several processes (mounts)."""
from __future__ import annotations

import threading
from collections.abc import Iterator
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
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                self.sample(pid)
                stop.wait(self.interval)

        thread = threading.Thread(target=loop, name=f"rss-{pid}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.sample(pid)

    @property
    def rss_mib(self) -> float:
        return self.rss_kib * 1024 / MiB

    @property
    def hwm_mib(self) -> float:
        return self.hwm_kib * 1024 / MiB
