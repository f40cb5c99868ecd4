"""The FirecREST driver mounted for real against the local FirecREST service
(tests/servers/firecrest.py), every test on API v2 and on API v1 (the fixture `api`): the three
kinds of SOURCE, editing a user's directory with ordinary tools (cp -r, mv, rm -r, chmod,
symlinks), files over the direct limit both ways (staged through S3), names the service cannot
carry, mistakes that stop a mount in one line (a wrong API version among them), staged
transfers shown in `mountfs status` while tokens expire, and staged copies released. Files are checked in the service's tree
directly.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Mount, Mounter, run_cli
from mountfs.backends.firecrest_backend import FirecrestBackend
from mountfs.backends.firecrest_wire import reply_error
from mountfs.backends.http import HttpPool
from mountfs.backends.oauth import StaticToken
from mountfs.errors import TemporaryFailure, to_errno
from servers.firecrest import FirecrestService, firecrest_service
from servers.s3 import S3Server

SYSTEM = "cluster"
# The service's direct limit: the real v2's (pyfirecrest's constant); v1 says it in MB.
DIRECT_LIMIT = 1024 * 1024
STAGED = 5 * DIRECT_LIMIT + 4321  # over it: staged (v2: in two parts, as S3 wants 5 MiB parts)


@pytest.fixture(scope="module", params=["v2", "v1"])
def api(request: pytest.FixtureRequest) -> str:
    """The API version the service speaks: each test runs on both."""
    return str(request.param)


@pytest.fixture(scope="module")
def service(s3_server: S3Server, api: str) -> Iterator[FirecrestService]:
    with firecrest_service(s3_server.url, api=api, max_ops_size=DIRECT_LIMIT, job_delay=0.05,
                           staging_poll=0.1) as running:
        yield running


@pytest.fixture
def home(service: FirecrestService, request: pytest.FixtureRequest) -> str:
    """A fresh directory (a system path) in the user's home, for one test."""
    path = f"{service.home()}/{request.node.name}"
    host = service.host_path(SYSTEM, path)
    shutil.rmtree(host, ignore_errors=True)
    host.mkdir()
    return path


def mount(mounter: Mounter, service: FirecrestService, source: str, *options: str,
          name: str = "mnt", env: dict[str, str] | None = None) -> Mount:
    """Mount `source` of `service` with its client credentials in the environment."""
    path, cache = mounter.tmp / name, mounter.tmp / f"cache-{name}"
    path.mkdir(exist_ok=True)
    m = Mount(source, path, cache, path, options=list(options))
    mounter.mounts.append(m)
    run_cli("mount", source, str(path), "--cache-dir", str(cache), "-v",
            "--writeback-delay", "0.1", *options,
            env={**service.environment(), "FIRECREST_TOKEN": "", **(env or {})})
    m.pid = m.served_status()["pid"]
    return m


def sync(m: Mount) -> None:
    """Wait until every file closed on the mount is uploaded."""
    deadline = time.monotonic() + 60
    while m.served_status()["queue"]:
        assert time.monotonic() < deadline, m.served_status()
        time.sleep(0.05)


def test_three_kinds_of_source(mounter: Mounter, service: FirecrestService, home: str) -> None:
    service.host_path(SYSTEM, f"{home}/seen").write_text("x")
    systems = mount(mounter, service, "firecrest://", name="systems")
    assert os.listdir(systems.path) == [SYSTEM]
    one = mount(mounter, service, f"firecrest://{SYSTEM}", name="system")
    assert sorted(os.listdir(one.path)) == ["home", "scratch"]  # its file systems
    assert (one.path / home.lstrip("/") / "seen").read_text() == "x"
    here = mount(mounter, service, f"firecrest://{SYSTEM}{home}", name="path")
    assert os.listdir(here.path) == ["seen"]
    # Above the file systems nothing can be made; the systems are fixed.
    assert oserror(os.mkdir, one.path / "elsewhere") in (errno.EACCES, errno.EPERM)
    assert oserror(os.mkdir, systems.path / "new-system") == errno.EPERM


def oserror(fn: object, *args: object) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.errno or 0


