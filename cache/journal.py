"""Crash-safe records of cached objects: an append-only log of JSON lines, one per change.

A record says which object (bucket, key) a set of block files holds, which server version its
clean blocks came from, and whether it holds data not yet uploaded (dirty) and whether a
program closed it (committed). Each change appends one line with a single write(2), which a
kill of the process cannot cut in half; the last line for an id wins, and a `removed` line
forgets it. Loading compacts the log (tmp + rename), and so does a log grown far past the
live records, in lines or in bytes (the record of a large upload in parts grows by a part at
each line). Nothing here is fsynced: a killed process loses nothing the kernel has, and a
program that needs its data on stable storage calls fsync, which waits for the upload. A line
torn by a power cut is skipped.
"""
from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The log may grow this many bytes past 4x its size at the last compaction before it is
# compacted again: a 10 GiB file written in 1,280 parts saves its record at each part, with
# every part so far, and the log grew to 37 MB, the cache dir 36 MiB over its 2 GiB cap
# (scripts/bench (h), tests/test_cache.py).
COMPACT_SLACK_BYTES = 1024 * 1024


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
    lost: str = ""  # why its unuploaded data is gone from the cache: never upload it
    # Its upload in parts under way (cache/streams.py): id, name, part size, metadata, parts.
    upload: dict[str, Any] = field(default_factory=dict)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._lines = 0
        self._bytes = 0  # in the file
        self._compacted_bytes = 0  # in the file when it was last compacted
        self._torn = False  # the file may end in a line cut short: start the next on a new one

    def load(self) -> list[ObjectRecord]:
        """The live records, in the order they were last written; the log is compacted."""
        records: dict[str, ObjectRecord] = {}
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        lines = data.splitlines()
        for line in lines:
            if not line.strip():  # the newline _append put after a torn line
                continue
            try:
                raw = json.loads(line)
                if raw.get("removed"):
                    records.pop(raw["id"], None)
                    continue
                record = ObjectRecord(**raw)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                log.warning("skipping an unreadable journal line in %s: %s", self.path, exc)
                continue
            records.pop(record.id, None)
            records[record.id] = record
        try:
            self.compact(records.values())
        except OSError as exc:  # a full disk: the records are read, go on appending to them
            log.warning("cannot compact %s (%s); appending to it as it is", self.path, exc)
            self.close()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._lines = len(lines)
            self._bytes = self._compacted_bytes = len(data)
            self._torn = not data.endswith(b"\n") and bool(data)
        return list(records.values())

    def save(self, record: ObjectRecord) -> None:
        # The fields as they are (json.dumps copies nothing): dataclasses.asdict deep-copies
        # them, which cost as much as the rest of a save, and a file's create saves ~6 times.
        self._append(vars(record))

    def remove(self, record_id: str) -> None:
        self._append({"id": record_id, "removed": True})

    def needs_compaction(self, live: int) -> bool:
        return (self._lines > 4 * live + 10_000
                or self._bytes > 4 * self._compacted_bytes + COMPACT_SLACK_BYTES)

    def compact(self, records: Iterable[ObjectRecord]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                count = size = 0
                for record in records:
                    size += f.write(_line(vars(record)))
                    count += 1
        except OSError:  # ENOSPC: the old file stays whole; do not leave the copy's space taken
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.path)
        self._torn = False
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._lines = count
        self._bytes = self._compacted_bytes = size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _append(self, raw: dict[str, Any]) -> None:
        # A write the disk cut short (ENOSPC) leaves part of a line; without the newline in
        # front, the next record would be glued to it and both skipped at load.
        line = (b"\n" if self._torn else b"") + _line(raw)
        self._torn = True
        written = os.write(self._fd, line)
        if written < len(line):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        self._torn = False
        self._lines += 1
        self._bytes += written


def _line(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw, separators=(",", ":")).encode() + b"\n"
