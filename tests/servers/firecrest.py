"""A local FirecREST for the tests: the REST API CSCS puts in front of an HPC system's file
systems, over a directory tree of this machine, with its OAuth2 token endpoint, its scheduler
jobs and v1 tasks, and its S3 staging area on the project's S3 server (moto_server).

What it owns (protocols.md §3; issue 13 "Facts observed on a real FirecREST v2 server"):

- one API version per process (`--api v2` or `--api v1`: both answer `GET /status/systems`
  with different bodies, so they cannot share a port):
  - v2 (firecrest-v2): `/status/systems`, `/filesystem/{system}/ops/{ls,stat,mkdir,symlink,
    chmod,chown,rm,upload,download,checksum,view}`, `/filesystem/{system}/transfer/{upload,
    download,mv,cp,rm}` as scheduler jobs followed through `/compute/{system}/jobs/{id}`
    (PENDING, RUNNING, then COMPLETED, each for `--job-delay`; the job's output log, which
    pyfirecrest reads through `ops/view` to learn whether it succeeded, is written where the
    real one writes it: `{work dir}/{user}/.f7t_file_handling_job_*.log`), errors as
    `{"errorType","message","causedBy","data","user"}` and the `f7t-appversion` header;
  - v1 (OpenAPI 1.16.1): `/status/{systems,parameters}`, `/utilities/*` with `X-Machine-Name`
    and form fields, errors as 400 with the real service's `X-*` headers, `/storage/
    xfer-external/{upload,download,invalidate}` as tasks walking 110-114 / 116-117 (`/tasks`);
- the token endpoint `TOKEN_PATH` (client credentials; tokens expire after
  `--token-lifetime` s) and one fixed long-lived token; every other request needs a live one;
- the file systems: each system (`--system NAME:/home,/scratch`) is a directory under `--root`
  holding its file systems, and paths are resolved inside it as in a chroot (a symlink's
  absolute target is a path of the system). Each operation does what the coreutils command
  the real service runs would do, and fails with that command's stderr, which the service
  turns into a status (v2) or header (v1) by the real services' rules.

Decisions, where the real thing is a person's account on a cluster:

- Permissions: the service acts as `--uid`/`--gid` (default: this process's) and never with
  root's override: read/write/search are decided by the owner, group or other mode bits of
  that uid, so a test running as root gets 403 / X-Permission-Denied from a mode-000 file or
  another uid's 0600 file. What the service creates is chowned to that uid when it differs.
  Only the owner may chmod; chown may change nothing but the group, to one of its groups.
- The single quote (v2): every path goes into a shell command between single quotes, so a
  path holding one breaks the command (500, bash's "unexpected EOF" message) — except mkdir,
  whose command has an even number of quotes: it creates the name with every quote dropped
  (`it's` -> `its`, as the shell joins the quoted pieces) and still answers 500. v1 refuses
  any of its forbidden characters (quotes, `;&|<>()` backslash, backtick, control
  characters) up front with 400 "'targetPath' has invalid char" and no header.
- `ls` names are what `ls --quoting-style=c` in a UTF-8 locale prints, read back by
  shlex as the real one does: UTF-8 as is, control characters and bytes that are not UTF-8
  as C escapes (a newline comes back as the two characters backslash and n); `ls` of a file
  names it by the path asked; `lastModified` is local time `YYYY-MM-DDTHH:MM:SS`.
- Staged transfers: v2 upload hands out presigned multipart URLs (parts of `--max-part-size`)
  and a job that polls for the completed object every `--staging-poll` s (the real one: 60)
  before writing the file; v2 download stages the file with a job and hands out a presigned
  GET. v1 upload answers 111 with a presigned POST form and the curl command; the task then
  waits for the object and walks 112-114; v1 download walks 116-117 and invalidation deletes
  the staged object, so its link fails afterwards. Presigned URLs point at the S3 server.

`python -m tests.servers.firecrest --port N` runs it for a person and prints the URL, systems,
credentials and the mount command; `FirecrestService` runs it as a subprocess for fixtures.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import grp
import hashlib
import itertools
import logging
import math
import os
import posixpath
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from .dcss import REPO_ROOT, admin_client, own_s3_server
from .s3 import free_port, start_server, stop_process

USER = "f7tuser"  # the account the credentials belong to (the real one: the client's owner)
CLIENT_ID = "firecrest-test-client"
TOKEN_PATH = "/auth/realms/firecrest/protocol/openid-connect/token"  # Keycloak's shape
V2_APP_VERSION = "2.x.x"  # what firecrest-v2's settings declare (pyfirecrest knows it)
V1_VERSION = "1.16.1"  # the OpenAPI version of v1 modelled
DEFAULT_SYSTEMS = ("cluster:/home,/scratch",)
MIB = 1024 * 1024
R, W, X = 4, 2, 1
SYMLINK_HOPS = 40  # Linux's limit before ELOOP
QUOTE_FAILURE = ("bash: -c: line 1: unexpected EOF while looking for matching `''", 2)
V1_FORBIDDEN = re.compile(r"[<>|;\"'&\\()\x00-\x1F`]")  # the v1 service's FORBIDDEN_INPUT_CHARS
C_ESCAPES = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f",
             "\r": "\\r"}
TRUE = ("true", "1", "yes")


class CommandError(Exception):
    """A command on the system failed: its stderr and exit status, as the service sees them."""

    def __init__(self, stderr: str, exit_status: int = 1) -> None:
        super().__init__(stderr)
        self.stderr, self.exit_status = stderr, exit_status


class ApiError(Exception):
    """A refusal made by the service itself, before or instead of a command."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def strerror(exc: OSError) -> str:
    return os.strerror(exc.errno or errno.EIO)


def listed_name(name: str) -> str:
    """A name as the real service's ls parser returns it: what `ls --quoting-style=c` prints
    in a UTF-8 locale, after shlex.split inside double quotes (which undoes only `\\\\` and
    `\\"`, so the other escapes stay as backslash sequences)."""
    out = []
    for ch in name:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
            out.append(f"\\{code - 0xDC00:03o}")
        elif ch in C_ESCAPES:
            out.append(C_ESCAPES[ch])
        elif code < 32 or code == 127:
            out.append(f"\\{code:03o}")
        else:
            out.append(ch)
    return "".join(out)


def now_text() -> str:
    return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())  # `date -u`


# --- the file systems of one system ------------------------------------------------------------

@dataclasses.dataclass
class System:
    """One system: its name, the directory standing for its `/`, and its file systems (the
    last is the default work dir, where transfer jobs write their logs)."""

    name: str
    root: Path
    file_systems: list[str]

    @property
    def work_dir(self) -> str:
        return self.file_systems[-1]

    def contains(self, path: str) -> bool:
        norm = posixpath.normpath(path)
        return any(norm == fs or norm.startswith(fs.rstrip("/") + "/") for fs in self.file_systems)


