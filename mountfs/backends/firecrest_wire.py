"""FirecREST API v2 on the wire: what its replies mean, without any I/O.

Owns the reading of `ops/ls` entries (C-escaped names, `rwxr-xr-x` permissions, string sizes,
zone-less `lastModified`) and `ops/stat` records into `ObjectInfo`s whose metadata is in
mountfs's format (mountfs/attrs.py), the mapping between keys and system paths, the single
quote the real service cannot carry, the error bodies (`{"errorType","message",...}`) as
mountfs errors (the status table of issue 13), and the states of scheduler jobs.
"""
from __future__ import annotations

import json
import re
import stat
import time
from typing import Any

from mountfs import attrs
from mountfs.backends.base import ObjectInfo
from mountfs.backends.http import status_error
from mountfs.errors import (AlreadyExists, BackendError, InvalidName, NoSuchBucket,
                            NoSuchObject, NotEmpty, PermissionDenied, TooLarge)

# The `ls -l` type letter -> the file type bits.
KINDS = {"-": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "p": stat.S_IFIFO,
         "s": stat.S_IFSOCK, "c": stat.S_IFCHR, "b": stat.S_IFBLK}
C_ESCAPES = {"a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r"}
_ESCAPE = re.compile(r"\\([abtnvfr]|[0-7]{3})")
# A job in one of these states runs no more (Slurm's end states).
JOB_ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                       "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"})
# What a transfer job's output log says when it did its work (what pyfirecrest looks for).
JOB_SUCCESS = ("Files were successfully", "File was successfully",
               "Multipart file upload successfully completed")
# A failed command's stderr -> the error (the service answers 500 for all of these).
STDERR_ERRORS: tuple[tuple[str, type[BackendError]], ...] = (
    ("No such file or directory", NoSuchObject), ("Permission denied", PermissionDenied),
    ("Operation not permitted", PermissionDenied), ("File exists", AlreadyExists),
    ("Directory not empty", NotEmpty),
    # a path through a file: no object there, as a key below a file's key names none in S3
    ("Not a directory", NoSuchObject))
OUTSIDE = "does not match any of the defined filesystem paths"
OK = (200, 201, 204)
# The first wait between two polls of a job, and the longest (pyfirecrest: 0.2 s, up to
# 60 s): a job takes seconds, a staged upload's a minute on the real service.
POLL_FIRST, POLL_MAX = 0.1, 2.0
# Characters of a path the service cannot carry (see check_name): v2 puts every path between
# single quotes in a shell command.
V2_REFUSED = re.compile("'")


def path_of(key: str) -> str:
    """The system path of a key (a marker's without its '/')."""
    return "/" + key.rstrip("/")


def check_name(key: str, refused: re.Pattern[str] = V2_REFUSED) -> None:
    """Refuse what the service cannot carry before asking it: v2's shell commands break on a
    single quote (and its mkdir creates ANOTHER name)."""
    found = refused.search(key)
    if found:
        raise InvalidName(f"FirecREST cannot store names holding {found.group()!r}: {key!r}")


def unescape(name: str) -> str:
    """A name as `ls --quoting-style=c` printed it, after the service's shell-style split:
    C escapes of control characters and of bytes that are not UTF-8 undone. (A backslash
    itself comes back unescaped, so a name holding a backslash and then `n` is read as a
    newline: the service's replies cannot tell the two apart.)"""
    if "\\" not in name:
        return name
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(name):
        out += name[pos:match.start()].encode("utf-8", "surrogateescape")
        code = match.group(1)
        out += C_ESCAPES[code].encode() if code in C_ESCAPES else bytes([int(code, 8) & 0xFF])
        pos = match.end()
    out += name[pos:].encode("utf-8", "surrogateescape")
    return out.decode("utf-8", "surrogateescape")


def permissions(text: str) -> int:
    """The mode bits of `rwxr-xr-x` (with s/S/t/T)."""
    mode = 0
    for i, (who, special) in enumerate(((6, stat.S_ISUID), (3, stat.S_ISGID), (0, stat.S_ISVTX))):
        triple = (text[3 * i:3 * i + 3] + "---")[:3]
        r, w, x = triple[0], triple[1], triple[2]
        mode |= (4 if r == "r" else 0) << who | (2 if w == "w" else 0) << who
        if x in "xst":
            mode |= 1 << who
        if x in "sStT":
            mode |= special
    return mode


