"""The composition root: builds backend, cache, queue and namespace, serves FUSE, shuts down.

Order at start: check the backend, lock and load the cache (replaying the journal), mount,
then tell the waiting parent we are ready. Order at stop (SIGTERM/SIGINT, `mountfs umount`,
or `fusermount3 -u`): drain the upload queue, unmount, close the backend. A second signal
unmounts at once; whatever was not uploaded stays in the journal for the next mount.
"""
from __future__ import annotations

import dataclasses
import fcntl
import gc
import logging
import os
import signal
import sys
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from cache.blocks import BlockCache
from cache.writeback import WritebackQueue
from mountfs import notify
from mountfs.attrs import Defaults
from mountfs.backends.registry import open_source, split_source
from mountfs.changes import follow_changes
from mountfs.errors import ConfigError
from mountfs.metrics import Metrics
from mountfs.namespace import Namespace
from mountfs.operations import Operations
from mountfs.status import Status

log = logging.getLogger(__name__)


@dataclass
class MountConfig:
    source: str
    mountpoint: str
    cache_dir: Path
    cache_size: int
    block_size: int
    read_only: bool
    uid: int
    gid: int
    umask: int
    allow_other: bool
    writeback_delay: float
    metadata_ttl: float
    # The delay of a file written whole (created or truncated to 0, closed by its last
    # writer): no editor is rewriting it in place, so by default it goes up at close.
    whole_file_delay: float = 0.0
    attributes_from_listings: bool = False
    workers: int = 8  # uploads at once: many small files go up at the pace of 8 PUTs in flight
    upload_on_close: bool = False
    driver_values: dict[str, Any] = field(default_factory=dict)  # by the driver's option name
    fuse_options: list[str] = field(default_factory=list)
    metrics_addr: tuple[str, int] | None = None  # serve Prometheus metrics there

    def options(self) -> set[str]:
        opts = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
        opts |= {f"fsname=mountfs:{self.source}", "subtype=mountfs"}
        if self.read_only:
            opts.add("ro")
        if self.allow_other:
            opts.add("allow_other")
        opts.update(self.fuse_options)
        return opts