class Files:
    """The coreutils commands the service runs on a system, done on its directory as
    `uid`/`gid` would (see the module's "Permissions"). Each raises CommandError with the
    command's own stderr."""

    def __init__(self, system: System, uid: int, gid: int) -> None:
        self.system, self.root = system, system.root
        self.uid, self.gid, self.gids = uid, gid, {gid}
        self.chown_needed = os.geteuid() == 0 and uid != os.getuid()

    # permissions and paths

    def allows(self, host: Path, want: int, st: os.stat_result | None = None) -> bool:
        if want & W and host == self.root:
            return False  # the system's `/` is the administrators'
        st = st or host.stat()
        if st.st_uid == self.uid:
            bits = st.st_mode >> 6
        elif st.st_gid in self.gids:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & want == want

    def resolve(self, path: str, follow_last: bool = True) -> Path:
        """The host path of a system path, following symlinks inside the system; OSError as
        the kernel's path walk fails (the last component need not exist)."""
        if not path.startswith("/"):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        pending = [p for p in reversed(path.split("/")) if p not in ("", ".")]
        follow_last = follow_last or path.endswith("/")
        done: list[str] = []
        hops = 0
        while pending:
            name = pending.pop()
            if name == "..":
                if done:
                    done.pop()
                continue
            parent = self.root.joinpath(*done)
            if not parent.is_dir():
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            if not self.allows(parent, X):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            host = parent / name
            if host.is_symlink() and (pending or follow_last):
                hops += 1
                if hops > SYMLINK_HOPS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = os.readlink(host)
                if target.startswith("/"):
                    done = []
                pending.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
                continue
            if pending and not os.path.lexists(host):
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            done.append(name)
        return self.root.joinpath(*done)

    def existing(self, path: str, follow_last: bool, message: str) -> Path:
        """The host path of an existing file; CommandError(message + reason) otherwise."""
        try:
            host = self.resolve(path, follow_last)
        except OSError as exc:
            raise CommandError(f"{message}: {strerror(exc)}") from None
        if not os.path.lexists(host):
            raise CommandError(f"{message}: No such file or directory")
        return host

    def parent_writable(self, host: Path, message: str) -> None:
        if not self.allows(host.parent, W | X):
            raise CommandError(f"{message}: Permission denied")

    def own(self, host: Path) -> None:
        if self.chown_needed:
            os.lchown(host, self.uid, self.gid)

    # listing

    def entry(self, host: Path, name: str, numeric: bool, dereference: bool = False) -> dict:
        """One line of `ls -l` as the real parser returns it (v2 spelling)."""
        st = host.lstat()
        if dereference and stat.S_ISLNK(st.st_mode):
            with contextlib.suppress(OSError):
                st = self.resolve_host(host).stat()
        mode = stat.filemode(st.st_mode)
        link = listed_name(os.readlink(host)) if stat.S_ISLNK(st.st_mode) else None
        return {"name": name, "type": mode[0], "linkTarget": link,
                "user": str(st.st_uid) if numeric else user_name(st.st_uid),
                "group": str(st.st_gid) if numeric else group_name(st.st_gid),
                "permissions": mode[1:],
                "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st.st_mtime)),
                "size": str(st.st_size)}

    def resolve_host(self, host: Path) -> Path:
        return self.resolve("/" + host.relative_to(self.root).as_posix(), True)

    def ls(self, path: str, hidden: bool = False, recursive: bool = False,
           dereference: bool = False, numeric: bool = False) -> list[dict]:
        host = self.existing(path, dereference, f"ls: cannot access '{path}'")
        if not host.is_dir() or (host.is_symlink() and not dereference):
            return [self.entry(host, listed_name(path), numeric, dereference)]
        return self._ls_dir(host, path, "", hidden, recursive, dereference, numeric)

    def _ls_dir(self, host: Path, shown: str, prefix: str, hidden: bool, recursive: bool,
                dereference: bool, numeric: bool) -> list[dict]:
        if not self.allows(host, R | X):
            raise CommandError(f"ls: cannot open directory '{shown}': Permission denied", 2)
        names = sorted(n for n in os.listdir(host) if hidden or not n.startswith("."))
        out = [self.entry(host / n, prefix + listed_name(n), numeric, dereference) for n in names]
        if recursive:
            for n in names:
                child = host / n
                if child.is_dir() and not child.is_symlink():
                    out += self._ls_dir(child, f"{shown}/{n}", f"{prefix}{listed_name(n)}/",
                                        hidden, True, dereference, numeric)
        return out

    def ls_one(self, path: str) -> dict:
        """`ls -l -d -- path`, which mkdir, chmod, chown and symlink answer with."""
        host = self.existing(path, False, f"ls: cannot access '{path}'")
        return self.entry(host, listed_name(path), False)

    def stat(self, path: str, dereference: bool = False) -> dict:
        host = self.existing(path, dereference, f"stat: cannot statx '{path}'")
        st = host.stat() if dereference else host.lstat()
        return {"mode": st.st_mode, "ino": st.st_ino, "dev": st.st_dev, "nlink": st.st_nlink,
                "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
                "atime": int(st.st_atime), "ctime": int(st.st_ctime), "mtime": int(st.st_mtime)}

    # changes

    def mkdir(self, path: str, parents: bool = False) -> dict:
        message = f"mkdir: cannot create directory '{path}'"
        if parents:
            parts = [p for p in path.split("/") if p]
            for i in range(1, len(parts) + 1):
                self._mkdir_one("/" + "/".join(parts[:i]), exist_ok=True)
        else:
            self._mkdir_one(path, exist_ok=False, message=message)
        return self.ls_one(path)

    def _mkdir_one(self, path: str, exist_ok: bool, message: str = "") -> None:
        message = message or f"mkdir: cannot create directory '{path}'"
        try:
            host = self.resolve(path, True)
        except OSError as exc:
            raise CommandError(f"{message}: {strerror(exc)}") from None
        if os.path.lexists(host):
            if exist_ok and host.is_dir():
                return
            raise CommandError(f"{message}: File exists")
        self.parent_writable(host, message)
        host.mkdir(0o755)
        self.own(host)

    def rm(self, path: str) -> None:
        """`rm -r --interactive=never`: a directory goes with all it holds."""
        message = f"rm: cannot remove '{path}'"
        host = self.existing(path, False, message)
        self.parent_writable(host, message)
        errors = self._remove(host, path)
        if errors:
            raise CommandError("\n".join(errors))

    def _remove(self, host: Path, shown: str) -> list[str]:
        if host.is_symlink() or not host.is_dir():
            host.unlink()
            return []
        if not self.allows(host, R | X):
            return [f"rm: cannot remove '{shown}': Permission denied"]
        errors: list[str] = []
        for name in os.listdir(host):
            if not self.allows(host, W):
                errors.append(f"rm: cannot remove '{shown}/{name}': Permission denied")
            else:
                errors += self._remove(host / name, f"{shown}/{name}")
        if not errors:
            host.rmdir()
        return errors

    def symlink(self, target: str, link: str) -> dict:
        message = f"ln: failed to create symbolic link '{link}'"
        try:
            host = self.resolve(link, True)
        except OSError as exc:
            raise CommandError(f"{message}: {strerror(exc)}") from None
        if host.is_dir():  # ln makes the link inside an existing directory
            host = host / posixpath.basename(target.rstrip("/"))
        if os.path.lexists(host):
            raise CommandError(f"{message}: File exists")
        self.parent_writable(host, message)
        os.symlink(target, host)
        self.own(host)
        return self.ls_one(link)

    def chmod(self, path: str, mode: str) -> dict:
        if not re.fullmatch(r"[0-7]{1,4}", mode or ""):
            raise CommandError(f"chmod: invalid mode: '{mode}'")
        host = self.existing(path, True, f"chmod: cannot access '{path}'")
        if host.stat().st_uid != self.uid:
            raise CommandError(f"chmod: changing permissions of '{path}': "
                               "Operation not permitted")
        os.chmod(host, int(mode, 8))
        return self.ls_one(path)

    def chown(self, path: str, owner: str, group: str) -> dict:
        try:
            uid = pwd.getpwnam(owner).pw_uid if owner else None
            gid = grp.getgrnam(group).gr_gid if group else None
        except KeyError:
            raise CommandError(f"chown: invalid user: '{owner}:{group}'") from None
        host = self.existing(path, True, f"chown: cannot access '{path}'")
        st = host.stat()
        if st.st_uid != self.uid or uid not in (None, self.uid) or gid not in (None, *self.gids):
            raise CommandError(f"chown: changing ownership of '{path}': Operation not permitted")
        os.chown(host, -1, st.st_gid if gid is None else gid)
        return self.ls_one(path)

    # contents

    def reader(self, path: str, command: str = "base64") -> Path:
        """The host path of a file `command` may read."""
        host = self.existing(path, True, f"{command}: {path}")
        if host.is_dir():
            raise CommandError(f"{command}: read error: Is a directory")
        if not self.allows(host, R):
            raise CommandError(f"{command}: {path}: Permission denied")
        return host

    def read(self, path: str) -> bytes:
        return self.reader(path).read_bytes()

    def writer(self, path: str) -> Path:
        """The host path `cmd > path` would write (made if missing)."""
        message = f"bash: line 1: {path}"
        try:
            host = self.resolve(path, True)
        except OSError as exc:
            raise CommandError(f"{message}: {strerror(exc)}") from None
        if host.is_dir():
            raise CommandError(f"{message}: Is a directory")
        if host.exists():
            if not self.allows(host, W):
                raise CommandError(f"{message}: Permission denied")
        else:
            if not host.parent.is_dir():
                raise CommandError(f"{message}: No such file or directory")
            self.parent_writable(host, message)
            host.touch(0o644)
            self.own(host)
        return host

    def write(self, path: str, data: bytes) -> None:
        self.writer(path).write_bytes(data)

    def checksum(self, path: str) -> str:
        return hashlib.sha256(self.reader(path, "sha256sum").read_bytes()).hexdigest()

    # what transfer jobs do

    def _into(self, src: str, dst: str, message: str) -> tuple[Path, Path]:
        source = self.existing(src, False, f"{message.split(':')[0]}: cannot stat '{src}'")
        try:
            target = self.resolve(dst, True)
        except OSError as exc:
            raise CommandError(f"{message}: {strerror(exc)}") from None
        if target.is_dir():
            target = target / source.name
        if not target.parent.is_dir():
            raise CommandError(f"{message}: No such file or directory")
        if message.startswith("mv"):
            self.parent_writable(source, message)
        self.parent_writable(target, message)
        return source, target

    def mv(self, src: str, dst: str) -> None:
        message = f"mv: cannot move '{src}' to '{dst}'"
        source, target = self._into(src, dst, message)
        if source.is_dir() and not source.is_symlink() \
                and (target == source or source in target.parents):
            raise CommandError(f"mv: cannot move '{src}' to a subdirectory of itself, '{dst}'")
        try:
            os.rename(source, target)
        except OSError as exc:
            raise CommandError(f"{message}: {strerror(exc)}") from None

    def cp(self, src: str, dst: str, dereference: bool = False) -> None:
        source, target = self._into(src, dst, f"cp: cannot create regular file '{dst}'")
        if not self.allows(source, R):
            raise CommandError(f"cp: cannot open '{src}' for reading: Permission denied")
        if source.is_dir() and (dereference or not source.is_symlink()):
            shutil.copytree(source, target, symlinks=not dereference, dirs_exist_ok=True)
        elif source.is_symlink() and not dereference:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)
        for p in [target, *(target.rglob("*") if target.is_dir() else [])]:
            self.own(p)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# --- tokens -------------------------------------------------------------------------------------

