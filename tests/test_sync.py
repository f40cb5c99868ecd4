"""`mountfs sync MOUNTPOINT [PATH]`: uploads what is queued under PATH now, whatever the
write-back delay, waits for it, and fails naming the file when an upload fails.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from conftest import BACKENDS, Mounter, run_cli
from kits import Store
from servers.faults import FaultProxy
from test_faults import (bucket, failed_entry, mount_via, on_server, proxy,  # noqa: F401
                         wait_uploading)
from test_s3 import bucket_name, client, s3_env  # noqa: F401 (fixtures)

MiB = 1024 * 1024
LONG_DELAY = "600"  # nothing would be uploaded during a test without being asked


@pytest.mark.backends(*BACKENDS)
def test_sync_uploads_what_is_under_path_now_and_waits(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", LONG_DELAY,
                      "--whole-file-delay", LONG_DELAY)
    (m.bucket / "a").mkdir()
    files = {f"a/f{i}": os.urandom(200_000 * i) for i in (1, 2, 3)}
    for name, data in files.items():
        (m.bucket / name).write_bytes(data)
    (m.bucket / "other.txt").write_bytes(b"not asked for")
    started = time.monotonic()
    done = run_cli("sync", str(m.path), str(m.bucket / "a"))
    took = time.monotonic() - started
    for name, data in files.items():
        assert (store.stored / name).read_bytes() == data
    assert not (store.stored / "other.txt").exists()
    assert [e["path"] for e in m.status()["queue"]] == [f"{store.bucket}/other.txt"]
    lines = done.stdout.splitlines()
    assert "\x1b" not in done.stdout  # piped: plain lines
    for name in files:
        assert any(line.endswith(f" uploaded {store.bucket}/{name} "
                                 f"({len(files[name]) / 1024:.1f} KiB)") for line in lines), lines
    assert lines[-1].startswith("3 files uploaded (1.1 MiB) in ")
    assert took < 30
    everything = run_cli("sync", str(m.path))
    assert everything.stdout.splitlines()[-1].startswith("1 files uploaded")
    assert (store.stored / "other.txt").read_bytes() == b"not asked for"
    assert m.status()["queue"] == []
    nothing = run_cli("sync", str(m.path))
    assert nothing.stdout == f"nothing to upload under {m.path}\n"
    mounter.umount(m)


def test_sync_draws_a_bar_on_a_terminal(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", LONG_DELAY,
                      "--whole-file-delay", LONG_DELAY)
    (m.bucket / "big.bin").write_bytes(os.urandom(48 * MiB))
    child = pexpect.spawn(sys.executable, ["-m", "mountfs", "sync", str(m.path)],
                          env={**os.environ, "TERM": "xterm-256color"}, dimensions=(30, 160),
                          encoding="utf-8", timeout=60)
    try:
        child.expect(r"sync [^\r\n]*━[^\r\n]*/48\.0 MiB")
        child.expect(r"1 files uploaded \(48\.0 MiB\)")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    assert (store.stored / "big.bin").exists()
    mounter.umount(m)


def test_a_failed_upload_fails_sync_naming_the_file_and_error(
        mounter: Mounter, proxy: FaultProxy, client, bucket: str) -> None:
    m = mount_via(mounter, proxy, bucket, "mnt", "--writeback-delay", LONG_DELAY,
                      "--whole-file-delay", LONG_DELAY)
    (m.path / "fine.txt").write_bytes(b"fine")
    run_cli("sync", str(m.path), str(m.path / "fine.txt"))
    proxy.deny_writes = True
    (m.path / "denied.bin").write_bytes(b"d" * 10_000)
    done = run_cli("sync", str(m.path), check=False)
    assert done.returncode == 1, done
    assert "mountfs: not uploaded: denied.bin: " in done.stderr
    assert "AccessDenied" in done.stderr or "Access Denied" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.splitlines()[-1].startswith("0 files uploaded (0 B) in ")
    assert done.stdout.splitlines()[-1].endswith(", 1 failed")
    failed_entry(m, "denied.bin", "AccessDenied")  # still queued, still in the cache
    proxy.deny_writes = False
    run_cli("sync", str(m.path))
    assert on_server(client, bucket, "denied.bin") == b"d" * 10_000
    assert on_server(client, bucket, "fine.txt") == b"fine"
    mounter.umount(m)


def test_sync_of_a_path_outside_the_mount_is_one_line(mounter: Mounter, store: Store,
                                                       tmp_path: Path) -> None:
    m = mounter.mount(store)
    done = run_cli("sync", str(m.path), str(tmp_path), check=False)
    assert done.returncode == 1
    assert done.stderr == f"mountfs: {tmp_path} is not on the mount {m.path}\n"
    mounter.umount(m)


def test_a_file_deleted_while_sync_waits_is_not_counted_uploaded(
        mounter: Mounter, proxy: FaultProxy, client, bucket: str) -> None:
    m = mount_via(mounter, proxy, bucket, "mnt", "--writeback-delay", LONG_DELAY,
                  "--whole-file-delay", LONG_DELAY)
    proxy.bandwidth = 200_000  # the upload takes ~10 s: long enough to delete the file
    (m.path / "gone.bin").write_bytes(os.urandom(2 * MiB))
    waiting = subprocess.Popen([sys.executable, "-m", "mountfs", "sync", str(m.path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_uploading(m)
        (m.path / "gone.bin").unlink()
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    lines = out.splitlines()
    assert any(line.endswith(" not uploaded gone.bin: deleted or discarded meanwhile")
               for line in lines), lines
    assert lines[-1].startswith("0 files uploaded (0 B) in "), lines
    assert lines[-1].endswith(", 1 deleted or discarded"), lines
    assert on_server(client, bucket, "gone.bin") is None
    mounter.umount(m)
