"""`mountfs mount | umount | status`: arguments, clear one-line errors, the background process.

`mount` checks what it can, then starts the mount as a detached child (`--foreground` in a new
session) and waits on a pipe until the child says it is mounted or why it is not; so errors
still reach the terminal as one line and a non-zero exit.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

# Only what building the parser needs: every command (umount, status, completion, the
# mount helper) builds it, while trio, the cache and the drivers' clients serve a mount.
from cache.block_files import DEFAULT_BLOCK_SIZE
from mountfs import completion, doctor, mount_helper, remotes
from mountfs.backends import registry
from mountfs.errors import ConfigError
from mountfs.logs import journal_stream, setup_logging
from mountfs.processes import pid_alive
from mountfs.sizes import human, parse_size
from mountfs.status import DISCARD_XATTR, FLUSH_XATTR, STATUS_XATTR


def parse_umask(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"not a umask (octal, 000 to 777): {text!r}")
    return value


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def parse_addr(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) for --metrics-addr."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r} (e.g. 127.0.0.1:9101)")
    return host, int(port)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mountfs: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mountfs", description="Mount object storage as a filesystem.",
                    allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    m = sub.add_parser("mount", help="mount SOURCE on MOUNTPOINT", allow_abbrev=False)
    m.add_argument("source", help="what to mount: each driver's group below says how its "
                   "SOURCE is written")
    m.add_argument("mountpoint")
    m.add_argument("--foreground", "-f", action="store_true", help="stay attached")
    m.add_argument("--cache-dir", type=Path, help="default: $XDG_CACHE_HOME/mountfs/<source>")
    m.add_argument("--cache-size", type=parse_size, default=parse_size("10G"),
                   help="cap on cached data, e.g. 512M (default 10G)")
    m.add_argument("--block-size", type=parse_size, default=DEFAULT_BLOCK_SIZE,
                   help=argparse.SUPPRESS)
    m.add_argument("--read-only", action="store_true")
    m.add_argument("--uid", type=int, default=os.getuid(), help="owner of files without one")
    m.add_argument("--gid", type=int, default=os.getgid(), help="group of files without one")
    m.add_argument("--umask", type=parse_umask, default=0o022,
                   help="mode mask for files without a mode (octal, default 022)")
    m.add_argument("--allow-other", action="store_true", help="let other users in")
    m.add_argument("--writeback-delay", type=non_negative, default=1.0, metavar="SECONDS",
                   help="quiet time after close before uploading a file rewritten in place "
                   "(default 1)")
    m.add_argument("--whole-file-delay", type=non_negative, default=0.0, metavar="SECONDS",
                   help="the same for a file written whole: created or truncated to 0, "
                   "written, closed by its last writer (default 0: at once)")
    m.add_argument("--upload-on-close", action="store_true",
                   help="close (and so cp, mv into the mount) returns once the file is "
                   "uploaded, with the upload's error")
    m.add_argument("--metadata-ttl", type=non_negative, default=5.0, metavar="SECONDS",
                   help="how long listings and attributes are trusted (default 5)")
    m.add_argument("--attributes-from-listings", action="store_true",
                   help="take listed objects' attributes from the listing (size, mtime) and "
                        "--uid/--gid/--umask, with no request per entry: faster walks, but "
                        "modes, owners and symlinks kept in metadata are not seen")
    m.add_argument("--workers", type=int, default=8, help=argparse.SUPPRESS)
    m.add_argument("-o", dest="fuse_options", action="append", default=[],
                   help="options, comma separated: a driver's <driver>_<name>=VALUE, "
                   "others are FUSE mount options")
    m.add_argument("--metrics-addr", type=parse_addr, metavar="HOST:PORT",
                   help="serve Prometheus metrics there, e.g. 127.0.0.1:9101 (default: off)")
    m.add_argument("--log-file", type=Path, help="default: <cache-dir>/mountfs.log")
    m.add_argument("-v", "--verbose", action="count", default=0)
    add_driver_options(m)
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    u = sub.add_parser("umount", help="upload what is queued, then unmount")
    u.add_argument("mountpoint")

    s = sub.add_parser("status", help="the upload queue and the cache")
    s.add_argument("mountpoint")
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", action="store_true",
                   help="follow it live (one line per event when not on a terminal); Ctrl-C ends")

    y = sub.add_parser("sync", help="upload now every closed file under PATH, and wait")
    y.add_argument("mountpoint")
    y.add_argument("path", nargs="?", help="a file or directory on the mount (default: all)")

    d = sub.add_parser("discard", help="give up queued uploads and drop their data")
    d.add_argument("mountpoint")
    d.add_argument("entries", nargs="+", metavar="BUCKET/KEY",
                   help="an upload as `mountfs status` lists it")
    remotes.add_commands(sub)
    doctor.add_command(sub)
    completion.add_command(sub)
    for driver in registry.drivers():
        if driver.commands is not None:
            driver.commands(sub.add_parser(driver.name, help=f"{driver.name} commands"))
    return parser


def add_driver_options(parser: argparse.ArgumentParser) -> None:
    """Each driver's options as `--<driver>-<name>` (and its older aliases), in a group of
    its own; a flag that two options would share is a bug caught here, not a surprise."""
    taken = {flag for action in parser._actions for flag in action.option_strings}
    for driver in registry.drivers():
        group = parser.add_argument_group(f"{driver.name}", driver.summary)
        for option in driver.options:
            flags = [option.flag(driver.name), *option.aliases]
            clash = taken.intersection(flags)
            if clash:
                raise AssertionError(f"driver {driver.name}: flag {clash.pop()} is taken")
            taken.update(flags)
            help_text = option.help
            if option.env:
                what = "the secret itself" if option.secret else "the value"
                help_text += f" (else {what} from {' or '.join(option.env)})"
            if isinstance(option.default, str):  # others are said in the help text
                help_text += f" (default: {option.default})"
            help_text += f"; -o {option.dest(driver.name)}=..."
            if option.switch:
                group.add_argument(*flags, dest=option.dest(driver.name), default=None,
                                   action="store_true", help=help_text)
            else:
                group.add_argument(*flags, dest=option.dest(driver.name), default=None,
                                   type=option.parse, metavar=option.metavar or "VALUE",
                                   help=help_text)


def driver_values(args: argparse.Namespace, driver: registry.Driver,
                  fuse_options: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The options given for `driver` (flags, then `-o <driver>_<name>=VALUE`, by option
    name), and the -o items left for FUSE. Another driver's option is an error: it would be
    ignored without a word."""
    values: dict[str, Any] = {}
    for other in registry.drivers():
        for option in other.options:
            value = getattr(args, option.dest(other.name))
            if value is None:
                continue
            if other is not driver:
                raise ConfigError(f"{option.flag(other.name)} is an option of {other.name} "
                                  f"sources, not of {driver.name}")
            values[option.name] = value
    by_dest = {o.dest(driver.name): o for o in driver.options}
    left: list[str] = []
    for item in fuse_options:
        name, sep, text = item.partition("=")
        ours = by_dest.get(name)
        if ours is None:
            if any(name == o.dest(d.name) for d in registry.drivers() for o in d.options):
                raise ConfigError(f"-o {name} is an option of another driver, not of "
                                  f"{driver.name}")
            left.append(item)
            continue
        if not sep and not ours.switch:
            raise ConfigError(f"-o {name} needs a value: -o {name}=VALUE")
        values[ours.name] = registry.parse_value(driver, ours, text)
    return values, left


