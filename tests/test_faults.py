"""Faults between mountfs and the store: real mounts of moto_server through a fault-injecting
proxy (tests/servers/faults.py) that answers ~20% of requests with 500, 503, SlowDown, 429, a
stall past the client's read timeout, a reset or a cut-off body.

What must hold: every file a program wrote and closed reaches the server byte for byte; a read
returns the right bytes or an error, never wrong bytes, and an error does not stick; a permanent
failure (403 AccessDenied, the bucket deleted) reaches the program through fsync and close,
stays visible in `mountfs status`, keeps the data in the cache until a retry succeeds or the
user discards it.

The mounts get short client timeouts through the environment (MOUNTFS_READ_TIMEOUT), so a stall
costs seconds, not a minute. The long variant (1,000 files up to 50 MiB) is marked slow and run
by scripts/soak (FAULT_SEED=N for another sequence of faults).
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import Mount, Mounter, is_mounted, run_cli
from servers.faults import FaultProxy
from servers.s3 import S3Server
from test_s3 import bucket_name, client, mount_s3, s3_env  # noqa: F401 (fixtures)

MiB = 1024 * 1024
RATE = 0.2
READ_TIMEOUT = 2.0  # the mount's S3 read timeout; a stall lasts longer
STALL = 3.0
TIMEOUTS = {"MOUNTFS_READ_TIMEOUT": str(READ_TIMEOUT),
            "MOUNTFS_CONNECT_TIMEOUT": str(READ_TIMEOUT)}
UMOUNT_BOUND = 180.0  # seconds `mountfs umount` may take with uploads queued behind faults
# Errors a program may see while the store fails for a while (not ENOENT: a name that exists
# must never be reported missing because a request failed).
TRANSIENT = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT}


@pytest.fixture
def bucket(bucket_name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket (made straight on moto), and short S3 timeouts for the mounts started
    meanwhile (they inherit the environment)."""
    for name, value in TIMEOUTS.items():
        monkeypatch.setenv(name, value)
    return bucket_name


@pytest.fixture
def proxy(s3_env: S3Server) -> Iterator[FaultProxy]:
    """The fault proxy in front of moto, faults off until a test turns them on."""
    seed = int(os.environ.get("FAULT_SEED", "20261122"))  # scripts/soak may pick another
    p = FaultProxy(s3_env.url, rate=0.0, seed=seed, stall=STALL).start()
    try:
        yield p
    finally:
        p.stop()


def mount_via(mounter: Mounter, proxy: FaultProxy, bucket: str, name: str,
              *options: str) -> Mount:
    """Mount s3://bucket through the proxy. Faults are paused while mounting: the mount's own
    check of the endpoint is not what these tests are about."""
    rate, proxy.rate = proxy.rate, 0.0
    try:
        return mount_s3(mounter, proxy, *options, name=name,  # type: ignore[arg-type]
                        source=f"s3://{bucket}")
    finally:
        proxy.rate = rate


# ---- many files through a faulty store -----------------------------------------------------


@dataclass
class FileSet:
    """Files made from a seed: their bytes are made again on demand, so a soak of gigabytes
    keeps only checksums in memory."""

    seed: int
    sizes: list[int]

    def name(self, i: int) -> str:
        return f"d{i % 7}/f{i:04d}.bin"

    def data(self, i: int) -> bytes:
        return random.Random(self.seed * 1_000_003 + i).randbytes(self.sizes[i])

    def digest(self, i: int) -> str:
        return hashlib.md5(self.data(i)).hexdigest()


def ci_sizes() -> list[int]:
    """0 B to a few MiB, block and part edges, one multipart upload (over 8 MiB)."""
    rng = random.Random(5)
    edges = [0, 1, 4095, 4096, 4097, 65536, 1 * MiB - 1, 1 * MiB, 1 * MiB + 1, 3 * MiB + 17,
             8 * MiB + 3]
    return edges + [rng.randrange(0, 256 * 1024) for _ in range(40)]