class Tokens:
    """The identity provider: client credentials for `USER`, tokens that expire, and one
    fixed long-lived token."""

    def __init__(self, client_secret: str, lifetime: float, static_token: str) -> None:
        self.client_secret, self.lifetime, self.static_token = client_secret, lifetime, static_token
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self, form: dict[str, str], basic: tuple[str, str] | None) -> tuple[int, dict]:
        client_id, secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type",
                         "error_description": "Unsupported grant_type"}
        if client_id != CLIENT_ID or not secrets.compare_digest(secret, self.client_secret):
            return 401, {"error": "unauthorized_client",
                         "error_description": "Invalid client or Invalid client credentials"}
        token = "f7t-" + secrets.token_urlsafe(24)
        with self._lock:
            self._expiry[token] = time.time() + self.lifetime
        return 200, {"access_token": token, "expires_in": int(self.lifetime),
                     "refresh_expires_in": 0, "token_type": "Bearer", "not-before-policy": 0,
                     "scope": "profile email"}

    def check(self, header: str) -> str | None:
        """Why the Authorization header is refused; None when it carries a live token."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "Not authenticated"
        token = token.strip()
        if self.static_token and secrets.compare_digest(token, self.static_token):
            return None
        with self._lock:
            expiry = self._expiry.get(token)
        if expiry is None:
            return "Invalid token"
        if time.time() >= expiry:
            return "Token is expired"
        return None


# --- scheduler jobs (v2) and tasks (v1) ---------------------------------------------------------

@dataclasses.dataclass
class Job:
    """A transfer job on the scheduler: it waits PENDING, RUNs its action, then COMPLETEs
    (also when the action failed: the real scripts exit 0 after reporting to the error log;
    the client learns the outcome from the output log)."""

    job_id: str
    name: str
    system: str
    working_directory: str
    output_log: str
    error_log: str
    state: str = "PENDING"
    submitted: float = dataclasses.field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)

    def as_json(self) -> dict:
        return {"jobId": self.job_id, "name": self.name,
                "status": {"state": self.state, "stateReason": "None", "exitCode": 0,
                           "interruptSignal": None},
                "tasks": [], "time": {"elapsed": int((self.ended or time.time())
                                                     - (self.started or time.time())),
                                      "start": int(self.started or 0),
                                      "end": int(self.ended or 0), "suspended": 0,
                                      "limit": 1440},
                "account": None, "allocationNodes": 1, "cluster": self.system, "group": USER,
                "nodes": "xfer01" if self.started else "", "partition": "xfer",
                "killRequestUser": None, "user": USER,
                "workingDirectory": self.working_directory, "priority": 1}


@dataclasses.dataclass
class Task:
    """A v1 task: its status code and data as the tasks microservice shows them."""

    task_id: str
    service: str
    system: str
    status: str = "100"
    data: Any = "Queued"
    created: float = dataclasses.field(default_factory=time.time)
    updated: float = dataclasses.field(default_factory=time.time)

    DESCRIPTIONS = {"100": "Queued", "101": "In progress", "110": "Waiting for Form URL from "
                    "Object Storage to be retrieved", "111": "Form URL from Object Storage "
                    "received", "112": "Object Storage confirms that upload to Object Storage "
                    "has finished", "113": "Download from Object Storage to server has started",
                    "114": "Download from Object Storage to server has finished",
                    "115": "Download from Object Storage error", "116": "Started upload from "
                    "filesystem to Object Storage", "117": "Upload from filesystem to Object "
                    "Storage has finished successfully", "118": "Upload from filesystem to "
                    "Object Storage has finished with errors", "400": "Error"}

    def set(self, status: str, data: Any) -> None:
        self.status, self.data, self.updated = status, data, time.time()

    def as_json(self) -> dict:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.updated))
        return {"task_id": self.task_id, "hash_id": self.task_id,
                "description": self.DESCRIPTIONS.get(self.status, ""), "data": self.data,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.created)),
                "updated_at": stamp, "last_modify": stamp, "user": USER, "status": self.status,
                "service": self.service, "system": self.system,
                "task_url": f"/tasks/{self.task_id}"}


# --- the service --------------------------------------------------------------------------------

@dataclasses.dataclass
class Settings:
    api: str
    systems: list[System]
    uid: int
    gid: int
    s3_endpoint: str
    job_delay: float = 0.5
    staging_poll: float = 60.0
    max_ops_size: int = 5 * MIB
    max_part_size: int = 5 * MIB
    presign_expires: int = 3600
    app_version: str = V2_APP_VERSION


class Firecrest:
    """The state of the service: systems, tokens, jobs, tasks and the staging area."""

    def __init__(self, settings: Settings, tokens: Tokens) -> None:
        self.settings, self.tokens = settings, tokens
        self.systems = {s.name: s for s in settings.systems}
        self.files = {s.name: Files(s, settings.uid, settings.gid) for s in settings.systems}
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, Task] = {}
        self.staged: dict[str, tuple[str, str]] = {}  # v1 download task -> (bucket, key)
        self._job_ids = itertools.count(1000)
        self.s3 = admin_client(settings.s3_endpoint)

    def fs(self, system: str) -> Files:
        return self.files[system]

    def bucket(self) -> str:
        """The user's staging bucket (the real services name it after the user), made at
        every staging: tests share one S3 server and reset it between them."""
        with contextlib.suppress(self.s3.exceptions.BucketAlreadyOwnedByYou,
                                 self.s3.exceptions.BucketAlreadyExists):
            self.s3.create_bucket(Bucket=USER)
        return USER

    def presign(self, action: str, **params: Any) -> str:
        method = "POST" if action == "complete_multipart_upload" else None
        return self.s3.generate_presigned_url(action, Params=params, HttpMethod=method,
                                              ExpiresIn=self.settings.presign_expires)

    def staged_exists(self, bucket: str, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
        except self.s3.exceptions.ClientError:
            return False
        return True

    # v2 jobs

    def submit(self, system: str, name: str, title: str, success: str,
               action: Callable[[Job], str | None]) -> Job:
        """Queue a job running `action` (which returns an extra output line or raises
        CommandError); its logs go where the real one's go."""
        sysobj = self.systems[system]
        workdir = f"{sysobj.work_dir}/{USER}"
        unique = uuid.uuid4()
        job = Job(str(next(self._job_ids)), name, system, workdir,
                  f"{workdir}/.f7t_file_handling_job_{unique}.log",
                  f"{workdir}/.f7t_file_handling_job_error_{unique}.log")
        self.jobs[job.job_id] = job
        threading.Thread(target=self._run, args=(job, title, success, action),
                         daemon=True).start()
        return job

    def _run(self, job: Job, title: str, success: str,
             action: Callable[[Job], str | None]) -> None:
        delay = self.settings.job_delay
        if job.cancelled.wait(delay):
            return
        job.state, job.started = "RUNNING", time.time()
        out = [f"{now_text()} {title} (id:{job.job_id})"]
        err: list[str] = []
        try:
            extra = action(job)
            if extra:
                out.append(f"{now_text()} {extra}")
            out.append(f"{now_text()} {success}")
        except CommandError as exc:
            err.append(f"{now_text()} {exc.stderr}")
        if job.cancelled.wait(delay):
            return
        files = self.fs(job.system)
        for log, lines in ((job.output_log, out), (job.error_log, err)):
            with contextlib.suppress(CommandError, OSError):  # no work dir: no log, as there
                files.write(log, "".join(line + "\n" for line in lines).encode())
        job.state, job.ended = "COMPLETED", time.time()

    def wait_staged(self, bucket: str, key: str, cancelled: threading.Event) -> bool:
        """Poll for a staged object as the real download job does (every `staging_poll` s)."""
        while not cancelled.is_set():
            if self.staged_exists(bucket, key):
                return True
            cancelled.wait(self.settings.staging_poll)
        return False

    def fetch_staged(self, files: Files, bucket: str, key: str, path: str) -> int:
        target = files.writer(path)
        body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
        with open(target, "wb") as out:
            shutil.copyfileobj(body, out, MIB)
        return target.stat().st_size

    # v1 tasks

    def new_task(self, system: str, steps: Callable[[Task], None]) -> Task:
        task = Task(secrets.token_hex(16), "storage", system)
        self.tasks[task.task_id] = task

        def run() -> None:
            try:
                steps(task)
            except CommandError as exc:
                task.set("115" if task.status in ("110", "111", "112", "113") else "118",
                         {"error": exc.stderr})
        threading.Thread(target=run, daemon=True).start()
        return task


