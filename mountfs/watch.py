"""`mountfs status --watch`: the status document of a running mount, followed live.

On a terminal a view redrawn in place (rich's Live and Progress): a bar per upload, download
and staged step under way, with bytes, rate, time left and phase; the queue, failed uploads and
the cache's use against its cap. Piped, no control codes: one timestamped line per event (an
upload queued, started, done or failed, a download started or done, a step's new phase) and a
queue line when the counts change, or every QUEUE_LINE_EVERY seconds. The events come from the
difference between two status documents, so the mount needs nothing new to be watched.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (BarColumn, DownloadColumn, Progress, ProgressBar, TaskID,
                           TextColumn, TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table
from rich.text import Text

from mountfs.errors import ConfigError
from mountfs.sizes import human

POLL = 0.5  # seconds between two readings of the status document
QUEUE_LINE_EVERY = 30.0  # seconds: a piped watch says how the queue stands at least this often

Status = dict[str, Any]
Reader = Callable[[str], Status]


@dataclass(frozen=True)
class Moving:
    """One transfer under way, as the views show it."""

    kind: str  # "upload", "download", or "step" (a driver's staged transfer)
    name: str  # the path on the mount, or what the driver calls the step
    size: int
    done: int
    phase: str = ""


def moving(status: Status) -> dict[tuple[str, str], Moving]:
    """What is under way in `status`, by (kind, name)."""
    found = [Moving("upload", e["path"], e["size"], e["done"])
             for e in status["queue"] if e["state"] == "uploading"]
    found += [Moving("download", d["path"], d["size"], d["done"])
              for d in status.get("downloads", [])]
    found += [Moving("step", t["what"], t["size"], t["done"], t["phase"] or "starting")
              for t in status.get("transfers", [])]
    return {(m.kind, m.name): m for m in found}


def statuses(mountpoint: str, read: Reader, every: float = POLL) -> Iterator[Status]:
    """The mount's status every `every` seconds, until it is unmounted (the first reading's
    error, a mount point that is none, is raised: bad input)."""
    status = read(mountpoint)
    while True:
        yield status
        time.sleep(every)
        try:
            status = read(mountpoint)
        except ConfigError:
            return


def follow(mountpoint: str, read: Reader, out: TextIO) -> int:
    """Watch until Ctrl-C or the unmount; live on a terminal, event lines otherwise."""
    try:
        if out.isatty():
            LiveView(Console(file=out)).run(statuses(mountpoint, read))
        else:
            events = EventLines(out)
            for status in statuses(mountpoint, read):
                events.show(status)
            events.say(f"{mountpoint} is no longer mounted")
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: Live has put the cursor back
    except BrokenPipeError:
        pass  # `| head`: the reader has seen enough
    return 0


# ---- the live view -----------------------------------------------------------------------------


def progress_bars(console: Console) -> Progress:
    """Bars whose rate and time left rich estimates from the successive byte counts."""
    return Progress(TextColumn("{task.description}"), BarColumn(),
                    DownloadColumn(binary_units=True), TransferSpeedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[phase]}"),
                    console=console, auto_refresh=False)


class Bars:
    """A rich Progress with one task per transfer under way, added and removed as they come
    and go."""

    ARROWS = {"upload": "↑", "download": "↓", "step": "⋯"}

    def __init__(self, console: Console) -> None:
        self.progress = progress_bars(console)
        self._tasks: dict[tuple[str, str], TaskID] = {}

    def update(self, now: dict[tuple[str, str], Moving]) -> None:
        for gone in set(self._tasks) - set(now):
            self.progress.remove_task(self._tasks.pop(gone))
        for ident, m in now.items():
            task = self._tasks.get(ident)
            if task is None:
                task = self._tasks[ident] = self.progress.add_task(
                    f"{self.ARROWS[m.kind]} {m.name}", total=m.size or None, phase=m.phase)
            self.progress.update(task, total=m.size or None, completed=m.done, phase=m.phase)


class LiveView:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Bars(console)

    def run(self, readings: Iterator[Status]) -> None:
        with Live(console=self.console, auto_refresh=False, transient=False) as live:
            for status in readings:
                self.bars.update(moving(status))
                live.update(self.render(status), refresh=True)

    def render(self, status: Status) -> Group:
        c = status["cache"]
        queue = status["queue"]
        failed = [e for e in queue if e["state"] in ("failed", "lost", "retrying")]
        head = Table.grid(padding=(0, 1))
        head.add_row(Text(f"{status['source']} on {status['mountpoint']}", style="bold"))
        counts = (f"queue: {status['queued']} files ({human(sum(e['size'] for e in queue))}), "
                  f"{sum(e['state'] == 'uploading' for e in queue)} uploading, "
                  f"{len(failed)} failing; {status['uploaded']} uploaded")
        head.add_row(Text(counts))
        cache = Table.grid(padding=(0, 1))
        cache.add_row(Text("cache"), ProgressBar(total=max(c["cap"], 1), completed=c["used"],
                                                 width=30),
                      Text(f"{human(c['used'])} of {human(c['cap'])} "
                           f"({human(c['dirty'])} not uploaded)"))
        parts: list[Any] = [head, cache]
        if self.bars.progress.tasks:
            parts.append(self.bars.progress)
        else:
            parts.append(Text("nothing under way", style="dim"))
        for e in failed[:10]:
            what_next = failure_next(e, status["mountpoint"])
            parts.append(Text(f"✗ {e['path']}: {e['error']} ({what_next})", style="red"))
        return Group(*parts)


def failure_next(entry: dict[str, Any], mountpoint: str) -> str:
    """What happens next to a failed upload, as the status entry says."""
    give_up = f"to give it up: mountfs discard {mountpoint} {entry['bucket']}/{entry['key']}"
    if entry["state"] == "lost":
        return f"its data is gone: not tried again; {give_up}"
    when = f"next try in {entry['next_try']:.0f}s" if entry.get("next_try") is not None \
        else "trying again"
    if entry["state"] == "failed":
        return f"try {entry['tries']}, {when}; {give_up}"
    return f"try {entry['tries']}, {when}"


# ---- the piped form ----------------------------------------------------------------------------


def say(out: TextIO, line: str) -> None:
    """One event's line, with the time of day."""
    # One write per line: a Ctrl-C between the text and its newline (print's two writes)
    # would leave a broken line.
    out.write(f"{time.strftime('%H:%M:%S')} {line}\n")
    out.flush()


