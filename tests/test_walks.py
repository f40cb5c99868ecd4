"""Walks of a tree after a fresh mount (issue 12): what programs that visit every path cost.

`rsync -an SRC/ MNT/dst/` stats each destination path without reading the directories; `ls -l`
reads a directory and stats each entry while it reads. On S3 (behind tests/servers/s3_proxy.py,
which counts requests by operation) such a walk costs about one listing per directory plus one
HEAD per entry (its metadata), never a HEAD and a listing per name; a second walk within the
TTL costs nothing; a listing stays trusted while a program that opened the directory before it
ended holds it open. On every driver: the walk sees the tree as it is, and a name another
mount removed after this mount listed it is gone once the TTL has passed.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import BACKENDS, Mount, Mounter
from servers.s3 import S3Server
from servers.s3_proxy import S3Proxy
from test_metrics import free_port, scrape, value
from test_s3 import bucket_name, client, mount_s3, s3_env  # noqa: F401 (fixtures)

TOPS, SUBS, FILES = 3, 3, 5  # 3 + 9 directories, 5 files in each: 72 entries below dst/


def tree() -> dict[str, int]:
    """Relative path -> size of every file (directories are the parents)."""
    out: dict[str, int] = {}
    for t in range(TOPS):
        for where in [f"top{t}"] + [f"top{t}/sub{s}" for s in range(SUBS)]:
            for f in range(FILES):
                out[f"{where}/f{f}.txt"] = 10 + 7 * f + t
    return out


def directories(files: dict[str, int]) -> set[str]:
    return {str(Path(rel).parent) for rel in files} | {f"top{t}" for t in range(TOPS)}


def write_local(root: Path, files: dict[str, int]) -> None:
    for rel, size in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * size)


def rsync_order(files: dict[str, int]) -> Iterator[str]:
    """Every path as rsync's generator visits a destination: a directory, then its entries."""
    for d in sorted(directories(files)):
        yield d
        yield from sorted(rel for rel in files if str(Path(rel).parent) == d)


def stat_walk(root: Path, files: dict[str, int]) -> None:
    """lstat every path without reading a directory (rsync -an into an existing tree); each
    must be what the tree says."""
    for rel in rsync_order(files):
        st = os.lstat(root / rel)
        if rel in files:
            assert st.st_size == files[rel], rel
        else:
            assert Path(root / rel).is_dir(), rel


