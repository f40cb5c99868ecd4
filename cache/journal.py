"""Crash-safe records of cached objects: one small JSON file per object, replaced atomically.

A record says which object (bucket, key) a directory of block files holds, which server version
its clean blocks came from, and whether it holds data not yet uploaded (dirty) and whether a
program closed it (committed). Records are written with tmp + rename, so a kill of the process
at any moment leaves the old record or the new one, never a torn one. Data blocks are not
fsynced here: a killed process loses nothing the kernel has, and a program that needs the data
on stable storage calls fsync, which waits for the upload.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

RECORD_NAME = "state.json"


@dataclass
class ObjectRecord:
    id: str
    bucket: str
    key: str
    size: int
    remote_size: int  # bytes of the server version that stand behind blocks not in the cache
    etag: str
    mtime_ns: int
    metadata: dict[str, str] = field(default_factory=dict)
    dirty: bool = False
    committed: bool = False
    on_server: bool = False
    saved_ns: int = 0  # orders two records that claim one key after a crash


def save(object_dir: Path, record: ObjectRecord) -> None:
    object_dir.mkdir(mode=0o700, exist_ok=True)
    tmp = object_dir / (RECORD_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f)
    os.replace(tmp, object_dir / RECORD_NAME)


def load(object_dir: Path) -> ObjectRecord | None:
    """The record in `object_dir`, or None where there is none or it cannot be read."""
    try:
        raw = json.loads((object_dir / RECORD_NAME).read_text())
        return ObjectRecord(**raw)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        log.warning("ignoring unreadable cache record in %s: %s", object_dir, exc)
        return None