def test_edit_a_tree(mounter: Mounter, service: FirecrestService, home: str,
                     tmp_path: Path) -> None:
    local = tmp_path / "tree"
    (local / "sub" / "deep").mkdir(parents=True)
    (local / "a.txt").write_text("alpha")
    (local / "sub" / "b.txt").write_text("beta")
    (local / "sub" / "deep" / "c.bin").write_bytes(os.urandom(5000))
    m = mount(mounter, service, f"firecrest://{SYSTEM}{home}")
    subprocess.run(["cp", "-r", str(local), str(m.path / "tree")], check=True)
    sync(m)
    host = service.host_path(SYSTEM, home)
    assert (host / "tree" / "sub" / "deep" / "c.bin").read_bytes() == \
        (local / "sub" / "deep" / "c.bin").read_bytes()
    os.rename(m.path / "tree" / "a.txt", m.path / "tree" / "renamed.txt")
    os.rename(m.path / "tree" / "sub", m.path / "moved")
    assert sorted(os.listdir(host / "tree")) == ["renamed.txt"]
    assert (host / "moved" / "b.txt").read_text() == "beta"
    os.chmod(m.path / "tree" / "renamed.txt", 0o600)
    assert stat.S_IMODE((host / "tree" / "renamed.txt").stat().st_mode) == 0o600
    # touch: a new empty file, and an existing one (its times taken, not kept: no error)
    subprocess.run(["touch", m.path / "tree" / "empty", m.path / "tree" / "renamed.txt"],
                   check=True)
    sync(m)
    assert (host / "tree" / "empty").read_bytes() == b""
    os.symlink(f"{home}/tree/renamed.txt", m.path / "link")
    assert os.readlink(m.path / "link") == f"{home}/tree/renamed.txt"
    assert os.readlink(host / "link") == f"{home}/tree/renamed.txt"
    # Relative targets the service cannot make: refused, nothing made.
    assert oserror(os.symlink, "tree/renamed.txt", m.path / "rel") == errno.ENOTSUP
    assert not os.path.lexists(host / "rel")
    subprocess.run(["rm", "-r", str(m.path / "moved")], check=True)
    assert sorted(os.listdir(host)) == ["link", "tree"]
    # rmdir of a directory with entries fails and deletes nothing (ops/rm is rm -r).
    assert oserror(os.rmdir, m.path / "tree") == errno.ENOTEMPTY
    assert (host / "tree" / "renamed.txt").exists()


def test_ls_l_shows_the_service_attributes(mounter: Mounter, service: FirecrestService,
                                           home: str) -> None:
    host = service.host_path(SYSTEM, home)
    (host / "x").write_text("12345")
    (host / "x").chmod(0o640)
    (host / "d").mkdir(0o750)
    os.utime(host / "x", (1_600_000_000, 1_600_000_000))
    m = mount(mounter, service, f"firecrest://{SYSTEM}{home}")
    st = os.stat(m.path / "x")
    assert (stat.S_IMODE(st.st_mode), st.st_size, int(st.st_mtime)) == (0o640, 5, 1_600_000_000)
    assert stat.S_IMODE(os.stat(m.path / "d").st_mode) == 0o750
    assert st.st_uid == (host / "x").stat().st_uid


def test_staged_both_ways(mounter: Mounter, service: FirecrestService, home: str) -> None:
    host = service.host_path(SYSTEM, home)
    there = os.urandom(STAGED)
    (host / "from-cluster.bin").write_bytes(there)
    m = mount(mounter, service, f"firecrest://{SYSTEM}{home}")
    assert (m.path / "from-cluster.bin").read_bytes() == there
    here = os.urandom(STAGED)
    (m.path / "to-cluster.bin").write_bytes(here)
    sync(m)
    assert (host / "to-cluster.bin").read_bytes() == here


def test_refused_names(mounter: Mounter, service: FirecrestService, home: str) -> None:
    m = mount(mounter, service, f"firecrest://{SYSTEM}{home}")
    assert oserror(os.mkdir, m.path / "it's") == errno.EINVAL
    if service.api == "v1":  # v1 refuses more than the quote, before running anything
        assert oserror(os.mkdir, m.path / "a(b)") == errno.EINVAL
    try:  # refused at the lookup that open(O_CREAT) makes, or else at the upload
        fd = os.open(m.path / "don't", os.O_CREAT | os.O_WRONLY)
    except OSError as exc:
        assert exc.errno == errno.EINVAL
    else:
        try:
            os.write(fd, b"x")
            assert oserror(os.fsync, fd) == errno.EINVAL  # its upload, refused
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
    # no FIFOs or devices on FirecREST (Features.special_files): refused at once, not an
    # upload failing for ever
    assert oserror(os.mkfifo, m.path / "fifo") == errno.EPERM
    assert os.listdir(service.host_path(SYSTEM, home)) == []  # not "its", not "dont"


def test_permission_denied(mounter: Mounter, service: FirecrestService, home: str) -> None:
    secret = service.host_path(SYSTEM, f"{home}/secret")
    secret.write_text("no")
    secret.chmod(0)  # the service's user (this uid) may not read it, root or not
    m = mount(mounter, service, f"firecrest://{SYSTEM}{home}")
    assert oserror((m.path / "secret").read_bytes) == errno.EACCES


@pytest.mark.parametrize("header, code", [
    ("X-Permission-Denied", errno.EACCES), ("X-Not-Found", errno.ENOENT),
    ("X-Invalid-Path", errno.ENOENT), ("X-Not-A-Directory", errno.ENOTDIR),
    ("X-A-Directory", errno.EISDIR), ("X-Exists", errno.EEXIST), ("X-Timeout", errno.EIO)])
