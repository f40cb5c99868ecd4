"""A mount can always be stopped, and an upload that can never succeed fails once.

An upload failing for good (its bucket deleted) holds the process after `fusermount3 -u` while
it waits for the queue; a second SIGTERM must end it within seconds, the journal keeping the
file for the next mount. An upload whose data was deleted from the cache under the mount must
fail once, clearly, and hold nothing up (fsync, umount), never be retried in a loop, and never
be uploaded as zeros by a later mount.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from conftest import Mounter, is_mounted, run_cli, wait_gone
from mountfs.processes import pid_alive
from test_fidelity import in_store
from test_posix import wait_store

if TYPE_CHECKING:
    from kits import Store

pytestmark = [pytest.mark.mounted, pytest.mark.backends("local", "s3")]


def wait_for(check: callable, timeout: float = 20) -> None:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.requires("buckets_editable")
def test_a_second_sigterm_ends_a_mount_waiting_on_a_failing_upload(mounter: Mounter,
                                                                    store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "300", "--whole-file-delay", "300")
    (m.bucket / "f").write_bytes(b"kept in the journal")
    in_store(store, "delete_bucket")  # the upload fails for good: NoSuchBucket
    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], check=True)
    time.sleep(1.5)
    assert pid_alive(m.pid), "the process waits for the upload after the kernel unmounted"
    os.kill(m.pid, signal.SIGTERM)
    time.sleep(1.0)
    assert pid_alive(m.pid), "a first signal goes on uploading what is queued"
    os.kill(m.pid, signal.SIGTERM)
    started = time.monotonic()
    wait_gone(m.pid, timeout=10)
    assert time.monotonic() - started < 5
    log = (m.cache / "mountfs.log").read_text()
    assert "stopped waiting for uploads: the journal keeps what is not uploaded" in log
    # the next mount uploads it once the bucket is back
    in_store(store, "create_bucket")
    mounter.remount(m)
    wait_store(store.stored / "f", b"kept in the journal")


def test_an_upload_whose_cache_data_is_gone_fails_once(mounter: Mounter, store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "300", "--whole-file-delay", "300")
    (m.bucket / "f").write_bytes(b"x" * 5000)
    blocks = list((m.cache / "blocks").iterdir())
    assert blocks
    for block in blocks:
        block.unlink()
    fd = os.open(m.bucket / "f", os.O_WRONLY)
    with pytest.raises(OSError) as fsync_error:
        os.fsync(fd)
    assert fsync_error.value.errno == errno.EIO
    with pytest.raises(OSError):
        os.close(fd)  # the writer's close reports it too
    time.sleep(2.5)  # a hurried retry would come within 2 s
    [entry] = m.status()["queue"]
    assert entry["state"] == "lost" and entry["tries"] == 1
    assert "gone from the cache" in entry["error"]
    assert "lost uploads have no data left" in run_cli("status", str(m.path)).stdout
    log = (m.cache / "mountfs.log").read_text()
    assert log.count(f"upload of {store.bucket}/f is impossible") == 1
    # umount does not wait for it, and says so
    started = time.monotonic()
    proc = run_cli("umount", str(m.path), timeout=60)
    assert time.monotonic() - started < 10
    assert f"its data is gone from the cache: {store.bucket}/f" in proc.stderr
    assert not is_mounted(m.path)
    # the next mount reports it again, and never uploads zeros in its place
    m = mounter.remount(m)
    wait_for(lambda: m.status()["lost"] == 1)
    assert not (store.stored / "f").exists()
    run_cli("discard", str(m.path), f"{store.bucket}/f")
    assert m.status()["queued"] == 0
    assert not (m.bucket / "f").exists()