def listed_mtime(text: str) -> int:
    """Seconds since the epoch of `lastModified` (`YYYY-MM-DDTHH:MM:SS`, the system's local
    time with no zone): read in the mount's local time zone (TZ), which is the cluster's for
    users near it; `ops/stat` gives exact times where they matter."""
    try:
        return int(time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return 0


def metadata(mode: int, uid: Any, gid: Any, mtime: int) -> dict[str, str]:
    """The attributes of an entry in mountfs's metadata format."""
    meta = {attrs.META_MODE: str(mode), attrs.META_MTIME: str(mtime)}
    for name, value in ((attrs.META_UID, uid), (attrs.META_GID, gid)):
        if str(value).isdigit():  # a name where numericUid was not asked for: not known
            meta[name] = str(value)
    return meta


def etag(size: int, mtime: int) -> str:
    """FirecREST has no version tags: size and mtime stand for one."""
    return f"{mtime:x}-{size:x}"


def entry_info(bucket: str, key: str, entry: dict[str, Any]) -> ObjectInfo:
    """An `ls` entry (v2's spelling) as the object (or, a directory, the prefix `key/`) it
    stands for."""
    kind = KINDS.get(str(entry.get("type", "-")), stat.S_IFREG)
    mtime = listed_mtime(str(entry.get("lastModified", "")))
    size = int(entry.get("size") or 0)
    meta = metadata(kind | permissions(str(entry.get("permissions", ""))), entry.get("user"),
                    entry.get("group"), mtime)
    if kind == stat.S_IFDIR:
        return ObjectInfo(bucket, key + "/", 0, mtime * 10**9, "", meta, is_prefix=True)
    return ObjectInfo(bucket, key, size, mtime * 10**9, etag(size, mtime), meta)


def stat_info(bucket: str, key: str, out: dict[str, Any]) -> ObjectInfo:
    """An `ops/stat` record as the object `key` (a marker when it ends with '/')."""
    mtime, size = int(out.get("mtime", 0)), int(out.get("size", 0))
    mode = int(out.get("mode", 0))
    if key.endswith("/"):
        size = 0
    return ObjectInfo(bucket, key, size, mtime * 10**9, etag(size, mtime),
                      metadata(mode, out.get("uid"), out.get("gid"), mtime))


def message(body: bytes) -> str:
    """The service's message in an error reply."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace")
    if isinstance(answer, dict):
        return str(answer.get("message") or answer.get("detail") or answer)
    return str(answer)


def reply_error(status: int, headers: Any, body: bytes, what: str,
                retry_after: float | None = None) -> BackendError | None:
    """The error a service's reply reports, None if it reports none: a status other than
    200, 201 and 204 (api_error)."""
    return None if status in OK else api_error(status, body, what, retry_after)


def api_error(status: int, body: bytes, what: str,
              retry_after: float | None = None) -> BackendError:
    """The error of a v2 reply of `status` (issue 13's table of what the real one answers)."""
    text = message(body)
    full = f"{what}: HTTP {status}: {text}"
    if status == 404 and "System not found" in text:
        return NoSuchBucket(full)
    if status == 413:
        return TooLarge(full)
    if status == 400 and OUTSIDE in text:
        return NoSuchObject(full)
    for needle, cls in STDERR_ERRORS:
        if needle in text and status in (400, 403, 404, 500):
            return cls(full)
    if status == 500 and "Remote process failed" in text:
        return BackendError(full)  # a command failed: running it again would fail again
    if status == 401:
        return PermissionDenied(full)
    return status_error(status, full, retry_after)


def job_log_error(log: str, what: str) -> BackendError:
    """The error a transfer job's error log reports."""
    line = log.strip().splitlines()[-1] if log.strip() else "the job did not succeed"
    for needle, cls in STDERR_ERRORS:
        if needle in line:
            return cls(f"{what}: {line}")
    return BackendError(f"{what}: {line}")


def mode_of(meta: dict[str, str] | None) -> int | None:
    """The mode (type bits included) in mountfs metadata, if it has a readable one."""
    text = (meta or {}).get(attrs.META_MODE, "")
    return int(text) if text.isdigit() else None
