"""Fixtures that mount mountfs for real: a store directory, a cache, a mount point.

`mounted` yields a running mount of a fresh `local` store with one bucket; every mount made
through a `Mounter` is unmounted and its process killed in teardown, also when a test fails.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mountfs.cli import pid_alive

BUCKET = "bucket"


def run_cli(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mountfs", *args], capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"mountfs {' '.join(args)} failed: {proc.stderr}")
    return proc


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


@dataclass
class Mount:
    source: str
    path: Path
    cache: Path
    store: Path
    pid: int = 0
    options: list[str] = field(default_factory=list)

    @property
    def bucket(self) -> Path:
        return self.path / BUCKET

    def status(self) -> dict:
        import json
        return json.loads(run_cli("status", "--json", str(self.path)).stdout)


class Mounter:
    """Starts mounts and guarantees they are gone at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mounts: list[Mount] = []

    def mount(self, store: Path, *options: str, name: str = "mnt",
              cache: Path | None = None) -> Mount:
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        cache = cache or self.tmp / f"cache-{name}"
        m = Mount(f"local:{store}", path, cache, store, options=list(options))
        run_cli("mount", m.source, str(path), "--cache-dir", str(cache), "-v", *options)
        self.mounts.append(m)
        m.pid = m.status()["pid"]
        return m

    def remount(self, m: Mount) -> Mount:
        return self.mount(m.store, *m.options, name=m.path.name, cache=m.cache)

    def umount(self, m: Mount) -> None:
        run_cli("umount", str(m.path), timeout=120)
        assert not is_mounted(m.path)
        m.pid = 0  # gone: its number may soon belong to another process

    def kill(self, m: Mount) -> None:
        """kill -9 the mount process, then clear the dead mount point."""
        os.kill(m.pid, signal.SIGKILL)
        wait_gone(m.pid)
        m.pid = 0
        subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)

    def cleanup(self) -> None:
        for m in self.mounts:
            if is_mounted(m.path):
                subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
            if m.pid and pid_alive(m.pid) and serves(m.pid, m.path):
                os.kill(m.pid, signal.SIGKILL)
                wait_gone(m.pid)


def serves(pid: int, path: Path) -> bool:
    """Whether `pid` is still the mount process of `path` (pids are reused)."""
    try:
        return str(path).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still running")
        time.sleep(0.02)


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    m = Mounter(tmp_path)
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    s = tmp_path / "store"
    (s / BUCKET).mkdir(parents=True)
    return s


@pytest.fixture
def mounted(mounter: Mounter, store: Path) -> Mount:
    return mounter.mount(store, "--writeback-delay", "0.2")