class EventLines:
    """One line per event, found by comparing each status document with the one before."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last: Status | None = None
        self._said_queue: tuple[int, ...] | None = None
        self._said_queue_at = 0.0

    def say(self, line: str) -> None:
        say(self.out, line)

    def show(self, status: Status) -> None:
        before = self.last or {"queue": [], "downloads": [], "transfers": [],
                               "uploaded": status["uploaded"]}
        for line in changes(before, status):
            self.say(line)
        self.last = status
        counts = queue_counts(status)
        if counts != self._said_queue or time.monotonic() - self._said_queue_at \
                >= QUEUE_LINE_EVERY:
            self.say(queue_line(status))
            self._said_queue, self._said_queue_at = counts, time.monotonic()


def queue_counts(status: Status) -> tuple[int, ...]:
    states = [e["state"] for e in status["queue"]]
    return (status["queued"], states.count("uploading"), states.count("failed"),
            states.count("lost"), status["uploaded"])


def queue_line(status: Status) -> str:
    queued, uploading, failed, lost, uploaded = queue_counts(status)
    c = status["cache"]
    return (f"queue: {queued} queued, {uploading} uploading, {failed} failed, {lost} lost, "
            f"{uploaded} uploaded; cache {human(c['used'])} of {human(c['cap'])}")


def uploaded_since(count: int, status: Status) -> tuple[list[dict[str, Any]], int]:
    """The uploads `status` counts past the `count`-th, as its ring of recent ones names
    them, and how many more there were than the ring keeps (so whose names are unknown)."""
    done = [u for u in status.get("recent", []) if u["n"] > count]
    return done, max(0, status["uploaded"] - count - len(done))


def changes(before: Status, after: Status) -> list[str]:
    """The events between two status documents, one line each."""
    lines: list[str] = []
    old = {e["path"]: e for e in before["queue"]}
    new = {e["path"]: e for e in after["queue"]}
    for name, e in new.items():
        was = old.get(name)
        if was is None:
            lines.append(f"queued {name} ({human(e['size'])})")
        if e["state"] == "uploading" and (was is None or was["state"] != "uploading"):
            lines.append(f"upload started {name} ({human(e['size'])})")
        if e["tries"] > (was["tries"] if was else 0) and e["error"]:
            what_next = failure_next(e, after["mountpoint"])
            lines.append(f"upload failed {name}: {e['error']} ({what_next})")
    done, missed = uploaded_since(before["uploaded"], after)
    if missed > 0:
        lines.append(f"{missed} more uploaded")
    lines.extend(f"uploaded {u['path']} ({human(u['size'])})" for u in done)
    uploaded = {u["path"] for u in done}
    lines.extend(f"left the queue {name} ({human(e['size'])})"
                 for name, e in old.items() if name not in new and name not in uploaded)
    was_moving, now_moving = moving(before), moving(after)
    for ident, m in now_moving.items():
        if m.kind == "upload":
            continue  # said above, with the queue
        prior = was_moving.get(ident)
        if prior is None:
            lines.append(f"{m.kind} started {m.name} ({human(m.size)})"
                         + (f": {m.phase}" if m.phase else ""))
        elif m.phase != prior.phase:
            lines.append(f"{m.kind} {m.name}: {m.phase}")
    for ident, m in was_moving.items():
        if m.kind != "upload" and ident not in now_moving:
            lines.append(f"{m.kind} done {m.name}")
    return lines