def lock_cache_dir(directory: Path) -> int:
    """Hold the cache dir for this process; a second mount on it would corrupt both."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"cache dir {directory} is in use by another mount; "
                          f"give this one its own --cache-dir") from None
    return fd


async def serve(config: MountConfig, ready: Callable[[], None]) -> None:
    # Worker threads (block fetches, uploads, blocking clients) release the GIL for I/O and
    # then queue behind the FUSE thread for up to the switch interval; at the default 5 ms that
    # convoy cut parallel read-ahead to a third. 0.2 ms measured best here.
    sys.setswitchinterval(0.0002)
    source = await open_source(config.source, config.driver_values)
    await source.check()
    metrics = Metrics(split_source(config.source)[0].name) if config.metrics_addr else None
    backend = metrics.measure(source.backend) if metrics else source.backend
    if not backend.features.writable and not config.read_only:
        log.warning("%s cannot write (%s): mounted read-only", source.describe(),
                    backend.features.why_read_only)
        config = dataclasses.replace(config, read_only=True)
    lock_fd = lock_cache_dir(config.cache_dir)
    cache = BlockCache(config.cache_dir, backend, config.cache_size, config.block_size,
                       whole_reads_up_to=backend.features.whole_reads_up_to)
    dirty = cache.load()
    # Uploads at once: small files' PUTs up to the driver's pool (a large file's parts are
    # bounded by the driver).
    queue = WritebackQueue(cache, backend, config.writeback_delay,
                           max(config.workers, backend.features.parallel_requests),
                           whole_delay=config.whole_file_delay,
                           part_size=backend.part_upload_size()
                           if backend.features.part_uploads else 0)
    ns = Namespace(backend, source.scope, cache, queue,
                   Defaults(config.uid, config.gid, config.umask,
                            config.attributes_from_listings), config.metadata_ttl,
                   config.read_only, dir_times_delay=config.writeback_delay)
    status = Status(source.describe(), config.mountpoint, cache, queue, backend.transfers,
                    backend.changes_via, source.scope)
    ops = Operations(ns, status, cache.block_size, config.upload_on_close)
    target = os.path.realpath(config.mountpoint)  # (once mounted, its lstat would hang)
    if metrics and config.metrics_addr:
        metrics.serve(config.metrics_addr, cache, queue, ops.requests)
    try:
        pyfuse3.init(ops, config.mountpoint, config.options())
    except RuntimeError as exc:
        if metrics:
            metrics.close()
        raise ConfigError(f"cannot mount on {config.mountpoint}: {exc}") from None
    stop = Stop(queue, status)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            await nursery.start(queue.run)
            await nursery.start(ns.dir_times.run)
            await nursery.start(ns.stat_ahead.run)
            for obj in dirty:
                queue.commit(obj, delay=0)  # closed long ago: no reason to wait
            if dirty:
                log.info("journal replay: %d objects queued for upload", len(dirty))
            nursery.start_soon(stop.on_signals, nursery)
            nursery.start_soon(raise_read_ahead, ops.initialized, target)
            nursery.start_soon(follow_changes, ns.table, backend)
            ready()
            # What was built to get here (the drivers' libraries, botocore's service models)
            # lives as long as the mount: out of the collector's sight. A full collection
            # stops every request; during `ls -l` of 10,000 on s3rver one took 5 ms, not 37-66.
            gc.collect()
            gc.freeze()
            nursery.start_soon(notify.report, status.snapshot)  # under systemd: READY=1
            await pyfuse3.main()
            stop.unmounted = True
            notify.stopping(status.snapshot())
            if not stop.requested:
                log.info("unmounted; uploading what is still queued")
            queue.hurry()  # nobody writes any more: no reason to wait out the delay
            await ns.dir_times.flush()
            await stop.drain()
            nursery.cancel_scope.cancel()
    finally:
        # main() also returns when the kernel unmounted us (fusermount3 -u): then there is
        # nothing left to unmount.
        pyfuse3.close(unmount=stop.requested)
        if metrics:
            metrics.close()
        cache.close()
        await backend.aclose()
        os.close(lock_fd)


@dataclass
class Stop:
    """How the mount ends. The first SIGTERM/SIGINT uploads what is queued, then unmounts; an
    unmount by the kernel (fusermount3 -u) uploads what is queued, then ends. A second signal
    stops waiting for uploads, whenever it comes: what is not uploaded stays in the journal
    for the next mount (an upload failing for good would otherwise hold the process)."""

    queue: WritebackQueue
    status: Status
    requested: bool = False  # a signal asked to unmount: serve() unmounts on the way out
    unmounted: bool = False  # pyfuse3.main() returned: the kernel has no mount to end
    now: bool = False  # a second signal: no more waiting
    signals: int = 0
    _drains: list[trio.CancelScope] = field(default_factory=list)

    async def drain(self) -> None:
        """Wait for the queue to drain, unless (or until) a second signal says not to."""
        if self.now:
            return
        with trio.CancelScope() as scope:
            self._drains.append(scope)
            await self.queue.drain()
        if scope.cancelled_caught:
            log.warning("stopped waiting for uploads: the journal keeps what is not uploaded")

    async def on_signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                self.signals += 1
                if self.signals > 1:
                    log.warning("second signal: stopping without waiting for uploads")
                    self.now = True
                    for scope in self._drains:
                        scope.cancel()
                elif self.unmounted:
                    log.info("signal: uploading what is queued, then ending (a second signal "
                             "ends at once)")
                else:
                    log.info("signal: uploading what is queued, then unmounting")
                    notify.stopping(self.status.snapshot())
                    self.requested = True
                    self.queue.hurry()
                    nursery.start_soon(self._unmount_after_drain)

    async def _unmount_after_drain(self) -> None:
        await self.drain()
        if not self.unmounted:
            pyfuse3.terminate()


def check_mountpoint(path: str) -> None:
    """One clear line for each way a mount point can be wrong."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"mount point {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"mount point {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise ConfigError(f"{path} is already a mount point")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise ConfigError("/dev/fuse is missing or not accessible: install fuse3 and load the "
                          "fuse module")


# The kernel's read-ahead on the mount, in KiB (its default is 128): a 512 MiB file read with
# dd through a `local` mount, from the block cache, went from 1.3 to 2.4 GB/s (and, on a
# machine loaded by other work, from 260 to 510-635 MB/s); read cold, from 419 to 556 MB/s
# (2 cores, 2026-12-03).
READ_AHEAD_KB = 1024


async def raise_read_ahead(initialized: trio.Event, target: str) -> None:
    """Set the read-ahead of the mount at `target` (a real path) where this process may
    (root): larger read requests. Only after the kernel's INIT exchange, which sets it to the
    smaller of its own and the reply's (the reply is sent once Operations.init returned: it
    is looked at again until it holds). The device comes from /proc/self/mountinfo: a stat of
    the mount point would go through this very mount."""
    await initialized.wait()
    try:
        with open("/proc/self/mountinfo") as mounts:
            devices = [fields[2] for fields in map(str.split, mounts)
                       if fields[4].replace("\\040", " ") == target]
        knob = Path(f"/sys/class/bdi/{devices[-1]}/read_ahead_kb")
        for _ in range(20):
            if int(knob.read_text()) >= READ_AHEAD_KB:
                return
            knob.write_text(f"{READ_AHEAD_KB}\n")
            await trio.sleep(0.05)
    except (OSError, ValueError, IndexError) as exc:  # not root, no such knob: as it was
        log.debug("read-ahead of %s left as it is: %s", target, exc)
