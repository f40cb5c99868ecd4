"""Fixtures that mount mountfs for real: a store, a cache, a mount point.

`store` is a fresh store with one bucket, `mounted` a running mount of it; every mount made
through a `Mounter` is unmounted and its process killed in teardown, also when a test fails.

The store's backend is the fixture `backend`: `local` (a directory) unless the test is marked
`@pytest.mark.backends("local", "s3")`, which runs it once per backend named (ids `[local]`,
`[s3]`); the `s3` store is a moto_server process shared by the session and reset for every
test. `@pytest.mark.backend_bug("s3", reason=...)` makes that one case a strict xfail.
Tests look at a store directly through `stores.StorePath`, the same for both backends.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mountfs.processes import pid_alive
from mountfs.status import STATUS_XATTR
from servers.s3 import S3Server
from stores import AnyStore, empty_s3_store, mount_args

BUCKET = "bucket"
BACKENDS = ("local", "s3")


def run_cli(*args: str, check: bool = True, timeout: float = 60,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mountfs", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
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
    store: AnyStore
    pid: int = 0
    options: list[str] = field(default_factory=list)

    @property
    def bucket(self) -> Path:
        return self.path / BUCKET

    def status(self) -> dict:
        """What `mountfs status --json` prints."""
        return json.loads(run_cli("status", "--json", str(self.path)).stdout)

    def served_status(self) -> dict:
        """The same document read straight from the root's xattr: no process to start."""
        return json.loads(os.getxattr(self.path, STATUS_XATTR))


class Mounter:
    """Starts mounts and guarantees they are gone at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mounts: list[Mount] = []

    def mount(self, store: AnyStore, *options: str, name: str = "mnt",
              cache: Path | None = None) -> Mount:
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        cache = cache or self.tmp / f"cache-{name}"
        source, backend_options, env = mount_args(store)
        m = Mount(source, path, cache, store, options=list(options))
        run_cli("mount", source, str(path), "--cache-dir", str(cache), "-v", *backend_options,
                *options, env=env)
        self.mounts.append(m)
        m.pid = m.served_status()["pid"]
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): run once per backend named")
    config.addinivalue_line("markers", "backend_bug(name, reason): a strict xfail on that "
                                       "backend, for a known bug of mountfs")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is None or "backend" not in metafunc.fixturenames:
        return
    bugs = {m.args[0]: m.kwargs["reason"] for m in metafunc.definition.iter_markers("backend_bug")}
    metafunc.parametrize("backend", [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=bugs[name]))
        if name in bugs else name for name in marker.args], indirect=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "local")


def make_store(request: pytest.FixtureRequest, backend: str, directory: Path) -> AnyStore:
    """A fresh store with the one bucket BUCKET; `directory` holds a `local` store."""
    if backend == "s3":
        return empty_s3_store(request.getfixturevalue("s3_server"), BUCKET)
    assert backend == "local", backend
    (directory / BUCKET).mkdir(parents=True)
    return directory


@pytest.fixture
def store(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> AnyStore:
    return make_store(request, backend, tmp_path / "store")


@pytest.fixture
def mounted(mounter: Mounter, store: AnyStore) -> Mount:
    return mounter.mount(store, "--writeback-delay", "0.2")


# --- DCSS: the local Duckietown Cloud Storage Service (tests/servers/dcss.py) -------------------

from servers.dcss import DcssService, make_keypair  # noqa: E402  (section appended for DCSS)


@pytest.fixture(scope="session")
def dcss_service(s3_server: S3Server) -> Iterator[DcssService]:
    """The DCSS service (authorize API and S3 front on one port) over the session's moto_server,
    with a test key pair: uid 1 writes public and uses private; every uid owns `<uid>/` in user.
    `signing_key`, `public_key_path` (the PEM), `token(uid)`, `token_file(dir, uid)`, `s3`."""
    signing_key, pem = make_keypair()
    service = DcssService(s3_server.url, pem, public_writers={1}, private_users={1},
                          signing_key=signing_key).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def dcss(dcss_service: DcssService) -> Iterator[DcssService]:
    """The session's DCSS service with its three buckets empty (and present again: other
    tests reset the moto_server)."""
    dcss_service.empty()
    yield dcss_service
