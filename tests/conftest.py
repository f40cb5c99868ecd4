"""Fixtures that mount mountfs for real: a store, a cache, a mount point.

`store` is a fresh store (a `kits.Store`) holding the bucket tests work in (`store.bucket`,
seen directly as `store.stored`), `mounted` a running mount of it (`mounted.bucket` is that
bucket on the mount); every mount made through a `Mounter` is unmounted and its process killed
in teardown, also when a test fails.

The store's driver is the fixture `backend` (its name; `kit` is its test kit, tests/kits/):
`local` unless the test is marked `@pytest.mark.backends("local", "s3")`, which runs it once
per driver named (ids `[local]`, `[s3]`, `[dcss]`); `backends(*BACKENDS)` names every driver
whose kit's store can be mounted and looked at from outside (`DRIVERS`: every kit, for the
contract suite). `@pytest.mark.requires("buckets_editable", ...)` skips the test on a driver
whose `Features` lack one of those (`keeps=("xattr", ...)`: attributes the driver must keep);
`@pytest.mark.backend_bug("s3", reason=...)` makes that
one case a strict xfail. Servers (moto_server, the DCSS service) are shared by the session (by
each xdist worker) and reset for every test. Tests look at a store directly through
`stores.StorePath`, the same for every driver.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kits import KITS, Kit, Store, environment
from kits import firecrest as firecrest_kit
from kits.metadisk import MetadiskService, start_service
from mountfs import cli
from mountfs.processes import pid_alive
from mountfs.status import STATUS_XATTR
from servers.dcss import DcssService, make_keypair
from servers.firecrest import FirecrestService, firecrest_service
from servers.s3 import S3Server, running
from servers.storj import StorjService
from stores import StorePath

DRIVERS = tuple(KITS)  # every driver with a test kit: the contract suite runs on each
BACKENDS = tuple(name for name, kit in KITS.items() if kit.mountable)  # and the mounted suites


def run_cli(*args: str, check: bool = True, timeout: float = 60,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mountfs", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode:
        raise AssertionError(f"mountfs {' '.join(args)} failed: {proc.stderr}")
    return proc


def cli_here(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> None:
    """`mountfs ARGS` run by `cli.main` in this process, not by a `python -m mountfs` of its
    own: what it does is the same (a mount starts the same mount process), and the CPU a CLI
    process spends starting (the interpreter, the parser) is saved on each of the suite's
    mounts and unmounts. `env` is set around the call; a failure
    raises AssertionError with the command's error line, as `run_cli` does, and so does a
    command not done within `timeout` seconds (the call is then abandoned where it waits)."""
    said, outcome = io.StringIO(), []

    def run() -> None:
        try:
            with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
                outcome.append(cli.main(list(args)))
        except SystemExit as exc:  # argparse refusing the arguments
            outcome.append(exc.code)

    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        call = threading.Thread(target=run, daemon=True)
        call.start()
        call.join(timeout)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if not outcome:
        raise AssertionError(f"mountfs {' '.join(args)}: not done after {timeout} s")
    if outcome[0]:
        raise AssertionError(f"mountfs {' '.join(args)} failed: {said.getvalue()}")


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


@dataclass
class Mount:
    source: str
    path: Path
    cache: Path
    store: Store | Path  # a Path where a test mounts by hand and keeps its own view
    pid: int = 0
    options: list[str] = field(default_factory=list)

    @property
    def bucket(self) -> Path:
        """The bucket tests work in, on the mount."""
        assert isinstance(self.store, Store), "mounted by hand: which bucket is the test's"
        return self.path / self.store.bucket

    @property
    def stored(self) -> StorePath:
        """The same bucket seen in the store."""
        assert isinstance(self.store, Store), "mounted by hand: no kit's store"
        return self.store.stored

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

    def mount(self, store: Store, *options: str, name: str = "mnt",
              cache: Path | None = None, env: Mapping[str, str] | None = None) -> Mount:
        """Mount `store` with `options`; `env` goes over the store's own environment."""
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        cache = cache or self.tmp / f"cache-{name}"
        m = Mount(store.source, path, cache, store, options=list(options))
        cli_here("mount", store.source, str(path), "--cache-dir", str(cache), "-v",
                 *store.options, *options, env={**store.env, **(env or {})})
        self.mounts.append(m)
        m.pid = m.served_status()["pid"]
        return m

    def remount(self, m: Mount) -> Mount:
        assert isinstance(m.store, Store)
        return self.mount(m.store, *m.options, name=m.path.name, cache=m.cache)

    def umount(self, m: Mount) -> None:
        cli_here("umount", str(m.path), timeout=120)
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
    config.addinivalue_line("markers", "backends(*names): run once per driver named")
    config.addinivalue_line("markers", "requires(*features, keeps=()): skip on a driver whose "
                                       "Features lack one of these, or keep not those attributes")
    config.addinivalue_line("markers", "backend_bug(name, reason): a strict xfail on that "
                                       "driver, for a known bug of mountfs")
    # A shell starts a background job (`cmd &`) with SIGINT ignored, and an ignored signal stays
    # ignored through exec: the programs the tests start would then never see the Ctrl-C some
    # tests send them. Handled here, it is back to the default in every child.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is None or "backend" not in metafunc.fixturenames:
        return
    bugs = {m.args[0]: m.kwargs["reason"] for m in metafunc.definition.iter_markers("backend_bug")}
    metafunc.parametrize("backend", [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=bugs[name]))
        if name in bugs else name for name in marker.args], indirect=True)


