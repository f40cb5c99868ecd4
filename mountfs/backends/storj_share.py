"""`mountfs storj share PATH --readonly|--writeable [--not-after DATE]`: a restricted access
grant for one bucket or prefix, as uplink's `access.share(Permission, [SharePrefix])` makes it.

Restricting a grant adds a caveat to its API key (a macaroon: an HMAC chained over the
caveat) and keeps only the encryption keys derived for that prefix (Storj encrypts paths,
so the prefix in the caveat is encrypted too): libuplink's work, not redone here. It comes
from PyPI's `storj-uplink` wheel (libuplink prebuilt, called through its C API with ctypes;
the optional extra `mountfs[storj]`). Nothing goes over the network.

PATH is `storj://BUCKET[/PREFIX]`, `BUCKET[/PREFIX]`, or a path on a mounted storj:// source.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib.util
import json
import os
from pathlib import Path

from mountfs.backends.storj_grant import ACCESS_ENV, parse
from mountfs.errors import ConfigError
from mountfs.status import STATUS_XATTR

INSTALL = "pip install 'mountfs[storj]' (or: pip install storj-uplink)"


class _Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int32), ("message", ctypes.c_char_p)]


class _Access(ctypes.Structure):
    _fields_ = [("handle", ctypes.c_size_t)]


class _AccessResult(ctypes.Structure):
    _fields_ = [("access", ctypes.POINTER(_Access)), ("error", ctypes.POINTER(_Error))]


class _StringResult(ctypes.Structure):
    _fields_ = [("string", ctypes.c_char_p), ("error", ctypes.POINTER(_Error))]


class _Permission(ctypes.Structure):
    _fields_ = [("allow_download", ctypes.c_bool), ("allow_upload", ctypes.c_bool),
                ("allow_list", ctypes.c_bool), ("allow_delete", ctypes.c_bool),
                ("not_before", ctypes.c_int64), ("not_after", ctypes.c_int64)]


class _SharePrefix(ctypes.Structure):
    _fields_ = [("bucket", ctypes.c_char_p), ("prefix", ctypes.c_char_p)]


def libuplink() -> ctypes.CDLL:
    """The libuplink the storj-uplink wheel ships, its functions typed; ConfigError saying
    how to install it when it is not there."""
    spec = importlib.util.find_spec("storj_uplink")
    locations = list(spec.submodule_search_locations or []) if spec else []
    found = [Path(p) / "libuplink.so" for p in locations if (Path(p) / "libuplink.so").exists()]
    if not found:
        raise ConfigError(f"mountfs storj share needs libuplink: {INSTALL}")
    try:
        lib = ctypes.CDLL(str(found[0]))
    except OSError as exc:
        raise ConfigError(f"cannot load libuplink ({found[0]}): {exc}") from None
    lib.uplink_parse_access.argtypes = [ctypes.c_char_p]
    lib.uplink_parse_access.restype = _AccessResult
    lib.uplink_access_share.argtypes = [ctypes.POINTER(_Access), _Permission,
                                        ctypes.POINTER(_SharePrefix), ctypes.c_size_t]
    lib.uplink_access_share.restype = _AccessResult
    lib.uplink_access_serialize.argtypes = [ctypes.POINTER(_Access)]
    lib.uplink_access_serialize.restype = _StringResult
    lib.uplink_free_access_result.argtypes = [_AccessResult]
    lib.uplink_free_string_result.argtypes = [_StringResult]
    return lib


def _failed(result: _AccessResult | _StringResult) -> str | None:
    if not result.error:
        return None
    message = result.error.contents.message or b"unknown error"
    return message.decode("utf-8", "replace").splitlines()[0]


def share(grant: str, bucket: str, prefix: str, writeable: bool,
          not_after: int | None = None) -> str:
    """The grant restricted to `bucket`/`prefix` (every bucket if `bucket` is empty): reads
    and lists, and with `writeable` uploads and deletes too; until `not_after` if given."""
    lib = libuplink()
    parsed = lib.uplink_parse_access(grant.encode())
    try:
        if (problem := _failed(parsed)) is not None:
            raise ConfigError(f"libuplink cannot parse the access grant: {problem}")
        permission = _Permission(True, writeable, True, writeable, 0, not_after or 0)
        prefixes = (_SharePrefix * 1)(_SharePrefix(bucket.encode(), prefix.encode()))
        shared = lib.uplink_access_share(parsed.access, permission,
                                         prefixes if bucket else None, 1 if bucket else 0)
        try:
            if (problem := _failed(shared)) is not None:
                raise ConfigError(f"libuplink cannot share {bucket}/{prefix}: {problem}")
            text = lib.uplink_access_serialize(shared.access)
            try:
                if (problem := _failed(text)) is not None:
                    raise ConfigError(f"libuplink cannot serialise the grant: {problem}")
                return str(text.string.decode())
            finally:
                lib.uplink_free_string_result(text)
        finally:
            lib.uplink_free_access_result(shared)
    finally:
        lib.uplink_free_access_result(parsed)


def where(path: str) -> tuple[str, str]:
    """(bucket, prefix) that PATH names: a storj:// URL, BUCKET[/PREFIX], or a path on a
    mount of a storj:// source (found by the mount's status, served by its root)."""
    if path.startswith("storj:"):
        path = path[len("storj:"):].lstrip("/")
    elif os.path.exists(path):
        return _on_mount(Path(path).resolve())
    bucket, _, prefix = path.strip("/").partition("/")
    if not bucket:
        raise ConfigError("share what? storj://BUCKET[/PREFIX] or a path on a storj mount")
    return bucket, prefix + "/" if prefix and path.endswith("/") else prefix


