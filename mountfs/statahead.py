"""Stat-ahead: the metadata of a directory's entries read in parallel while a program reads the
directory and stats what it read (`ls -l`, `du`, rsync, a file manager), so that each stat
finds its entry's attributes read or under way instead of waiting for a request of its own.

A listing that carries no metadata (S3) leaves each entry's attributes to one read
(`Listings.complete`, a HEAD). Each open directory handle has a `Window` on the entries it
has (the pages fetched so far, in readdir order). A stat of one of them shows that the program
stats what it lists (unlike `find` or a plain `ls`, which then cost no request per entry), and
starts reads of the `ahead` entries after it; each later stat moves that edge. Reads run ahead
of the program's stats, never far ahead of them: what is read is used within moments, not
after its TTL, and a huge directory is read only as far as its reader got, plus `ahead`. The
reads are made, in the order they were asked for, by `parallel` worker tasks
(`Features.parallel_metadata_reads`, about the driver's connection pool) across directories: a stat
only queues reads, and waits for its own entry alone. (Workers, not a task per read behind a
limiter: `ls -l` of a large directory makes one read per entry, and spawning a task and
passing a limiter cost as much of the mount's one thread as the rest of a HEAD's handling.) A
read queued here is claimed in the listings' registry (`Listings.claim`), so every stat of that
entry waits for it and no entry is read twice. Closing the handle drops the reads not yet
begun (a stat still waiting for one reads the entry itself); those under way finish.

Once reads were started, readdir hands out the entries they cover only when they are read
(`listed`): with their attributes and a cache time the kernel answers the program's stats
itself, without a lookup each, and readdir moves the reads ahead in their stead.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from mountfs.nodes import Node


@dataclass(eq=False)
class Window:
    """What one directory handle has handed out, and how far reads were started."""

    directory: Node
    entries: list[tuple[str, Node]]  # the handle's own list, growing as pages come
    started: int = 0  # reads were started (or found needless) below this index
    closed: bool = False
    positions: dict[Node, int] = field(default_factory=dict)
    indexed: int = 0  # entries[:indexed] are in positions

    def position(self, node: Node) -> int | None:
        for i in range(self.indexed, len(self.entries)):
            self.positions.setdefault(self.entries[i][1], i)
        self.indexed = len(self.entries)
        return self.positions.get(node)


class StatAhead:
    def __init__(self, claim: Callable[[Node], trio.Event | None],
                 read: Callable[[Node, trio.Event], Awaitable[None]],
                 forgo: Callable[[Node, trio.Event], None],
                 under_way: Callable[[Node], trio.Event | None], parallel: int) -> None:
        self._claim = claim  # registers a read of the node as the one to wait for
        self._under_way = under_way  # the event of the node's read under way, if any
        self._read = read  # reads it (failures left for the entry's own turn), sets the event
        self._forgo = forgo  # gives a claim up unread, setting the event
        self._workers = max(1, parallel)
        # Beyond the entry stat'ed: enough to keep `parallel` reads busy, little enough that
        # what is read is soon used.
        self.ahead = 4 * self._workers
        self._nursery: trio.Nursery | None = None
        self._windows: dict[Node, list[Window]] = {}
        self._queue: deque[tuple[Window, Node, trio.Event]] = deque()  # claimed, not begun
        self._idle = trio.lowlevel.ParkingLot()  # workers waiting for the queue

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Host the reads until cancelled (the mount's nursery)."""
        async with trio.open_nursery() as nursery:
            for _ in range(self._workers):
                nursery.start_soon(self._work)
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def start(self, task: Callable[[], Awaitable[None]]) -> bool:
        """Run `task` among the reads ahead (a listing's next page, `DirHandle.fetch_ahead`);
        False when they are not hosted (yet)."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(task)
        return True

    def open(self, directory: Node, entries: list[tuple[str, Node]]) -> Window:
        window = Window(directory, entries)
        self._windows.setdefault(directory, []).append(window)
        return window

    def close(self, window: Window) -> None:
        window.closed = True
        windows = self._windows.get(window.directory, [])
        if window in windows:
            windows.remove(window)
        if not windows:
            self._windows.pop(window.directory, None)

    def stat_seen(self, node: Node) -> None:
        """The attributes of `node` are asked for: if a program is reading its directory, read
        it (unless known) and the entries after it, up to `ahead` past it (the node's own read
        is claimed before this returns)."""
        if node.parent is None or node.parent not in self._windows:
            return
        for window in self._windows.get(node.parent, ()):
            at = window.position(node)
            if at is None:
                continue
            window.started = max(window.started, at)  # the program went past the others
            self._advance(window, at + 1 + self.ahead)

    def listed(self, window: Window, at: int, node: Node) -> trio.Event | None:
        """Entry `at` of the window is about to be handed to the program (readdir). Where its
        read was started (the program stats what it lists), the event to wait for before: an
        entry handed with its attributes costs the program's stat no lookup (the kernel keeps
        them), a FUSE request fewer per entry. The reads ahead move on from it, as the
        lookups that no longer come would have moved them."""
        if at >= window.started or window.closed:
            return None
        self._advance(window, at + 1 + self.ahead)
        return None if node.meta_known else self._under_way(node)

    def _advance(self, window: Window, edge: int) -> None:
        """Start reads of the window's entries up to `edge` (those known or under way need
        none)."""
        if self._nursery is None or window.closed:
            return
        edge = min(edge, len(window.entries))
        queued = len(self._queue)
        for _, node in window.entries[window.started:edge]:
            done = self._claim(node)
            if done is not None:
                self._queue.append((window, node, done))
        window.started = max(window.started, edge)
        self._idle.unpark(count=len(self._queue) - queued)

    async def _work(self) -> None:
        """One worker: the queued reads, one at a time, oldest first."""
        while True:
            while self._queue:
                window, node, done = self._queue.popleft()
                if window.closed:
                    self._forgo(node, done)
                else:
                    await self._read(node, done)
            await self._idle.park()
