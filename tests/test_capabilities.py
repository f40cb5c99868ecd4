"""What a driver declares in its `Features` is what the mount does: one test body per field the
namespace reads, run on every driver, each asserting the behaviour its declaration implies.
(`writable` is test_dcss.py's anonymous mount; `conditional_writes` is test_two_mounts.py;
`max_key_length` is test_long_paths.py; `special_files` test_fidelity.py and, where a store
lacks it, test_firecrest.py.)"""
from __future__ import annotations

import errno
import os

import pytest

from conftest import BACKENDS, Mount
from test_posix import oserror

pytestmark = [pytest.mark.mounted, pytest.mark.backends(*BACKENDS)]


def test_buckets_are_made_and_removed_at_the_root_only_where_declared(mounted: Mount) -> None:
    features = mounted.store.features
    if features.buckets_editable:
        os.mkdir(mounted.path / "made")
        assert "made" in os.listdir(mounted.path)
        os.rmdir(mounted.path / "made")
        assert "made" not in os.listdir(mounted.path)
    else:
        assert oserror(os.mkdir, mounted.path / "made") == errno.EPERM
        assert oserror(os.rmdir, mounted.bucket) == errno.EPERM
        assert sorted(os.listdir(mounted.path)) == mounted.store.buckets
    # an existing bucket is EEXIST either way, before anything else
    assert oserror(os.mkdir, mounted.bucket) == errno.EEXIST


def test_a_file_past_the_largest_object_fails_at_the_write(mounted: Mount) -> None:
    limit = mounted.store.features.max_object_size
    if limit is None:
        pytest.skip("the driver declares no largest object")
    path = mounted.bucket / "big"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert oserror(os.pwrite, fd, b"x", limit) == errno.EFBIG
        assert oserror(os.ftruncate, fd, limit + 1) == errno.EFBIG
        assert oserror(os.truncate, path, limit + 1) == errno.EFBIG
        assert os.pwrite(fd, b"fits", 0) == 4
    finally:
        os.close(fd)
    assert path.read_bytes() == b"fits"
