"""What is measured: workloads (a)-(g) of issue 4 and (h)-(i) of issue 16, on a mounted tool
and as the boto3 baseline.

Each workload has `measure(tool, bench, out)` and `baseline(bench, out)`; both fill `out`
(metric key -> value) as they go, so a failure half-way keeps what was measured. Every tool
works under its own key prefix (`<tool name>-<workload>/`, the baseline under
`baseline-<workload>/`); a cold measurement is a fresh mount (new process, empty cache dir)
after dropping the page cache.

Keys are never more than one "directory" deep: s3rver 3.7 leaves out of a delimited listing
the common prefixes that hold only deeper keys (`a/` for a lone `a/b/c`), so a fresh rclone
mount, which lists with a delimiter, would not see `a/` at all.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchlib.config import MiB, Sizes, human_size
from benchlib.procs import (BenchError, drop_caches, page_cache_drops, run, timed,
                            wait_until)
from benchlib.rss import PeakDisk, PeakMemory
from benchlib.store import Store
from benchlib.tools import Tool

Out = dict[str, float]
LISTING_PREFIX = "shared-list"
HUGE_LISTING_PREFIX = "shared-huge-list"
BASELINE = "baseline"


@dataclass
class Bench:
    sizes: Sizes
    store: Store
    work: Path
    timeout: float            # bound on any single step (a dd, a wait for the server)
    ceiling: Tool             # the pyfuse3 in-memory filesystem of (e)
    caches_dropped: bool = True

    def drop_caches(self) -> None:
        if not drop_caches(self.work) and self.caches_dropped:
            print("bench: cannot drop the page cache (not root): cold is not cold",
                  file=sys.stderr)
            self.caches_dropped = False


@dataclass(frozen=True)
class Metric:
    key: str
    workload: str          # key of the workload that measures it
    row: str               # the table's workload column
    label: str             # the table's metric column
    higher_is_better: bool


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    measure: Callable[[Tool, Bench, Out], None]
    baseline: Callable[[Bench, Out], None]
    prepare: Callable[[Bench], None] | None = None


def metrics(sizes: Sizes) -> list[Metric]:
    big, small = human_size(sizes.big), human_size(sizes.small_size)
    a, b = f"(a) write {big}, dd bs=1M", f"(b) read {big}, dd bs=1M"
    c = f"(c) {sizes.small_count} x {small} files"
    d = f"(d) prefix of {sizes.listing_count:,} objects"
    e = f"(e) fio randread 4 KiB, {human_size(sizes.fio_size)}"
    f = f"(f) mv of {human_size(sizes.rename_size)}"
    g = "(g) mount process memory, (a)+(b)"
    h = f"(h) write, read {human_size(sizes.huge)}, cache cap {human_size(sizes.huge_cache)}"
    i = f"(i) prefix of {sizes.huge_listing_count:,} objects"
    return [
        Metric("a.close", "ab", a, "until close returns (s)", False),
        Metric("a.server", "ab", a, "until complete on the server (s)", False),
        Metric("b.cold", "ab", b, "cold (MiB/s)", True),
        Metric("b.warm", "ab", b, "warm, same mount (MiB/s)", True),
        Metric("c.close", "c", c, "create: until the last close (s)", False),
        Metric("c.server", "c", c, "create: until all on the server (s)", False),
        Metric("c.ls", "c", c, "ls -l, cold (s)", False),
        Metric("d.ls", "d", d, "ls -l, cold (s)", False),
        Metric("d.find", "d", d, "find, cold (s)", False),
        Metric("e.iops", "e", e, "psync, direct, warm (IOPS)", True),
        Metric("f.mv", "f", f, "until mv returns (s)", False),
        Metric("f.server", "f", f, "until done on the server (s)", False),
        Metric("g.rss", "ab", g, "peak VmRSS, 50 ms samples (MiB)", False),
        Metric("g.hwm", "ab", g, "VmHWM (MiB)", False),
        Metric("h.server", "h", h, "write: until complete on the server (s)", False),
        Metric("h.cold", "h", h, "read back, cold (MiB/s)", True),
        Metric("h.cache_write", "h", h, "peak cache dir on disk, writing (MiB)", False),
        Metric("h.cache_read", "h", h, "peak cache dir on disk, reading (MiB)", False),
        Metric("h.rss", "h", h, "peak VmRSS of the mount (MiB)", False),
        Metric("i.ls", "i", i, "ls -l, cold (s)", False),
        Metric("i.find", "i", i, "find, cold (s)", False),
    ]


# --- helpers ---------------------------------------------------------------------------------

def mib(n: int) -> float:
    return n / MiB


def dd_write(path: Path, size: int, timeout: float) -> float:
    seconds, _ = timed(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size // MiB}"],
                       timeout=timeout)
    return seconds


def dd_read(path: Path, size: int, timeout: float) -> float:
    """Seconds to read `path` whole with dd bs=1M; checks that `size` bytes came back."""
    seconds, done = timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"], timeout=timeout)
    copied = int(done.stderr.strip().splitlines()[-1].split()[0])
    if copied != size:
        raise BenchError(f"read {copied} bytes of {path.name}, expected {size}")
    return seconds


def counted(cmd: list[str], expect_lines: int, timeout: float) -> float:
    """Seconds of `cmd`; checks that it printed `expect_lines` lines (all entries seen)."""
    seconds, done = timed(cmd, timeout=timeout)
    lines = done.stdout.count("\n")
    if lines != expect_lines:
        raise BenchError(f"{cmd[0]} printed {lines} lines, expected {expect_lines}")
    return seconds


def ensure_object(store: Store, key: str, size: int) -> None:
    if store.size(key) != size:
        store.put_zeros(key, size)


# --- (a) write, (b) read, (g) memory ---------------------------------------------------------

def write_read(tool: Tool, bench: Bench, out: Out) -> None:
    size, prefix = bench.sizes.big, f"{tool.name}-big"
    key = f"{prefix}/file"
    bench.store.delete_prefix(prefix + "/")
    memory = PeakMemory()
    try:
        with tool.mounted() as root, memory.watch(tool.pid):
            (root / prefix).mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            dd_write(root / key, size, bench.timeout)
            out["a.close"] = time.perf_counter() - start
            wait_until(lambda: bench.store.stored_size(key) == size, timeout=bench.timeout,
                       what=f"{key} complete on the server")
            out["a.server"] = time.perf_counter() - start
        bench.drop_caches()
        with tool.mounted() as root, memory.watch(tool.pid):
            out["b.cold"] = mib(size) / dd_read(root / key, size, bench.timeout)
            out["b.warm"] = mib(size) / dd_read(root / key, size, bench.timeout)
    finally:
        if memory.rss_kib:
            out["g.rss"], out["g.hwm"] = memory.rss_mib, memory.hwm_mib
        bench.store.delete_prefix(prefix + "/")


def write_read_baseline(bench: Bench, out: Out) -> None:
    size, key = bench.sizes.big, f"{BASELINE}-big/file"
    try:
        start = time.perf_counter()
        bench.store.put_zeros(key, size)
        out["a.server"] = time.perf_counter() - start
        bench.drop_caches()
        start = time.perf_counter()
        got = bench.store.parallel_get(key, size)
        out["b.cold"] = mib(size) / (time.perf_counter() - start)
        if got != size:
            raise BenchError(f"GET returned {got} bytes, expected {size}")
    finally:
        bench.store.delete_prefix(f"{BASELINE}-big/")


# --- (c) small files -------------------------------------------------------------------------

SMALL_WRITER = r"""
import os, sys, time
directory, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = b"x" * size
start = time.monotonic()
for i in range(count):
    with open(os.path.join(directory, f"f{i:05d}"), "wb") as f:
        f.write(data)