def default_cache_dir(key: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mountfs"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", key).strip("-")[-40:]
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return base / f"{slug}-{digest}"


def cmd_mount(args: argparse.Namespace) -> int:
    import trio

    from mountfs.mount import MountConfig, check_mountpoint, serve

    if shutil.which("fusermount3") is None:
        raise ConfigError("fusermount3 not found: install fuse3")
    saved = remotes.resolve(args.source)  # a remote's NAME: or NAME:path
    os.environ.update(saved.environment)  # its secrets, for the driver (and the child)
    driver, _, _ = registry.split_source(saved.source)
    source = registry.canonical_source(saved.source)
    fuse_items = [o for opt in args.fuse_options for o in opt.split(",") if o]
    values, fuse_options = driver_values(args, driver, fuse_items)
    values = {**saved.values, **values}
    mountpoint = os.path.abspath(args.mountpoint)
    check_mountpoint(mountpoint)
    cache_dir = (args.cache_dir or default_cache_dir(registry.cache_key(source, values))
                 ).absolute()
    if not args.foreground:
        return spawn_background(args, cache_dir)
    config = MountConfig(
        source=source, mountpoint=mountpoint, cache_dir=cache_dir, cache_size=args.cache_size,
        block_size=args.block_size, read_only=args.read_only, uid=args.uid, gid=args.gid,
        umask=args.umask, allow_other=args.allow_other, writeback_delay=args.writeback_delay,
        whole_file_delay=args.whole_file_delay,
        metadata_ttl=args.metadata_ttl, workers=args.workers, driver_values=values,
        attributes_from_listings=args.attributes_from_listings,
        upload_on_close=args.upload_on_close,
        fuse_options=fuse_options, metrics_addr=args.metrics_addr)
    setup_logging(args.log_file, args.verbose)
    ready_fd = args.ready_fd

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"ok\n")
            os.close(ready_fd)

    try:
        trio.run(serve, config, ready)
    except ConfigError as exc:
        if ready_fd is not None:
            os.write(ready_fd, f"{exc}\n".encode())
        raise
    return 0


