"""The mount's log: one line per event with its level, to a file or, under systemd, to the
journal with sd-daemon level prefixes; a failed upload's line names the file, the service's
message and what happens next. Uploads fail for real, through the fault proxy in front of moto.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import Mount, Mounter, run_cli
from servers.faults import FaultProxy
from test_faults import bucket, mount_via, on_server, proxy  # noqa: F401 (fixtures)
from test_s3 import bucket_name, client, s3_env  # noqa: F401 (fixtures)

FILE_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
                       r"[\w.]+: \S")
JOURNAL_LINE = re.compile(r"<[2-7]>[\w.]+: \S")


def wait_for_line(log: Path, pattern: str, timeout: float = 30) -> str:
    """The first line of `log` matching `pattern` (re.search), once it is written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines():
                if re.search(pattern, line):
                    return line
        time.sleep(0.1)
    raise AssertionError(f"no line matching {pattern!r} in {log}:\n"
                         f"{log.read_text() if log.exists() else '(none)'}")


def test_failed_uploads_log_file_message_and_what_next(
        mounter: Mounter, proxy: FaultProxy, client, bucket: str, tmp_path: Path) -> None:
    log = tmp_path / "mount.log"
    # A second in the queue, whole file or not: the faults begin after the write.
    m = mount_via(mounter, proxy, bucket, "mnt", "--writeback-delay", "1",
                  "--whole-file-delay", "1",
                  "--log-file", str(log))
    (m.path / "later.bin").write_bytes(b"l" * 5000)
    proxy.kinds, proxy.rate = ("503",), 1.0  # every request fails, the upload's too
    line = wait_for_line(log, r"upload of .*later\.bin failed")
    proxy.rate = 0.0
    assert re.fullmatch(
        r"\S+ \S+ WARNING cache\.writeback: upload of " + bucket + r"/later\.bin failed "
        r"\(try 1\): TemporaryFailure: .*ServiceUnavailable.*; retrying in 0\.5s "
        r"\(at \d\d:\d\d:\d\d\)", line), line

    proxy.deny_writes = True
    (m.path / "denied.bin").write_bytes(b"d" * 5000)
    line = wait_for_line(log, r"upload of .*denied\.bin failed")
    assert re.fullmatch(
        r"\S+ \S+ ERROR cache\.writeback: upload of " + bucket + r"/denied\.bin failed "
        r"\(try 1\): PermissionDenied: .*AccessDenied.*; retrying alone will not cure this: "
        r"tried again in 60s \(at \d\d:\d\d:\d\d\) and at each fsync of the file, kept in the "
        r"cache until then; to give it up: mountfs discard MOUNTPOINT " + bucket +
        r"/denied\.bin", line), line
    proxy.deny_writes = False
    run_cli("sync", str(m.path))
    assert on_server(client, bucket, "later.bin") == b"l" * 5000
    mounter.umount(m)
    lines = log.read_text().splitlines()
    assert lines and all(FILE_LINE.match(line) for line in lines), lines  # one line each
    # each retry of a request is a line of its own, from the one retry policy
    assert any(re.search(r" INFO mountfs\.backends\.retry: retrying PutObject " + bucket +
                         r"/later\.bin in [\d.]+s \(try 2 of 10\): ", line)
               for line in lines), lines


def test_under_systemd_the_log_goes_to_the_journal_with_levels(
        mounter: Mounter, proxy: FaultProxy, bucket: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    path, cache = tmp_path / "mnt", tmp_path / "cache"
    path.mkdir()
    with open(journal, "w") as stream:
        st = os.fstat(stream.fileno())
        # What systemd does for a service whose stderr is the journal: the stream's identity.
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        subprocess.run([sys.executable, "-m", "mountfs", "mount", f"s3://{bucket}", str(path),
                        "--cache-dir", str(cache), "--endpoint-url", proxy.url,
                        "--writeback-delay", "0"],
                       stderr=stream, stdout=subprocess.DEVNULL, env=env, check=True,
                       timeout=60)
    m = Mount(f"s3://{bucket}", path, cache, tmp_path)
    mounter.mounts.append(m)
    m.pid = m.served_status()["pid"]
    proxy.deny_writes = True
    (path / "denied.bin").write_bytes(b"d" * 5000)
    line = wait_for_line(journal, r"upload of .*denied\.bin failed")
    assert line.startswith(f"<3>cache.writeback: upload of {bucket}/denied.bin failed (try 1): "
                           "PermissionDenied: "), line
    assert "retrying alone will not cure this" in line
    proxy.deny_writes = False
    run_cli("sync", str(path))
    mounter.umount(m)
    lines = journal.read_text().splitlines()
    assert all(JOURNAL_LINE.match(line) for line in lines), lines
    assert any(line.startswith("<6>") for line in lines), lines  # INFO: the journal gets it
    assert not (cache / "mountfs.log").exists()  # no log file beside the journal


def test_a_traceback_is_folded_into_its_event_line() -> None:
    from mountfs.logs import FOLD, JournalLine

    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("mountfs.errors", logging.ERROR, __file__, 1,
                                   "unexpected error, reported as EIO: %r", (1,), sys.exc_info())
    line = JournalLine("%(name)s: %(message)s").format(record)
    assert "\n" not in line
    assert line.startswith("<3>mountfs.errors: unexpected error, reported as EIO: 1" + FOLD +
                           "Traceback (most recent call last):" + FOLD)
    assert line.endswith("ValueError: bad" + FOLD + "thing")
