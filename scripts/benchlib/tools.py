"""The mounted filesystems under test, behind one interface.

`Tool.mounted()` gives a fresh mount (new mount process, new empty cache dir) and unmounts it
afterwards, forcing it (lazy unmount, kill) when a graceful unmount fails. `root` is where the
bucket's keys appear; `pid` is the process serving the mount (for the memory samples).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchlib.procs import (BenchError, is_mounted, lazy_unmount, pid_alive, run, stop_pid,
                            stop_process, wait_until)
from benchlib.store import ACCESS_KEY, BUCKET, SECRET_KEY

MOUNT_TIMEOUT = 60.0


@dataclass
class ToolContext:
    work: Path                  # the run's temporary directory
    url: str                    # the S3 endpoint (s3rver)
    env: dict[str, str]         # environment of every tool process (credentials, no proxy)
    repo: Path                  # the mountfs checkout under test
    timeout: float              # bound on one unmount (which may wait for uploads)
    rclone: str = "rclone"
    memfs_size: int = 0


def checkout_version(repo: Path) -> str:
    done = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"],
                          capture_output=True, text=True)
    return f"mountfs {done.stdout.strip() or '?'}"


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


class Tool(ABC):
    name: str

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx
        self.mountpoint = ctx.work / "mnt" / self.name
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.mounts = 0
        self.cache_dir = ctx.work / "cache" / self.name
        self.log_file = ctx.work / "logs" / f"{self.name}.log"
        # The most its local cache may hold for the mount under way (None: its default).
        self.cache_cap: int | None = None

    @property
    def root(self) -> Path:
        """Where the bucket's keys appear."""
        return self.mountpoint

    @property
    @abstractmethod
    def pid(self) -> int | None: ...

    @abstractmethod
    def _start(self) -> None:
        """Mount on self.mountpoint with self.cache_dir; return once it serves."""

    @abstractmethod
    def _stop(self) -> None:
        """Unmount gracefully and wait until the process has ended."""

    @abstractmethod
    def _kill(self) -> None:
        """End the process, whatever it is doing."""

    def mount(self) -> None:
        self.mounts += 1
        self.cache_dir = self.ctx.work / "cache" / f"{self.name}-{self.mounts}"
        self.cache_dir.mkdir(parents=True)
        self.log_file = self.ctx.work / "logs" / f"{self.name}-{self.mounts}.log"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.force_cleanup()
            raise

    def unmount(self) -> None:
        try:
            self._stop()
        except BaseException:
            self.force_cleanup()
            raise

    def force_cleanup(self) -> None:
        lazy_unmount(self.mountpoint)
        self._kill()
        lazy_unmount(self.mountpoint)
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    @contextmanager
    def mounted(self, cache_cap: int | None = None) -> Iterator[Path]:
        self.cache_cap = cache_cap
        self.mount()
        try:
            yield self.root
        except BaseException:
            try:
                self.unmount()
            except Exception as exc:  # the body's error is the one to report
                print(f"bench: {self.name}: unmount after an error failed: {exc}",
                      file=sys.stderr)
            raise
        self.unmount()
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def env(self) -> dict[str, str]:
        return dict(self.ctx.env)

    def version(self) -> str:
        return ""


class ProcessTool(Tool):
    """A FUSE server run in the foreground as our child; unmounted with fusermount3 -u."""

    def __init__(self, ctx: ToolContext) -> None:
        super().__init__(ctx)
        self.proc: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def command(self) -> list[str]: ...

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _start(self) -> None:
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env(),
                                         start_new_session=True)
        wait_until(self._ready, timeout=MOUNT_TIMEOUT, what=f"{self.name} to mount")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited ({self.proc.returncode}) before mounting: "
                             f"{tail(self.log_file)}")
        return is_mounted(self.mountpoint)

    def _stop(self) -> None:
        for _ in range(40):  # "busy" right after the last close: try again for 10 s
            done = subprocess.run(["fusermount3", "-u", str(self.mountpoint)],
                                  capture_output=True, text=True, timeout=60)
            if done.returncode == 0 or not is_mounted(self.mountpoint):
                break
            time.sleep(0.25)
        else:
            raise BenchError(f"fusermount3 -u {self.mountpoint}: {done.stderr.strip()}")
        if self.proc is not None:
            try:
                self.proc.wait(self.ctx.timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{self.name} still running {self.ctx.timeout:.0f} s after "
                                 "unmount") from None
            self.proc = None

    def _kill(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5)
            self.proc = None


