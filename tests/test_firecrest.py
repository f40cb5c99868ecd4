"""The FirecREST driver (API v2) mounted for real against the local FirecREST service
(tests/servers/firecrest.py): the three kinds of SOURCE, editing a user's directory with
ordinary tools (cp -r, mv, rm -r, chmod, symlinks), files over the direct limit both ways
(staged through S3), names the service cannot carry, mistakes that stop a mount in one line,
and tokens expiring while the mount works. Files are checked in the service's tree directly.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Mount, Mounter, run_cli
from servers.firecrest import FirecrestService, firecrest_service
from servers.s3 import S3Server

SYSTEM = "cluster"
DIRECT_LIMIT = 1024 * 1024  # the service's, as the real v2's (pyfirecrest's constant)
STAGED = 5 * DIRECT_LIMIT + 4321  # over it: staged, in two parts (S3 wants 5 MiB parts)


@pytest.fixture(scope="module")
def service(s3_server: S3Server) -> Iterator[FirecrestService]:
    with firecrest_service(s3_server.url, max_ops_size=DIRECT_LIMIT, job_delay=0.05,
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


def one_line_failure(service: FirecrestService, source: str, tmp_path: Path,
                     **env: str) -> str:
    (tmp_path / "mnt").mkdir(exist_ok=True)
    proc = run_cli("mount", source, str(tmp_path / "mnt"), "--cache-dir",
                   str(tmp_path / "cache"), check=False, timeout=60,
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


def test_tokens_expire_while_mounted(mounter: Mounter, s3_server: S3Server,
                                     tmp_path: Path) -> None:
    with firecrest_service(s3_server.url, max_ops_size=DIRECT_LIMIT, token_lifetime=2,
                           job_delay=0.5, staging_poll=0.5) as short:
        m = mount(mounter, short, f"firecrest://{SYSTEM}{short.home()}")
        data = os.urandom(STAGED)
        (m.path / "big").write_bytes(data)  # its staged upload outlives several tokens
        sync(m)
        time.sleep(2.5)
        assert (m.path / "big").read_bytes() == data
        assert short.host_path(SYSTEM, f"{short.home()}/big").read_bytes() == data
        mounter.umount(m)
