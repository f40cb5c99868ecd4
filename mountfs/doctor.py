"""`mountfs doctor [SOURCE]`: what stands between this machine and a working mount.

Each finding is one line, `ok: ...`, `warning: ...` or `error: ...`, with how to fix it in
parentheses; the exit code is 1 when any is an error. Checked: fuse3 and /dev/fuse; the cache
dir (its free space against the cap, its permissions, whether a mount holds it); with a
SOURCE (a remote's `NAME:` too), that the service is reached with these options and
credentials, what the driver supports (its `Features`) and what the credentials allow: list,
read one object (the smallest of the first listing) and, only with `--write-probe`, write
(a 0-byte `.mountfs-doctor-*` object, deleted at once). Nothing else is written or changed.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mountfs import remotes
from mountfs.backends import Source, registry
from mountfs.errors import BackendError, ConfigError, NameTooLong, NotPermitted
from mountfs.sizes import human, parse_size

if TYPE_CHECKING:
    from mountfs.backends.base import Backend, ObjectInfo

# Below this much free space the journal and a few blocks no longer fit (cache/room.py
# keeps a reserve of up to 64 MiB).
TOO_LITTLE_SPACE = 64 * 1024 * 1024
PROBE_PREFIX = ".mountfs-doctor-"
LOOK_DEEPER = 3  # directory levels looked into for an object to read
# What a request may fail with: the drivers' errors, and the network's after the retries.
FAILURES = (BackendError, OSError)


@dataclass
class Finding:
    level: str  # "ok", "warning" or "error"
    text: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.level}: {self.text}" + (f" ({self.fix})" if self.fix else "")


Report = Callable[[Finding], None]


def check_fuse(report: Report) -> None:
    if shutil.which("fusermount3") is None:
        report(Finding("error", "fusermount3 not found", "install fuse3: apt-get install fuse3"))
    else:
        report(Finding("ok", f"fuse3: {shutil.which('fusermount3')}"))
    if not os.path.exists("/dev/fuse"):
        report(Finding("error", "/dev/fuse is missing", "modprobe fuse; in a container, "
                                "give it the device: --device /dev/fuse"))
    elif not os.access("/dev/fuse", os.R_OK | os.W_OK):
        report(Finding("error", "/dev/fuse is not readable and writable by this user",
                       "chmod 666 /dev/fuse, as fuse3's udev rule sets it"))
    else:
        report(Finding("ok", "/dev/fuse is usable"))


def check_cache_dir(directory: Path, cap: int, own: bool, report: Report) -> None:
    """`own`: the cache dir of one mount (0700 and locked while mounted); else the directory
    holding them."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if existing == directory:
        check_existing_cache_dir(directory, own, report)
    elif not os.access(existing, os.W_OK | os.X_OK):
        report(Finding("error", f"cache dir {directory} cannot be made: {existing} is not "
                                f"writable", "give --cache-dir a directory of your own"))
    else:
        report(Finding("ok", f"cache dir {directory} (made at the first mount, mode 0700)"))
    free = shutil.disk_usage(existing).free
    where = f"{human(free)} free for the cache in {existing}"
    if free < TOO_LITTLE_SPACE:
        report(Finding("error", where, "free space there, or --cache-dir on another disk"))
    elif free < cap:
        report(Finding("warning", f"{where}, less than the cap of {human(cap)}: the cache is "
                                  f"capped at what the disk holds",
                       "free space, or a smaller --cache-size"))
    else:
        report(Finding("ok", f"{where} (cap {human(cap)})"))


def check_existing_cache_dir(directory: Path, own: bool, report: Report) -> None:
    st = directory.stat()
    if not stat.S_ISDIR(st.st_mode):
        report(Finding("error", f"cache dir {directory} is not a directory",
                       "remove it, or give --cache-dir another path"))
        return
    if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
        report(Finding("error", f"cache dir {directory} is not writable by this user",
                       f"chown {os.getuid()} {directory}, or another --cache-dir"))
        return
    if not own:
        report(Finding("ok", f"cache dirs in {directory}"))
        return
    if stat.S_IMODE(st.st_mode) & 0o077:
        report(Finding("warning", f"cache dir {directory} is mode "
                                  f"{stat.S_IMODE(st.st_mode):o}: others may read cached data",
                       f"chmod 700 {directory}"))
    else:
        report(Finding("ok", f"cache dir {directory} (mode 700)"))
    lock = directory / "lock"
    if lock.exists():
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            report(Finding("warning", f"cache dir {directory} is in use by a running mount",
                           "a second mount of the same SOURCE needs its own --cache-dir"))
        finally:
            os.close(fd)