def spawn_background(args: argparse.Namespace, cache_dir: Path) -> int:
    """Run this same command in the foreground, detached, and wait until it is mounted."""
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cache dir {cache_dir}: {exc.strerror}") from None
    # Under systemd (a mount unit, the fstab helper) the journal is the log: the mount keeps
    # the journal stream as its stderr (mountfs/logs.py), unless a log file was asked for.
    to_journal = args.log_file is None and journal_stream()
    log_file = args.log_file or cache_dir / "mountfs.log"
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "mountfs", *args.argv, "--foreground",
            "--cache-dir", str(cache_dir), "--ready-fd", str(write_fd)]
    if not to_journal:
        argv += ["--log-file", str(log_file)]
    proc = subprocess.Popen(argv, pass_fds=(write_fd,), start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=None if to_journal else subprocess.DEVNULL,
                            env=same_code_environment())
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        message = pipe.read().strip()
    if message == "ok":
        return 0
    if not message:
        proc.wait()
        message = (f"the mount process exited ({proc.returncode}); see "
                   + ("the journal" if to_journal else str(log_file)))
    raise ConfigError(message)


def same_code_environment() -> dict[str, str]:
    """The environment in which `python -m mountfs` runs this very mountfs: `-m` would look in
    the working directory first, where a folder named `cache` or `mountfs` (a user's own)
    would be imported instead (PYTHONSAFEPATH, Python 3.11+, keeps it out)."""
    home = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONSAFEPATH": "1",
            "PYTHONPATH": home + (os.pathsep + path if path else "")}


def read_status(mountpoint: str) -> dict[str, Any]:
    try:
        return json.loads(os.getxattr(mountpoint, STATUS_XATTR))
    except FileNotFoundError:
        raise ConfigError(f"{mountpoint} does not exist") from None
    except OSError:
        raise ConfigError(f"{mountpoint} is not a mountfs mount") from None


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        if args.json:
            raise ConfigError("--watch and --json do not go together")
        from mountfs.watch import follow
        return follow(args.mountpoint, read_status, sys.stdout)
    status = read_status(args.mountpoint)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    c = status["cache"]
    rate = "n/a" if c["hit_rate"] is None else f"{c['hit_rate']:.1%}"
    print(f"{status['source']} on {status['mountpoint']} (pid {status['pid']})")
    print(f"cache: {human(c['used'])} of {human(c['cap'])} ({human(c['dirty'])} not uploaded), "
          f"hit rate {rate}, in {c['dir']}")
    print(f"uploads: {status['uploaded']} done, {status['queued']} queued")
    if status.get("changes"):
        print(f"changes made elsewhere: by {status['changes']}")
    for e in status["queue"]:
        line = (f"  {e['state']:9} {e['bucket']}/{e['key']}  {human(e['done'])}/"
                f"{human(e['size'])}")
        if e["state"] == "uploading":
            line += f" ({e.get('percent', 0):.0f}%)"
        line += f"  tries {e['tries']}"
        if e.get("next_try") is not None and e["tries"]:
            line += f"  next try in {e['next_try']:.0f}s"
        print(line + (f"  last error: {e['error']}" if e["error"] else ""))
    if status.get("transfers"):
        print("transfers under way in steps (staging, jobs):")
    for t in status.get("transfers", []):
        sent = f", {human(t['done'])} of {human(t['size'])} sent" if t["size"] else ""
        print(f"  {t['what']}: {t['phase'] or 'starting'}{sent}")
    if any(e["state"] == "failed" for e in status["queue"]):
        print("failed uploads stay in the cache and are tried again (at once by an fsync of the "
              "file); to give one up and drop its data: "
              f"mountfs discard {status['mountpoint']} BUCKET/KEY")
    if status.get("lost"):
        print("lost uploads have no data left in the cache (deleted under the mount) and are "
              f"not tried again; to give one up: mountfs discard {status['mountpoint']} "
              "BUCKET/KEY")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from mountfs.sync import sync
    return sync(args.mountpoint, args.path, read_status, sys.stdout)


