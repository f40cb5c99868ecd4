"""The command line: one readable line for every kind of bad input, and the commands that work.

Bad input must give exactly one line on stderr starting with "mountfs:", a non-zero exit code,
no traceback, and leave nothing mounted and no process behind.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Mount, Mounter, is_mounted, pid_alive, run_cli
from kits import Store

BUCKET = "bucket"  # of the local stores the tests below make by hand

pytestmark = pytest.mark.mounted


def mount_processes(under: Path) -> set[int]:
    """Pids of running `mountfs mount` processes with an argument below `under` (to see that a
    failed mount left none behind; other mounts on the machine do not count)."""
    pids = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mountfs" in argv and b"mount" in argv \
                and any(a.startswith(bytes(under)) for a in argv) and pid_alive(int(entry.name)):
            pids.add(int(entry.name))
    return pids


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mountfs: "), proc.stderr
    for word in words:
        assert word in lines[0], proc.stderr
    return lines[0]


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """A store with one bucket, an empty mount point and a plain file, under tmp_path."""
    (tmp_path / "store" / BUCKET).mkdir(parents=True)
    (tmp_path / "mnt").mkdir()
    (tmp_path / "file").write_text("not a directory\n")
    return tmp_path


def bad_mount(place: Path, *args: str, words: tuple[str, ...] = ()) -> str:
    """Run a mount that must fail; check its error line, that nothing got mounted or left."""
    proc = run_cli("mount", *args, "--cache-dir", str(place / "cache"), check=False)
    if is_mounted(place / "mnt"):  # it should not have mounted: unmount before failing
        unmount_now(place / "mnt")
        raise AssertionError(f"mount {args} succeeded")
    line = assert_one_line_error(proc, *words)
    wait_no_mount_process(place)
    return line


def unmount_now(path: Path) -> None:
    if run_cli("umount", str(path), check=False).returncode:
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


def wait_no_mount_process(place: Path) -> None:
    deadline = time.monotonic() + 10
    while mount_processes(place):
        assert time.monotonic() < deadline, "a failed mount left its process running"
        time.sleep(0.05)


# ---- bad input -------------------------------------------------------------------------------

def test_missing_source(place: Path) -> None:
    bad_mount(place, str(place / "nowhere"), str(place / "mnt"), words=("nowhere",))


def test_source_is_a_file(place: Path) -> None:
    bad_mount(place, f"local:{place / 'file'}", str(place / "mnt"),
              words=("file", "not a directory"))


def test_missing_mount_point(place: Path) -> None:
    proc = run_cli("mount", str(place / "store"), str(place / "nomnt"), check=False)
    assert_one_line_error(proc, "nomnt", "does not exist")


def test_mount_point_is_a_file(place: Path) -> None:
    proc = run_cli("mount", str(place / "store"), str(place / "file"), check=False)
    assert_one_line_error(proc, "not a directory")
    assert (place / "file").read_text() == "not a directory\n"


def test_mount_point_already_mounted(mounted: Mount, tmp_path: Path) -> None:
    other = tmp_path / "other-store"
    (other / BUCKET).mkdir(parents=True)
    proc = run_cli("mount", str(other), str(mounted.path), "--cache-dir",
                   str(tmp_path / "other-cache"), check=False)
    if mounted.status()["source"] != mounted.source:  # stacked on top: take it off again
        unmount_now(mounted.path)
        raise AssertionError("mounted over a mount")
    assert_one_line_error(proc, "already")
    # the first mount is untouched
    assert mounted.status()["source"] == mounted.source
    assert sorted(os.listdir(mounted.path)) == mounted.store.buckets


def test_cache_dir_in_use(mounted: Mount, tmp_path: Path) -> None:
    (tmp_path / "mnt2").mkdir()
    proc = run_cli("mount", mounted.source, str(tmp_path / "mnt2"), "--cache-dir",
                   str(mounted.cache), check=False)
    if is_mounted(tmp_path / "mnt2"):
        unmount_now(tmp_path / "mnt2")
        raise AssertionError("two mounts share one cache dir")
    assert_one_line_error(proc, "in use")
    assert mounted.status()["pid"] == mounted.pid


def test_unknown_option(place: Path) -> None:
    bad_mount(place, str(place / "store"), str(place / "mnt"), "--bogus", words=("--bogus",))


def test_unknown_command() -> None:
    assert_one_line_error(run_cli("frobnicate", check=False), "frobnicate")


def test_no_command() -> None:
    assert_one_line_error(run_cli(check=False))


def test_missing_arguments() -> None:
    assert_one_line_error(run_cli("mount", check=False))


@pytest.mark.parametrize("value", ["lots", "10X", "1.5.3", "-5M", ""])
def test_bad_cache_size(place: Path, value: str) -> None:
    bad_mount(place, str(place / "store"), str(place / "mnt"), "--cache-size", value,
              words=("--cache-size",))


@pytest.mark.parametrize("value", ["999", "rwx", "0x12", ""])
def test_bad_umask(place: Path, value: str) -> None:
    bad_mount(place, str(place / "store"), str(place / "mnt"), "--umask", value,
              words=("--umask",))


@pytest.mark.parametrize("value", ["7777", "-1"])
def test_umask_out_of_range(place: Path, value: str) -> None:
    bad_mount(place, str(place / "store"), str(place / "mnt"), "--umask", value,
              words=("--umask",))


@pytest.mark.parametrize("option,value", [("--writeback-delay", "-1"),
                                          ("--writeback-delay", "soon"),
                                          ("--metadata-ttl", "abc"), ("--uid", "root"),
                                          ("--gid", "1.5")])
def test_bad_numbers(place: Path, option: str, value: str) -> None:
    bad_mount(place, str(place / "store"), str(place / "mnt"), option, value, words=(option,))


def test_unknown_scheme(place: Path) -> None:
    bad_mount(place, "foo:bar", str(place / "mnt"), words=("foo",))


def test_cache_dir_is_a_file(place: Path) -> None:
    proc = run_cli("mount", str(place / "store"), str(place / "mnt"), "--cache-dir",
                   str(place / "file"), check=False)
    if is_mounted(place / "mnt"):
        unmount_now(place / "mnt")
        raise AssertionError("mounted with a file as its cache dir")
    assert_one_line_error(proc, "file")
    wait_no_mount_process(place)


def test_fusermount_missing(place: Path) -> None:
    env = dict(os.environ, PATH=str(place / "empty-path"))
    proc = subprocess.run([sys.executable, "-m", "mountfs", "mount", str(place / "store"),
                           str(place / "mnt")], capture_output=True, text=True, env=env,
                          timeout=60)
    assert_one_line_error(proc, "fuse3")


def test_status_of_a_non_mount(place: Path) -> None:
    assert_one_line_error(run_cli("status", str(place / "mnt"), check=False),
                          "not a mountfs mount")
    assert_one_line_error(run_cli("status", "--json", str(place / "mnt"), check=False),
                          "not a mountfs mount")
    assert_one_line_error(run_cli("status", str(place / "missing"), check=False),
                          "does not exist")


def test_umount_of_a_non_mount(place: Path) -> None:
    assert_one_line_error(run_cli("umount", str(place / "mnt"), check=False),
                          "not a mountfs mount")


# ---- commands that work ------------------------------------------------------------------------

def test_help() -> None:
    top = run_cli("--help")
    assert top.returncode == 0 and top.stderr == ""
    for command in ("mount", "umount", "status"):
        assert command in top.stdout
    sub = run_cli("mount", "--help").stdout
    for option in ("--foreground", "--cache-dir", "--cache-size", "--read-only", "--uid",
                   "--gid", "--umask", "--allow-other", "--writeback-delay", "--metadata-ttl",
                   "-o", "--log-file", "--verbose"):
        assert option in sub, option


def test_console_script() -> None:
    proc = subprocess.run(["mountfs", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "umount" in proc.stdout


def test_mount_from_a_directory_holding_folders_named_like_its_packages(
        mounter: Mounter, store: Store, tmp_path: Path) -> None:
    """The background process runs `python -m mountfs` in the caller's directory: a user's
    own `cache/` or `mountfs/` there must not be imported in place of mountfs's."""
    work = tmp_path / "work"
    for decoy in ("cache", "mountfs"):
        (work / decoy).mkdir(parents=True)
        (work / decoy / "__init__.py").write_text("raise SystemExit('decoy imported')\n")
    place = tmp_path / "mnt"
    place.mkdir()
    mountfs = shutil.which("mountfs")
    assert mountfs is not None
    proc = subprocess.run([mountfs, "mount", store.source, str(place), "--cache-dir",
                           str(tmp_path / "c")], cwd=work, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    try:
        assert sorted(os.listdir(place)) == store.buckets
    finally:
        run_cli("umount", str(place))


def test_umount_waits_for_the_queue(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "2", "--whole-file-delay", "2")
    (m.bucket / "a").write_bytes(b"first file")
    (m.bucket / "b").write_bytes(b"second file" * 1000)
    assert not (store.stored / "a").exists()  # still waiting out the delay
    proc = run_cli("umount", str(m.path), timeout=120)
    assert proc.returncode == 0
    assert "waiting for 2 uploads" in proc.stderr and "bucket/a" in proc.stderr
    assert not is_mounted(m.path)
    assert not pid_alive(m.pid)
    assert (store.stored / "a").read_bytes() == b"first file"
    assert (store.stored / "b").read_bytes() == b"second file" * 1000


def test_umount_with_nothing_queued(mounted: Mount) -> None:
    proc = run_cli("umount", str(mounted.path))
    assert proc.returncode == 0 and proc.stderr == ""
    assert not is_mounted(mounted.path)
    assert not pid_alive(mounted.pid)


def test_status_json(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "30", "--whole-file-delay", "30", "--cache-size", "64M")
    (m.bucket / "queued").write_bytes(b"q" * 1000)
    s = m.status()
    assert s["source"] == m.source and s["mountpoint"] == str(m.path) and s["pid"] == m.pid
    assert s["queued"] == 1 and s["uploaded"] == 0
    entry = s["queue"][0]
    assert 0 < entry.pop("next_try") <= 30  # seconds until the upload starts
    assert s["queue"] == [{"bucket": store.bucket, "key": "queued", "size": 1000, "done": 0,
                           "percent": 0.0, "state": "waiting", "tries": 0, "error": "",
                           "path": f"{store.bucket}/queued"}]
    c = s["cache"]
    assert c["dir"] == str(m.cache) and c["cap"] == 64 * 1024 * 1024
    assert c["used"] >= 1000 and c["dirty"] >= 1000
    assert isinstance(c["hits"], int) and isinstance(c["misses"], int)
    assert c["hit_rate"] is None or 0 <= c["hit_rate"] <= 1
    text = run_cli("status", str(m.path)).stdout
    assert "1 queued" in text and "bucket/queued" in text and "waiting" in text
    mounter.umount(m)
    assert (store.stored / "queued").read_bytes() == b"q" * 1000


def test_status_counts_uploads_and_hits(mounted: Mount) -> None:
    (mounted.stored / "srv").write_bytes(b"s" * 5000)
    (mounted.bucket / "srv").read_bytes()
    (mounted.bucket / "new").write_bytes(b"n")
    deadline = time.monotonic() + 10
    while mounted.status()["uploaded"] < 1:
        assert time.monotonic() < deadline, "the upload did not happen"
        time.sleep(0.05)
    s = mounted.status()
    assert s["queued"] == 0 and s["queue"] == [] and s["uploaded"] == 1
    assert s["cache"]["misses"] >= 1 and s["cache"]["dirty"] == 0
    assert s["cache"]["hit_rate"] is not None


def test_defaults_for_objects_without_metadata(mounter: Mounter, store: Store) -> None:
    (store.stored / "plain").write_bytes(b"x")
    (store.stored / "dir").mkdir()
    m = mounter.mount(store, "--uid", "123", "--gid", "456", "--umask", "027")
    st = os.stat(m.bucket / "plain")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (123, 456, 0o640)
    st = os.stat(m.bucket / "dir")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (123, 456, 0o750)


def test_fuse_options_reach_the_mount(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--allow-other", "-o", "noatime")
    with open("/proc/mounts") as f:
        opts = next(line.split()[3] for line in f if line.split()[1] == str(m.path))
    assert "noatime" in opts.split(",")
    assert "allow_other" in opts.split(",")
    assert "default_permissions" in opts.split(",")


def test_read_only_shows_in_mount_table(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--read-only")
    with open("/proc/mounts") as f:
        opts = next(line.split()[3] for line in f if line.split()[1] == str(m.path))
    assert opts.split(",")[0] == "ro"


def test_log_file(mounter: Mounter, store: Store, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "mountfs.log"
    m = mounter.mount(store, "--log-file", str(log))
    (m.bucket / "f").write_bytes(b"x")
    mounter.umount(m)
    assert log.exists() and stat.S_IMODE(log.stat().st_mode) == 0o600
    assert log.read_text().strip()


def test_foreground(place: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mountfs", "mount", "--foreground",
                             str(place / "store"), str(place / "mnt"), "--cache-dir",
                             str(place / "cache")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(place / "mnt"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "never mounted"
            time.sleep(0.05)
        assert proc.poll() is None  # stays attached while mounted
        (place / "mnt" / BUCKET / "f").write_bytes(b"fg")
        run_cli("umount", str(place / "mnt"))
        assert proc.wait(timeout=30) == 0
        assert (place / "store" / BUCKET / "f").read_bytes() == b"fg"
    finally:
        if proc.poll() is None:
            subprocess.run(["fusermount3", "-u", "-z", str(place / "mnt")], capture_output=True)
            proc.kill()
            proc.wait()
