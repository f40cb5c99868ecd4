"""Transfers a driver makes in several steps (a file staged through a service's staging area,
then moved by a job it follows), with the phase each is in and the bytes sent: what `mountfs
status` shows beside the upload queue, and `mountfs umount` while it waits.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Transfer:
    """One transfer under way: `what` ("upload SYSTEM:/PATH"), its size, the bytes sent so
    far and the phase ("sending to the staging area", "job RUNNING", ...)."""

    what: str
    size: int = 0
    done: int = 0
    phase: str = ""


class Transfers:
    """The transfers of one driver under way."""

    def __init__(self) -> None:
        self._live: dict[int, Transfer] = {}
        self._ids = itertools.count()

    @contextlib.contextmanager
    def track(self, what: str, size: int = 0) -> Iterator[Transfer]:
        """A transfer listed while the block runs."""
        key, transfer = next(self._ids), Transfer(what, size)
        self._live[key] = transfer
        try:
            yield transfer
        finally:
            del self._live[key]

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"what": t.what, "size": t.size, "done": t.done, "phase": t.phase}
                for t in self._live.values()]
