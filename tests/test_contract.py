"""The driver contract (mountfs/backends/base.py), one test body per behaviour, run in-process
against every driver that has a test kit (`[local]`, `[s3]`, `[dcss]`), without a mount.

Each test gets the kit's fresh store and its driver, opened through the driver registry as the
mount opens it. What a driver declares it cannot do (`Features`) is skipped by that
declaration (`@pytest.mark.requires`), never by the driver's name. Where the result can be
checked in the store itself, it is (the kit's `StorePath`), so a driver that agrees with
itself but stores something else fails too.
"""
from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest

from conftest import DRIVERS
from kits import Store
from mountfs.backends.base import IF_ABSENT, Backend, ObjectInfo
from mountfs.errors import NoSuchObject, NotEmpty, PreconditionLost

pytestmark = pytest.mark.backends(*DRIVERS)


@pytest.fixture
async def driver(store: Store, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Backend]:
    """The store's driver, in-process, with the store's environment (credentials)."""
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    source = await store.open()
    try:
        yield source.backend
    finally:
        await source.backend.aclose()


async def put(driver: Backend, bucket: str, key: str, data: bytes,
              metadata: dict[str, str] | None = None, **kwargs: str) -> ObjectInfo:
    return await driver.write_object(bucket, key, io.BytesIO(data), len(data), metadata or {},
                                     **kwargs)


async def listing(driver: Backend, bucket: str, prefix: str = "", delimiter: str | None = "/",
                  page_size: int = 1000) -> list[list[ObjectInfo]]:
    return [page async for page in driver.list_objects(bucket, prefix, delimiter, page_size)]


def keys(pages: list[list[ObjectInfo]]) -> list[str]:
    return [info.key for page in pages for info in page]


