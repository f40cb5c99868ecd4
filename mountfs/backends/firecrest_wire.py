"""FirecREST on the wire, both API versions: what their replies mean, without any I/O.

Owns the reading of `ls` entries (C-escaped names, `rwxr-xr-x` permissions, string sizes,
zone-less `lastModified`; v1's snake_case spelling turned into v2's) and `stat` records into
`ObjectInfo`s whose metadata is in mountfs's format (mountfs/attrs.py), the mapping between keys
and system paths, the characters in a path each version cannot carry, the errors of a reply as
mountfs errors (v1's `X-*` headers and v2's statuses and bodies, the tables of issue 13, in one
function), and the states of v2 scheduler jobs and v1 tasks.
"""
from __future__ import annotations

import datetime
import json
import re
import stat
from typing import Any

from mountfs import attrs
from mountfs.backends.base import ObjectInfo
from mountfs.backends.http import status_error
from mountfs.errors import (AlreadyExists, BackendError, InvalidName, IsADirectory,
                            NoSuchBucket, NoSuchObject, NotADirectory, NotEmpty,
                            PermissionDenied, TemporaryFailure, TooLarge)

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
# v1's error headers (whatever the status, as pyfirecrest reads them) -> the error; the first
# found wins. A machine down for maintenance or a command over the utilities' time limit may
# do better on a later try. (The storage service spells the unknown machine's `...-Exists`.)
V1_HEADERS: tuple[tuple[str, type[BackendError]], ...] = (
    ("X-Permission-Denied", PermissionDenied), ("X-Not-Found", NoSuchObject),
    ("X-Invalid-Path", NoSuchObject), ("X-Not-A-Directory", NotADirectory),
    ("X-A-Directory", IsADirectory), ("X-Exists", AlreadyExists),
    ("X-Timeout", TemporaryFailure), ("X-Machine-Not-Available", TemporaryFailure),
    ("X-Machine-Does-Not-Exist", NoSuchBucket), ("X-Machine-Does-Not-Exists", NoSuchBucket),
    ("X-Size-Limit", TooLarge), ("X-Error", BackendError))
OK = (200, 201, 204)
# v1 task codes (the real service's src/common/async_task.py): an external upload's form is
# ready at 111 and its file in place at 114, an external download's URL ready at 117; 115 and
# 118 are their failures, and from 300 on a task is deleted, expired, invalid or failed.
TASK_FORM, TASK_UPLOADED, TASK_STAGED = 111, 114, 117
TASK_FAILED = frozenset({115, 118})
# The first wait between two polls of a job or task, and the longest (pyfirecrest: 0.2 s, up
# to 60 s): a job takes seconds, a staged upload's a minute on the real service.
POLL_FIRST, POLL_MAX = 0.1, 2.0
# Characters of a path each version cannot carry (see check_name): v2 puts every path between
# single quotes in a shell command; v1 refuses its FORBIDDEN_INPUT_CHARS before running any.
V2_REFUSED = re.compile("'")
V1_REFUSED = re.compile(r"[<>|;\"'&\\()\x00-\x1f`]")
# v1's spelling of `ls` fields -> v2's, which entry_info reads.
V1_FIELDS = {"link_target": "linkTarget", "last_modified": "lastModified"}


def path_of(key: str) -> str:
    """The system path of a key (a marker's without its '/')."""
    return "/" + key.rstrip("/")


def check_name(key: str, refused: re.Pattern[str] = V2_REFUSED) -> None:
    """Refuse what the service cannot carry before asking it: v2's shell commands break on a
    single quote (and its mkdir creates ANOTHER name); v1 refuses a set of characters."""
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
    try:  # (fromisoformat, not strptime: a tenth of the time of a 1,000-entry listing)
        return int(datetime.datetime.fromisoformat(text[:19]).timestamp())
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


def v1_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A v1 `ls` entry in v2's spelling."""
    return {V1_FIELDS.get(name, name): value for name, value in entry.items()}


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
    if isinstance(answer, dict):  # v2: message or detail; v1: error, else description
        return str(answer.get("message") or answer.get("detail") or answer.get("error")
                   or answer.get("description") or answer)
    return str(answer)


def reply_error(status: int, headers: Any, body: bytes, what: str,
                retry_after: float | None = None) -> BackendError | None:
    """The error a service's reply reports, None if it reports none: a v1 error header (the
    v2 service sends none), else a status other than 200, 201 and 204 (api_error)."""
    for header, cls in V1_HEADERS:
        if header in headers:
            return cls(f"{what}: HTTP {status}: {header}: {message(body)}")
    return None if status in OK else api_error(status, body, what, retry_after)


def api_error(status: int, body: bytes, what: str,
              retry_after: float | None = None) -> BackendError:
    """The error of a reply of `status` without a v1 error header (issue 13's table of what
    the real v2 answers; v1 without a header: a refused input, 401 or 413)."""
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
    """The error a transfer job's error log (or a failed v1 task's message) reports."""
    line = log.strip().splitlines()[-1] if log.strip() else "the job did not succeed"
    for needle, cls in STDERR_ERRORS:
        if needle in line:
            return cls(f"{what}: {line}")
    return BackendError(f"{what}: {line}")


def task_error(task: dict[str, Any], what: str) -> BackendError | None:
    """The error a v1 task reports by its status code, None while it has not failed."""
    status = int(task.get("status") or 0)
    if status not in TASK_FAILED and status < 300:
        return None
    data = task.get("data")
    text = (data.get("error") or data.get("msg")) if isinstance(data, dict) else data
    return job_log_error(str(text or task.get("description") or f"status {status}"),
                         f"{what} (task status {status})")


def mode_of(meta: dict[str, str] | None) -> int | None:
    """The mode (type bits included) in mountfs metadata, if it has a readable one."""
    text = (meta or {}).get(attrs.META_MODE, "")
    return int(text) if text.isdigit() else None
