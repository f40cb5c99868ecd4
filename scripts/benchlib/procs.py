"""Processes, mounts and timing: run a command with a deadline, time it, wait for a condition,
drop the page cache, unmount lazily, stop a process for sure."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class BenchError(RuntimeError):
    """A failed measurement: recorded as "error" in its cell, the run continues."""


def run(cmd: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, capture its output, raise BenchError on a timeout or a non-zero exit."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              env=dict(env) if env is not None else None, cwd=cwd,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{cmd[0]} timed out after {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise BenchError(f"{' '.join(cmd[:2])}... exit {done.returncode}: {' | '.join(tail)}")
    return done


def timed(cmd: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall-clock seconds of `cmd` (fork to exit), and its result."""
    start = time.perf_counter()
    done = run(cmd, timeout=timeout, env=env, cwd=cwd)
    return time.perf_counter() - start, done


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05,
               what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def mounted_paths() -> set[str]:
    """Mount points from /proc/self/mountinfo (a dead FUSE mount is still listed there)."""
    paths = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            raw = line.split()[4]
            paths.add(raw.encode().decode("unicode_escape"))
    return paths


def is_mounted(path: Path) -> bool:
    return str(path) in mounted_paths()


def lazy_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=30)


def pid_alive(pid: int) -> bool:
    # Imported late: the bench starts on machines where it still has to install mountfs.
    from mountfs.processes import pid_alive as alive

    return alive(pid)


def stop_pid(pid: int, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not pid_alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


_libc = ctypes.CDLL(None, use_errno=True)


def page_cache_drops() -> int:
    """How often the page cache was dropped since boot, by anyone (/proc/vmstat; 0 where the
    kernel does not say)."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("drop_pagecache "):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def drop_caches(sync_dir: Path) -> bool:
    """Write back the file system holding `sync_dir` (syncfs: not the other mounts, which a
    plain sync would wait on) and drop the page cache. False when not allowed (not root)."""
    fd = os.open(sync_dir, os.O_RDONLY)
    try:
        _libc.syncfs(fd)
    finally:
        os.close(fd)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True