def data(n: int, seed: int = 0) -> bytes:
    """`n` bytes that differ from offset to offset, so a misplaced range shows."""
    return bytes((i * 7 + seed + i // 251) % 256 for i in range(n))


# ---- objects ---------------------------------------------------------------------------------

async def test_put_then_get(driver: Backend, store: Store) -> None:
    body = data(100_000)
    info = await put(driver, store.bucket, "dir/obj", body)
    assert (info.bucket, info.key, info.size) == (store.bucket, "dir/obj", len(body))
    assert info.etag
    assert await driver.read_object(store.bucket, "dir/obj", 0, len(body)) == body
    assert (store.stored / "dir" / "obj").read_bytes() == body
    stat = await driver.stat_object(store.bucket, "dir/obj")
    assert (stat.size, stat.etag, stat.is_prefix) == (len(body), info.etag, False)
    assert stat.mtime_ns > 0


async def test_put_replaces_whole(driver: Backend, store: Store) -> None:
    await put(driver, store.bucket, "obj", data(5000, seed=1))
    second = await put(driver, store.bucket, "obj", b"short")
    assert await driver.read_object(store.bucket, "obj", 0, 5000) == b"short"
    assert (await driver.stat_object(store.bucket, "obj")).etag == second.etag
    assert (store.stored / "obj").read_bytes() == b"short"


async def test_empty_object(driver: Backend, store: Store) -> None:
    info = await put(driver, store.bucket, "empty", b"")
    assert info.size == 0
    assert await driver.read_object(store.bucket, "empty", 0, 10) == b""
    assert (await driver.stat_object(store.bucket, "empty")).size == 0


async def test_ranged_reads(driver: Backend, store: Store) -> None:
    body = data(300_000, seed=2)
    await put(driver, store.bucket, "ranged", body)
    for offset, length in ((0, 1), (1, 4096), (65_535, 70_000), (299_990, 10)):
        got = await driver.read_object(store.bucket, "ranged", offset, length)
        assert got == body[offset:offset + length], (offset, length)
    # Past the end: fewer bytes, then none.
    assert await driver.read_object(store.bucket, "ranged", 299_995, 100) == body[299_995:]
    assert await driver.read_object(store.bucket, "ranged", 300_000, 100) == b""
    assert await driver.read_object(store.bucket, "ranged", 400_000, 100) == b""


async def read_into(driver: Backend, bucket: str, key: str, offset: int,
                    length: int) -> tuple[int, bytes]:
    """`driver.read_into` into a buffer by the positions it is handed: (its count, the bytes)."""
    buf = bytearray(length)
    top = [0]

    def sink(pos: int, piece: bytes) -> None:
        buf[pos:pos + len(piece)] = piece
        top[0] = max(top[0], pos + len(piece))

    got = await driver.read_into(bucket, key, offset, length, sink)
    return got, bytes(buf[:top[0]])


async def test_ranged_reads_into_a_sink(driver: Backend, store: Store) -> None:
    body = data(300_000, seed=3)
    await put(driver, store.bucket, "sunk", body)
    for offset, length in ((0, 1), (65_535, 70_000), (0, 300_000)):
        assert await read_into(driver, store.bucket, "sunk", offset, length) \
            == (length, body[offset:offset + length]), (offset, length)
    # Past the end: fewer bytes, then none.
    assert await read_into(driver, store.bucket, "sunk", 299_995, 100) == (5, body[299_995:])
    assert await read_into(driver, store.bucket, "sunk", 400_000, 100) == (0, b"")
    with pytest.raises(NoSuchObject):
        await read_into(driver, store.bucket, "missing", 0, 10)


async def test_missing_object(driver: Backend, store: Store) -> None:
    with pytest.raises(NoSuchObject):
        await driver.stat_object(store.bucket, "missing")
    with pytest.raises(NoSuchObject):
        await driver.read_object(store.bucket, "missing", 0, 10)
    await put(driver, store.bucket, "dir/inside", b"x")
    with pytest.raises(NoSuchObject):  # a prefix of keys is no object
        await driver.stat_object(store.bucket, "dir")


async def test_delete_is_idempotent(driver: Backend, store: Store) -> None:
    await put(driver, store.bucket, "gone", b"x")
    await put(driver, store.bucket, "kept", b"y")
    await driver.delete_object(store.bucket, "gone")
    with pytest.raises(NoSuchObject):
        await driver.stat_object(store.bucket, "gone")
    assert not (store.stored / "gone").exists()
    await driver.delete_object(store.bucket, "gone")  # again: nothing to do, no error
    await driver.delete_object(store.bucket, "never-was")
    assert keys(await listing(driver, store.bucket)) == ["kept"]


# ---- metadata and copies ------------------------------------------------------------------

METADATA = {"mode": "33188", "uid": "1000", "gid": "1000", "mtime": "1500000000.123456789",
            "xattr": '{"user.colour": "Ymx1ZQ=="}'}


def kept(driver: Backend, metadata: dict[str, str | None]) -> dict[str, str | None]:
    """Of `metadata` (attributes by mountfs's names), what the driver keeps."""
    return {k: v for k, v in metadata.items() if driver.features.keeps(k)}


def stored(info: ObjectInfo, driver: Backend) -> dict[str, str | None]:
    """The kept attributes of METADATA that `info` carries."""
    assert info.metadata is not None
    return {k: info.metadata.get(k) for k in kept(driver, dict(METADATA))}


async def test_metadata_round_trip(driver: Backend, store: Store) -> None:
    await put(driver, store.bucket, "meta", b"content", METADATA)
    stat = await driver.stat_object(store.bucket, "meta")
    assert stored(stat, driver) == kept(driver, dict(METADATA))
    # Replaced, not merged; the data stays.
    changed = {"mode": "33261", "uid": "7"}
    await driver.set_metadata(store.bucket, "meta", changed)
    stat = await driver.stat_object(store.bucket, "meta")
    assert stored(stat, driver) == kept(driver, {**dict.fromkeys(METADATA), **changed})
    assert await driver.read_object(store.bucket, "meta", 0, 100) == b"content"
    with pytest.raises(NoSuchObject):
        await driver.set_metadata(store.bucket, "missing", changed)


async def test_listing_metadata_is_none_or_complete(driver: Backend, store: Store) -> None:
    """A listing carries each object's metadata or none at all (None: ask stat_object)."""
    await put(driver, store.bucket, "meta", b"x", METADATA)
    [info] = [i for page in await listing(driver, store.bucket) for i in page]
    assert info.metadata is None or stored(info, driver) == kept(driver, dict(METADATA))
    assert store.kit.lists_metadata == (info.metadata is not None), \
        "the kit's lists_metadata is not what the driver does"


async def test_copy(driver: Backend, store: Store) -> None:
    body = data(70_000, seed=3)
    source = await put(driver, store.bucket, "src/obj", body, METADATA)
    copied = await driver.copy_object(store.bucket, "src/obj", store.bucket, "dst/copy")
    assert (copied.key, copied.size) == ("dst/copy", len(body))
    assert await driver.read_object(store.bucket, "dst/copy", 0, len(body)) == body
    stat = await driver.stat_object(store.bucket, "dst/copy")
    assert stored(stat, driver) == kept(driver, dict(METADATA))
    assert await driver.read_object(store.bucket, "src/obj", 0, len(body)) == body
    assert (await driver.stat_object(store.bucket, "src/obj")).etag == source.etag
    assert (store.stored / "dst" / "copy").read_bytes() == body
    with pytest.raises(NoSuchObject):
        await driver.copy_object(store.bucket, "missing", store.bucket, "dst/other")


@pytest.mark.requires("native_rename")
async def test_rename_object(driver: Backend, store: Store) -> None:
    """A file replaces one at its new name; a directory moves with its tree, onto nothing or
    an empty directory, the service's own objects under it untouched."""
    body = data(5_000, seed=5)
    moved = await put(driver, store.bucket, "a/file", body, METADATA)
    await put(driver, store.bucket, "a/other", b"replaced")
    info = await driver.rename_object(store.bucket, "a/file", "a/other")
    assert (info.key, info.size, info.etag) == ("a/other", len(body), moved.etag)
    assert (store.stored / "a" / "other").read_bytes() == body
    assert not (store.stored / "a" / "file").exists()
    await put(driver, store.bucket, "tree/sub/deep", b"deep")
    await put(driver, store.bucket, "empty/", b"")
    await driver.rename_object(store.bucket, "tree/", "empty/")
    assert (store.stored / "empty" / "sub" / "deep").read_bytes() == b"deep"
    assert not (store.stored / "tree").exists()
    await driver.rename_object(store.bucket, "empty/", "new/")
    assert keys(await listing(driver, store.bucket, "new/", delimiter=None)) == ["new/sub/deep"]
    with pytest.raises(NoSuchObject):
        await driver.rename_object(store.bucket, "missing", "elsewhere")


# ---- listings --------------------------------------------------------------------------------

# Keys whose byte order differs from a naive per-name sort: '-' < '/' < '0'.
KEYS = ["a-b", "a/x", "a/y/z", "a0", "b", "c/d/e", "c/f"]


async def put_all(driver: Backend, bucket: str, keys: list[str]) -> None:
    for key in keys:
        await put(driver, bucket, key, key.encode())


async def test_listing_is_in_key_order(driver: Backend, store: Store) -> None:
    await put_all(driver, store.bucket, list(reversed(KEYS)))
    assert keys(await listing(driver, store.bucket, delimiter=None)) == KEYS
    assert keys(await listing(driver, store.bucket, "a/", delimiter=None)) == ["a/x", "a/y/z"]


async def test_delimiter_makes_prefixes(driver: Backend, store: Store) -> None:
    await put_all(driver, store.bucket, KEYS)
    top = [i for page in await listing(driver, store.bucket) for i in page]
    assert [(i.key, i.is_prefix) for i in top] == [
        ("a-b", False), ("a/", True), ("a0", False), ("b", False), ("c/", True)]
    sizes = {i.key: i.size for i in top if not i.is_prefix}
    assert sizes == {"a-b": 3, "a0": 2, "b": 1}
    below = [i for page in await listing(driver, store.bucket, "c/") for i in page]
    assert [(i.key, i.is_prefix) for i in below] == [("c/d/", True), ("c/f", False)]
    # A prefix that ends inside a name lists what starts with it.
    assert keys(await listing(driver, store.bucket, "a")) == ["a-b", "a/", "a0"]
    assert await listing(driver, store.bucket, "nothing/") in ([], [[]])


async def test_listing_pages(driver: Backend, store: Store) -> None:
    names = [f"p/k{i:02d}" for i in range(11)]
    await put_all(driver, store.bucket, names)
    pages = await listing(driver, store.bucket, "p/", page_size=3)
    assert keys(pages) == names  # each key once, in order, across the pages
    assert len(pages) > 1, "page_size was not honoured: one page"
    assert all(len(page) <= 3 for page in pages), [len(p) for p in pages]
    # Prefixes are paged too, and not repeated on a later page.
    await put_all(driver, store.bucket, [f"q/d{i}/f" for i in range(5)])
    pages = await listing(driver, store.bucket, "q/", page_size=2)
    assert keys(pages) == [f"q/d{i}/" for i in range(5)]
    assert len(pages) > 1


# ---- conditional writes ------------------------------------------------------------------

@pytest.mark.requires("conditional_writes")
async def test_put_if_absent(driver: Backend, store: Store) -> None:
    await put(driver, store.bucket, "new", b"first", if_match=IF_ABSENT)
    with pytest.raises(PreconditionLost) as lost:
        await put(driver, store.bucket, "new", b"second", if_match=IF_ABSENT)
    assert lost.value.exists
    assert await driver.read_object(store.bucket, "new", 0, 100) == b"first"


@pytest.mark.requires("conditional_writes")
async def test_put_if_match(driver: Backend, store: Store) -> None:
    old = await put(driver, store.bucket, "obj", b"version 1")
    new = await put(driver, store.bucket, "obj", b"version 2", if_match=old.etag)
    assert new.etag != old.etag
    with pytest.raises(PreconditionLost) as lost:  # based on a version that is gone
        await put(driver, store.bucket, "obj", b"version 3", if_match=old.etag)
    assert lost.value.exists
    assert await driver.read_object(store.bucket, "obj", 0, 100) == b"version 2"
    await driver.delete_object(store.bucket, "obj")
    with pytest.raises(PreconditionLost) as lost:  # its base was deleted
        await put(driver, store.bucket, "obj", b"version 4", if_match=new.etag)
    assert not lost.value.exists
    assert not (store.stored / "obj").exists()


# ---- buckets -------------------------------------------------------------------------------

async def test_list_buckets(driver: Backend, store: Store) -> None:
    assert sorted(await driver.list_buckets()) == store.buckets


@pytest.mark.requires("buckets_editable")
async def test_create_and_delete_bucket(driver: Backend, store: Store) -> None:
    await driver.create_bucket("made-by-test")
    assert "made-by-test" in await driver.list_buckets()
    assert (store / "made-by-test").is_dir()
    await put(driver, "made-by-test", "obj", b"x")
    with pytest.raises(NotEmpty):
        await driver.delete_bucket("made-by-test")
    await driver.delete_object("made-by-test", "obj")
    await driver.delete_bucket("made-by-test")
    assert sorted(await driver.list_buckets()) == store.buckets
