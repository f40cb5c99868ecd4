"""`--upload-on-close`: a writer's close returns once the file is on the server, with the
upload's error as its own, for pipelines that hand the object on as soon as `cp` returns."""
from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conftest import Mounter
from stores import names
from test_fidelity import in_store

if TYPE_CHECKING:
    from kits import Store

pytestmark = [pytest.mark.mounted, pytest.mark.backends("local", "s3")]


def test_close_returns_once_the_file_is_on_the_server(mounter: Mounter, store: Store,
                                                      tmp_path: Path) -> None:
    # A write-back delay of 5 minutes: only the option can have uploaded it by then.
    m = mounter.mount(store, "--writeback-delay", "300", "--upload-on-close")
    (m.bucket / "f").write_bytes(b"handed on at once")
    assert (store.stored / "f").read_bytes() == b"handed on at once"
    source = tmp_path / "src.bin"
    source.write_bytes(bytes(range(256)) * 40_000)  # 10 MiB: multipart on S3
    subprocess.run(["cp", str(source), str(m.bucket / "copied")], check=True)
    assert (store.stored / "copied").read_bytes() == source.read_bytes()
    # A reader's close uploads nothing and waits for nothing.
    assert (m.bucket / "f").read_bytes() == b"handed on at once"
    assert m.status()["queued"] == 0


@pytest.mark.requires("buckets_editable")
def test_close_reports_the_upload_error_and_keeps_the_file(mounter: Mounter,
                                                           store: Store) -> None:
    m = mounter.mount(store, "--writeback-delay", "300", "--upload-on-close")
    (m.bucket / "dir").mkdir()
    in_store(store, "delete_object", "dir/")
    in_store(store, "delete_bucket")  # every upload now fails for good: no bucket
    with pytest.raises(OSError) as raised:
        with open(m.bucket / "dir" / "f", "wb") as f:
            f.write(b"kept for a retry")
    assert raised.value.errno == errno.ENOENT
    [entry] = m.status()["queue"]
    assert entry["state"] == "failed" and entry["key"] == "dir/f"
    in_store(store, "create_bucket")  # the cause fixed: the kept file goes up
    with open(m.bucket / "dir" / "f", "rb+") as f:
        f.write(b"K")
    assert (store.stored / "dir" / "f").read_bytes() == b"Kept for a retry"


def wait_for(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_a_file_written_whole_goes_up_at_close_an_in_place_rewrite_waits(
        mounter: Mounter, store: Store, tmp_path: Path) -> None:
    """Without `--upload-on-close`, a long write-back delay: files written whole (created,
    or opened with O_TRUNC, and closed with no writer left) go up at once, in parallel; a file
    rewritten in place (opened without O_TRUNC), or whole while another writer still has it
    open, waits out the delay meant for editors."""
    m = mounter.mount(store, "--writeback-delay", "300")
    sources = tmp_path / "src"
    sources.mkdir()
    for i in range(40):
        (sources / f"s{i:02d}").write_bytes(b"small %d" % i)
    subprocess.run(["cp", "-r", str(sources), str(m.bucket / "copy")], check=True)
    assert wait_for(lambda: all((store.stored / "copy" / f"s{i:02d}").exists()
                                for i in range(40)), 20), m.status()["queue"]
    assert (store.stored / "copy" / "s07").read_bytes() == b"small 7"
    with open(m.bucket / "copy" / "s07", "r+b") as f:  # in place: an editor's rewrite
        f.write(b"SMALL")
    with open(m.bucket / "copy" / "s08", "wb") as f:  # O_TRUNC: whole again
        f.write(b"replaced 8")
    with open(m.bucket / "copy" / "s09", "r+b") as writer:  # another writer stays
        with open(m.bucket / "copy" / "s09", "wb") as f:
            f.write(b"replaced 9")
        assert wait_for(lambda: (store.stored / "copy" / "s08").read_bytes()
                        == b"replaced 8", 20)
        time.sleep(1.0)
        assert (store.stored / "copy" / "s09").read_bytes() == b"small 9", \
            "a writer still holds it: not whole yet"
        writer.seek(0, 2)
    assert (store.stored / "copy" / "s07").read_bytes() == b"small 7", "waits out the delay"
    assert {entry["key"] for entry in m.status()["queue"]} == {"copy/s07", "copy/s09"}
    assert (m.bucket / "copy" / "s07").read_bytes() == b"SMALL 7"


def test_a_file_written_whole_then_renamed_ends_under_the_new_name_only(
        mounter: Mounter, store: Store) -> None:
    """An editor's save: a temporary file written whole, closed (so it goes up at once), then
    renamed over the file. The server ends with the new data under the file's name and nothing
    under the temporary name, whether the rename came during the upload or after it."""
    m = mounter.mount(store, "--writeback-delay", "300")
    (m.bucket / "doc.txt").write_bytes(b"version 0")
    for i in range(1, 6):
        tmp = m.bucket / f".doc.txt.tmp{i}"
        tmp.write_bytes(b"version %d" % i)
        if i % 2:
            time.sleep(0.5)  # uploaded before the rename: moved on the server
        os.rename(tmp, m.bucket / "doc.txt")
    assert (m.bucket / "doc.txt").read_bytes() == b"version 5"
    assert wait_for(lambda: (store.stored / "doc.txt").read_bytes() == b"version 5", 20)
    assert wait_for(lambda: names(store.stored) == ["doc.txt"], 20), names(store.stored)