# --- HTTP: shared ---------------------------------------------------------------------------------

def flag(name: str) -> bool:
    return (request.values.get(name) or "").lower() in TRUE


def json_body() -> dict:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


def pick(body: dict, *names: str) -> Any:
    """The first of several spellings the real pydantic models accept."""
    for name in names:
        if body.get(name) is not None:
            return body[name]
    return None


def create_app(fc: Firecrest) -> Flask:
    app = Flask("firecrest")
    app.config["MAX_CONTENT_LENGTH"] = None

    @app.post(TOKEN_PATH)
    def token() -> Response:
        auth = request.authorization
        basic = (auth.username or "", auth.password or "") \
            if auth and auth.type == "basic" else None
        status, body = fc.tokens.issue(request.form.to_dict(), basic)
        return jsonify(body), status

    if fc.settings.api == "v2":
        add_v2(app, fc)
    else:
        add_v1(app, fc)
    return app


# --- HTTP: v2 -----------------------------------------------------------------------------------

V2_STATUS = (("No such file or directory", 404), ("Permission denied", 403),
             ("Operation not permitted", 403), ("File exists", 400), ("invalid user", 400))


def v2_error(status: int, message: str) -> Response:
    user = getattr(g, "user", None)
    response = jsonify({"errorType": "error", "message": message, "causedBy": None,
                        "data": None, "user": user})
    response.status_code = status
    return response


def v2_command_error(exc: CommandError) -> Response:
    """The status the real service gives a failed command (its BaseCommandErrorHandling)."""
    message = f"Remote process failed with exit status:{exc.exit_status}"
    if exc.stderr:
        message += f" and error message:{exc.stderr.strip()}"
    status = next((code for text, code in V2_STATUS if text in exc.stderr), 500)
    return v2_error(status, message)