def soak_sizes(count: int = 1000) -> list[int]:
    """Mostly small files, some of MiBs, 1% up to 50 MiB (about 0.7 GiB in all)."""
    rng = random.Random(6)
    out = []
    for _ in range(count):
        r = rng.random()
        top = 50 * MiB if r < 0.01 else 8 * MiB if r < 0.1 else 256 * 1024
        out.append(rng.randrange(0, top + 1))
    return out


@dataclass
class Tally:
    """What the program saw: errno values of failed tries, and of reads."""

    write_errors: list[int] = field(default_factory=list)
    read_errors: list[int] = field(default_factory=list)
    failed_uploads: set[str] = field(default_factory=set)


def retrying(what: str, tally: list[int], fn, tries: int = 8):  # type: ignore[no-untyped-def]
    """Run `fn` until it does not raise OSError, at most `tries` times (a program that tries
    again after an error, as a user would); only transient errors are acceptable."""
    for attempt in range(tries):
        try:
            return fn()
        except OSError as exc:
            assert exc.errno in TRANSIENT, f"{what}: {exc!r} is not a transient error"
            tally.append(exc.errno)
            time.sleep(0.2 * attempt)
    raise AssertionError(f"{what}: still failing after {tries} tries at a {RATE:.0%} fault rate")


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def wait_uploaded(m: Mount, tally: Tally, timeout: float) -> None:
    """Until the queue is empty; no upload may ever be shown as failed for good, since every
    injected fault is temporary."""
    deadline = time.monotonic() + timeout
    while True:
        status = m.served_status()
        tally.failed_uploads |= {f"{e['key']}: {e['error']}" for e in status["queue"]
                                 if e["state"] == "failed"}
        if not status["queued"]:
            return
        assert time.monotonic() < deadline, f"uploads still queued: {status['queue'][:5]}"
        time.sleep(0.2)


def server_digests(client, bucket: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):  # directory markers
                body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                out[obj["Key"]] = hashlib.md5(body).hexdigest()
    return out


def copy_verify_read_back(mounter: Mounter, proxy: FaultProxy, client, bucket: str,
                          files: FileSet, drain_timeout: float) -> None:
    """Copy `files` into a mount through the faulty proxy, unmount, compare every object on
    the server with what was written, then read each back through a fresh mount."""
    tally = Tally()
    m = mount_via(mounter, proxy, bucket, "mnt", "--writeback-delay", "0.2")
    proxy.rate = RATE
    for d in sorted({files.name(i).split("/")[0] for i in range(len(files.sizes))}):
        retrying(f"mkdir {d}", tally.write_errors,
                 lambda: os.makedirs(m.path / d, exist_ok=True))
    for i in range(len(files.sizes)):
        target = m.path / files.name(i)
        data = files.data(i)
        retrying(f"write {target}", tally.write_errors, lambda: write_file(target, data))
    wait_uploaded(m, tally, drain_timeout)
    written_faults = sum(proxy.injected.values())
    proxy.rate = 0.0  # `mountfs umount` itself is not under test here
    mounter.umount(m)

    expected = {files.name(i): files.digest(i) for i in range(len(files.sizes))}
    actual = server_digests(client, bucket)
    wrong = sorted(k for k in expected if actual.get(k) != expected[k])
    assert not wrong, f"{len(wrong)} objects missing or different on the server: {wrong[:10]}"
    assert set(actual) == set(expected), f"unexpected objects: {set(actual) - set(expected)}"
    assert not tally.failed_uploads, f"temporary faults taken as permanent: {tally.failed_uploads}"

    before = sum(proxy.injected.values())
    again = mount_via(mounter, proxy, bucket, "again")
    proxy.rate = RATE
    pending = list(range(len(files.sizes)))
    for round_ in range(6):
        still = []
        for i in pending:
            try:
                got = (again.path / files.name(i)).read_bytes()
            except OSError as exc:
                assert exc.errno in TRANSIENT, f"read {files.name(i)}: {exc!r}"
                tally.read_errors.append(exc.errno)
                still.append(i)
                continue
            # Never wrong bytes: a short, long or altered read is the one thing not allowed.
            assert hashlib.md5(got).hexdigest() == expected[files.name(i)], \
                f"{files.name(i)}: wrong bytes read ({len(got)} of {files.sizes[i]})"
        pending = still
        if not pending:
            break
        time.sleep(0.5 * round_)
    read_faults = sum(proxy.injected.values()) - before
    proxy.rate = 0.0
    assert not pending, f"reads kept failing: {[files.name(i) for i in pending]}"
    # The test means something only if faults were actually met in both halves.
    assert written_faults > 0 and read_faults > 0, proxy.report()
    print(f"\n{len(files.sizes)} files, {sum(files.sizes) / MiB:.1f} MiB checked on the server "
          f"and read back; {proxy.report()}; the program saw {len(tally.write_errors)} write "
          f"and {len(tally.read_errors)} read errors (tried again)")