class Mountfs(Tool):
    """mountfs from the checkout under test: `mount s3://`, the bucket is a directory."""
    name = "mountfs"

    def __init__(self, ctx: ToolContext) -> None:
        super().__init__(ctx)
        self._pid: int | None = None

    @property
    def root(self) -> Path:
        return self.mountpoint / BUCKET

    @property
    def pid(self) -> int | None:
        return self._pid

    def env(self) -> dict[str, str]:
        return {**self.ctx.env, "PYTHONPATH": str(self.ctx.repo)}

    def cli(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return run([sys.executable, "-m", "mountfs", *args], timeout=timeout, env=self.env(),
                   cwd=self.ctx.repo)

    def _start(self) -> None:
        self._pid = None
        cap = ["--cache-size", str(self.cache_cap)] if self.cache_cap else []
        try:
            self.cli("mount", "s3://", str(self.mountpoint), "--endpoint-url", self.ctx.url,
                     "--path-style", "--cache-dir", str(self.cache_dir),
                     "--log-file", str(self.log_file), *cap, timeout=MOUNT_TIMEOUT)
        except BenchError as exc:
            raise BenchError(f"{exc}; log: {tail(self.log_file)}") from None
        status = json.loads(self.cli("status", "--json", str(self.mountpoint),
                                     timeout=30).stdout)
        self._pid = int(status["pid"])

    def _stop(self) -> None:
        self.cli("umount", str(self.mountpoint), timeout=self.ctx.timeout)
        if self._pid is not None:
            wait_until(lambda: not pid_alive(self._pid or 0), timeout=30,
                       what="mountfs to exit")
        self._pid = None

    def _kill(self) -> None:
        if self._pid is not None:
            stop_pid(self._pid, grace=5)
            self._pid = None

    def version(self) -> str:
        return checkout_version(self.ctx.repo)


class S3fs(ProcessTool):
    name = "s3fs"

    def command(self) -> list[str]:
        passwd = self.ctx.work / "s3fs.passwd"
        if not passwd.exists():
            passwd.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
            passwd.chmod(0o600)
        return ["s3fs", BUCKET, str(self.mountpoint), "-f",
                "-o", f"url={self.ctx.url},use_path_request_style,passwd_file={passwd}"]

    def version(self) -> str:
        out = subprocess.run(["s3fs", "--version"], capture_output=True, text=True).stdout
        found = re.search(r"V\d[\d.]*", out)
        return f"s3fs {found.group(0) if found else '?'}"


class Rclone(ProcessTool):
    def __init__(self, ctx: ToolContext, cache_mode: str) -> None:
        self.cache_mode = cache_mode
        self.name = f"rclone-{cache_mode}"
        super().__init__(ctx)

    def env(self) -> dict[str, str]:
        config = self.ctx.work / "rclone.conf"
        config.touch()
        return {**self.ctx.env, "RCLONE_CONFIG": str(config),
                "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "Other",
                "RCLONE_CONFIG_S3_ENDPOINT": self.ctx.url,
                "RCLONE_CONFIG_S3_ACCESS_KEY_ID": ACCESS_KEY,
                "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": SECRET_KEY,
                "RCLONE_CONFIG_S3_FORCE_PATH_STYLE": "true"}

    def command(self) -> list[str]:
        cap = ["--vfs-cache-max-size", f"{self.cache_cap // 1024}Ki"] if self.cache_cap else []
        return [self.ctx.rclone, "mount", f"s3:{BUCKET}", str(self.mountpoint),
                "--vfs-cache-mode", self.cache_mode, "--cache-dir", str(self.cache_dir), *cap]

    def version(self) -> str:
        out = subprocess.run([self.ctx.rclone, "version"], capture_output=True,
                             text=True).stdout
        return out.splitlines()[0] if out else "rclone ?"


class MemFs(ProcessTool):
    """The ceiling of (e): a minimal pyfuse3 filesystem serving one file from memory."""
    name = "pyfuse3-mem"

    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).with_name("memfs.py")),
                str(self.mountpoint), str(self.ctx.memfs_size)]

    def version(self) -> str:
        import pyfuse3
        return f"pyfuse3 {pyfuse3.__version__}"


def make_tools(ctx: ToolContext, names: list[str]) -> list[Tool]:
    factories = {"mountfs": lambda: Mountfs(ctx), "s3fs": lambda: S3fs(ctx),
                 "rclone-full": lambda: Rclone(ctx, "full"),
                 "rclone-off": lambda: Rclone(ctx, "off")}
    return [factories[name]() for name in names]


TOOL_NAMES = ["mountfs", "s3fs", "rclone-full", "rclone-off"]
