"""`--metrics-addr`: a mount serves Prometheus text; scraped twice around reads and writes, its
counters move, on every driver; retries and errors through the fault proxy.
"""
from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import BACKENDS, Mounter, run_cli
from kits import Store
from mountfs.backends.registry import split_source
from servers.faults import FaultProxy
from test_faults import bucket, mount_via, proxy  # noqa: F401 (fixtures)
from test_s3 import bucket_name, client, s3_env  # noqa: F401 (fixtures)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    """Every sample of the endpoint, by name and labels (the text must parse)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def read_past_the_page_cache(path: Path) -> None:
    """Read the file from the mount, not from the kernel's pages of it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.backends(*BACKENDS)
def test_metrics_move_with_reads_and_writes(mounter: Mounter, store: Store) -> None:
    driver = split_source(store.source)[0].name  # the label (kit firecrest_v1: firecrest)
    port = free_port()
    m = mounter.mount(store, "--metrics-addr", f"127.0.0.1:{port}", "--writeback-delay", "600",
                      "--whole-file-delay", "600", "--cache-size", "4M")
    for name in ("first.bin", "second.bin"):  # before the listing: seen at once
        (store.stored / name).write_bytes(os.urandom(3_000_000))
    assert (m.bucket / "first.bin").read_bytes()
    (m.bucket / "queued.txt").write_bytes(b"q" * 1000)
    one = scrape(port)
    assert value(one, "mountfs_queue_length") == 1
    assert value(one, "mountfs_queue_oldest_seconds") > 0
    assert value(one, "mountfs_cache_cap_bytes") == 4 * 1024 * 1024

    assert (m.bucket / "second.bin").read_bytes()
    # From the block cache: hits (a file written here is always read from it; a store's file
    # written in the last 2 s is fetched again on FirecREST, whose mtimes are whole seconds).
    read_past_the_page_cache(m.bucket / "queued.txt")
    read_past_the_page_cache(m.bucket / "second.bin")
    run_cli("sync", str(m.path))
    two = scrape(port)

    read = dict(driver=driver, operation="read_into")  # the cache fetches blocks with it
    stream = dict(driver=driver, operation="stream_object")
    fetches = lambda s: value(s, "mountfs_backend_requests_total", **read) \
        + value(s, "mountfs_backend_requests_total", **stream)  # noqa: E731
    assert fetches(two) > fetches(one) > 0
    assert value(two, "mountfs_backend_request_seconds_count", **read) \
        + value(two, "mountfs_backend_request_seconds_count", **stream) > 0
    writes = dict(driver=driver, operation="write_object")
    assert value(one, "mountfs_backend_requests_total", **writes) == 0
    assert value(two, "mountfs_backend_requests_total", **writes) >= 1
    down = dict(driver=driver, direction="down")
    assert value(two, "mountfs_bytes_total", **down) \
        >= value(one, "mountfs_bytes_total", **down) + 3_000_000
    assert value(two, "mountfs_bytes_total", driver=driver, direction="up") >= 1000
    for counter in ("mountfs_cache_misses_total", "mountfs_cache_hits_total",
                    "mountfs_cache_evictions_total"):
        assert value(two, counter) > value(one, counter), counter
    assert value(two, "mountfs_queue_length") == 0
    assert value(two, "mountfs_queue_oldest_seconds") == 0
    mounter.umount(m)


def test_retries_and_errors_are_counted(mounter: Mounter, proxy: FaultProxy, client,
                                        bucket: str) -> None:
    port = free_port()
    m = mount_via(mounter, proxy, bucket, "mnt", "--metrics-addr", f"127.0.0.1:{port}",
                  "--writeback-delay", "600", "--whole-file-delay", "600")
    for i in range(10):
        client.put_object(Bucket=bucket, Key=f"f{i}", Body=b"x" * 1000)
    proxy.kinds, proxy.rate = ("503",), 0.5
    for i in range(10):
        assert (m.path / f"f{i}").read_bytes() == b"x" * 1000
    proxy.rate = 0.0
    proxy.deny_writes = True
    (m.path / "denied.bin").write_bytes(b"d")
    assert run_cli("sync", str(m.path), check=False).returncode == 1
    samples = scrape(port)
    retries = sum(v for (name, _), v in samples.items() if name == "mountfs_backend_retries_total")
    assert retries >= 1
    assert value(samples, "mountfs_backend_errors_total", driver="s3",
                 operation="write_object", error="PermissionDenied") >= 1
    assert value(samples, "mountfs_queue_failed") == 1
    proxy.deny_writes = False
    run_cli("sync", str(m.path))
    mounter.umount(m)


def test_a_bad_or_taken_metrics_address_is_one_line(mounter: Mounter, store: Store) -> None:
    bad = run_cli("mount", store.source, str(mounter.tmp), "--metrics-addr", "nowhere",
                  check=False)
    assert bad.returncode == 2
    assert bad.stderr.startswith("mountfs: argument --metrics-addr: not HOST:PORT: 'nowhere'")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (mounter.tmp / "mnt").mkdir()
        done = run_cli("mount", store.source, str(mounter.tmp / "mnt"), "--cache-dir",
                       str(mounter.tmp / "cache"), "--metrics-addr", f"127.0.0.1:{port}",
                       *store.options, check=False, env=store.env)
    assert done.returncode == 1
    assert done.stderr == f"mountfs: --metrics-addr 127.0.0.1:{port}: Address already in use\n"
