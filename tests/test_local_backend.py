"""LocalBackend: a directory on disk behaving like an object store."""
from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from mountfs.backends.base import ObjectInfo
from mountfs.backends.local_backend import LocalBackend
from mountfs.errors import (
    AlreadyExists, BackendError, ConfigError, InvalidName, NoSuchBucket, NoSuchObject, NotEmpty,
    PreconditionLost,
)


@pytest.fixture
async def be(tmp_path: Path) -> LocalBackend:
    backend = LocalBackend(str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    await backend.create_bucket("b")
    return backend


async def put(be: LocalBackend, key: str, data: bytes = b"", meta: dict[str, str] | None = None,
              bucket: str = "b") -> ObjectInfo:
    return await be.write_object(bucket, key, io.BytesIO(data), len(data), meta or {})


async def listing(be: LocalBackend, prefix: str = "", delimiter: str | None = "/",
                  page_size: int = 1000) -> list[list[str]]:
    return [[i.key for i in page]
            async for page in be.list_objects("b", prefix, delimiter, page_size)]


def keys(pages: list[list[str]]) -> list[str]:
    return [k for page in pages for k in page]


async def test_put_replaces_atomically_and_changes_etag(be: LocalBackend) -> None:
    first = await put(be, "a/b/c", b"old data")
    second = await put(be, "a/b/c", b"new")
    assert (second.size, second.key) == (3, "a/b/c")
    assert second.etag != first.etag
    assert await be.read_object("b", "a/b/c", 0, 100) == b"new"
    assert os.listdir(os.path.join(be._root, ".mountfs-tmp")) == []  # temp file renamed away


async def test_short_upload_fails_and_leaves_nothing(be: LocalBackend) -> None:
    await put(be, "k", b"keep")
    with pytest.raises(BackendError):
        await be.write_object("b", "k", io.BytesIO(b"abc"), 10, {})
    assert await be.read_object("b", "k", 0, 10) == b"keep"
    assert os.listdir(os.path.join(be._root, ".mountfs-tmp")) == []


async def test_large_put_spans_chunks(be: LocalBackend) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    info = await put(be, "big", data)
    assert info.size == len(data)
    assert await be.read_object("b", "big", 0, len(data)) == data


async def test_metadata_round_trip(be: LocalBackend) -> None:
    info = await put(be, "f", b"x", {"mode": "33188", "uid": "1000", "xattr": "{\"é\": \"\"}"})
    assert info.metadata == {"mode": "33188", "uid": "1000", "xattr": "{\"é\": \"\"}"}
    assert (await be.stat_object("b", "f")).metadata == info.metadata
    updated = await be.set_metadata("b", "f", {"mode": "33261"})
    assert updated.metadata == {"mode": "33261"}
    assert (await be.stat_object("b", "f")).metadata == {"mode": "33261"}
    assert await be.read_object("b", "f", 0, 10) == b"x"
    listed = [i.metadata async for page in be.list_objects("b", "") for i in page]
    assert listed == [{"mode": "33261"}]  # listings carry metadata


async def test_stat_missing_and_kind_mismatch(be: LocalBackend) -> None:
    await put(be, "d/f", b"1")
    with pytest.raises(NoSuchObject):
        await be.stat_object("b", "nope")
    with pytest.raises(NoSuchObject):
        await be.stat_object("b", "d")  # a directory, asked for as a file
    with pytest.raises(NoSuchObject):
        await be.stat_object("b", "d/f/")  # a file, asked for as a marker
    with pytest.raises(NoSuchObject):
        await be.stat_object("b", "d/f/g")  # a file used as a directory
    with pytest.raises(NoSuchBucket):
        await be.stat_object("missing", "x")


async def test_list_with_delimiter(be: LocalBackend) -> None:
    for key in ["a.txt", "a/x", "a/y/z", "a0", "b", "ab/c"]:
        await put(be, key, b"data")
    pages = await listing(be)
    # '.' < '/' < '0': the prefix "a/" sorts between "a.txt" and "a0".
    assert keys(pages) == ["a.txt", "a/", "a0", "ab/", "b"]
    prefixes = [i.key async for p in be.list_objects("b", "") for i in p if i.is_prefix]
    assert prefixes == ["a/", "ab/"]
    assert keys(await listing(be, "a/")) == ["a/x", "a/y/"]
    assert keys(await listing(be, "a/y/")) == ["a/y/z"]


async def test_list_partial_prefix(be: LocalBackend) -> None:
    for key in ["x/abc", "x/abd/e", "x/b", "xy"]:
        await put(be, key)
    assert keys(await listing(be, "x/ab")) == ["x/abc", "x/abd/"]
    assert keys(await listing(be, "x")) == ["x/", "xy"]
    assert keys(await listing(be, "x/zz")) == []
    assert keys(await listing(be, "nope/")) == []
    assert keys(await listing(be, "xy/")) == []  # a file is not a directory


async def test_list_pagination(be: LocalBackend) -> None:
    for key in ["e", "c", "a", "d/1", "b"]:
        await put(be, key)
    pages = await listing(be, page_size=2)
    assert pages == [["a", "b"], ["c", "d/"], ["e"]]
    assert await listing(be, delimiter=None, page_size=2) == [["a", "b"], ["c", "d/1"], ["e"]]


async def test_list_missing_bucket(be: LocalBackend) -> None:
    with pytest.raises(NoSuchBucket):
        [i async for page in be.list_objects("missing", "") for i in page]


async def test_recursive_list(be: LocalBackend) -> None:
    for key in ["a/b/c", "a.txt", "a/b.txt", "z"]:
        await put(be, key)
    await put(be, "a/empty/")
    assert keys(await listing(be, delimiter=None)) == [
        "a.txt", "a/b.txt", "a/b/c", "a/empty/", "z",
    ]
    assert keys(await listing(be, "a/", delimiter=None)) == ["a/b.txt", "a/b/c", "a/empty/"]
    assert keys(await listing(be, "a/e", delimiter=None)) == ["a/empty/"]


async def test_markers(be: LocalBackend) -> None:
    info = await put(be, "dir/", meta={"mode": "16877"})
    assert os.path.isdir(os.path.join(be._root, "b", "dir"))
    assert (info.key, info.size, info.is_prefix) == ("dir/", 0, False)
    assert (await be.stat_object("b", "dir/")).metadata == {"mode": "16877"}
    assert await be.read_object("b", "dir/", 0, 10) == b""
    assert keys(await listing(be)) == ["dir/"]
    assert keys(await listing(be, "dir/")) == ["dir/"]  # as S3 lists a marker, under itself
    with pytest.raises(InvalidName):
        await put(be, "bad/", b"data")

    await put(be, "dir/f", b"1")
    await be.delete_object("b", "dir/")  # non-empty: no-op success
    assert keys(await listing(be, "dir/")) == ["dir/f"]
    await be.delete_object("b", "dir/f")
    assert (await be.stat_object("b", "dir/")).key == "dir/"  # stays as a marker
    await be.delete_object("b", "dir/")
    assert not os.path.exists(os.path.join(be._root, "b", "dir"))
    with pytest.raises(NoSuchObject):
        await be.stat_object("b", "dir/")


async def test_put_conflicts(be: LocalBackend) -> None:
    await put(be, "f", b"1")
    await put(be, "d/")
    with pytest.raises(AlreadyExists):
        await put(be, "d", b"x")  # a directory is at the key's path
    with pytest.raises(AlreadyExists):
        await put(be, "f/g", b"x")  # a parent is a file
    with pytest.raises(AlreadyExists):
        await put(be, "f/")
    with pytest.raises(NoSuchBucket):
        await put(be, "k", bucket="missing")


async def test_ranged_read(be: LocalBackend) -> None:
    await put(be, "r", b"0123456789")
    assert await be.read_object("b", "r", 2, 3) == b"234"
    assert await be.read_object("b", "r", 8, 10) == b"89"
    assert await be.read_object("b", "r", 10, 5) == b""
    assert await be.read_object("b", "r", 50, 5) == b""
    with pytest.raises(NoSuchObject):
        await be.read_object("b", "missing", 0, 1)


async def test_copy(be: LocalBackend) -> None:
    await be.create_bucket("c")
    await put(be, "src", b"payload", {"uid": "7"})
    info = await be.copy_object("b", "src", "c", "deep/dst")
    assert (info.bucket, info.key, info.size, info.metadata) == ("c", "deep/dst", 7, {"uid": "7"})
    assert await be.read_object("c", "deep/dst", 0, 100) == b"payload"
    await put(be, "src", b"changed")
    assert await be.read_object("c", "deep/dst", 0, 100) == b"payload"  # an independent copy
    marker = await be.copy_object("b", "src", "b", "src")  # onto itself
    assert marker.size == 7
    await put(be, "m/", meta={"mode": "16877"})
    assert (await be.copy_object("b", "m/", "c", "n/")).metadata == {"mode": "16877"}
    with pytest.raises(NoSuchObject):
        await be.copy_object("b", "missing", "c", "x")


async def test_delete_idempotent(be: LocalBackend) -> None:
    await put(be, "a/b", b"1")
    await be.delete_object("b", "a/b")
    await be.delete_object("b", "a/b")
    await be.delete_object("b", "never")
    await be.delete_object("b", "a/b/c")  # parent is not a directory
    await be.delete_object("b", "a")  # a directory, not an object by that key
    with pytest.raises(NoSuchObject):
        await be.stat_object("b", "a/b")
    assert os.path.isdir(os.path.join(be._root, "b", "a"))
    with pytest.raises(NoSuchBucket):
        await be.delete_object("missing", "x")


async def test_buckets(be: LocalBackend) -> None:
    os.mkdir(os.path.join(be._root, ".hidden"))
    await be.create_bucket("a")
    assert await be.list_buckets() == ["a", "b"]
    with pytest.raises(AlreadyExists):
        await be.create_bucket("a")
    for bad in ["", ".x", "a/b", "x" * 256, ".mountfs-tmp"]:
        with pytest.raises(InvalidName):
            await be.create_bucket(bad)
    await put(be, "x", bucket="a")
    with pytest.raises(NotEmpty):
        await be.delete_bucket("a")
    await be.delete_object("a", "x")
    await be.delete_bucket("a")
    assert await be.list_buckets() == ["b"]
    with pytest.raises(NoSuchBucket):
        await be.delete_bucket("a")


async def test_empty_dir_keeps_bucket_not_empty(be: LocalBackend) -> None:
    await put(be, "d/")
    with pytest.raises(NotEmpty):
        await be.delete_bucket("b")


@pytest.mark.parametrize("key", ["../x", "../../x", "a//b", "/abs", "a\0b", "a/./b", "", "/", "a/.."])
async def test_hostile_keys(be: LocalBackend, tmp_path: Path, key: str) -> None:
    await put(be, "src", b"ok")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    ops = [put(be, key, b"evil"), be.stat_object("b", key), be.delete_object("b", key),
           be.read_object("b", key, 0, 1), be.set_metadata("b", key, {}),
           be.copy_object("b", "src", "b", key), be.copy_object("b", key, "b", "dst")]
    for op in ops:
        with pytest.raises(InvalidName):
            await op
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


async def test_hostile_prefix_and_bucket(be: LocalBackend) -> None:
    with pytest.raises(InvalidName):
        await listing(be, "../")
    with pytest.raises(InvalidName):
        await listing(be, "/")
    with pytest.raises(InvalidName):
        await be.stat_object("..", "x")


async def test_symlink_out_of_root_is_refused(be: LocalBackend, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, os.path.join(be._root, "b", "link"))
    with pytest.raises(InvalidName):
        await put(be, "link/x", b"evil")
    assert list(outside.iterdir()) == []
    assert keys(await listing(be)) == []  # symlinks are not objects


async def test_symlinks_are_never_followed(be: LocalBackend, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    (outside / "d" / "secret").write_bytes(b"secret")
    os.symlink(outside, os.path.join(be._root, "b", "link"))
    os.symlink(outside / "d" / "secret", os.path.join(be._root, "b", "file-link"))
    os.symlink(outside, os.path.join(be._root, "linked-bucket"))
    for key in ["link/d/secret", "file-link", "link/", "link/d/"]:
        with pytest.raises(NoSuchObject):
            await be.stat_object("b", key)
        with pytest.raises(NoSuchObject):
            await be.read_object("b", key, 0, 10)
        with pytest.raises(NoSuchObject):
            await be.set_metadata("b", key, {"mode": "1"})
        with pytest.raises(NoSuchObject):
            await be.copy_object("b", key, "b", "copy")
    assert keys(await listing(be, "link/")) == []
    assert keys(await listing(be, "link/d/", delimiter=None)) == []
    with pytest.raises(InvalidName):
        await put(be, "link/d/new/", meta={"mode": "16877"})
    await be.delete_object("b", "link/d/secret")
    with pytest.raises(NoSuchBucket):
        await be.stat_object("linked-bucket", "d/secret")
    with pytest.raises(NoSuchBucket):
        await be.delete_bucket("linked-bucket")
    assert (outside / "d" / "secret").read_bytes() == b"secret"
    assert not (outside / "d" / "new").exists()
    assert await be.list_buckets() == ["b"]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_keys_longer_than_path_max(be: LocalBackend) -> None:
    # 45 components of 200 bytes: 9,044 bytes, over twice the host's PATH_MAX (4,096); every
    # operation works relative to directory descriptors, never on the whole path.
    fds = open_fds()
    parts = [f"{i:02d}" + "x" * 198 for i in range(45)]
    key, dirs = "/".join(parts), "/".join(parts[:-1])
    assert len(key) > 2 * os.pathconf("/", "PC_PATH_MAX")
    info = await put(be, key, b"deep", {"mode": "33188"})
    assert (await be.stat_object("b", key)).etag == info.etag
    assert await be.read_object("b", key, 1, 10) == b"eep"
    assert keys(await listing(be, dirs + "/")) == [key]
    assert keys(await listing(be, dirs + "/" + parts[-1][:5])) == [key]
    assert keys(await listing(be, delimiter=None)) == [key]
    assert keys(await listing(be, parts[0] + "/")) == [parts[0] + "/" + parts[1] + "/"]
    assert (await be.set_metadata("b", key, {"mode": "33261"})).metadata == {"mode": "33261"}
    copied = await be.copy_object("b", key, "b", dirs + "/copy")
    assert (copied.size, copied.metadata) == (4, {"mode": "33261"})
    await put(be, dirs + "/sub/", meta={"mode": "16877"})
    assert (await be.stat_object("b", dirs + "/sub/")).metadata == {"mode": "16877"}
    assert keys(await listing(be, dirs + "/sub/")) == [dirs + "/sub/"]
    second = await be.write_object("b", key, io.BytesIO(b"v2"), 2, {}, if_match=info.etag)
    with pytest.raises(PreconditionLost):
        await be.write_object("b", key, io.BytesIO(b"v3"), 2, {}, if_match=info.etag)
    assert await be.read_object("b", key, 0, 10) == b"v2" and second.size == 2
    for k in [key, dirs + "/copy", dirs + "/sub/"]:
        await be.delete_object("b", k)
    assert keys(await listing(be, dirs + "/", delimiter=None)) == [dirs + "/"]  # emptied: a marker
    with pytest.raises(NoSuchObject):
        await be.stat_object("b", key)
    assert open_fds() == fds  # every directory descriptor of the walks closed again


async def test_partial_listing_closes_its_directories(be: LocalBackend) -> None:
    for i in range(5):
        await put(be, f"a/b/c/{i}")
    fds = open_fds()
    pages = be.list_objects("b", "", delimiter=None, page_size=2)
    assert [i.key for i in await pages.__anext__()] == ["a/b/c/0", "a/b/c/1"]
    await pages.aclose()  # a reader that stops after the first page
    assert open_fds() == fds


async def test_describe_and_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert LocalBackend("/some/dir").describe() == "local:/some/dir"
    await LocalBackend(str(tmp_path)).check()

    with pytest.raises(ConfigError, match="no such directory"):
        await LocalBackend(str(tmp_path / "missing")).check()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        await LocalBackend(str(tmp_path / "file")).check()

    # Root passes any permission test, so fake the answers instead.
    with monkeypatch.context() as m:
        m.setattr(os, "access", lambda path, mode: False)
        with pytest.raises(ConfigError, match="not writable"):
            await LocalBackend(str(tmp_path)).check()

    def no_xattrs(*args: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_xattrs)
    with pytest.raises(ConfigError, match="extended attributes") as exc:
        await LocalBackend(str(tmp_path)).check()
    assert "\n" not in str(exc.value)
    assert os.listdir(tmp_path / ".mountfs-tmp") == []