def test_files_copied_through_faults_arrive_exact_and_read_back_exact(
        mounter: Mounter, proxy: FaultProxy, client, bucket: str) -> None:
    copy_verify_read_back(mounter, proxy, client, bucket, FileSet(1, ci_sizes()),
                          drain_timeout=120)


@pytest.mark.slow
def test_soak_thousand_files_up_to_50_mib_through_faults(
        mounter: Mounter, proxy: FaultProxy, client, bucket: str) -> None:
    copy_verify_read_back(mounter, proxy, client, bucket, FileSet(2, soak_sizes()),
                          drain_timeout=3600)


# ---- permanent failures --------------------------------------------------------------------


def fsync_fails(path: Path, flags: int, code: int) -> None:
    """open, fsync and close: fsync and close both report `code` (the upload's error)."""
    fd = os.open(path, flags, 0o644)
    try:
        with pytest.raises(OSError) as fsync_error:
            os.fsync(fd)
        assert fsync_error.value.errno == code, fsync_error.value
    finally:
        with pytest.raises(OSError) as close_error:
            os.close(fd)  # the descriptor is closed all the same
    assert close_error.value.errno == code, close_error.value


def fsync_succeeds(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def failed_entry(m: Mount, key: str, error: str) -> dict:
    """The queue entry of `key`, which `mountfs status` shows as failed with `error`, and says
    how to give up."""
    entries = [e for e in m.status()["queue"] if e["key"] == key]
    assert len(entries) == 1, m.status()["queue"]
    assert entries[0]["state"] == "failed" and error in entries[0]["error"], entries[0]
    text = run_cli("status", str(m.path)).stdout
    assert f"failed    {entries[0]['bucket']}/{key}" in text and error in text, text
    assert f"mountfs discard {m.path} BUCKET/KEY" in text, text
    return entries[0]


def wait_uploading(m: Mount, timeout: float = 20) -> None:
    """Until `mountfs status` shows an upload under way."""
    deadline = time.monotonic() + timeout
    while not any(e["state"] == "uploading" for e in m.served_status()["queue"]):
        assert time.monotonic() < deadline, m.served_status()
        time.sleep(0.02)


def cached_bytes(path: Path) -> bytes:
    """The file's bytes, read through the mount; the close of a read-only descriptor succeeds
    even while the file's upload fails (the failure is news only for writers)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def on_server(client, bucket: str, key: str) -> bytes | None:  # type: ignore[no-untyped-def]
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


def test_denied_upload_fails_fsync_and_close_and_stays_until_allowed(
        mounter: Mounter, proxy: FaultProxy, client, bucket: str) -> None:
    m = mount_via(mounter, proxy, bucket, "mnt", "--writeback-delay", "0.2")
    data = os.urandom(300_000)
    proxy.deny_writes = True
    path = m.path / "kept.bin"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, data)
    with pytest.raises(OSError) as fsync_error:
        os.fsync(fd)
    assert fsync_error.value.errno == errno.EACCES
    with pytest.raises(OSError) as close_error:
        os.close(fd)
    assert close_error.value.errno == errno.EACCES
    failed_entry(m, "kept.bin", "AccessDenied")
    fsync_fails(path, os.O_WRONLY, errno.EACCES)  # every fsync tries again, and reports
    time.sleep(1)  # past the write-back delay: the queue keeps it, never drops it
    entry = failed_entry(m, "kept.bin", "AccessDenied")
    assert entry["tries"] >= 2 and entry["size"] == len(data)
    assert m.status()["cache"]["dirty"] >= len(data)
    assert on_server(client, bucket, "kept.bin") is None
    assert cached_bytes(path) == data  # the cache still has it

    proxy.deny_writes = False  # the cause is fixed: the next try (here an fsync) succeeds
    fsync_succeeds(path)
    assert on_server(client, bucket, "kept.bin") == data
    assert m.status()["queue"] == []
    mounter.umount(m)
    assert on_server(client, bucket, "kept.bin") == data


def test_upload_to_a_deleted_bucket_fails_until_it_is_back(
        mounter: Mounter, proxy: FaultProxy, client, bucket: str) -> None:
    m = mount_via(mounter, proxy, bucket, "mnt", "--writeback-delay", "30", "--whole-file-delay", "30")
    data = os.urandom(5000)
    (m.path / "late.bin").write_bytes(data)  # closed, queued, not uploaded yet
    client.delete_bucket(Bucket=bucket)
    fsync_fails(m.path / "late.bin", os.O_WRONLY, errno.ENOENT)
    failed_entry(m, "late.bin", "NoSuchBucket")
    assert cached_bytes(m.path / "late.bin") == data
    client.create_bucket(Bucket=bucket)
    fsync_succeeds(m.path / "late.bin")
    assert on_server(client, bucket, "late.bin") == data
    mounter.umount(m)


def test_a_failed_upload_is_given_up_by_mountfs_discard(
        mounter: Mounter, proxy: FaultProxy, client, bucket: str) -> None:
    m = mount_via(mounter, proxy, bucket, "mnt", "--writeback-delay", "0.2")
    (m.path / "keep.txt").write_bytes(b"uploaded before the fault")
    fsync_succeeds(m.path / "keep.txt")
    proxy.deny_writes = True
    fd = os.open(m.path / "lost.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"x" * 100_000)
    with pytest.raises(OSError):
        os.fsync(fd)
    with pytest.raises(OSError):
        os.close(fd)
    failed_entry(m, "lost.bin", "AccessDenied")
    missing = run_cli("discard", str(m.path), f"{bucket}/no-such-file", check=False)
    assert missing.returncode == 1 and "not in the upload queue" in missing.stderr
    done = run_cli("discard", str(m.path), f"{bucket}/lost.bin")
    assert f"discarded {bucket}/lost.bin" in done.stdout
    status = m.status()
    assert status["queue"] == [] and status["cache"]["dirty"] == 0
    proxy.deny_writes = False
    started = time.monotonic()
    mounter.umount(m)  # nothing left to wait for
    assert time.monotonic() - started < 30
    assert on_server(client, bucket, "lost.bin") is None
    assert on_server(client, bucket, "keep.txt") == b"uploaded before the fault"


# ---- unmounting under faults ---------------------------------------------------------------


def test_umount_with_uploads_queued_behind_faults_finishes_and_loses_nothing(
        mounter: Mounter, proxy: FaultProxy, client, bucket: str) -> None:
    # A long write-back delay keeps every upload queued until `mountfs umount` asks for them;
    # then 20% of the requests fail (stalls past the timeout among them) while it waits.
    files = FileSet(3, ci_sizes()[:12] + [9 * MiB + 5])
    m = mount_via(mounter, proxy, bucket, "mnt", "--writeback-delay", "600", "--whole-file-delay", "600")
    for i in range(len(files.sizes)):
        os.makedirs((m.path / files.name(i)).parent, exist_ok=True)
        write_file(m.path / files.name(i), files.data(i))
    assert m.status()["queued"] == len(files.sizes)
    proxy.rate = RATE
    started = time.monotonic()
    run_cli("umount", str(m.path), timeout=UMOUNT_BOUND)  # raises if it takes longer
    took = time.monotonic() - started
    faults = sum(proxy.injected.values())
    proxy.rate = 0.0
    assert not is_mounted(m.path)
    expected = {files.name(i): files.digest(i) for i in range(len(files.sizes))}
    assert server_digests(client, bucket) == expected
    assert faults > 0, proxy.report()
    print(f"\numount with {len(files.sizes)} uploads queued ({sum(files.sizes) / MiB:.1f} MiB) "
          f"took {took:.1f}s; {proxy.report()}")


def test_rename_over_a_file_whose_upload_is_under_way_replaces_what_it_stored(
        mounter: Mounter, proxy: FaultProxy, client, bucket: str) -> None:
    """`b`'s upload has left the mount, not yet stored, when `a` (still being written) is
    renamed over it: the rename waits for that upload, and `a`'s then replaces the `b` it
    stored (no conflict: no other client wrote it)."""
    m = mount_via(mounter, proxy, bucket, "mnt", "--writeback-delay", "0")
    proxy.put_delay = 1.0
    write_file(m.path / "b", b"BBBBBB")
    wait_uploading(m)
    time.sleep(0.2)  # its body sent: the proxy holds it
    with open(m.path / "a", "wb") as a:  # open: no upload of `a` of its own
        a.write(b"AAA")
        a.flush()
        os.rename(m.path / "a", m.path / "b")
    run_cli("sync", str(m.path))
    proxy.put_delay = 0.0
    assert sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])) \
        == ["b"]
    assert on_server(client, bucket, "b") == b"AAA"
    assert os.listdir(m.path) == ["b"]
    mounter.umount(m)


# ---- upload progress -----------------------------------------------------------------------


def test_status_shows_the_progress_of_an_upload(mounter: Mounter, proxy: FaultProxy, client,
                                                bucket: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy reads request bodies at 4 MiB/s: an 80 MiB file is 10 parts of 8 MiB, 8 of
    # them under way at once (the driver's part slots), each taking 2 s; the last two start
    # when slots free up. Over plain HTTP botocore reads each part once to sign it before it
    # sends it, so the figure leads the network by the parts under way (README), and stays
    # between 80% and 100% until the last parts get their slots. A part's reply comes as long
    # after its last byte left the client's socket buffer: a longer read timeout than the
    # fault tests' short one.
    monkeypatch.setenv("MOUNTFS_READ_TIMEOUT", "30")
    data = os.urandom(80 * MiB)
    m = mount_via(mounter, proxy, bucket, "mnt", "--writeback-delay", "0")
    proxy.bandwidth = 4 * MiB
    write_file(m.path / "big.bin", data)
    seen: list[float] = []
    text = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        entries = m.served_status()["queue"]
        if not entries:
            break
        e = entries[0]
        if e["state"] == "uploading":
            assert e["size"] == len(data) and 0 <= e["done"] <= e["size"]
            assert e["percent"] == round(100 * e["done"] / e["size"], 1)
            seen.append(e["percent"])
            if 0 < e["percent"] < 100 and not text:
                text = run_cli("status", str(m.path)).stdout
        time.sleep(0.05)
    proxy.bandwidth = 0
    assert any(0 < p < 100 for p in seen), f"no progress between 0 and 100%: {seen}"
    assert seen == sorted(seen), f"progress went back: {seen}"
    assert re.search(r"uploading +" + re.escape(bucket) + r"/big\.bin +[\d.]+ MiB/80\.0 MiB "
                     r"\(\d+(\.\d)?%\)", text), text
    assert on_server(client, bucket, "big.bin") == data
    print(f"\nprogress seen (%, each change): {[p for i, p in enumerate(seen) if not i or p != seen[i - 1]]}")
    mounter.umount(m)