def report_features(source: Source, report: Report) -> None:
    backend = source.backend
    f = backend.features
    if f.whole_reads_up_to == 0:
        report(Finding("ok", "ranged reads: a file is read by the blocks asked for"))
    else:
        upto = "every file" if f.whole_reads_up_to is None else \
            f"files up to {human(f.whole_reads_up_to)}"
        report(Finding("warning", f"no ranged reads: {upto} read whole into the cache at "
                                  f"the first read", "size --cache-size for the largest files"))
    if f.server_side_copy:
        report(Finding("ok", "server-side copy: renames and copies move no data through here"))
    else:
        report(Finding("warning", "no server-side copy: a rename or copy of a file downloads "
                                  "and uploads it", "prefer fewer renames of large files"))
    if f.kept_attributes is None:
        report(Finding("ok", "metadata: modes, owners, times, xattrs and other tools' "
                             "metadata are kept"))
    else:
        kept = ", ".join(sorted(f.kept_attributes)) or "none"
        report(Finding("warning", f"metadata: the service keeps only: {kept}; others are "
                                  f"shown until read again", "nothing to fix: the service's "
                                  "limit"))
    if f.writable:
        report(Finding("ok", "writes: the driver can write"))
    else:
        report(Finding("warning", "writes: the mount will be read-only", f.why_read_only))
    from mountfs.backends.base import Backend  # (with trio: loaded only to check a source)

    if type(backend).changes is not Backend.changes:
        report(Finding("ok", "change notifications: changes made elsewhere show at once"))
    else:
        report(Finding("warning", "no change notifications: changes made elsewhere show "
                                  "after the metadata TTL", "a shorter --metadata-ttl shows "
                                  "them sooner, at more requests"))


async def first_page(backend: Backend, bucket: str, prefix: str) -> list[ObjectInfo]:
    async for page in backend.list_objects(bucket, prefix, page_size=100):
        return page
    return []


async def find_object(backend: Backend, bucket: str, prefix: str,
                      depth: int = LOOK_DEEPER) -> ObjectInfo | None:
    """The smallest file of the first listing page, looking into the first directory when
    the page holds none."""
    page = await first_page(backend, bucket, prefix)
    files = [o for o in page if not o.is_prefix and not o.key.endswith("/")]
    if files:
        return min(files, key=lambda o: o.size)
    directories = [o for o in page if o.is_prefix]
    if directories and depth:
        return await find_object(backend, bucket, directories[0].key, depth - 1)
    return None


async def check_access(source: Source, write_probe: bool, report: Report) -> None:
    backend, scope = source.backend, source.scope
    try:
        if scope.bucket is None:
            buckets = await backend.list_buckets()
            report(Finding("ok", f"list: the root lists {len(buckets)} buckets"))
        else:
            buckets = [scope.bucket]
            await first_page(backend, scope.bucket, scope.prefix)
            report(Finding("ok", f"list: {scope.bucket}/{scope.prefix}"))
    except FAILURES as exc:
        report(Finding("error", f"list: {exc}", "the credentials may not list: give them "
                                "that right, or mount one bucket you may list"))
        return
    found = None
    for bucket in buckets[:3]:
        with contextlib.suppress(*FAILURES):
            found = await find_object(backend, bucket, scope.prefix)
        if found is not None:
            break
    if found is None:
        report(Finding("warning", "read: not checked (no file found in the first listings)"))
    else:
        try:
            await backend.read_object(found.bucket, found.key, 0, 1)
            report(Finding("ok", f"read: {found.bucket}/{found.key}"))
        except FAILURES as exc:
            report(Finding("error", f"read: {found.bucket}/{found.key}: {exc}",
                           "the credentials may list but not read: give them read rights"))
    await check_write(source, buckets, write_probe, report)