def add_v2(app: Flask, fc: Firecrest) -> None:
    @app.before_request
    def authenticate() -> Response | None:
        if request.path == TOKEN_PATH:
            return None
        reason = fc.tokens.check(request.headers.get("Authorization", ""))
        if reason:
            return v2_error(401, reason)
        g.user = USER
        return None

    @app.after_request
    def meta(response: Response) -> Response:
        response.headers["F7T-Timestamp"] = str(time.time())
        response.headers["f7t-appversion"] = fc.settings.app_version
        if getattr(g, "user", None):
            response.headers["F7T-AuthUsername"] = USER
        return response

    @app.errorhandler(CommandError)
    def command_error(exc: CommandError) -> Response:
        return v2_command_error(exc)

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return v2_error(exc.status, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return v2_error(exc.code or 500, exc.description or exc.name)

    def system_for(system: str, path: str | None) -> Files:
        """The checks of the real ServiceAvailabilityDependency, then the quote."""
        if system not in fc.systems:
            raise ApiError(404, "System not found")
        if path is None:
            raise ApiError(400, "All filesystem requests require a path or source_path "
                                "parameter.")
        if not path.startswith("/"):
            raise ApiError(400, f"The provided path ({path}) is not an absolute path.")
        if not fc.systems[system].contains(path):
            raise ApiError(400, f"The provided path ({posixpath.normpath(path)}) does not "
                                "match any of the defined filesystem paths for the requested "
                                f"system ({system}).")
        return fc.fs(system)

    def unquoted(*paths: str | None) -> None:
        if any("'" in (p or "") for p in paths):
            raise CommandError(*QUOTE_FAILURE)

    def body_path(body: dict) -> str | None:
        return pick(body, "sourcePath", "source_path", "path")

    @app.get("/status/systems")
    def systems() -> Response:
        return jsonify({"systems": [{
            "name": s.name, "ssh": {"host": "127.0.0.1", "port": 22},
            "scheduler": {"type": "slurm", "version": "24.05.4"},
            "servicesHealth": [{"serviceType": "filesystem", "healthy": True, "path": fs}
                               for fs in s.file_systems],
            "probing": {"interval": 60, "timeout": 10},
            "fileSystems": [{"path": fs, "dataType": "users" if fs == s.file_systems[0]
                             else "scratch", "defaultWorkDir": fs == s.work_dir}
                            for fs in s.file_systems],
            "datatransferJobsDirectives": []} for s in fc.systems.values()]})

    @app.get("/status/<system>/userinfo")
    def userinfo(system: str) -> Response:
        if system not in fc.systems:
            raise ApiError(404, "System not found")
        return jsonify({"user": {"id": str(fc.settings.uid), "name": USER},
                        "group": {"id": str(fc.settings.gid), "name": group_name(fc.settings.gid)},
                        "groups": []})

    @app.get("/filesystem/<system>/ops/ls")
    def ls(system: str) -> Response:
        path = request.args.get("path")
        files = system_for(system, path)
        unquoted(path)
        return jsonify({"output": files.ls(path, flag("showHidden"), flag("recursive"),
                                           flag("dereference"), flag("numericUid"))})

    @app.get("/filesystem/<system>/ops/stat")
    def stat_(system: str) -> Response:
        path = request.args.get("path")
        files = system_for(system, path)
        unquoted(path)
        return jsonify({"output": files.stat(path, flag("dereference"))})

    @app.post("/filesystem/<system>/ops/mkdir")
    def mkdir(system: str) -> Response:
        body = json_body()
        path = body_path(body)
        files = system_for(system, path)
        parent = bool(body.get("parent"))
        if "'" in path:
            # The command's quotes pair up differently: the quotes vanish from the name.
            with contextlib.suppress(CommandError):
                files.mkdir(path.replace("'", ""), parent)
            raise CommandError(*QUOTE_FAILURE)
        return jsonify({"output": files.mkdir(path, parent)}), 201

    @app.post("/filesystem/<system>/ops/symlink")
    def symlink(system: str) -> Response:
        body = json_body()
        path, link = body_path(body), pick(body, "linkPath", "link_path")
        files = system_for(system, path)
        unquoted(path, link)
        if not link:
            raise ApiError(400, "1 validation error/s occurred: linkPath: Field required")
        return jsonify({"output": files.symlink(path, link)}), 201

    @app.put("/filesystem/<system>/ops/chmod")
    def chmod(system: str) -> Response:
        body = json_body()
        path = body_path(body)
        files = system_for(system, path)
        unquoted(path)
        return jsonify({"output": files.chmod(path, str(body.get("mode", "")))})

    @app.put("/filesystem/<system>/ops/chown")
    def chown(system: str) -> Response:
        body = json_body()
        path = body_path(body)
        files = system_for(system, path)
        unquoted(path)
        return jsonify({"output": files.chown(path, body.get("owner") or "",
                                              body.get("group") or "")})

    @app.delete("/filesystem/<system>/ops/rm")
    def rm(system: str) -> Response:
        path = request.args.get("path")
        files = system_for(system, path)
        unquoted(path)
        files.rm(path)
        return Response(status=204)

    @app.get("/filesystem/<system>/ops/checksum")
    def checksum(system: str) -> Response:
        path = request.args.get("path")
        files = system_for(system, path)
        unquoted(path)
        return jsonify({"output": {"algorithm": "SHA256", "checksum": files.checksum(path)}})

    @app.get("/filesystem/<system>/ops/view")
    def view(system: str) -> Response:
        path = request.args.get("path")
        files = system_for(system, path)
        unquoted(path)
        size = int(request.args.get("size", fc.settings.max_ops_size))
        offset = int(request.args.get("offset", 0))
        with open(files.reader(path, "dd"), "rb") as f:
            f.seek(offset)
            data = f.read(min(size, fc.settings.max_ops_size))
        return jsonify({"output": data.decode("utf-8", "replace")})

    @app.get("/filesystem/<system>/ops/download")
    def download(system: str) -> Response:
        path = request.args.get("path")
        files = system_for(system, path)
        unquoted(path)
        data = files.read(path)
        if len(data) > fc.settings.max_ops_size:
            raise ApiError(413, "File to download is too large.")
        return Response(data, mimetype="application/octet-stream")

    @app.post("/filesystem/<system>/ops/upload")
    def upload(system: str) -> Response:
        path = request.args.get("path")
        files = system_for(system, path)
        upload = request.files.get("file")
        if upload is None:
            raise ApiError(400, "1 validation error/s occurred: file: Field required")
        target = f"{path}/{upload.filename}"
        unquoted(target)
        data = upload.read()
        if len(data) > fc.settings.max_ops_size:
            raise ApiError(413, "File to upload is too large.")
        files.write(target, data)  # `base64 -d > 'DIR/NAME'`: overwrites without a word
        return Response(status=204)

    # transfers: scheduler jobs

    def transfer_job(job: Job) -> dict:
        return {"jobId": job.job_id, "system": job.system,
                "workingDirectory": job.working_directory,
                "logs": {"outputLog": job.output_log, "errorLog": job.error_log}}

    def system_only(system: str) -> Files:
        if system not in fc.systems:
            raise ApiError(404, "System not found")
        return fc.fs(system)

    @app.post("/filesystem/<system>/transfer/mv")
    def mv(system: str) -> Response:
        body = json_body()
        src, dst = body_path(body), pick(body, "targetPath", "target_path")
        files = system_for(system, src)
        unquoted(src, dst)
        job = fc.submit(system, "MoveFiles", "Move Files Job", "Files were successfully moved.",
                        lambda _job: files.mv(src, dst))
        return jsonify({"transferJob": transfer_job(job)}), 201

    @app.post("/filesystem/<system>/transfer/cp")
    def cp(system: str) -> Response:
        body = json_body()
        src, dst = body_path(body), pick(body, "targetPath", "target_path")
        files = system_for(system, src)
        unquoted(src, dst)
        deref = bool(body.get("dereference"))
        job = fc.submit(system, "CopyFiles", "Copy Files Job", "Files were successfully copied.",
                        lambda _job: files.cp(src, dst, deref))
        return jsonify({"transferJob": transfer_job(job)}), 201

    @app.delete("/filesystem/<system>/transfer/rm")
    def rm_job(system: str) -> Response:
        path = request.args.get("path")
        files = system_for(system, path)
        unquoted(path)
        job = fc.submit(system, "DeleteFiles", "Delete Files Job",
                        "Files were successfully deleted.", lambda _job: files.rm(path))
        return jsonify({"transferJob": transfer_job(job)}), 200

    def directives(body: dict) -> dict:
        d = pick(body, "transferDirectives", "transfer_directives") or {}
        if pick(d, "transferMethod", "transfer_method") != "s3":
            raise ApiError(400, "Requested transfer method is not available.")
        return d

    @app.post("/filesystem/<system>/transfer/upload")
    def staged_upload(system: str) -> Response:
        body = json_body()
        path = body_path(body)
        files = system_for(system, path)
        unquoted(path)
        size = int(pick(directives(body), "fileSize", "file_size") or 0)
        bucket, key = fc.bucket(), f"{uuid.uuid4()}/{posixpath.basename(path)}"
        upload_id = fc.s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        part = fc.settings.max_part_size
        urls = [fc.presign("upload_part", Bucket=bucket, Key=key, UploadId=upload_id,
                           PartNumber=n) for n in range(1, max(1, math.ceil(size / part)) + 1)]
        complete = fc.presign("complete_multipart_upload", Bucket=bucket, Key=key,
                              UploadId=upload_id)

        def ingress(job: Job) -> str:
            if files.resolve(path, True).is_dir():
                raise CommandError(f"targetPath must point to a file path: {path} is a "
                                   "directory.")
            if not fc.wait_staged(bucket, key, job.cancelled):
                raise CommandError("Unable to download file")
            size = fc.fetch_staged(files, bucket, key, path)
            fc.s3.delete_object(Bucket=bucket, Key=key)
            return f"Received {size} bytes"

        job = fc.submit(system, "IngressFileTransfer", "Ingress File Transfer Job",
                        "File was successfully downloaded", ingress)
        return jsonify({"transferJob": transfer_job(job), "transferDirectives": {
            "partsUploadUrls": urls, "completeUploadUrl": complete, "maxPartSize": part,
            "transferMethod": "s3"}}), 201

    @app.post("/filesystem/<system>/transfer/download")
    def staged_download(system: str) -> Response:
        body = json_body()
        path = body_path(body)
        files = system_for(system, path)
        unquoted(path)
        directives(body)
        files.stat(path, True)  # the real one stats first: a missing file is refused now
        bucket, key = fc.bucket(), f"{uuid.uuid4()}/{posixpath.basename(path)}"

        def outgress(_job: Job) -> None:
            with open(files.reader(path, "split"), "rb") as f:
                fc.s3.upload_fileobj(f, bucket, key)

        job = fc.submit(system, "OutgressFileTransfer", "Upload File Job",
                        "Multipart file upload successfully completed", outgress)
        return jsonify({"transferJob": transfer_job(job), "transferDirectives": {
            "downloadUrl": fc.presign("get_object", Bucket=bucket, Key=key),
            "transferMethod": "s3"}}), 201

    def find_job(system: str, job_id: str) -> Job:
        system_only(system)
        job = fc.jobs.get(job_id)
        if job is None or job.system != system:
            raise ApiError(404, "Job not found.")
        return job

    @app.get("/compute/<system>/jobs/<job_id>")
    def job_info(system: str, job_id: str) -> Response:
        return jsonify({"jobs": [find_job(system, job_id).as_json()]})

    @app.delete("/compute/<system>/jobs/<job_id>")
    def cancel(system: str, job_id: str) -> Response:
        job = find_job(system, job_id)
        if job.state in ("PENDING", "RUNNING"):
            job.cancelled.set()
            job.state, job.ended = "CANCELLED", time.time()
        return Response(status=204)


# --- HTTP: v1 -----------------------------------------------------------------------------------

# The real check_command_error's rules, in its order: (stderr holds all of, header, message).
V1_HEADERS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("cannot access",), "X-Invalid-Path", "path is an invalid path"),
    (("No such file", "cannot stat"), "X-Not-Found", "sourcePath not found"),
    (("No such file",), "X-Invalid-Path", "path is an invalid path"),
    (("cannot open",), "X-Permission-Denied", "User does not have permissions to access path"),
    (("Permission denied",), "X-Permission-Denied",
     "User does not have permissions to access path"),
    (("File exists", "mkdir: cannot create directory"), "X-Exists", "targetPath already exists"),
    (("File exists", "ln: failed to create symbolic link"), "X-Exists",
     "targetPath already exists"),
    (("Not a directory",), "X-Not-A-Directory", "targetPath is not a directory"),
    (("directory",), "X-A-Directory", "path is a directory, can't checksum directories"),
    (("not permitted",), "X-Permission-Denied", "User does not have permissions to access path"),
    (("invalid user",), "X-Invalid-Owner", "owner is an invalid user"),
    (("invalid mode",), "X-Invalid-Mode", "mode is an invalid mode"),
)


