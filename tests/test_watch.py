"""`mountfs status --watch`: the live view in a pseudo-terminal (pexpect) while a large upload
crawls through a throttled proxy, and the piped form (plain event lines) on every driver.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from conftest import BACKENDS, Mount, Mounter
from kits import Store
from servers.faults import FaultProxy
from test_faults import MiB, bucket, mount_via, on_server, proxy  # noqa: F401 (fixtures)
from test_s3 import bucket_name, client, s3_env  # noqa: F401 (fixtures)


def watch_env() -> dict[str, str]:
    return {**os.environ, "TERM": "xterm-256color"}


def test_watch_view_draws_a_bar_for_an_upload_and_ends_on_ctrl_c(
        mounter: Mounter, proxy: FaultProxy, client, bucket: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOUNTFS_READ_TIMEOUT", "30")  # a throttled part's reply comes late
    m = mount_via(mounter, proxy, bucket, "mnt", "--writeback-delay", "0")
    proxy.bandwidth = 4 * MiB  # 24 MiB: three 8 MiB parts, some seconds on the wire
    child = pexpect.spawn(sys.executable, ["-m", "mountfs", "status", "--watch", str(m.path)],
                          env=watch_env(), dimensions=(30, 160), encoding="utf-8", timeout=30)
    try:
        child.expect("nothing under way")
        data = os.urandom(24 * MiB)
        (m.path / "big.bin").write_bytes(data)
        # The upload's row: arrow, name, a bar (rich draws it with ━), bytes of the whole.
        child.expect(r"↑ big\.bin[^\r\n]*━[^\r\n]*/24\.0 MiB")
        child.expect(r"1 uploaded")
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        proxy.bandwidth = 0
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    assert "Traceback" not in (child.before or "")
    assert on_server(client, bucket, "big.bin") == data
    mounter.umount(m)


def read_lines_until(proc: subprocess.Popen[str], wanted: str, timeout: float = 30) -> list[str]:
    """Lines of `proc`'s stdout up to the first containing `wanted`."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if wanted in line:
            return lines
    raise AssertionError(f"no line with {wanted!r} in {lines}")


@pytest.mark.backends(*BACKENDS)
def test_piped_watch_prints_one_plain_line_per_event(mounter: Mounter, store: Store) -> None:
    # Two seconds in the queue (a file written whole goes up at close otherwise), so that
    # the watch, polling twice a second, sees it queued as well as uploaded.
    m: Mount = mounter.mount(store, "--writeback-delay", "2", "--whole-file-delay", "2")
    proc = subprocess.Popen([sys.executable, "-m", "mountfs", "status", "--watch", str(m.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = read_lines_until(proc, "queue: 0 queued")
        (m.bucket / "seen.txt").write_bytes(b"x" * 300_000)
        name = f"{store.bucket}/seen.txt"
        lines = first + read_lines_until(proc, f"uploaded {name}")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    lines += out.splitlines(keepends=True)
    text = "".join(lines)
    assert proc.returncode == 0, err
    assert "\x1b" not in text and "\r" not in text, text  # no control codes
    assert all(re.match(r"\d\d:\d\d:\d\d \S", line) for line in lines), lines  # stamped
    assert any(f"queued {name} (293.0 KiB)" in line for line in lines), text
    assert any(f"uploaded {name} (293.0 KiB)" in line for line in lines), text
    assert err == ""
    mounter.umount(m)


def test_watch_of_a_directory_that_is_no_mount_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mountfs", "status", "--watch", str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr == f"mountfs: {tmp_path} is not a mountfs mount\n"


def status_doc(queue: list[dict], downloads: tuple[dict, ...] | list[dict] = (),
               transfers: tuple[dict, ...] | list[dict] = (),
               uploaded: int = 0, recent: tuple[str, ...] = ()) -> dict:
    """A status document; `recent`: the paths of the last `uploaded` uploads, in order."""
    done = [{"n": uploaded - len(recent) + i + 1, "path": path, "size": 2048}
            for i, path in enumerate(recent)]
    return {"mountpoint": "/mnt", "queue": queue, "queued": len(queue), "uploaded": uploaded,
            "recent": done, "downloads": list(downloads), "transfers": list(transfers)}


def entry(path: str, state: str, tries: int = 0, error: str = "", done: int = 0) -> dict:
    bucket, _, key = path.partition("/")
    return {"bucket": bucket, "key": key, "path": path, "size": 2048, "done": done,
            "state": state, "tries": tries, "error": error, "next_try": 60.0}


def test_events_between_two_readings() -> None:
    from mountfs.watch import changes

    before = status_doc([entry("b/up", "uploading", done=1024), entry("b/bad", "failed", 1,
                                                                      "PermissionDenied: no")],
                        downloads=[{"path": "b/in", "size": 4096, "done": 0}],
                        transfers=[{"what": "upload kit:/b/big", "size": 9, "done": 0,
                                    "phase": "job PENDING"}])
    after = status_doc([entry("b/bad", "failed", 2, "PermissionDenied: no"),
                        entry("b/new", "waiting")],
                       downloads=[{"path": "b/in2", "size": 4096, "done": 0}],
                       transfers=[{"what": "upload kit:/b/big", "size": 9, "done": 9,
                                   "phase": "job RUNNING"}], uploaded=1,
                       recent=("b/up",))
    assert changes(before, after) == [
        "upload failed b/bad: PermissionDenied: no (try 2, next try in 60s; to give it up: "
        "mountfs discard /mnt b/bad)",
        "queued b/new (2.0 KiB)",
        "uploaded b/up (2.0 KiB)",
        "download started b/in2 (4.0 KiB)",
        "step upload kit:/b/big: job RUNNING",
        "download done b/in",
    ]
    # Queued and uploaded between two readings, and more uploads than the status keeps.
    later = status_doc([], uploaded=104, recent=tuple(f"b/f{i}" for i in range(4, 104)))
    assert changes(after, later) == [
        "3 more uploaded", *(f"uploaded b/f{i} (2.0 KiB)" for i in range(4, 104)),
        "left the queue b/bad (2.0 KiB)", "left the queue b/new (2.0 KiB)",
        "download done b/in2", "step done upload kit:/b/big"]


def test_live_view_shows_downloads_steps_and_failures() -> None:
    import io

    from rich.console import Console

    from mountfs.watch import LiveView, moving

    doc = status_doc([entry("b/bad", "failed", 3, "PermissionDenied: no"),
                      entry("b/up", "uploading", done=1024)],
                     downloads=[{"path": "b/in", "size": 4096, "done": 2048}],
                     transfers=[{"what": "upload kit:/b/big", "size": 0, "done": 0,
                                 "phase": ""}])
    doc.update(source="s3://b", cache={"used": 3 << 20, "cap": 10 << 20, "dirty": 1 << 20})
    out = io.StringIO()
    console = Console(file=out, width=160, color_system=None)
    view = LiveView(console)
    view.bars.update(moving(doc))
    console.print(view.render(doc))
    text = out.getvalue()
    assert "queue: 2 files (4.0 KiB), 1 uploading, 1 failing; 0 uploaded" in text
    assert "3.0 MiB of 10.0 MiB (1.0 MiB not uploaded)" in text
    assert re.search(r"↑ b/up .*1\.0/2\.0 KiB", text), text
    assert re.search(r"↓ b/in .*2\.0/4\.0 KiB", text), text
    assert re.search(r"⋯ upload kit:/b/big .*starting", text), text
    assert "✗ b/bad: PermissionDenied: no (try 3, next try in 60s; to give it up: mountfs " \
           "discard /mnt b/bad)" in text
