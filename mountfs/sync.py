"""`mountfs sync MOUNTPOINT [PATH]`: upload now every closed file at or under PATH, and wait.

The files are those the queue holds when the command starts (what programs closed before it);
the mount is asked to upload them at once (the root's SYNC_XATTR), failed ones too, and the
command follows the status document until each has been uploaded (named by the document's
ring of recent uploads), has failed (a permanent failure tried again since the command asked,
a temporary one FSYNC_TEMP_TRIES times, as fsync rides them out, or an upload whose data is
lost), or has left the queue without an upload (deleted or discarded meanwhile: said, not
counted). It shows one progress bar for all of them on a terminal, one line per file
otherwise, and exits 1 naming each file that failed and why.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live

from cache.writeback import FSYNC_TEMP_TRIES
from mountfs.errors import ConfigError
from mountfs.sizes import human
from mountfs.status import SYNC_XATTR, is_under
from mountfs.watch import Reader, Status, progress_bars, say, statuses, uploaded_since

Entry = dict[str, Any]


def relative_path(mountpoint: str, path: str | None) -> str:
    """PATH as the mount's status names it: relative to the mount's root ("" for all)."""
    if path is None:
        return ""
    rel = os.path.relpath(os.path.abspath(path), mountpoint)
    if rel == os.curdir:
        return ""
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ConfigError(f"{path} is not on the mount {mountpoint}")
    return rel


@dataclass
class Waiting:
    """The uploads a sync waits for, by path, and what became of them."""

    pending: dict[str, Entry]
    seen: int  # the mount's count of uploads when the sync started
    tries_before: dict[str, int] = field(default_factory=dict)
    uploaded: dict[str, int] = field(default_factory=dict)  # path -> size
    failed: dict[str, Entry] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)  # deleted or discarded before an upload

    def __post_init__(self) -> None:
        self.tries_before = {p: e["tries"] for p, e in self.pending.items()}

    @property
    def total(self) -> int:
        return sum(self.uploaded.values()) + sum(e["size"] for e in self.failed.values()) \
            + sum(e["size"] for e in self.pending.values())

    def done_bytes(self) -> int:
        """Bytes uploaded, counting what the uploads under way have sent."""
        return sum(self.uploaded.values()) + sum(e["done"] for e in self.pending.values()
                                                 if e["state"] == "uploading")

    def update(self, status: Status) -> list[str]:
        """Take a new status document; lines for the files that were settled."""
        queue = {e["path"]: e for e in status["queue"]}
        done, unnamed = uploaded_since(self.seen, status)
        self.seen = status["uploaded"]
        done_paths = {u["path"] for u in done}
        lines = []
        for path in list(self.pending):
            entry = queue.get(path)
            # More uploads than the ring keeps since the last reading: a file gone from the
            # queue is then taken as uploaded (the ring holds 100; a sync polls every 0.5 s).
            if entry is None and (path in done_paths or unnamed):
                self.uploaded[path] = self.pending.pop(path)["size"]
                lines.append(f"uploaded {path} ({human(self.uploaded[path])})")
            elif entry is None:
                self.dropped.add(path)
                del self.pending[path]
                lines.append(f"not uploaded {path}: deleted or discarded meanwhile")
            elif self._gave_up(entry):
                self.failed[path] = entry
                del self.pending[path]
                lines.append(f"failed {path}: {entry['error']}")
            else:
                self.pending[path] = entry
        return lines

    def _gave_up(self, entry: Entry) -> bool:
        tries = entry["tries"] - self.tries_before[entry["path"]]
        return entry["state"] == "lost" or entry["state"] == "failed" and tries > 0 \
            or entry["state"] == "retrying" and tries >= FSYNC_TEMP_TRIES


def sync(mountpoint: str, path: str | None, read: Reader, out: TextIO) -> int:
    mountpoint = os.path.abspath(mountpoint)
    top = relative_path(mountpoint, path)
    status = read(mountpoint)
    waiting = Waiting({e["path"]: e for e in status["queue"] if is_under(e["path"], top)},
                      status["uploaded"])
    where = top or mountpoint
    if not waiting.pending:
        print(f"nothing to upload under {where}", file=out)
        return 0
    started = time.monotonic()
    try:
        os.setxattr(mountpoint, SYNC_XATTR, top.encode(errors="surrogateescape"))
    except OSError as exc:
        raise ConfigError(f"{mountpoint}: the mount does not take sync requests "
                          f"({exc.strerror})") from None
    follow = follow_live if out.isatty() else follow_lines
    follow(waiting, statuses(mountpoint, read), out,
           f"uploading {len(waiting.pending)} files ({human(waiting.total)}) under {where}")
    if waiting.pending:
        raise ConfigError(f"{mountpoint} was unmounted before every upload was done")
    for p, e in waiting.failed.items():
        print(f"mountfs: not uploaded: {p}: {e['error']}", file=sys.stderr)
    done = len(waiting.uploaded)
    print(f"{done} files uploaded ({human(sum(waiting.uploaded.values()))}) in "
          f"{time.monotonic() - started:.1f}s"
          + (f", {len(waiting.failed)} failed" if waiting.failed else "")
          + (f", {len(waiting.dropped)} deleted or discarded" if waiting.dropped else ""),
          file=out)
    return 1 if waiting.failed else 0


def follow_lines(waiting: Waiting, readings: Iterator[Status], out: TextIO,
                 header: str) -> None:
    say(out, header)
    for status in readings:
        for line in waiting.update(status):
            say(out, line)
        if not waiting.pending:
            return


def follow_live(waiting: Waiting, readings: Iterator[Status], out: TextIO,
                header: str) -> None:
    console = Console(file=out)
    bars = progress_bars(console)
    task = bars.add_task("sync", total=waiting.total, phase="")
    console.print(header)
    with Live(bars, console=console, auto_refresh=False) as live:
        for status in readings:
            for line in waiting.update(status):
                live.console.print(line)
            settled = len(waiting.uploaded) + len(waiting.failed) + len(waiting.dropped)
            files = f"{settled} of {settled + len(waiting.pending)} files"
            bars.update(task, total=waiting.total, completed=waiting.done_bytes(), phase=files)
            live.refresh()
            if not waiting.pending:
                return