async def check_write(source: Source, buckets: list[str], write_probe: bool,
                      report: Report) -> None:
    backend = source.backend
    if not backend.features.writable:
        report(Finding("warning", "write: no", backend.features.why_read_only))
        return
    if not write_probe or not buckets:
        report(Finding("warning", "write: not checked", "--write-probe writes and deletes a "
                                  f"0-byte {PROBE_PREFIX}* object to check"))
        return
    bucket, key = buckets[0], source.scope.prefix + PROBE_PREFIX + os.urandom(6).hex()
    try:
        await backend.check_key(bucket, key)
    except (NotPermitted, NameTooLong, *FAILURES) as exc:
        report(Finding("warning", f"write: not checked: the service takes no new file "
                                  f"there ({exc})"))
        return
    try:
        await backend.write_object(bucket, key, io.BytesIO(b""), 0, {})
    except FAILURES as exc:
        report(Finding("error", f"write: {bucket}/{key}: {exc}", "the credentials may not "
                                "write: give them write rights, or mount --read-only"))
        return
    try:
        await backend.delete_object(bucket, key)
    except FAILURES as exc:
        report(Finding("error", f"write: {bucket}/{key} was written but cannot be deleted: "
                                f"{exc}", f"delete {bucket}/{key} by hand"))
        return
    report(Finding("ok", f"write: a file written and deleted in {bucket}/{source.scope.prefix}"))


async def check_source(source_text: str, values: dict[str, Any], write_probe: bool,
                       report: Report) -> None:
    try:
        source = await registry.open_source(source_text, values)
    except ConfigError as exc:
        report(Finding("error", str(exc), "see mountfs mount --help for the SOURCE and options"))
        return
    try:
        try:
            await source.check()
        except (ConfigError, *FAILURES) as exc:
            said = str(exc) if isinstance(exc, ConfigError) else f"{source.describe()}: {exc}"
            report(Finding("error", said,
                           "check the endpoint, the credentials and the SOURCE's bucket"))
            return
        report(Finding("ok", f"reached {source.describe()}"))
        report_features(source, report)
        await check_access(source, write_probe, report)
    finally:
        await source.backend.aclose()


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from mountfs.cli import add_driver_options

    d = sub.add_parser("doctor", help="check fuse3, the cache dir and (with SOURCE) the "
                                      "service and its credentials")
    d.add_argument("source", nargs="?", help="a SOURCE or a saved remote's NAME:")
    d.add_argument("--cache-dir", type=Path, help="default: the one mount would use")
    d.add_argument("--cache-size", type=parse_size, default=parse_size("10G"))
    d.add_argument("--write-probe", action="store_true",
                   help=f"check writes by storing and deleting a 0-byte {PROBE_PREFIX}* file")
    d.add_argument("-o", dest="fuse_options", action="append", default=[],
                   help="driver options, comma separated: <driver>_<name>=VALUE")
    add_driver_options(d)
    d.set_defaults(handler=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from mountfs.cli import default_cache_dir, driver_values

    levels: list[str] = []

    def report(finding: Finding) -> None:
        levels.append(finding.level)
        print(finding, flush=True)

    check_fuse(report)
    values: dict[str, Any] = {}
    source = None
    if args.source:
        saved = remotes.resolve(args.source)
        os.environ.update(saved.environment)
        driver, _, _ = registry.split_source(saved.source)
        items = [o for opt in args.fuse_options for o in opt.split(",") if o]
        given, left = driver_values(args, driver, items)
        if left:
            raise ConfigError(f"-o {left[0]}: not an option of the {driver.name} driver")
        values, source = {**saved.values, **given}, saved.source
    if args.cache_dir:
        cache_dir = args.cache_dir.absolute()
    elif source is not None:
        cache_dir = default_cache_dir(registry.cache_key(registry.canonical_source(source),
                                                         values))
    else:
        cache_dir = default_cache_dir("x").parent
    check_cache_dir(cache_dir, args.cache_size, bool(args.cache_dir or source), report)
    if source is not None:
        import trio  # here, not at the top: the CLI imports this module for every command

        trio.run(check_source, source, values, args.write_probe, report)
    return 1 if "error" in levels else 0