def v1_command_error(exc: CommandError, description: str) -> Response:
    lower = exc.stderr.lower()
    header, value = next(((h, v) for needles, h, v in V1_HEADERS
                          if all(n.lower() in lower for n in needles)),
                         ("X-Error", exc.stderr))
    response = jsonify({"description": description, "error": exc.stderr})
    response.status_code = 400
    response.headers[header] = value.replace("\n", " ")
    return response


def add_v1(app: Flask, fc: Firecrest) -> None:
    @app.before_request
    def authenticate() -> Response | None:
        if request.path == TOKEN_PATH:
            return None
        reason = fc.tokens.check(request.headers.get("Authorization", ""))
        if reason:
            return jsonify({"description": f"Permission denied. {reason}"}), 401
        return None

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        response = jsonify({"description": exc.message, "error": exc.message})
        response.status_code = exc.status
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        response = jsonify({"description": exc.description or exc.name})
        response.status_code = exc.code or 500
        return response

    def machine(header: str = "X-Machine-Does-Not-Exist") -> tuple[str, Files]:
        name = request.headers.get("X-Machine-Name")
        if not name:
            raise ApiError(400, "No machine name given")
        if name not in fc.systems:
            raise ApiError(400, "Machine does not exist", {header: "Machine does not exist"})
        return name, fc.fs(name)

    def field(name: str) -> str:
        """A form or query field, checked as the real service's validate_input does."""
        value = request.values.get(name)
        problem = "not specified" if value is None else "is empty" if value == "" \
            else "has invalid char" if V1_FORBIDDEN.search(value) else ""
        if problem:
            raise ApiError(400, f"'{name}' {problem}")
        return value  # type: ignore[return-value]

    def run(operation: str, action: Callable[[], Any], status: int = 200,
            description: str = "") -> Response:
        try:
            output = action()
        except CommandError as exc:
            return v1_command_error(exc, f"Error on {operation} operation")
        if status == 204:
            return Response(status=204)
        return jsonify({"description": description or "Success", "output": output}), status

    def v1_entry(entry: dict) -> dict:
        return {"name": entry["name"], "type": entry["type"],
                "link_target": entry["linkTarget"] or "", "user": entry["user"],
                "group": entry["group"], "permissions": entry["permissions"],
                "last_modified": entry["lastModified"], "size": entry["size"]}

    @app.get("/status/systems")
    def systems() -> Response:
        return jsonify({"description": "List of systems with status and description.",
                        "out": [system_status(n) for n in fc.systems]})

    def system_status(name: str) -> dict:
        return {"system": name, "status": "available", "description": "System ready"}

    @app.get("/status/systems/<name>")
    def system(name: str) -> Response:
        if name not in fc.systems:
            return jsonify({"description": "System does not exists."}), 400
        return jsonify({"description": "System information", "out": system_status(name)})

    @app.get("/status/parameters")
    def parameters() -> Response:
        size_mb = fc.settings.max_ops_size / MIB
        return jsonify({"description": "Firecrest's parameters", "out": {
            "utilities": [
                {"name": "UTILITIES_MAX_FILE_SIZE", "value": f"{size_mb:g}", "unit": "MB",
                 "description": "The maximum allowable file size for various operations of "
                                "the utilities microservice"},
                {"name": "UTILITIES_TIMEOUT", "value": "5", "unit": "seconds",
                 "description": "Maximum time duration for executing the commands"}],
            "storage": [
                {"name": "OBJECT_STORAGE", "value": "s3v4", "unit": "",
                 "description": "Type of object storage"},
                {"name": "STORAGE_TEMPURL_EXP_TIME", "value": str(fc.settings.presign_expires),
                 "unit": "seconds", "description": "Expiration time for temp URLs"},
                {"name": "STORAGE_MAX_FILE_SIZE", "value": "5120", "unit": "MB",
                 "description": "Maximum file size for staging area"}],
            "compute": [],
            "general": [{"name": "FIRECREST_VERSION", "value": V1_VERSION, "unit": "",
                         "description": "FirecREST version."}]}})

    @app.get("/status/filesystems")
    def filesystems() -> Response:
        return jsonify({"description": "Filesystem information", "out": {
            s.name: [{"name": fs, "path": fs, "status": 200, "description": "OK"}
                     for fs in s.file_systems] for s in fc.systems.values()}})

    @app.get("/utilities/ls")
    def ls() -> Response:
        _, files = machine()
        path = field("targetPath")
        return run("ls", lambda: [v1_entry(e) for e in files.ls(
            path, flag("showhidden"), flag("recursive"), False, flag("numericUid"))],
            description="List of contents")

    @app.get("/utilities/stat")
    def stat_() -> Response:
        _, files = machine()
        path = field("targetPath")
        return run("stat", lambda: files.stat(path, flag("dereference")),
                   description="Stat operation")

    @app.post("/utilities/mkdir")
    def mkdir() -> Response:
        _, files = machine()
        path = field("targetPath")
        return run("mkdir", lambda: files.mkdir(path, flag("p")) and "", 201,
                   "Success create directory")

    @app.put("/utilities/rename")
    def rename() -> Response:
        _, files = machine()
        src, dst = field("sourcePath"), field("targetPath")
        return run("rename", lambda: files.mv(src, dst) or "",
                   description="Success to rename file or directory")

    @app.post("/utilities/copy")
    def copy() -> Response:
        _, files = machine()
        src, dst = field("sourcePath"), field("targetPath")
        return run("copy", lambda: files.cp(src, dst) or "", 201,
                   "Success to copy file or directory")

    @app.delete("/utilities/rm")
    def rm() -> Response:
        _, files = machine()
        path = field("targetPath")
        return run("rm", lambda: files.rm(path), 204)

    @app.put("/utilities/chmod")
    def chmod() -> Response:
        _, files = machine()
        path, mode = field("targetPath"), field("mode")
        return run("chmod", lambda: files.chmod(path, mode) and
                   f"mode of '{path}' changed to {mode}", description="Success to chmod file "
                   "or directory")

    @app.put("/utilities/chown")
    def chown() -> Response:
        _, files = machine()
        path = field("targetPath")
        owner, group = request.values.get("owner", ""), request.values.get("group", "")
        return run("chown", lambda: files.chown(path, owner, group) and "",
                   description="Success to chown file or directory")

    @app.post("/utilities/symlink")
    def symlink() -> Response:
        _, files = machine()
        target, link = field("targetPath"), field("linkPath")
        return run("symlink", lambda: files.symlink(target, link) and "", 201,
                   "Success to link file or directory")

    @app.get("/utilities/checksum")
    def checksum() -> Response:
        _, files = machine()
        path = field("targetPath")
        return run("checksum", lambda: files.checksum(path),
                   description="Checksum successfully retrieved")

    @app.get("/utilities/view")
    def view() -> Response:
        _, files = machine()
        path = field("targetPath")

        def content() -> str:
            host = files.reader(path, "head")
            if host.stat().st_size > fc.settings.max_ops_size:
                raise ApiError(400, "Failed to view file content",
                               {"X-Size-Limit": "File exceeds size limit"})
            return host.read_bytes().decode("utf-8", "replace")
        return run("view", content, description="File content successfully returned")

    @app.get("/utilities/download")
    def download() -> Response:
        _, files = machine()
        path = field("sourcePath")
        try:
            host = files.reader(path, "cat")
        except CommandError as exc:
            return v1_command_error(exc, "Error on download operation")
        if host.stat().st_size > fc.settings.max_ops_size:
            raise ApiError(400, "Failed to download file",
                           {"X-Size-Limit": "File exceeds size limit"})
        return Response(host.read_bytes(), mimetype="application/octet-stream")

    @app.post("/utilities/upload")
    def upload() -> Response:
        _, files = machine()
        directory = field("targetPath")
        upload = request.files.get("file")
        if upload is None:
            raise ApiError(400, "No file in query")
        if V1_FORBIDDEN.search(upload.filename or ""):
            raise ApiError(400, "Filename has invalid char")
        data = upload.read()
        if len(data) > fc.settings.max_ops_size:
            return jsonify({"description": "Failed to upload file. The file is over "
                                           f"{fc.settings.max_ops_size} bytes"}), 413
        return run("upload", lambda: files.write(f"{directory}/{upload.filename}", data), 201,
                   "File upload successful")

    # external transfers: tasks

    def created(task: Task) -> Response:
        return jsonify({"success": "Task created", "task_url": f"/tasks/{task.task_id}",
                        "task_id": task.task_id}), 201

    def pause() -> None:
        time.sleep(fc.settings.job_delay)

    @app.post("/storage/xfer-external/upload")
    def external_upload() -> Response:
        system, files = machine("X-Machine-Does-Not-Exists")  # sic, as storage spells it
        target, source = field("targetPath"), field("sourcePath")
        name = source.split("/")[-1]
        try:
            is_dir = files.existing(target, True, f"ls: cannot access '{target}'").is_dir()
        except CommandError:
            is_dir = False
        if not is_dir:
            parent = target.rsplit("/", 1)[0] or "/"
            try:
                files.existing(parent, True, f"ls: cannot access '{parent}'")
            except CommandError as exc:
                return v1_command_error(exc, "Failed to upload file")
        destination = f"{target}/{name}" if is_dir else target

        def steps(task: Task) -> None:
            bucket, key = fc.bucket(), f"{task.task_id}/{name}"
            info = {"user": USER, "system_name": system, "target": destination,
                    "source": name, "hash_id": task.task_id}
            task.set("110", {**info, "msg": "Waiting for Presigned URL to upload file to "
                                            "staging area (s3v4)"})
            pause()
            form = fc.s3.generate_presigned_post(Bucket=bucket, Key=key,
                                                 ExpiresIn=fc.settings.presign_expires)
            command = f"curl -f --show-error -s -i -X POST {form['url']}"
            command += "".join(f" -F '{k}={v}'" for k, v in form["fields"].items())
            command += f" -F file=@{source}"
            task.set("111", {**info, "msg": {"command": command, "parameters": {
                "method": "POST", "url": form["url"], "data": form["fields"], "files": source,
                "json": {}, "params": {}, "headers": {}}}})
            never = threading.Event()
            fc.wait_staged(bucket, key, never)
            task.set("112", {**info, "msg": "Upload to Object Storage confirmed"})
            pause()
            task.set("113", {"source": key, "target": destination, "system_name": system})
            fc.fetch_staged(files, bucket, key, destination)
            fc.s3.delete_object(Bucket=bucket, Key=key)
            pause()
            task.set("114", {"source": key, "target": destination, "system_name": system})

        return created(fc.new_task(system, steps))

    @app.post("/storage/xfer-external/download")
    def external_download() -> Response:
        system, files = machine("X-Machine-Does-Not-Exists")
        source = field("sourcePath")
        try:
            files.reader(source, "head")
        except CommandError as exc:
            return v1_command_error(exc, "sourcePath error")

        def steps(task: Task) -> None:
            bucket, key = fc.bucket(), f"{task.task_id}/{source.split('/')[-1]}"
            fc.staged[task.task_id] = bucket, key
            task.set("116", {"source": source, "system_name": system})
            pause()
            with open(files.reader(source, "head"), "rb") as f:
                fc.s3.upload_fileobj(f, bucket, key)
            pause()
            task.set("117", {"url": fc.presign("get_object", Bucket=bucket, Key=key),
                             "source": source, "system_name": system})

        return created(fc.new_task(system, steps))

    @app.post("/storage/xfer-external/invalidate")
    def invalidate() -> Response:
        task_id = request.headers.get("X-Task-Id")
        if not task_id:
            return jsonify({"error": "Header X-Task-Id missing"}), 400
        if task_id not in fc.staged:
            return jsonify({"error": "Invalid X-Task-Id"}), 400
        bucket, key = fc.staged.pop(task_id)
        fc.s3.delete_object(Bucket=bucket, Key=key)
        return jsonify({"success": "URL invalidated successfully"}), 201

    @app.get("/tasks")
    @app.get("/tasks/")
    def tasks() -> Response:
        wanted = [t for t in (request.args.get("tasks") or "").split(",") if t]
        chosen = {i: t.as_json() for i, t in fc.tasks.items() if not wanted or i in wanted}
        return jsonify({"tasks": chosen})

    @app.get("/tasks/<task_id>")
    def task(task_id: str) -> Response:
        if task_id not in fc.tasks:
            return jsonify({"description": "Task does not exist"}), 404
        return jsonify({"task": fc.tasks[task_id].as_json()})