def test_v1_error_headers(header: str, code: int) -> None:
    """Issue 13's table: each v1 error header as the errno a program sees, the service's
    message kept; a timeout is retried."""
    body = b'{"description": "Error on ls operation", "error": "what the command said"}'
    error = reply_error(400, {header: "..."}, body, "ls")
    assert error is not None and to_errno(error) == code
    assert "what the command said" in str(error)
    assert isinstance(error, TemporaryFailure) == (header == "X-Timeout")


def one_line_failure(service: FirecrestService, source: str, tmp_path: Path, *options: str,
                     **env: str) -> str:
    (tmp_path / "mnt").mkdir(exist_ok=True)
    proc = run_cli("mount", source, str(tmp_path / "mnt"), "--cache-dir",
                   str(tmp_path / "cache"), *options, check=False, timeout=60,
                   env={**service.environment(), "FIRECREST_TOKEN": "", **env})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_mistakes_are_one_line(service: FirecrestService, home: str, tmp_path: Path) -> None:
    from servers.s3 import free_port
    wrong_url = f"http://127.0.0.1:{free_port()}"
    assert "firecrest" in one_line_failure(service, "firecrest://", tmp_path,
                                           FIRECREST_URL=wrong_url).lower()
    assert "refused" in one_line_failure(service, "firecrest://", tmp_path,
                                         FIRECREST_CLIENT_SECRET="wrong")
    assert "no system 'nowhere'" in one_line_failure(service, "firecrest://nowhere", tmp_path)
    assert "outside" in one_line_failure(service, f"firecrest://{SYSTEM}/etc", tmp_path)
    assert "No such file" in one_line_failure(service, f"firecrest://{SYSTEM}{home}/missing",
                                              tmp_path)
    other = "v1" if service.api == "v2" else "v2"
    assert f"looks like API {service.api}" in one_line_failure(
        service, "firecrest://", tmp_path, "--firecrest-api-version", other)


def transfers_during(m: Mount, action: Callable[[], object]) -> list[dict[str, Any]]:
    """Every state of the mount's staged transfers that `mountfs status` showed while
    `action` ran (in a thread), and the text `mountfs status` printed for the first."""
    seen: list[dict[str, Any]] = []
    worker = threading.Thread(target=action)
    worker.start()
    while worker.is_alive():
        for transfer in m.served_status()["transfers"]:
            if transfer not in seen:
                seen.append(transfer)
                if len(seen) == 1:  # the command's own words for it
                    assert transfer["what"] in run_cli("status", str(m.path)).stdout
        time.sleep(0.02)
    worker.join()
    return seen


def test_staged_transfers_in_status_with_tokens_expiring(mounter: Mounter, s3_server: S3Server,
                                                         api: str) -> None:
    """A staged upload and a staged read outlive several tokens; `mountfs status` shows
    each, its phase (the job's state on v2, the task's status on v1) and the bytes sent."""
    with firecrest_service(s3_server.url, api=api, max_ops_size=DIRECT_LIMIT,
                           token_lifetime=2, job_delay=0.5, staging_poll=0.5) as short:
        m = mount(mounter, short, f"firecrest://{SYSTEM}{short.home()}")
        data = os.urandom(STAGED)
        (m.path / "big").write_bytes(data)
        up = transfers_during(m, lambda: sync(m))
        path = f"{SYSTEM}:{short.home()}/big"
        assert {t["what"] for t in up} == {f"upload {path}"}
        step = "job" if api == "v2" else "task"
        assert any(t["phase"].startswith(step) and t["done"] == t["size"] == STAGED
                   for t in up), up
        time.sleep(2.5)
        mounter.umount(m)
        m = mount(mounter, short, f"firecrest://{SYSTEM}{short.home()}", name="again")
        read: list[bytes] = []
        down = transfers_during(m, lambda: read.append((m.path / "big").read_bytes()))
        assert read == [data]
        assert {t["what"] for t in down} == {f"download {path}"}
        assert any(t["phase"].startswith(step) for t in down), down
        assert m.served_status()["transfers"] == []
        assert short.host_path(SYSTEM, f"{short.home()}/big").read_bytes() == data
        mounter.umount(m)


async def test_staged_copies_are_released(service: FirecrestService, home: str) -> None:
    """A large file read is staged once; the copy is released when the driver closes: v1
    invalidates it (its URL answers 404 then), v2 leaves it to expire."""
    data = os.urandom(STAGED)
    service.host_path(SYSTEM, f"{home}/big").write_bytes(data)
    http = HttpPool(4)
    backend = FirecrestBackend(service.url, http, StaticToken(service.static_token))
    await backend.check()
    key = f"{home.lstrip('/')}/big"
    assert await backend.read_object(SYSTEM, key, 0, 10) == data[:10]
    assert await backend.read_object(SYSTEM, key, STAGED - 5, 10) == data[-5:]
    [(staged, _, _)] = backend._staged._copies.values()  # one copy for both reads
    await backend.aclose()
    gone = http.request("GET", staged.url).status == 404
    assert gone == (service.api == "v1")
