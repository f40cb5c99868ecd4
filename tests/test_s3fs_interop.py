"""mountfs and s3fs (Debian's package) share a bucket: each reads what the other wrote,
attributes included (mode, mtime, symlinks, directory markers)."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import Mounter, is_mounted
from servers.s3 import S3Server
from test_s3 import bucket_name, client, mount_s3, s3_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(shutil.which("s3fs") is None, reason="s3fs is not installed")


@contextmanager
def s3fs_mounted(server: S3Server, bucket: str, where: Path) -> Iterator[Path]:
    """s3fs on `bucket`, its caches off so it sees what mountfs wrote at once."""
    password = where / "s3fs-passwd"
    password.write_text(f"{os.environ['AWS_ACCESS_KEY_ID']}:{os.environ['AWS_SECRET_ACCESS_KEY']}")
    password.chmod(0o600)
    path = where / "s3fs"
    path.mkdir()
    subprocess.run(["s3fs", bucket, str(path), "-o",
                    f"url={server.url},use_path_request_style,passwd_file={password},"
                    "stat_cache_expire=0"], check=True)
    try:
        yield path
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
        assert not is_mounted(path)


@pytest.fixture
def s3fs_mount(s3_env: S3Server, bucket_name: str, tmp_path: Path) -> Iterator[Path]:
    with s3fs_mounted(s3_env, bucket_name, tmp_path) as path:
        yield path


def test_mountfs_reads_what_s3fs_wrote(mounter: Mounter, s3_env: S3Server, bucket_name: str,
                                       s3fs_mount: Path) -> None:
    (s3fs_mount / "sdir").mkdir(mode=0o750)
    (s3fs_mount / "sdir" / "f.txt").write_bytes(b"from s3fs")
    os.chmod(s3fs_mount / "sdir" / "f.txt", 0o600)
    os.utime(s3fs_mount / "sdir" / "f.txt", (1577934245, 1577934245))
    os.symlink("f.txt", s3fs_mount / "sdir" / "lnk")
    subprocess.run(["sync"], check=True)

    m = mount_s3(mounter, s3_env)
    d = m.path / bucket_name / "sdir"
    st = os.stat(d / "f.txt")
    assert (d / "f.txt").read_bytes() == b"from s3fs"
    assert st.st_mode == 0o100600 and st.st_mtime_ns == 1577934245 * 10**9
    assert os.readlink(d / "lnk") == "f.txt"
    assert (d / "lnk").read_bytes() == b"from s3fs"
    assert os.stat(d).st_mode == 0o40750


def test_s3fs_reads_what_mountfs_wrote(mounter: Mounter, s3_env: S3Server, bucket_name: str,
                                       tmp_path: Path) -> None:
    m = mount_s3(mounter, s3_env, "--writeback-delay", "0.1")
    d = m.path / bucket_name / "mdir"
    d.mkdir(mode=0o700)
    (d / "g.txt").write_bytes(b"from mountfs")
    os.chmod(d / "g.txt", 0o640)
    os.utime(d / "g.txt", (1620284889, 1620284889))
    os.symlink("g.txt", d / "lk")
    mounter.umount(m)

    with s3fs_mounted(s3_env, bucket_name, tmp_path) as path:
        st = os.stat(path / "mdir" / "g.txt")
        assert (path / "mdir" / "g.txt").read_bytes() == b"from mountfs"
        assert st.st_mode == 0o100640 and int(st.st_mtime) == 1620284889
        assert os.readlink(path / "mdir" / "lk") == "g.txt"
        assert os.stat(path / "mdir").st_mode & 0o7777 == 0o700