print(start, time.monotonic())
"""


def even_start(bench: Bench) -> None:
    """Every runner's small files start from the same file system: written back, caches
    dropped. On ext4 without a journal (this machine's root) a new inode skips each one freed
    in the last 60 s, 360 s while its inode table block is dirty, one buffer lookup apiece: a
    create cost 0.5-0.65 ms of system time after the runner before had deleted its thousands
    of files (s3rver's objects, a cache dir), 0.07 ms after a write-back and a drop. The
    1,000 files cost a create each in the mount and three in s3rver."""
    bench.drop_caches()


def small_names(count: int) -> list[str]:
    return [f"f{i:05d}" for i in range(count)]


def small_files(tool: Tool, bench: Bench, out: Out) -> None:
    count, size, prefix = bench.sizes.small_count, bench.sizes.small_size, f"{tool.name}-small"
    keys = [f"{prefix}/{name}" for name in small_names(count)]
    bench.store.delete_prefix(prefix + "/")
    try:
        even_start(bench)
        with tool.mounted() as root:
            (root / prefix).mkdir(parents=True, exist_ok=True)
            # One Python process writes them all; it reports CLOCK_MONOTONIC (system-wide)
            # before its first open and after its last close.
            done = run([sys.executable, "-c", SMALL_WRITER, str(root / prefix), str(count),
                        str(size)], timeout=bench.timeout)
            start, end = map(float, done.stdout.split())
            out["c.close"] = end - start
            bench.store.wait_for_keys(keys, timeout=bench.timeout)
            out["c.server"] = time.monotonic() - start
        bench.drop_caches()
        with tool.mounted() as root:
            out["c.ls"] = counted(["ls", "-l", str(root / prefix)], count + 1, bench.timeout)
    finally:
        bench.store.delete_prefix(prefix + "/")


def small_files_baseline(bench: Bench, out: Out) -> None:
    count, prefix = bench.sizes.small_count, f"{BASELINE}-small"
    keys = [f"{prefix}/{name}" for name in small_names(count)]
    try:
        even_start(bench)
        start = time.perf_counter()
        bench.store.put_many(keys, bench.sizes.small_size)
        out["c.server"] = time.perf_counter() - start
        start = time.perf_counter()
        listed = bench.store.list_count(prefix + "/")
        out["c.ls"] = time.perf_counter() - start
        if listed != count:
            raise BenchError(f"listed {listed} of {count} objects")
    finally:
        bench.store.delete_prefix(prefix + "/")


# --- (d) listing -----------------------------------------------------------------------------

def listing_keys(bench: Bench) -> list[str]:
    return [f"{LISTING_PREFIX}/k{i:05d}" for i in range(bench.sizes.listing_count)]


def prepare_listing(bench: Bench) -> None:
    bench.store.delete_prefix(LISTING_PREFIX + "/")
    bench.store.put_many(listing_keys(bench), 100)


def listing(tool: Tool, bench: Bench, out: Out) -> None:
    list_prefix(tool, bench, out, "d", LISTING_PREFIX, bench.sizes.listing_count)


def listing_baseline(bench: Bench, out: Out) -> None:
    list_prefix_baseline(bench, out, "d", LISTING_PREFIX, bench.sizes.listing_count)


def list_prefix(tool: Tool, bench: Bench, out: Out, row: str, prefix: str, count: int) -> None:
    """`ls -l` and `find` of `prefix` (holding `count` objects), each on a fresh mount."""
    for metric, cmd in ((f"{row}.ls", ["ls", "-l"]), (f"{row}.find", ["find"])):
        bench.drop_caches()
        with tool.mounted() as root:
            # ls -l: a "total" line and one per entry; find: the directory and its entries.
            out[metric] = counted([*cmd, str(root / prefix)], count + 1, bench.timeout)


def list_prefix_baseline(bench: Bench, out: Out, row: str, prefix: str, count: int) -> None:
    start = time.perf_counter()
    listed = bench.store.list_count(prefix + "/")
    out[f"{row}.ls"] = out[f"{row}.find"] = time.perf_counter() - start
    if listed != count:
        raise BenchError(f"listed {listed} of {count} objects")


# --- (e) random reads ------------------------------------------------------------------------

# (e) measures reads of a file cached by the tool; a page cache dropped meanwhile (by another
# process on a shared machine: a benchmark's cold step) makes every read a disk read until the
# file is warm again. Such a run is measured again, after another warming read.
FIO_TRIES = 3


def fio_iops(path: Path, bench: Bench) -> float:
    """One full sequential read (warms the cache), then fio's random 4 KiB reads."""
    for _ in range(FIO_TRIES):
        drops = page_cache_drops()  # before the warming read, which a drop also undoes
        dd_read(path, bench.sizes.fio_size, bench.timeout)
        done = run(["fio", "--name=randread", f"--filename={path}", "--readonly",
                    "--ioengine=psync", "--direct=1", "--rw=randread", "--bs=4k",
                    f"--size={bench.sizes.fio_size // MiB}M",
                    f"--runtime={bench.sizes.fio_runtime}", "--time_based",
                    "--output-format=json"],
                   timeout=bench.sizes.fio_runtime + bench.timeout)
        if page_cache_drops() == drops:
            break
        print(f"bench: the page cache was dropped while (e) read {path}: measuring again",
              file=sys.stderr)
    else:
        raise BenchError(f"the page cache was dropped during each of {FIO_TRIES} tries of (e)")
    job = json.loads(done.stdout[done.stdout.index("{"):])["jobs"][0]
    if job["error"]:
        raise BenchError(f"fio error {job['error']}")
    return float(job["read"]["iops"])


def random_reads(tool: Tool, bench: Bench, out: Out) -> None:
    key = f"{tool.name}-fio/file"
    ensure_object(bench.store, key, bench.sizes.fio_size)
    with tool.mounted() as root:
        out["e.iops"] = fio_iops(root / key, bench)


def random_reads_ceiling(bench: Bench, out: Out) -> None:
    with bench.ceiling.mounted() as root:
        out["e.iops"] = fio_iops(root / "file", bench)


# --- (f) rename ------------------------------------------------------------------------------

def rename(tool: Tool, bench: Bench, out: Out) -> None:
    size, prefix = bench.sizes.rename_size, f"{tool.name}-mv"
    src, dst = f"{prefix}/src", f"{prefix}/dst"
    bench.store.delete_prefix(prefix + "/")
    bench.store.put_zeros(src, size)
    try:
        with tool.mounted() as root:
            start = time.perf_counter()
            run(["mv", str(root / src), str(root / dst)], timeout=bench.timeout)
            out["f.mv"] = time.perf_counter() - start
            wait_until(lambda: bench.store.size(dst) == size and bench.store.size(src) is None,
                       timeout=bench.timeout, what=f"{dst} on the server and {src} gone")
            out["f.server"] = time.perf_counter() - start
    finally:
        bench.store.delete_prefix(prefix + "/")


def rename_baseline(bench: Bench, out: Out) -> None:
    src, dst = f"{BASELINE}-mv/src", f"{BASELINE}-mv/dst"
    bench.store.put_zeros(src, bench.sizes.rename_size)
    try:
        start = time.perf_counter()
        bench.store.copy_delete(src, dst)
        out["f.mv"] = out["f.server"] = time.perf_counter() - start
    finally:
        bench.store.delete_prefix(f"{BASELINE}-mv/")


# --- (h) a file larger than the cache ---------------------------------------------------------

def huge_file(tool: Tool, bench: Bench, out: Out) -> None:
    """Written with dd and read back (fresh mount, cold) with the tool's cache capped below
    the file's size: the cap must hold (peak disk of the cache dir) and memory stay flat."""
    size, cap, prefix = bench.sizes.huge, bench.sizes.huge_cache, f"{tool.name}-huge"
    key = f"{prefix}/file"
    bench.store.delete_prefix(prefix + "/")
    memory, writing, reading = PeakMemory(), PeakDisk(), PeakDisk()
    try:
        with tool.mounted(cache_cap=cap) as root, memory.watch(tool.pid), \
                writing.watch(str(tool.cache_dir)):
            (root / prefix).mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            dd_write(root / key, size, bench.timeout)
            wait_until(lambda: bench.store.stored_size(key) == size, timeout=bench.timeout,
                       what=f"{key} complete on the server")
            out["h.server"] = time.perf_counter() - start
        bench.drop_caches()
        with tool.mounted(cache_cap=cap) as root, memory.watch(tool.pid), \
                reading.watch(str(tool.cache_dir)):
            out["h.cold"] = mib(size) / dd_read(root / key, size, bench.timeout)
    finally:
        if memory.rss_kib:
            out["h.rss"] = memory.rss_mib
        out["h.cache_write"], out["h.cache_read"] = writing.peak_mib, reading.peak_mib
        bench.store.delete_prefix(prefix + "/")


def huge_file_baseline(bench: Bench, out: Out) -> None:
    """None: (a) and (b) have boto3's rates; this row is about the cap and memory."""


# --- (i) a large listing -------------------------------------------------------------------

def prepare_huge_listing(bench: Bench) -> None:
    count = bench.sizes.huge_listing_count
    if bench.store.list_count(HUGE_LISTING_PREFIX + "/") != count:
        bench.store.delete_prefix(HUGE_LISTING_PREFIX + "/")
        bench.store.put_many([f"{HUGE_LISTING_PREFIX}/k{i:06d}" for i in range(count)], 100)


def huge_listing(tool: Tool, bench: Bench, out: Out) -> None:
    list_prefix(tool, bench, out, "i", HUGE_LISTING_PREFIX, bench.sizes.huge_listing_count)


def huge_listing_baseline(bench: Bench, out: Out) -> None:
    list_prefix_baseline(bench, out, "i", HUGE_LISTING_PREFIX, bench.sizes.huge_listing_count)


WORKLOADS = [
    Workload("ab", "(a) write, (b) read, (g) memory", write_read, write_read_baseline),
    Workload("c", "(c) small files", small_files, small_files_baseline),
    Workload("d", "(d) listing", listing, listing_baseline, prepare_listing),
    Workload("e", "(e) random reads", random_reads, random_reads_ceiling),
    Workload("f", "(f) rename", rename, rename_baseline),
    Workload("h", "(h) a file larger than the cache", huge_file, huge_file_baseline),
    Workload("i", "(i) a large listing", huge_listing, huge_listing_baseline,
             prepare_huge_listing),
]
