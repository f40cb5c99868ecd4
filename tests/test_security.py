"""Security of a mount: what it leaves on disk, what it reveals, what it lets others do.

Already tested elsewhere, not repeated here: `default_permissions` and EACCES for another user
(tests/test_posix.py test_permissions, test_other_users_need_allow_other), a read-only mount's
EROFS for create/write/truncate/unlink/mkdir/rmdir/rename/chmod/chown/utime/setxattr/symlink
(test_posix.py test_read_only), the log file's mode 0600 (test_cli.py test_log_file), and
that `--allow-other` reaches the mount table (test_cli.py test_fuse_options_reach_the_mount).

Here: the modes and owner of everything in the cache dir; credentials kept out of the log
(at -vv, where botocore logs its requests), of `mountfs status` and of the process's argv; no
`allow_other` and `default_permissions` in the mount table of a plain mount; the write calls
test_read_only does not make (removexattr, mknod, link, O_TRUNC, a writable shared mmap).
"""
from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Mount, Mounter, run_cli
from kits import Store

pytestmark = pytest.mark.mounted

# Known values put in the mount's environment: none of them may show anywhere readable.
SECRET_KEY = "SeCrEtKeY-d41d8cd98f00b204e9800998ecf8427e"
SESSION_TOKEN = "SeSsIoNtOkEn-9e107d9d372bb6826bd81d3542a419d6"


def mount_options(path: Path) -> list[str]:
    with open("/proc/mounts") as f:
        return next(line.split()[3] for line in f if line.split()[1] == str(path)).split(",")


def oserror(fn: Callable[[], Any]) -> int:
    """The errno `fn` fails with; 0 if it succeeds."""
    try:
        fn()
    except OSError as exc:
        return exc.errno or -1
    return 0


def test_cache_dir_is_private(mounter: Mounter, store: Store, tmp_path: Path) -> None:
    """Every directory of the cache dir 0700, every file 0600, all owned by the mounting user
    — also a cache dir that existed before with a looser mode, and under umask 000 (the
    modes are the code's, not the umask's)."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    old = os.umask(0)
    try:
        m = mounter.mount(store, "--writeback-delay", "30", "--whole-file-delay", "30", cache=cache)  # stays dirty
    finally:
        os.umask(old)
    (m.bucket / "f").write_bytes(b"private data" * 100_000)  # block files and a record
    seen: set[str] = set()
    for root, dirs, files in os.walk(cache):
        for name in dirs + files:
            p = Path(root, name)
            st = p.lstat()
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            assert stat.S_IMODE(st.st_mode) == want, f"{p}: {oct(st.st_mode)}"
            assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), p
            seen.add(str(p.relative_to(cache)).split(".")[0].split("/")[0])
    st = cache.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    # the walk saw what it had to: a walk of an empty dir must not pass
    assert {"blocks", "journal", "lock", "mountfs"} <= seen, seen
    assert any((cache / "blocks").iterdir())


def test_plain_mount_is_not_shared(mounted: Mount) -> None:
    """Without --allow-other nobody else may enter; the kernel checks modes itself."""
    opts = mount_options(mounted.path)
    assert "allow_other" not in opts and "default_permissions" in opts
    assert "allow_root" not in opts


@pytest.mark.backends("s3")
def test_credentials_never_shown(mounter: Mounter, store: Store, backend: str) -> None:
    """A mount at -vv with a known secret key and session token (moto accepts any): after
    uploads, reads, listings and an unmount, neither is in the log file, `mountfs status`
    (plain and --json) or the mount process's argv."""
    m = mounter.mount(store, "-vv", "--writeback-delay", "0",
                      env={"AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_SESSION_TOKEN": SESSION_TOKEN})
    assert SECRET_KEY.encode() in Path(f"/proc/{m.pid}/environ").read_bytes()  # it has them
    cmdline = Path(f"/proc/{m.pid}/cmdline").read_bytes()
    (m.bucket / "f").write_bytes(b"x" * 3_000_000)
    os.listdir(m.bucket)
    texts = {"cmdline": cmdline.decode(errors="replace"),
             "status": run_cli("status", str(m.path)).stdout,
             "status --json": run_cli("status", "--json", str(m.path)).stdout}
    mounter.umount(m)  # everything uploaded: the requests are in the log
    assert (store.stored / "f").read_bytes() == b"x" * 3_000_000
    log = (m.cache / "mountfs.log").read_text()
    # a -vv log that shows the requests, so that the check below could fail
    assert "DEBUG botocore.endpoint: Sending http request" in log
    texts["log"] = log
    for name, text in texts.items():
        for secret in (SECRET_KEY, SESSION_TOKEN):
            assert secret not in text, f"{secret[:12]}... appears in {name}"
        assert "Signature=" not in text, f"a request's signature appears in {name}"


def test_read_only_refuses_the_other_writes(mounter: Mounter, store: Store) -> None:
    """What test_read_only does not try: each of these is a write, refused with EROFS
    (a writable shared mmap needs a descriptor opened for writing, which EROFS refuses)."""
    (store.stored / "f").write_bytes(b"content")
    m = mounter.mount(store, "--read-only")
    f = m.bucket / "f"

    def shared_writable_map() -> None:
        fd = os.open(f, os.O_RDWR)
        try:
            mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_WRITE).close()
        finally:
            os.close(fd)

    attempts: dict[str, Callable[[], Any]] = {
        "open O_TRUNC": lambda: os.close(os.open(f, os.O_RDONLY | os.O_TRUNC)),
        "open O_CREAT|O_EXCL": lambda: os.open(m.bucket / "n", os.O_CREAT | os.O_EXCL | os.O_RDONLY),
        "removexattr": lambda: os.removexattr(f, "user.x"),
        "mknod": lambda: os.mknod(m.bucket / "node", 0o600 | stat.S_IFREG),
        "link": lambda: os.link(f, m.bucket / "hard"),
        "mmap": shared_writable_map,
    }
    codes = {name: oserror(fn) for name, fn in attempts.items()}
    assert codes == {name: errno.EROFS for name in attempts}
    assert (store.stored / "f").read_bytes() == b"content"