def _on_mount(path: Path) -> tuple[str, str]:
    for root in (path, *path.parents):
        try:
            status = json.loads(os.getxattr(root, STATUS_XATTR))
        except OSError:
            continue
        source = str(status.get("source", ""))
        if not source.startswith("storj:"):
            raise ConfigError(f"{path} is on a mount of {source}, not of a storj:// source")
        # Source.describe(): "storj:SATELLITE", then " BUCKET/PREFIX" for a bucket mount.
        scope = source.partition(" ")[2].strip("/")
        rel = path.relative_to(root).as_posix()
        full = "/".join(p for p in (scope, "" if rel == "." else rel) if p)
        bucket, _, key = full.partition("/")
        if not bucket:
            raise ConfigError(f"{path} is the mount's root: share a bucket or a directory")
        return bucket, key + "/" if key and path.is_dir() else key
    raise ConfigError(f"{path} is not on a mountfs mount: give storj://BUCKET[/PREFIX]")


def date(text: str) -> int:
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp())


def cmd_share(args: argparse.Namespace) -> int:
    if args.access_file is not None:
        try:
            text = args.access_file.read_text()
        except OSError as exc:
            raise ConfigError(f"--access-file {args.access_file}: {exc.strerror}") from None
    else:
        text = os.environ.get(ACCESS_ENV, "")
    if not text.strip():
        raise ConfigError(f"no access grant: --access-file FILE or {ACCESS_ENV}")
    grant = parse(text)  # one line on a bad grant, before libuplink is loaded
    bucket, prefix = where(args.path)
    print(share(grant.text, bucket, prefix, args.writeable, args.not_after))
    return 0


def add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("share", help="print an access grant restricted to a bucket or prefix")
    p.set_defaults(handler=cmd_share)
    p.add_argument("path", metavar="PATH",
                   help="storj://BUCKET[/PREFIX], BUCKET[/PREFIX] or a path on a storj mount")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--readonly", dest="writeable", action="store_false",
                      help="download and list only")
    mode.add_argument("--writeable", dest="writeable", action="store_true",
                      help="download, list, upload and delete")
    p.add_argument("--not-after", type=date, metavar="DATE",
                   help="the grant stops working then (ISO 8601; UTC unless it says)")
    p.add_argument("--access-file", type=Path, metavar="FILE",
                   help=f"the access grant to restrict (else {ACCESS_ENV})")