@pytest.fixture(scope="session", autouse=True)
def own_xdg_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The default cache dirs and drivers' state dirs of this test process (each xdist worker
    has its own) in its temporary directory: mounts without --cache-dir never share one with
    another worker or the user's, and the tests leave nothing in $HOME."""
    base = tmp_path_factory.mktemp("xdg")
    with environment({"XDG_CACHE_HOME": str(base / "cache"),
                      "XDG_STATE_HOME": str(base / "state")}):
        yield


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the driver under test."""
    return getattr(request, "param", "local")


@pytest.fixture
def kit(backend: str) -> Kit:
    """The test kit of the driver under test."""
    return KITS[backend]


def make_store(request: pytest.FixtureRequest, backend: str, directory: Path) -> Store:
    """A fresh store of driver `backend` with its kit's bucket; `directory` is for what the
    store keeps on disk. Skips the test where the driver lacks a feature it `requires`."""
    store = KITS[backend].make_store(request, directory)
    for marker in request.node.iter_markers("requires"):
        for feature in marker.args:
            if not getattr(store.features, feature):
                pytest.skip(f"the {backend} driver declares no {feature}")
        for attribute in marker.kwargs.get("keeps", ()):
            if not store.features.keeps(attribute):
                pytest.skip(f"the {backend} driver keeps no {attribute}")
    return store


@pytest.fixture
def store(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Store:
    return make_store(request, backend, tmp_path / "store")


@pytest.fixture
def mounted(mounter: Mounter, store: Store) -> Mount:
    return mounter.mount(store, "--writeback-delay", "0.2")


# --- DCSS: the local Duckietown Cloud Storage Service (tests/servers/dcss.py) -------------------


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


def kit_service(s3_server: S3Server, api: str) -> Iterator[FirecrestService]:
    """The FirecREST service of the firecrest kits (tests/kits/firecrest.py) on `api`, staging
    through the session's moto_server; its jobs and tasks take a few hundredths of a second."""
    with firecrest_service(s3_server.url, api=api, systems=firecrest_kit.SYSTEMS,
                           max_ops_size=firecrest_kit.DIRECT_LIMIT, job_delay=0.02,
                           staging_poll=0.05) as service:
        yield service


@pytest.fixture(scope="session")
def firecrest_v2_service(s3_server: S3Server) -> Iterator[FirecrestService]:
    yield from kit_service(s3_server, "v2")


@pytest.fixture(scope="session")
def firecrest_v1_service(s3_server: S3Server) -> Iterator[FirecrestService]:
    yield from kit_service(s3_server, "v1")


@pytest.fixture
def dcss(dcss_service: DcssService) -> Iterator[DcssService]:
    """The session's DCSS service with its three buckets empty (and present again: other
    tests reset the moto_server)."""
    dcss_service.empty()
    yield dcss_service


# --- Metadisk: the local bridge and its storage nodes (tests/servers/metadisk.py) ---------------


@pytest.fixture(scope="session")
def metadisk_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetadiskService]:
    """The bridge with the kit's account activated and its key (`key_file`) registered."""
    service = start_service(tmp_path_factory.mktemp("metadisk"))
    try:
        yield service
    finally:
        service.server.stop()


# --- Storj: the local auth service and gateway (tests/servers/storj.py) ------------------------


@pytest.fixture(scope="session")
def storj_service(s3_server: S3Server) -> Iterator[StorjService]:
    """The auth service and the gateway over the session's moto_server."""
    with running(StorjService(s3_server.url)) as service:
        yield service