def cmd_discard(args: argparse.Namespace) -> int:
    """Ask the mount to give up each upload (the root's DISCARD_XATTR), then check it did."""
    mountpoint = os.path.abspath(args.mountpoint)
    failed = 0
    for entry in args.entries:
        if entry not in queued(mountpoint):
            print(f"mountfs: {entry}: not in the upload queue (see mountfs status)",
                  file=sys.stderr)
            failed += 1
            continue
        try:
            os.setxattr(mountpoint, DISCARD_XATTR, entry.encode())
        except OSError as exc:
            print(f"mountfs: {entry}: {os.strerror(exc.errno or errno.EIO)}", file=sys.stderr)
            failed += 1
            continue
        if entry in queued(mountpoint):  # a mount that took the request for a plain xattr
            print(f"mountfs: {entry}: the mount did not discard it", file=sys.stderr)
            failed += 1
            continue
        print(f"discarded {entry}")
    return 1 if failed else 0


def awaited(status: dict[str, Any]) -> int:
    """The uploads `mountfs umount` waits for: every queued one that may still succeed."""
    return int(status["queued"]) - int(status.get("lost", 0))


def queued(mountpoint: str) -> set[str]:
    """The uploads queued on a mount, as BUCKET/KEY."""
    return {f"{e['bucket']}/{e['key']}" for e in read_status(mountpoint)["queue"]}


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    status = read_status(mountpoint)
    # The reading before the flush first: it names what is waited for, even if the flush
    # sends it all before the next reading.
    readings: Iterable[dict[str, Any]] = [status]
    if awaited(status):
        # Upload now, not after the write-back delay or a long backoff: else umount waits for
        # them (10 minutes with --writeback-delay 600; a minute per backoff under faults).
        try:
            os.setxattr(mountpoint, FLUSH_XATTR, b"1")
        except OSError:
            pass  # a mount of an older mountfs: it takes the request for a plain xattr
        # Only to wait: rich, which it draws with, is slow to import (40 ms of CPU).
        from mountfs.watch import statuses

        readings = itertools.chain(readings, statuses(mountpoint, read_status, every=0.2))
    shown = None
    for status in readings:
        if not awaited(status):
            break
        waiting = ", ".join(f"{e['bucket']}/{e['key']}" for e in status["queue"][:5]
                            if e["state"] != "lost")
        steps = "; ".join(f"{t['what']}: {t['phase']}" for t in status.get("transfers", [])[:5])
        if steps:  # a staged upload's job can take minutes: say which phase it is in
            waiting += f" ({steps})"
        failed = [e for e in status["queue"] if e["state"] == "failed"]
        if failed:  # each retried every minute; say why and how to give up
            waiting += "; failing: " + ", ".join(
                f"{e['bucket']}/{e['key']} ({e['error']})" for e in failed[:5])
            waiting += f"; to give up one: mountfs discard {mountpoint} BUCKET/KEY"
        if waiting != shown:
            print(f"waiting for {awaited(status)} uploads: {waiting}", file=sys.stderr)
            shown = waiting
    for e in status["queue"]:
        if e["state"] == "lost":
            print(f"not uploaded, its data is gone from the cache: {e['bucket']}/{e['key']} "
                  f"({e['error']}); the next mount reports it again until it is discarded",
                  file=sys.stderr)
    done = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if done.returncode:
        raise ConfigError(done.stderr.strip() or f"fusermount3 -u {mountpoint} failed")
    pid = status["pid"]
    while pid_alive(pid):
        time.sleep(0.05)
    return 0


def main(argv: list[str] | None = None) -> int:
    commands = {"mount": cmd_mount, "umount": cmd_umount, "status": cmd_status,
                "discard": cmd_discard, "sync": cmd_sync}
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()
        if mount_helper.helper_form(argv, set(mount_helper.subcommands(parser))):
            return mount_helper.main(argv)  # mount.fuse3 runs `mountfs SOURCE DIR -o OPTS`
        args = parser.parse_args(argv)
        args.argv = argv  # what the background process is started with
        handler = getattr(args, "handler", None) or commands[args.command]
        return int(handler(args))
    except ConfigError as exc:
        print(f"mountfs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