@pytest.fixture
def proxy(s3_env: S3Server) -> Iterator[S3Proxy]:
    p = S3Proxy(s3_env.url).start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def s3_tree(client, bucket_name: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The tree under `dst/` of the bucket as another tool wrote it: a marker per directory."""
    files = tree()
    for d in sorted(directories(files)):
        client.put_object(Bucket=bucket_name, Key=f"dst/{d}/", Body=b"")
    for rel, size in files.items():
        client.put_object(Bucket=bucket_name, Key=f"dst/{rel}", Body=b"x" * size)
    return files


def mount_counted(mounter: Mounter, proxy: S3Proxy, bucket: str, ttl: float) -> Mount:
    m = mount_s3(mounter, proxy, "--metadata-ttl", str(ttl),  # type: ignore[arg-type]
                 source=f"s3://{bucket}")
    proxy.seen.clear()  # what mounting asked is not the walk's
    return m


def taken(proxy: S3Proxy) -> Counter[str]:
    """The requests since the last call, by operation."""
    with proxy.lock:
        seen = Counter(proxy.seen)
        proxy.seen.clear()
    return seen


def assert_one_listing_per_directory(seen: Counter[str], files: dict[str, int]) -> None:
    dirs = len(directories(files)) + 1  # dst/ itself
    entries = len(files) + dirs
    assert seen["ListObjectsV2"] <= dirs + 1, seen  # (+1: the bucket's root)
    assert seen["HeadObject"] <= entries, seen  # each entry's metadata, once
    assert seen["other"] == 0, seen


def test_rsync_walk_costs_a_listing_per_directory(mounter: Mounter, proxy: S3Proxy,
                                                  bucket_name: str, s3_tree: dict[str, int],
                                                  tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_local(src, s3_tree)
    m = mount_counted(mounter, proxy, bucket_name, ttl=60)
    subprocess.run(["rsync", "-an", f"{src}/", f"{m.path}/dst/"], check=True)
    assert_one_listing_per_directory(taken(proxy), s3_tree)
    subprocess.run(["rsync", "-an", f"{src}/", f"{m.path}/dst/"], check=True)
    assert sum(taken(proxy).values()) == 0, "a second walk within the TTL asks nothing"


def test_stat_walk_costs_no_probes_and_a_second_costs_no_more(
        mounter: Mounter, proxy: S3Proxy, bucket_name: str, s3_tree: dict[str, int]) -> None:
    m = mount_counted(mounter, proxy, bucket_name, ttl=5)
    stat_walk(m.path / "dst", s3_tree)
    first = taken(proxy)
    assert_one_listing_per_directory(first, s3_tree)
    stat_walk(m.path / "dst", s3_tree)
    assert sum(taken(proxy).values()) <= sum(first.values())


@pytest.mark.parametrize("by_path", [False, True], ids=["dir_fd", "whole_path"])
def test_a_listing_stays_trusted_while_its_reader_holds_the_directory(
        mounter: Mounter, proxy: S3Proxy, bucket_name: str, s3_tree: dict[str, int],
        by_path: bool) -> None:
    """Stats relative to the directory (`dir_fd`), or by their whole path as `ls -l DIR`
    makes them: then the kernel, past the TTL, asks again for dst/ and dst/top0/ on the way,
    and neither may cost a listing of its parent while the directory is open."""
    ttl = 1.0
    m = mount_counted(mounter, proxy, bucket_name, ttl=ttl)
    where = m.path / "dst" / "top0"
    held = os.open(where, os.O_PATH)  # lstat(name, dir_fd=held): no walk through dst/

    def lstat(name: str) -> os.stat_result:
        return os.lstat(where / name) if by_path else os.lstat(name, dir_fd=held)

    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)  # the kernel's opendir: one handle
    try:
        with os.scandir(fd) as it:  # reads that handle to its end
            names = sorted(entry.name for entry in it)
        taken(proxy)
        time.sleep(ttl + 0.5)
        for name in names:  # as `ls -l` does between its readdir calls
            lstat(name)
        with pytest.raises(FileNotFoundError):
            lstat("not-there")
        seen = taken(proxy)
        assert seen["ListObjectsV2"] == 0, seen  # neither a probe nor a new listing
        assert seen["HeadObject"] <= len(names), seen  # the metadata of each entry, once
        os.close(fd)
        fd = -1
        time.sleep(ttl + 0.5)
        with pytest.raises(FileNotFoundError):
            lstat("nor-this")
        # Closed, the listings age as any other: top0's (and, on the way, the root's and
        # dst's, to answer for dst/ and top0/).
        assert taken(proxy)["ListObjectsV2"] == (3 if by_path else 1)
    finally:
        os.close(held)
        if fd >= 0:
            os.close(fd)


def test_attributes_from_listings_cost_no_request_per_entry(
        mounter: Mounter, proxy: S3Proxy, client, bucket_name: str,  # type: ignore[no-untyped-def]
        s3_tree: dict[str, int]) -> None:
    """`--attributes-from-listings`: `ls -lR` costs a listing per directory and no HEAD, and
    so does looking again after the TTL; listed objects have the mount's defaults, not the
    mode their metadata holds."""
    client.put_object(Bucket=bucket_name, Key="dst/top0/private", Body=b"secret",
                      Metadata={"mode": str(0o100600)})
    ttl = 1.0
    m = mount_s3(mounter, proxy, "--metadata-ttl", str(ttl),  # type: ignore[arg-type]
                 "--attributes-from-listings", source=f"s3://{bucket_name}")
    taken(proxy)
    subprocess.run(["ls", "-lR", str(m.path / "dst")], check=True, capture_output=True)
    seen = taken(proxy)
    assert seen["HeadObject"] == 0, seen
    assert seen["ListObjectsV2"] <= len(directories(s3_tree)) + 2, seen
    private = m.path / "dst" / "top0" / "private"
    assert os.lstat(private).st_mode == 0o100644  # 0666 & ~022, not its own 0600
    time.sleep(ttl + 0.2)
    assert os.lstat(private).st_mode == 0o100644
    assert private.read_bytes() == b"secret"
    assert taken(proxy)["HeadObject"] == 0


@pytest.mark.backends(*BACKENDS)
def test_walk_sees_the_tree_and_names_removed_elsewhere(mounter: Mounter, store,  # type: ignore
                                                        tmp_path: Path) -> None:
    files = tree()
    write_local(tmp_path / "src", files)
    write_local(tmp_path / "src", {"unwalked/a": 1, "unwalked/b": 2})
    writer = mounter.mount(store, "--writeback-delay", "0", name="writer")
    shutil.copytree(tmp_path / "src", writer.bucket / "dst")
    mounter.umount(writer)  # everything uploaded
    ttl = 1.0
    m = mounter.mount(store, "--metadata-ttl", str(ttl), name="walker")
    stat_walk(m.bucket / "dst", files)
    walked = sorted(os.listdir(m.bucket / "dst" / "top1"))
    assert sorted(os.listdir(m.bucket / "dst" / "unwalked")) == ["a", "b"]  # listed only
    other = mounter.mount(store, name="other")
    os.unlink(other.bucket / "dst" / "top1" / "f0.txt")
    os.unlink(other.bucket / "dst" / "unwalked" / "a")
    time.sleep(ttl + 0.2)
    # Once the TTL has passed the mount asks again, whether the name was stat'ed after the
    # listing (f0.txt) or only listed (a: the HEAD that reads its metadata finds it gone).
    for gone in ("top1/f0.txt", "unwalked/a"):
        with pytest.raises(OSError) as failed:
            os.lstat(m.bucket / "dst" / gone)
        assert failed.value.errno == errno.ENOENT, gone
    assert os.lstat(m.bucket / "dst" / "unwalked" / "b").st_size == 2
    assert sorted(os.listdir(m.bucket / "dst" / "top1")) == [n for n in walked
                                                             if n != "f0.txt"]
    stat_walk(m.bucket / "dst", {rel: size for rel, size in files.items()
                                 if rel != "top1/f0.txt"})


class SlowHeads(S3Proxy):
    """Holds every HEAD `delay` seconds, as a distant server would, and records how many were
    under way at once."""

    delay = 0.05

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.in_flight = self.most_in_flight = 0

    def handle(self, h, op: str, body: bytes) -> None:  # type: ignore[no-untyped-def]
        if op != "HeadObject":
            super().handle(h, op, body)
            return
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            super().handle(h, op, body)
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def slow_heads(s3_env: S3Server) -> Iterator[SlowHeads]:
    p = SlowHeads(s3_env.url).start()
    try:
        yield p
    finally:
        p.stop()


def s3_ahead() -> int:
    """How many entries past a stat the stat-ahead reads on S3: 4 x its pool."""
    from mountfs.backends.s3_backend import S3Backend

    return 4 * S3Backend(credentials=("k", "s")).features.parallel_metadata_reads


def put_flat(client, bucket: str, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    names = [f"f{i:04d}" for i in range(count)]
    for name in names:
        client.put_object(Bucket=bucket, Key=f"flat/{name}", Body=name.encode())
    return names


def test_ls_l_reads_metadata_ahead_in_parallel_once_each(
        mounter: Mounter, slow_heads: SlowHeads, client,  # type: ignore[no-untyped-def]
        bucket_name: str) -> None:
    """`ls -l` of a directory: the metadata of the entries is read ahead of its stats, many at
    once, each entry once; `find` and `ls`, which stat nothing, cost no HEAD."""
    names = put_flat(client, bucket_name, 160)
    m = mount_counted(mounter, slow_heads, bucket_name, ttl=60)  # type: ignore[arg-type]
    for cmd in (["find", str(m.path / "flat")], ["ls", str(m.path / "flat")]):
        subprocess.run(cmd, check=True, capture_output=True)
    assert taken(slow_heads)["HeadObject"] <= 1, "a walk that stats nothing reads no metadata"
    started = time.monotonic()
    out = subprocess.run(["ls", "-l", str(m.path / "flat")], check=True, capture_output=True,
                         text=True).stdout
    seconds = time.monotonic() - started
    assert sum(name in out for name in names) == len(names)
    seen = taken(slow_heads)
    assert seen["HeadObject"] == len(names), seen  # each entry once, none twice
    assert seen["ListObjectsV2"] == 0, seen  # the listing `ls` made answered every name
    # Nothing else: the lookups are answered from what the HEAD read (and the xattrs `ls -l`
    # asks for without a request: test_ls_l_costs_no_lookup_per_entry).
    assert sum(seen.values()) == len(names), seen
    assert slow_heads.most_in_flight >= 8, slow_heads.most_in_flight
    # One at a time, the HEADs alone would take len(names) * delay = 8 s.
    assert seconds < len(names) * SlowHeads.delay / 4, seconds


def test_ls_l_costs_no_lookup_per_entry(mounter: Mounter, proxy: S3Proxy, client,  # type: ignore[no-untyped-def]
                                        bucket_name: str) -> None:
    """`ls -l`: once the program stats what it lists, readdir hands the entries out with their
    attributes (StatAhead.listed), so the kernel answers the stats without a LOOKUP each; a
    program that stats names it never listed costs one each (the count counts)."""
    names = put_flat(client, bucket_name, 300)
    for name in names[:20]:
        client.put_object(Bucket=bucket_name, Key=f"other/{name}", Body=name.encode())
    port = free_port()
    m = mount_s3(mounter, proxy, "--metadata-ttl", "60", "--metrics-addr", f"127.0.0.1:{port}",
                 source=f"s3://{bucket_name}")

    def lookups(operation: str = "lookup") -> float:
        return value(scrape(port), "mountfs_fuse_requests_total", operation=operation)

    before, xattrs_before = lookups(), lookups("getxattr")
    out = subprocess.run(["ls", "-l", str(m.path / "flat")], check=True, capture_output=True,
                         text=True).stdout
    assert sum(name in out for name in names) == len(names)
    listed = lookups() - before
    assert listed <= len(names) // 3, listed
    # ls asks the first entry for its SELinux label and ACL, told ENOTSUP, no other entry
    assert lookups("getxattr") - xattrs_before <= 2
    before = lookups()
    for name in names[:20]:
        assert os.stat(m.path / "other" / name).st_size == len(name)
    assert lookups() - before >= 20


def test_metadata_is_read_only_a_little_ahead_of_the_program(
        mounter: Mounter, proxy: S3Proxy, client, bucket_name: str) -> None:  # type: ignore[no-untyped-def]
    """A program that read a large directory whole and stats one entry: the entries after it
    are read ahead, a bounded number, not the whole directory."""
    with listed_then_first_stat(mounter, proxy, client, bucket_name, 400) as (m, names, heads):
        for name in names[1:40]:  # the next stats find their attributes read
            assert os.lstat(m.path / "flat" / name).st_size == len(name)
        assert taken(proxy)["HeadObject"] <= 40 - heads + s3_ahead(), "read ahead, not again"


@contextlib.contextmanager
def listed_then_first_stat(mounter: Mounter, proxy: S3Proxy, client,  # type: ignore[no-untyped-def]
                           bucket_name: str, count: int) -> Iterator[tuple[Mount, list[str], int]]:
    """A directory of `count` objects read whole through a handle kept open, then its first
    entry stat'ed: the mount, the names, and the HEADs that stat and the reads ahead took
    (checked: more than one, at most 1 + 4 x Features.parallel_metadata_reads)."""
    names = put_flat(client, bucket_name, count)
    m = mount_counted(mounter, proxy, bucket_name, ttl=60)
    fd = os.open(m.path / "flat", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(fd) as it:
            assert sorted(entry.name for entry in it) == names
        taken(proxy)
        assert os.lstat(m.path / "flat" / names[0]).st_size == len(names[0])
        time.sleep(1.0)  # what was started ahead is done
        heads = taken(proxy)["HeadObject"]
        assert 1 < heads <= 1 + s3_ahead(), heads
        yield m, names, heads
    finally:
        os.close(fd)


def test_reads_ahead_follow_the_program_past_what_was_read_ahead(
        mounter: Mounter, proxy: S3Proxy, client, bucket_name: str) -> None:  # type: ignore[no-untyped-def]
    """Stats of entries already read ahead move the edge too: reads stay `ahead` entries past
    the program, instead of stopping until it reaches an entry not read (`ls -l` then waited a
    round trip every 65 entries while the server sat idle)."""
    with listed_then_first_stat(mounter, proxy, client, bucket_name, 300) as (m, names, first):
        for name in names[1:31]:  # read ahead already: no request of their own
            assert os.lstat(m.path / "flat" / name).st_size == len(name)
        time.sleep(1.0)
        # The edge moved with them: 30 entries further, each read once (counted by the sum:
        # on a busy machine some of the first reads reach the server only now).
        assert first + taken(proxy)["HeadObject"] == 1 + 30 + s3_ahead(), \
            "reads ahead follow stats of known entries"


def test_metadata_reads_ahead_use_the_whole_connection_pool(
        mounter: Mounter, slow_heads: SlowHeads, client,  # type: ignore[no-untyped-def]
        bucket_name: str) -> None:
    """The S3 driver's connection pool holds `Features.parallel_metadata_reads`: `ls -l` keeps
    as many HEADs under way as the pool has connections (fewer would leave some idle)."""
    from mountfs.backends.s3_backend import S3Backend

    backend = S3Backend(slow_heads.url, path_style=True, credentials=("k", "s"))
    pool = backend.wire.limiter.total_tokens
    assert backend.features.parallel_metadata_reads == pool
    names = put_flat(client, bucket_name, 200)
    m = mount_counted(mounter, slow_heads, bucket_name, ttl=60)  # type: ignore[arg-type]
    out = subprocess.run(["ls", "-l", str(m.path / "flat")], check=True, capture_output=True,
                         text=True).stdout
    assert sum(name in out for name in names) == len(names)
    assert slow_heads.most_in_flight == pool, (slow_heads.most_in_flight, pool)


def test_the_next_listing_page_is_fetched_while_the_program_uses_this_one(
        mounter: Mounter, proxy: S3Proxy, client, bucket_name: str) -> None:  # type: ignore[no-untyped-def]
    """A program that reads a large directory page by page (`ls -l` stats each page's entries
    before it reads on) finds the next page fetched meanwhile, one page ahead and no more; a
    directory closed while a page is on its way closes cleanly."""
    # Pages of 1,000, 1,000 and 100; long names, so that the kernel's first reads take
    # less than a page.
    names = [f"{i:04d}-{'x' * 100}" for i in range(2100)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: client.put_object(Bucket=bucket_name, Key=f"flat/{name}",
                                                     Body=b""), names))
    m = mount_counted(mounter, proxy, bucket_name, ttl=60)
    assert (m.path / "flat").is_dir()
    taken(proxy)  # (the lookup's listing of the bucket's root)
    with os.scandir(m.path / "flat") as it:
        first = [entry.name for _, entry in zip(range(10), it)]  # of the first page
        time.sleep(1.0)
        assert taken(proxy)["ListObjectsV2"] == 2, "the second page asked for ahead, not more"
        rest = [entry.name for entry in it]
    assert first + rest == names
    assert taken(proxy)["ListObjectsV2"] == 1  # the third page
    for _ in range(3):  # closed with the next page under way, or just fetched
        with os.scandir(m.path / "flat") as it:
            assert [entry.name for _, entry in zip(range(10), it)] == names[:10]
    assert sorted(os.listdir(m.path / "flat")) == names
