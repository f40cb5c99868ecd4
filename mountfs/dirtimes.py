"""Directory times that move when entries change, persisted to the directory's marker.

A directory's mtime and ctime move when an entry is created, removed or renamed in it (what
`make`, rsync and Python's importlib, whose FileFinder rereads a directory only when its mtime
changes, look at). This mount sees the change at once; the store keeps it where the directory
has a marker object (`dir/`, which holds its mode and owner), written once the directory has
been quiet for a delay, so that copying a thousand files into it costs one metadata update,
not a thousand. A directory without a marker (a prefix of other keys) keeps the change in
memory only: making a marker for it would add an object other tools list.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import trio

from mountfs.nodes import Node

log = logging.getLogger(__name__)


class DirTimes:
    def __init__(self, save: Callable[[Node], Awaitable[None]], delay: float) -> None:
        self._save = save  # stores a directory's times on its marker
        self.delay = delay
        self._due: dict[Node, float] = {}  # directory -> when to save it
        self._next_wake = math.inf  # when `run` wakes up by itself
        self._wake = trio.Event()

    def touch(self, node: Node) -> None:
        """Entries of `node` changed: save its times after a quiet delay. Called for every
        create in a copy: `run` is woken only when this save is due before it wakes anyway
        (a directory touched again is only due later)."""
        due = self._due[node] = trio.current_time() + self.delay
        if due < self._next_wake:
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            now = trio.current_time()
            for node, due in list(self._due.items()):
                if due <= now:
                    del self._due[node]
                    await self._save_quietly(node)
            self._next_wake = min(self._due.values(), default=math.inf)
            with trio.move_on_at(self._next_wake):
                await self._wake.wait()
            self._wake = trio.Event()

    async def flush(self) -> None:
        """Save every pending directory now (the mount is ending)."""
        pending, self._due = self._due, {}
        for node in pending:
            await self._save_quietly(node)

    async def _save_quietly(self, node: Node) -> None:
        try:
            await self._save(node)
        except Exception as exc:  # the times stay right in this mount: not worth an error
            log.info("could not store the times of directory %s: %s", "/".join(node.path()),
                     exc)
