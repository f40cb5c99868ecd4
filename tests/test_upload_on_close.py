"""`--upload-on-close`: a writer's close returns once the file is on the server, with the
upload's error as its own, for pipelines that hand the object on as soon as `cp` returns."""
from __future__ import annotations

import errno
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conftest import Mounter
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