# --- running it ---------------------------------------------------------------------------------

def parse_system(spec: str) -> tuple[str, list[str]]:
    """`NAME:/fs1,/fs2` -> (NAME, [/fs1, /fs2])."""
    name, _, paths = spec.partition(":")
    file_systems = [p.rstrip("/") or "/" for p in paths.split(",") if p]
    if not name or not file_systems or not all(p.startswith("/") for p in file_systems):
        raise argparse.ArgumentTypeError(f"expected NAME:/fs1,/fs2, not {spec!r}")
    return name, file_systems


def make_systems(root: Path, specs: list[tuple[str, list[str]]], uid: int,
                 gid: int) -> list[System]:
    """The systems' directories under `root`, each file system with the user's directory in
    it (where the real ones keep the user's home and scratch, and the jobs their logs)."""
    systems = []
    for name, file_systems in specs:
        system = System(name, root / name, file_systems)
        for fs in file_systems:
            user_dir = system.root / fs.lstrip("/") / USER
            user_dir.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(user_dir, uid, gid)
        systems.append(system)
    return systems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.firecrest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=18556)
    parser.add_argument("--api", choices=("v2", "v1"), default="v2")
    parser.add_argument("--root", type=Path, help="directory holding the systems (default: a "
                        "temporary one, removed at exit)")
    parser.add_argument("--system", type=parse_system, action="append", metavar="NAME:/FS,...",
                        help=f"a system and its file systems (default: {DEFAULT_SYSTEMS[0]}); "
                        "the last file system is the default work dir")
    parser.add_argument("--s3-endpoint", help="the S3 server of the staging area (default: "
                                              "start a moto_server of its own)")
    parser.add_argument("--client-secret", help="default: made up and printed")
    parser.add_argument("--access-token", help="a fixed long-lived token also accepted "
                                               "(default: made up and printed)")
    parser.add_argument("--token-lifetime", type=float, default=300, metavar="SECONDS")
    parser.add_argument("--job-delay", type=float, default=0.5, metavar="SECONDS",
                        help="time a job stays PENDING, and RUNNING beyond its work (and "
                        "each step of a v1 task)")
    parser.add_argument("--staging-poll", type=float, default=60, metavar="SECONDS",
                        help="how often an upload job looks for the staged object (real: 60)")
    parser.add_argument("--max-ops-size", type=int, default=5 * MIB, metavar="BYTES",
                        help="the direct transfer limit (v2 413, v1 X-Size-Limit)")
    parser.add_argument("--max-part-size", type=int, default=5 * MIB, metavar="BYTES")
    parser.add_argument("--uid", type=int, default=os.getuid(),
                        help="the uid the service acts as (permissions by mode bits)")
    parser.add_argument("--gid", type=int, default=os.getgid())
    parser.add_argument("--app-version", default=V2_APP_VERSION,
                        help="the f7t-appversion header of v2")
    return parser.parse_args(argv)


