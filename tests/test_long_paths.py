"""Long paths through a real mount: as long as the kernel takes (4,095 bytes, 32+ components).

The `local` store resolves keys one directory descriptor at a time, so a path the kernel
accepts on the mount works although the same path in the store (whose root is longer than the
mount point's) is past the host's PATH_MAX. S3 keys are at most 1,024 bytes: there the longest
key must work, and a longer path fail with ENAMETOOLONG at once, not EIO at the upload.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from conftest import Mount, Mounter

pytestmark = [pytest.mark.mounted, pytest.mark.backends("local", "s3")]

PATH_MAX = os.pathconf("/", "PC_PATH_MAX")  # 4,096 on Linux, the NUL included


def components(base: Path, total: int, count: int) -> list[str]:
    """`count` names that make `base/n1/.../ncount` exactly `total` bytes long."""
    return names_of(total - len(os.fsencode(base)) - 1, count)


def names_of(length: int, count: int) -> list[str]:
    """`count` names whose '/'-joined key is `length` bytes long."""
    each, extra = divmod(length - (count - 1), count)
    names = [f"{i:02d}" + "x" * (each - 2 + (i < extra)) for i in range(count)]
    assert len("/".join(names)) == length
    return names


def renamed(name: str) -> str:
    """Another name of the same length: the path keeps its length."""
    return name[:-1] + "y"


def exercise(m: Mount, names: list[str]) -> bytes:
    """Create, write, list, read, rename and remove `bucket/names...` through the mount;
    the data written, now at the renamed path (see `moved`)."""
    top, *middle, leaf = names
    deep = m.bucket.joinpath(top, *middle)
    os.makedirs(deep)
    data = os.urandom(100_000)
    (deep / leaf).write_bytes(data)
    assert os.stat(deep / leaf).st_size == len(data)
    walked = [(root, files) for root, _, files in os.walk(m.bucket) if files]
    assert walked == [(str(deep), [leaf])]
    assert (deep / leaf).read_bytes() == data

    os.rename(deep / leaf, deep / renamed(leaf))
    assert os.listdir(deep) == [renamed(leaf)]
    os.rename(m.bucket / top, m.bucket / renamed(top))  # every object below is copied
    assert moved(m, names).read_bytes() == data
    assert not (m.bucket / top).exists()
    return data


def moved(m: Mount, names: list[str]) -> Path:
    top, *middle, leaf = names
    return m.bucket.joinpath(renamed(top), *middle, renamed(leaf))


def test_path_as_long_as_the_kernel_takes(mounter: Mounter, mounted: Mount) -> None:
    names = components(mounted.bucket, PATH_MAX - 1, 32)
    key_max = mounted.store.features.max_key_length
    if key_max is not None:
        # A longer path fails at the first directory whose key (its marker `dir/`) is too
        # long, clearly; the longest key the store takes works.
        with pytest.raises(OSError) as info:
            os.makedirs(mounted.bucket.joinpath(*names[:-1]))
        assert info.value.errno == errno.ENAMETOOLONG
        shutil.rmtree(mounted.bucket / names[0])  # the directories that fit were made
        names = names_of(key_max, 32)
    else:
        in_store = Path(mounted.source.removeprefix("local:"), mounted.bucket.name, *names)
        assert len(os.fsencode(in_store)) > PATH_MAX  # the same path in the store is too long
    data = exercise(mounted, names)

    mounter.umount(mounted)
    # A new cache: the data comes from the store. The same path length as before.
    fresh = mounter.mount(mounted.store, name=mounted.path.name[:-1] + "2")
    assert moved(fresh, names).read_bytes() == data
    shutil.rmtree(fresh.bucket / renamed(names[0]))  # rmtree works by descriptors too
    assert os.listdir(fresh.bucket) == []


def test_file_key_over_the_store_limit(mounted: Mount) -> None:
    """A file whose own key is too long for the store, in a directory whose key is not."""
    key_max = mounted.store.features.max_key_length
    if key_max is None:
        pytest.skip("the driver declares no key limit: the kernel's path limits it")
    deep = mounted.bucket.joinpath(*["d" * 99] * 9)  # its marker key: 900 bytes
    os.makedirs(deep)
    with pytest.raises(OSError) as info:
        (deep / ("f" * 200)).write_bytes(b"data")
    assert info.value.errno == errno.ENAMETOOLONG
    assert os.listdir(deep) == []
