"""POSIX details programs rely on, and other tools' metadata kept, on every driver.

Special files (FIFOs, sockets, device nodes) stored as s3fs stores them; st_nlink 0 for an open
file unlinked; ctime and atime kept in metadata under s3fs's names; directory times that move
when entries change (Python's importlib depends on it); trusted.* and security.* xattrs; the
metadata other tools put on an object kept through every change the mount makes to it.
"""
from __future__ import annotations

import email.utils
import errno
import io
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from conftest import BACKENDS, Mount, Mounter
from kits import environment
from mountfs.backends.base import CONTENT_TYPE, ObjectInfo
from stores import S3Path
from test_posix import oserror, wait_store

if TYPE_CHECKING:
    from kits import Store

pytestmark = [pytest.mark.mounted, pytest.mark.backends(*BACKENDS)]


def in_store(store: Store, call: str, *args: Any) -> Any:
    """`call` of the store's own driver, in-process (no mount), on the test's bucket: what
    another client of the store sees or does."""
    async def go() -> Any:
        source = await store.open()
        try:
            return await getattr(source.backend, call)(store.bucket, *args)
        finally:
            await source.backend.aclose()

    with environment(store.env):
        return trio.run(go)


def stored_info(store: Store, key: str, timeout: float = 10) -> ObjectInfo:
    """The object's metadata in the store, once the mount uploaded it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return in_store(store, "stat_object", key)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# ---- special files ------------------------------------------------------------------------------

@pytest.mark.requires("special_files")
def test_fifo_socket_and_device_nodes(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "0.2")
    os.mkfifo(m.bucket / "fifo", 0o640)
    os.mknod(m.bucket / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(m.bucket / "disk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(m.bucket / "sock"))
    kinds = {"fifo": stat.S_IFIFO, "null": stat.S_IFCHR, "disk": stat.S_IFBLK,
             "sock": stat.S_IFSOCK}

    def check(mount: Mount) -> None:
        for name, kind in kinds.items():
            st = os.lstat(mount.bucket / name)
            assert stat.S_IFMT(st.st_mode) == kind, name
        assert stat.S_IMODE(os.lstat(mount.bucket / "fifo").st_mode) == 0o640
        assert os.lstat(mount.bucket / "null").st_rdev == os.makedev(1, 3)
        assert os.lstat(mount.bucket / "disk").st_rdev == os.makedev(7, 0)

    check(m)
    # the kernel gives a FIFO its behaviour: bytes pass from a writer to a reader
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append((m.bucket / "fifo").read_bytes()))
    reader.start()
    (m.bucket / "fifo").write_bytes(b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"]
    # stored as empty objects whose mode says what they are: a new mount sees them the same
    for name in kinds:
        assert stored_info(store, name).size == 0
    mounter.umount(m)
    check(mounter.remount(m))


def test_an_open_file_unlinked_has_no_links(mounted: Mount) -> None:
    path = mounted.bucket / "f"
    path.write_bytes(b"data")
    with open(path, "rb") as f:
        assert os.fstat(f.fileno()).st_nlink == 1
        os.unlink(path)
        assert os.fstat(f.fileno()).st_nlink == 0
        assert f.read() == b"data"
    assert os.stat(mounted.bucket).st_nlink == 1  # directories: 1, "not counted" (as btrfs)


# ---- times ----------------------------------------------------------------------------------------

@pytest.mark.requires(keeps=("ctime",))
def test_ctime_moves_with_every_change_and_is_stored(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "0.2")
    path = m.bucket / "f"
    path.write_bytes(b"data")
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_500_000_000_000_000_000))
    st = os.stat(path)
    assert st.st_atime_ns == 1_000_000_000_000_000_000  # as set: atime is kept
    assert st.st_mtime_ns == 1_500_000_000_000_000_000
    last = st.st_ctime_ns
    assert last > 1_600_000_000_000_000_000  # utimensat moved ctime to now
    moved = m.bucket / "g"
    changes = [(path, lambda: os.chmod(path, 0o600)), (path, lambda: os.chown(path, 1234, 1234)),
               (path, lambda: os.setxattr(path, "user.k", b"v")),
               (moved, lambda: os.rename(path, moved)), (path, lambda: os.rename(moved, path)),
               (path, lambda: os.truncate(path, 2))]
    for where, change in changes:
        time.sleep(0.01)
        change()
        now = os.stat(where).st_ctime_ns
        assert now > last
        last = now
    assert os.stat(path).st_atime_ns == 1_000_000_000_000_000_000
    path.read_bytes()  # reads do not move atime (as mounted noatime: a read is no write)
    assert os.stat(path).st_atime_ns == 1_000_000_000_000_000_000
    mounter.umount(m)
    st = os.stat(mounter.remount(m).bucket / "f")
    assert st.st_atime_ns == 1_000_000_000_000_000_000 and st.st_ctime_ns == last
    meta = stored_info(store, "f").metadata or {}  # s3fs's names, its format
    seconds, fraction = divmod(last, 10**9)
    assert meta["atime"] == "1000000000"
    assert meta["ctime"] == (f"{seconds}.{fraction:09d}" if fraction else str(seconds))


@pytest.mark.requires("relative_symlinks", keeps=("mtime",))
def test_directory_times_move_when_entries_change(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "0.2")
    d = m.bucket / "d"
    d.mkdir()
    steps = [lambda: (d / "a").write_bytes(b"x"), lambda: os.mkdir(d / "sub"),
             lambda: os.symlink("a", d / "link"), lambda: os.rename(d / "a", d / "b"),
             lambda: os.unlink(d / "b"), lambda: os.rmdir(d / "sub")]
    last = os.stat(d).st_mtime_ns
    for step in steps:
        time.sleep(0.01)
        step()
        st = os.stat(d)
        assert st.st_mtime_ns > last and st.st_ctime_ns >= st.st_mtime_ns
        last = st.st_mtime_ns
    # persisted on the directory's marker: a new mount sees the last change
    time.sleep(1.0)
    mounter.umount(m)
    assert os.stat(mounter.remount(m).bucket / "d").st_mtime_ns == last


def test_python_imports_a_module_written_after_an_import(mounted: Mount) -> None:
    """importlib's FileFinder rereads a directory only when its mtime changes."""
    (mounted.bucket / "a.py").write_text("X = 1\n")
    program = ("import sys, time; sys.path.insert(0, sys.argv[1]); import a; time.sleep(1.1); "
               "open(sys.argv[1] + '/b.py', 'w').write('Y = 2\\n'); import b; print(a.X + b.Y)")
    done = subprocess.run([sys.executable, "-c", program, str(mounted.bucket)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "3\n"


# ---- extended attributes --------------------------------------------------------------------------

@pytest.mark.requires(keeps=("xattr",))
def test_trusted_and_security_xattrs_are_kept_acls_are_not(mounter: Mounter,
                                                            store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "0.2")
    path = m.bucket / "f"
    path.write_bytes(b"x")
    os.setxattr(path, "trusted.overlay.opaque", b"y")  # root may: the kernel checks
    os.setxattr(path, "security.test", b"label")
    # an ACL (user::rw- group::r-- other::r--, as setfacl sends it) is refused: the kernel
    # would not enforce it here, and setfacl says "Operation not supported"
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                          for tag, perm in ((0x01, 6), (0x04, 4), (0x20, 4)))
    assert oserror(os.setxattr, path, "system.posix_acl_access", acl) == errno.EOPNOTSUPP
    # nor is an SELinux label, and reading either says so (not ENODATA): see test_walks.py
    assert oserror(os.setxattr, path, "security.selinux", b"system_u:object_r:tmp_t:s0") \
        == errno.EOPNOTSUPP
    for name in ("security.selinux", "system.posix_acl_access", "system.posix_acl_default"):
        assert oserror(os.getxattr, path, name) == errno.EOPNOTSUPP
    for name in ("security.selinux", "system.posix_acl_access"):  # (a file's default ACL
        assert oserror(os.removexattr, path, name) == errno.EOPNOTSUPP  # the kernel drops)
    assert sorted(os.listxattr(path)) == ["security.test", "trusted.overlay.opaque"]
    mounter.umount(m)
    m = mounter.remount(m)
    assert os.getxattr(m.bucket / "f", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(m.bucket / "f", "security.test") == b"label"


# ---- other tools' metadata ------------------------------------------------------------------------

FOREIGN = {"foreign": "keepme", "owner-team": "geo"}


@pytest.mark.requires(keeps=("other",))
def test_other_tools_metadata_survives_every_change(mounted: Mount) -> None:
    store = mounted.store
    assert not isinstance(store, Path)
    in_store(store, "write_object", "f", io.BytesIO(b"data"), 4, dict(FOREIGN))
    path = mounted.bucket / "f"
    changes = [("chmod", lambda: os.chmod(path, 0o640)),
               ("chown", lambda: os.chown(path, 1234, 1234)),
               ("touch", lambda: os.utime(path, (1_700_000_000, 1_700_000_000))),
               ("setxattr", lambda: os.setxattr(path, "user.k", b"v")),
               ("rewrite", lambda: path.write_bytes(b"new data")),
               ("truncate", lambda: os.truncate(path, 3))]
    for what, change in changes:
        change()
        with open(path, "rb+") as f:
            os.fsync(f.fileno())  # a rewrite or truncate is uploaded: look at the store now
        meta = stored_info(store, "f").metadata or {}
        assert {k: meta.get(k) for k in FOREIGN} == FOREIGN, what
    os.rename(path, mounted.bucket / "g")
    meta = stored_info(store, "g").metadata or {}
    assert {k: meta.get(k) for k in FOREIGN} == FOREIGN, "rename"
    wait_store(mounted.stored / "g", b"new")


# ---- S3 headers, as s3fs keeps them ---------------------------------------------------------------

HEADERS = {"ContentType": "text/html", "CacheControl": "max-age=60",
           "ContentDisposition": 'attachment; filename="x.html"', "ContentEncoding": "identity",
           "ContentLanguage": "de", "StorageClass": "STANDARD_IA"}
EXPIRES = "Wed, 21 Oct 2099 07:28:00 GMT"


@pytest.mark.backends("s3")
def test_s3_headers_and_metadata_of_other_tools_survive_every_change(mounted: Mount) -> None:
    """What the AWS CLI or a web deployment put on an object (headers, x-amz-meta-*, storage
    class) is on the server after each change the mount makes to it, as with s3fs."""
    root = mounted.store.root
    assert isinstance(root, S3Path)
    client, bucket = root.client, (root / mounted.store.bucket).real_bucket
    client.put_object(Bucket=bucket, Key="index.html", Body=b"<p>hello</p>", Metadata=FOREIGN,
                      Expires=email.utils.parsedate_to_datetime(EXPIRES), **HEADERS)
    path, moved = mounted.bucket / "index.html", mounted.bucket / "moved.html"
    changes = [("chmod", lambda: os.chmod(path, 0o640)),
               ("chown", lambda: os.chown(path, 1234, 1234)),
               ("touch", lambda: os.utime(path, (1_700_000_000, 1_700_000_000))),
               ("setxattr", lambda: os.setxattr(path, "user.k", b"v")),
               ("rewrite", lambda: path.write_bytes(b"<p>hello again</p>")),
               ("truncate", lambda: os.truncate(path, 8)),
               ("rename", lambda: os.rename(path, moved)),
               ("rename back", lambda: os.rename(moved, path))]
    for what, change in changes:
        change()
        where = moved if what == "rename" else path
        with open(where, "rb+") as f:
            os.fsync(f.fileno())  # uploaded now: look at the server
        head = client.head_object(Bucket=bucket, Key=where.name)
        assert {name: head.get(name) for name in HEADERS} == HEADERS, what
        assert head["ResponseMetadata"]["HTTPHeaders"]["expires"] == EXPIRES, what
        assert {k: head["Metadata"].get(k) for k in FOREIGN} == FOREIGN, what
        assert head["Metadata"]["mode"] and head["Metadata"]["ctime"], what  # s3fs's own too
    assert client.get_object(Bucket=bucket, Key="index.html")["Body"].read() == b"<p>hello"


@pytest.mark.requires(keeps=(CONTENT_TYPE,))
def test_new_files_get_a_content_type_from_their_name(mounted: Mount) -> None:
    for name, expected in (("page.html", "text/html"), ("data.csv", "text/csv"),
                           ("blob", "application/octet-stream")):
        (mounted.bucket / name).write_bytes(b"x")
        meta = stored_info(mounted.store, name).metadata or {}  # type: ignore[arg-type]
        assert meta.get(CONTENT_TYPE) == expected, name
    # a rewrite keeps it
    (mounted.bucket / "page.html").write_bytes(b"y")
    with open(mounted.bucket / "page.html", "rb+") as f:
        os.fsync(f.fileno())
    assert (stored_info(mounted.store, "page.html").metadata or {}).get(CONTENT_TYPE) \
        == "text/html"  # type: ignore[arg-type]


# ---- directories as older tools write them --------------------------------------------------------

@pytest.mark.requires(keeps=(CONTENT_TYPE,))
def test_directories_of_older_tools(mounted: Mount) -> None:
    """`NAME_$folder$` (Hadoop, S3 Organizer) and an empty object of Content-Type
    application/x-directory (older s3fs) are directories; the objects themselves are hidden,
    and go with the directory when it is removed or renamed."""
    store = mounted.store
    assert not isinstance(store, Path)

    def put(key: str, data: bytes = b"", **metadata: str) -> None:
        in_store(store, "write_object", key, io.BytesIO(data), len(data), metadata)

    put("hadoop_$folder$")
    put("hadoop/part-0000", b"rows")
    put("empty_$folder$")
    put("olds3fs", **{CONTENT_TYPE: "application/x-directory", "mode": str(0o40750)})
    put("olds3fs2", **{CONTENT_TYPE: "application/x-directory"})
    assert sorted(os.listdir(mounted.bucket)) == ["empty", "hadoop", "olds3fs", "olds3fs2"]
    for name in ("empty", "hadoop", "olds3fs", "olds3fs2"):
        assert stat.S_ISDIR(os.stat(mounted.bucket / name).st_mode), name
    assert stat.S_IMODE(os.stat(mounted.bucket / "olds3fs").st_mode) == 0o750
    assert os.listdir(mounted.bucket / "hadoop") == ["part-0000"]
    assert (mounted.bucket / "hadoop" / "part-0000").read_bytes() == b"rows"
    if store.kit.any_key:  # a store of keys, not a directory tree: NAME beside NAME/new
        (mounted.bucket / "olds3fs" / "new").write_bytes(b"in an old directory")
    os.rmdir(mounted.bucket / "empty")
    os.rmdir(mounted.bucket / "olds3fs2")
    os.rename(mounted.bucket / "hadoop", mounted.bucket / "renamed")
    assert sorted(os.listdir(mounted.bucket)) == ["olds3fs", "renamed"]
    if store.kit.any_key:
        wait_store(mounted.stored / "olds3fs" / "new", b"in an old directory")
    keys = {info.key for page in in_store_listing(store) for info in page}
    assert not keys & {"empty_$folder$", "olds3fs2", "hadoop_$folder$", "hadoop/part-0000"}
    assert {"renamed/", "renamed/part-0000", "olds3fs"} <= keys


def in_store_listing(store: Store) -> list[list[ObjectInfo]]:
    async def go() -> list[list[ObjectInfo]]:
        source = await store.open()
        try:
            return [page async for page in source.backend.list_objects(store.bucket, "",
                                                                       delimiter=None)]
        finally:
            await source.backend.aclose()

    with environment(store.env):
        return trio.run(go)