def describe(url: str, api: str, systems: list[System], secret: str, static_token: str,
             s3_endpoint: str) -> str:
    """What a person needs to point mountfs (or pyfirecrest) at the service."""
    first = systems[0]
    lines = [f"FirecREST API {api} test service on {url} (staging area: S3 at {s3_endpoint})"]
    for s in systems:
        lines.append(f"  system {s.name}: " + ", ".join(
            f"{fs} (in {s.root / fs.lstrip('/')})" for fs in s.file_systems))
    lines += [f"  user {USER}, work dir {first.work_dir}/{USER}",
              f"  token URL     {url}{TOKEN_PATH}",
              f"  client id     {CLIENT_ID}", f"  client secret {secret}",
              f"  fixed token   {static_token}",
              "mount with:",
              f"  FIRECREST_URL={url} FIRECREST_CLIENT_ID={CLIENT_ID} "
              f"FIRECREST_CLIENT_SECRET={secret} AUTH_TOKEN_URL={url}{TOKEN_PATH} "
              f"mountfs mount firecrest://{first.name}{first.file_systems[0]}/{USER} MNT",
              "Ctrl-C stops."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds: own S3 server, temp root
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    url = f"http://127.0.0.1:{args.port}"
    with contextlib.ExitStack() as stack:
        s3_endpoint = args.s3_endpoint or stack.enter_context(own_s3_server())
        root = args.root or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="firecrest-")))
        specs = args.system or [parse_system(s) for s in DEFAULT_SYSTEMS]
        systems = make_systems(root, specs, args.uid, args.gid)
        secret = args.client_secret or secrets.token_urlsafe(18)
        static_token = args.access_token or "f7t-fixed-" + secrets.token_urlsafe(18)
        settings = Settings(args.api, systems, args.uid, args.gid, s3_endpoint,
                            args.job_delay, args.staging_poll, args.max_ops_size,
                            args.max_part_size, app_version=args.app_version)
        app = create_app(Firecrest(settings, Tokens(secret, args.token_lifetime, static_token)))
        server = make_server("127.0.0.1", args.port, app, threaded=True)
        stack.callback(server.server_close)
        print(describe(url, args.api, systems, secret, static_token, s3_endpoint), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    return 0


class FirecrestService:
    """The service as a subprocess (`python -m tests.servers.firecrest`) over `root` (a new
    temporary directory unless given), staging through the S3 server at `s3_endpoint`.

    `url` is FIRECREST_URL, `token_url` AUTH_TOKEN_URL; `client_id`/`client_secret` get
    tokens living `token_lifetime` s, `static_token` never expires. `host_path(system, path)`
    is where a system path lives on this machine, for a test to look or prepare directly.
    """

    def __init__(self, s3_endpoint: str, *, api: str = "v2", root: Path | None = None,
                 systems: tuple[str, ...] = DEFAULT_SYSTEMS, port: int | None = None,
                 token_lifetime: float = 300, job_delay: float = 0.2,
                 staging_poll: float = 0.2, max_ops_size: int = 5 * MIB,
                 max_part_size: int = 5 * MIB, uid: int | None = None,
                 gid: int | None = None) -> None:
        self.s3_endpoint, self.api, self.systems = s3_endpoint, api, systems
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_url = self.url + TOKEN_PATH
        self.client_id, self.client_secret = CLIENT_ID, secrets.token_urlsafe(18)
        self.static_token = "f7t-fixed-" + secrets.token_urlsafe(18)
        self.user = USER
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="firecrest-"))
        self.token_lifetime, self.job_delay, self.staging_poll = \
            token_lifetime, job_delay, staging_poll
        self.max_ops_size, self.max_part_size = max_ops_size, max_part_size
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.servers.firecrest", "--port", str(self.port),
                "--api", self.api, "--root", str(self.root), "--s3-endpoint", self.s3_endpoint,
                # "=" because a generated secret may begin with "-" (argparse would read a flag)
                f"--client-secret={self.client_secret}", f"--access-token={self.static_token}",
                "--token-lifetime", str(self.token_lifetime),
                "--job-delay", str(self.job_delay), "--staging-poll", str(self.staging_poll),
                "--max-ops-size", str(self.max_ops_size),
                "--max-part-size", str(self.max_part_size),
                "--uid", str(self.uid), "--gid", str(self.gid),
                *itertools.chain.from_iterable(("--system", s) for s in self.systems)]

    def environment(self) -> dict[str, str]:
        """The variables pyfirecrest's examples (and the mountfs driver) read."""
        return {"FIRECREST_URL": self.url, "FIRECREST_CLIENT_ID": self.client_id,
                "FIRECREST_CLIENT_SECRET": self.client_secret, "AUTH_TOKEN_URL": self.token_url}

    def host_path(self, system: str, path: str) -> Path:
        return self.root / system / path.lstrip("/")

    def home(self, system: str = "cluster") -> str:
        """The user's directory in the system's first file system (a system path)."""
        first = next(parse_system(s) for s in self.systems if s.startswith(system + ":"))[1][0]
        return f"{first}/{USER}"

    def start(self, timeout: float = 30) -> FirecrestService:
        # stderr is inherited: a traceback of the service shows in the test's output.
        self.proc = start_server(self.command(), self.url + "/status/systems",
                                 "the FirecREST service", timeout, cwd=REPO_ROOT,
                                 stdout=subprocess.DEVNULL)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def firecrest_service(s3_endpoint: str, **options: Any) -> Iterator[FirecrestService]:
    """A running FirecrestService for a fixture (options as FirecrestService takes them)."""
    service = FirecrestService(s3_endpoint, **options).start()
    try:
        yield service
    finally:
        service.stop()


if __name__ == "__main__":
    sys.exit(main())
