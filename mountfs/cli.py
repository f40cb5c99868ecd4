"""`mountfs mount | umount | status`: arguments, clear one-line errors, the background process.

`mount` checks what it can, then starts the mount as a detached child (`--foreground` in a new
session) and waits on a pipe until the child says it is mounted or why it is not; so errors
still reach the terminal as one line and a non-zero exit.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import trio

from cache.blocks import DEFAULT_BLOCK_SIZE
from mountfs.errors import ConfigError
from mountfs.processes import pid_alive
from mountfs.status import DISCARD_XATTR, FLUSH_XATTR, STATUS_XATTR

SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 10G)")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2).upper()])


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


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mountfs: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mountfs", description="Mount object storage as a filesystem.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    m = sub.add_parser("mount", help="mount SOURCE on MOUNTPOINT")
    m.add_argument("source", help="local:/path (or a directory path), s3:// or "
                   "s3://BUCKET[/PREFIX], dcss: or dcss:SPACE[/PREFIX]")
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
                   help="quiet time after close before uploading (default 1)")
    m.add_argument("--metadata-ttl", type=non_negative, default=5.0, metavar="SECONDS",
                   help="how long listings and attributes are trusted (default 5)")
    m.add_argument("--workers", type=int, default=8, help=argparse.SUPPRESS)
    m.add_argument("-o", dest="fuse_options", action="append", default=[],
                   help="FUSE mount options, comma separated")
    m.add_argument("--log-file", type=Path, help="default: <cache-dir>/mountfs.log")
    m.add_argument("-v", "--verbose", action="count", default=0)
    s3 = m.add_argument_group("S3 (credentials come from the environment or AWS config files)")
    s3.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS)")
    s3.add_argument("--region")
    s3.add_argument("--profile", help="AWS profile of the shared config files")
    s3.add_argument("--path-style", action="store_true", help="path-style bucket addressing")
    dt = m.add_argument_group("DCSS (the token comes from --token-file, DT_TOKEN or "
                              "DUCKIETOWN_TOKEN; without one, public is mounted read-only)")
    dt.add_argument("--token-file", type=Path, help="file holding the Duckietown token")
    dt.add_argument("--token-public-key", type=Path, metavar="PEM",
                    help="verify tokens with this key (default: Duckietown's)")
    dt.add_argument("--api-url", help="the authorize service (default https://hub.duckietown.com)")
    dt.add_argument("--s3-endpoint", help="where the public space is read anonymously "
                    "(default https://s3.amazonaws.com)")
    dt.add_argument("--part-size", type=parse_size, metavar="SIZE",
                    help="files over SIZE are stored as KEY.000, KEY.001, ... (default 5G)")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    u = sub.add_parser("umount", help="upload what is queued, then unmount")
    u.add_argument("mountpoint")

    s = sub.add_parser("status", help="the upload queue and the cache")
    s.add_argument("mountpoint")
    s.add_argument("--json", action="store_true")

    d = sub.add_parser("discard", help="give up queued uploads and drop their data")
    d.add_argument("mountpoint")
    d.add_argument("entries", nargs="+", metavar="BUCKET/KEY",
                   help="an upload as `mountfs status` lists it")
    return parser


def default_cache_dir(source: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mountfs"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", source).strip("-")[-40:]
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return base / f"{slug}-{digest}"


def canonical_source(source: str) -> str:
    scheme, sep, rest = source.partition(":")
    if sep and scheme == "local":
        return "local:" + os.path.abspath(rest)
    if not sep or "/" in scheme:
        return "local:" + os.path.abspath(source)
    return source


def cmd_mount(args: argparse.Namespace) -> int:
    from mountfs.backends import BackendOptions
    from mountfs.mount import MountConfig, check_mountpoint, serve

    if shutil.which("fusermount3") is None:
        raise ConfigError("fusermount3 not found: install fuse3")
    source = canonical_source(args.source)
    mountpoint = os.path.abspath(args.mountpoint)
    check_mountpoint(mountpoint)
    service = args.endpoint_url or args.api_url  # one cache per service a source names
    cache_dir = (args.cache_dir or default_cache_dir(f"{source}@{service}" if service
                                                     else source)).absolute()
    if not args.foreground:
        return spawn_background(args, cache_dir)
    config = MountConfig(
        source=source, mountpoint=mountpoint, cache_dir=cache_dir, cache_size=args.cache_size,
        block_size=args.block_size, read_only=args.read_only, uid=args.uid, gid=args.gid,
        umask=args.umask, allow_other=args.allow_other, writeback_delay=args.writeback_delay,
        metadata_ttl=args.metadata_ttl, workers=args.workers,
        backend_options=BackendOptions(args.endpoint_url, args.region, args.profile,
                                       args.path_style, args.token_file, args.token_public_key,
                                       args.api_url, args.s3_endpoint, args.part_size),
        fuse_options=[o for opt in args.fuse_options for o in opt.split(",") if o])
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
    log_file = args.log_file or cache_dir / "mountfs.log"
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "mountfs", *sys.argv[1:], "--foreground",
            "--cache-dir", str(cache_dir), "--log-file", str(log_file),
            "--ready-fd", str(write_fd)]
    proc = subprocess.Popen(argv, pass_fds=(write_fd,), start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        message = pipe.read().strip()
    if message == "ok":
        return 0
    if not message:
        proc.wait()
        message = f"the mount process exited ({proc.returncode}); see {log_file}"
    raise ConfigError(message)


def setup_logging(log_file: Path | None, verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    handler: logging.Handler
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # created 0600 before the handler opens it: no moment at the umask's mode
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        handler = logging.FileHandler(log_file)
        os.chmod(log_file, 0o600)  # a log file that existed before
        level = min(level, logging.INFO)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    logging.basicConfig(level=level, handlers=[handler])


# Credential environment variables whose values must never reach a log.
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
# At -vv botocore logs each request's headers and canonical request: the session token (a
# credential) and the Authorization header are in both, whatever file the credentials came from.
# (An Authorization value, "AWS4-HMAC-SHA256 Credential=..., Signature=...", holds spaces.)
SECRET_FIELDS = re.compile(r"(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,}]+"
                           r"|(authorization['\"]?\s*[:=]\s*b?['\"]?)[^'\"\n]+", re.IGNORECASE)


class RedactSecrets(logging.Filter):
    """Replaces credentials in every record the handler writes (found by a test of -vv)."""

    def __init__(self) -> None:
        super().__init__()
        self.values = [v for v in (os.environ.get(n) for n in SECRET_VARIABLES) if v]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = SECRET_FIELDS.sub(lambda m: (m.group(1) or m.group(2)) + "<redacted>", message)
        for value in self.values:
            clean = clean.replace(value, "<redacted>")
        if clean != message:
            record.msg, record.args = clean, None
        return True


def read_status(mountpoint: str) -> dict[str, Any]:
    try:
        return json.loads(os.getxattr(mountpoint, STATUS_XATTR))
    except FileNotFoundError:
        raise ConfigError(f"{mountpoint} does not exist") from None
    except OSError:
        raise ConfigError(f"{mountpoint} is not a mountfs mount") from None


def cmd_status(args: argparse.Namespace) -> int:
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
    for e in status["queue"]:
        line = (f"  {e['state']:9} {e['bucket']}/{e['key']}  {human(e['done'])}/"
                f"{human(e['size'])}")
        if e["state"] == "uploading":
            line += f" ({e.get('percent', 0):.0f}%)"
        line += f"  tries {e['tries']}"
        if e.get("next_try") is not None and e["tries"]:
            line += f"  next try in {e['next_try']:.0f}s"
        print(line + (f"  last error: {e['error']}" if e["error"] else ""))
    if any(e["state"] == "failed" for e in status["queue"]):
        print("failed uploads stay in the cache and are tried again (at once by an fsync of the "
              "file); to give one up and drop its data: "
              f"mountfs discard {status['mountpoint']} BUCKET/KEY")
    return 0


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


def queued(mountpoint: str) -> set[str]:
    """The uploads queued on a mount, as BUCKET/KEY."""
    return {f"{e['bucket']}/{e['key']}" for e in read_status(mountpoint)["queue"]}


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    status = read_status(mountpoint)
    if status["queued"]:
        # Upload now, not after the write-back delay or a long backoff: else umount waits for
        # them (10 minutes with --writeback-delay 600; a minute per backoff under faults).
        try:
            os.setxattr(mountpoint, FLUSH_XATTR, b"1")
        except OSError:
            pass  # a mount of an older mountfs: it takes the request for a plain xattr
    shown = None
    while status["queued"]:
        waiting = ", ".join(f"{e['bucket']}/{e['key']}" for e in status["queue"][:5])
        failed = [e for e in status["queue"] if e["state"] == "failed"]
        if failed:  # each retried every minute; say why and how to give up
            waiting += "; failing: " + ", ".join(
                f"{e['bucket']}/{e['key']} ({e['error']})" for e in failed[:5])
            waiting += f"; to give up one: mountfs discard {mountpoint} BUCKET/KEY"
        if waiting != shown:
            print(f"waiting for {status['queued']} uploads: {waiting}", file=sys.stderr)
            shown = waiting
        time.sleep(0.2)
        status = read_status(mountpoint)
    done = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if done.returncode:
        raise ConfigError(done.stderr.strip() or f"fusermount3 -u {mountpoint} failed")
    pid = status["pid"]
    while pid_alive(pid):
        time.sleep(0.05)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"mount": cmd_mount, "umount": cmd_umount, "status": cmd_status,
                "discard": cmd_discard}
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"mountfs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
