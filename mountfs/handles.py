"""Open file and directory handles: what each open() or opendir() gave the kernel."""
from __future__ import annotations

import errno
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from itertools import count

import outcome
import trio

from cache.objects import CachedObject
from mountfs.namespace import Node
from mountfs.statahead import Window


@dataclass(eq=False)
class FileHandle:
    node: Node
    obj: CachedObject
    writable: bool
    append: bool
    # Written (or truncated, or created) since its last commit: the next flush or release
    # commits it; otherwise the object's journal record already says all there is.
    uncommitted: bool = False
    # This handle began the file's data anew: it created the file, opened it with O_TRUNC or
    # truncated it to 0. Written whole, it is uploaded at once when closed with no other
    # writer left (no editor rewriting it in place is waited for).
    whole: bool = False


@dataclass(eq=False)
class DirHandle:
    """A listing being read: the entries so far, kept so that readdir offsets hold, and the
    pages still to come from the server."""

    node: Node
    pages: AsyncGenerator[list[tuple[str, Node]], None]
    entries: list[tuple[str, Node]] = field(default_factory=list)
    done: bool = False
    opened_at: float = field(default_factory=time.monotonic)  # (in node.readers while open)
    ahead: Window = field(init=False)  # the stat-ahead's view of it, set by opendir
    # The next page, asked for while the program still goes through this one (`fetch_ahead`):
    # set once it came (or failed); `more` takes it. One page ahead at most.
    _next: trio.Event | None = None
    _fetched: outcome.Outcome | None = None
    _fetching: trio.CancelScope | None = None

    async def more(self) -> bool:
        """Take the next page; False at the end of the listing."""
        if not self.done:
            if self._next is not None:
                await self._next.wait()
                fetched, self._next, self._fetched = self._fetched, None, None
                assert fetched is not None
                page = fetched.unwrap()  # a failure of the fetch ahead is this read's
            else:
                page = await anext(self.pages, None)
            if page is None:
                self.done = True
            else:
                self.entries.extend(page)
        return not self.done

    def fetch_ahead(self, start: Callable[[Callable[[], Awaitable[None]]], bool]) -> None:
        """Ask for the next page now, in a task `start` runs, unless the listing is over or
        a page is already on its way: `ls -l` stats a page's entries before it reads on, and
        the server's next page (0.3-0.7 s on s3rver for a prefix of 10,000) then waited for
        the stats to end."""
        if self.done or self._next is not None:
            return
        self._next = trio.Event()
        if not start(self._fetch):
            self._next = None

    async def _fetch(self) -> None:
        assert self._next is not None
        try:
            with trio.CancelScope() as self._fetching:
                try:
                    self._fetched = outcome.Value(await anext(self.pages, None))
                except Exception as exc:  # the reader's, when it takes the page
                    self._fetched = outcome.Error(exc)
        finally:
            if self._fetched is None:  # stopped: the directory was closed
                self._fetched = outcome.Error(trio.ClosedResourceError("directory closed"))
            self._next.set()

    async def aclose(self) -> None:
        if self._next is not None:  # a fetch ahead: stopped, and its end awaited
            if self._fetching is not None:
                self._fetching.cancel()
            await self._next.wait()
        await self.pages.aclose()


class HandleTable:
    def __init__(self) -> None:
        self._handles: dict[int, FileHandle | DirHandle] = {}
        self._ids = count(1)

    def add(self, handle: FileHandle | DirHandle) -> int:
        fh = next(self._ids)
        self._handles[fh] = handle
        return fh

    def file(self, fh: int) -> FileHandle:
        handle = self._handles.get(fh)
        if not isinstance(handle, FileHandle):
            raise OSError(errno.EBADF, f"no open file {fh}")
        return handle

    def dir(self, fh: int) -> DirHandle:
        handle = self._handles.get(fh)
        if not isinstance(handle, DirHandle):
            raise OSError(errno.EBADF, f"no open directory {fh}")
        return handle

    def writers(self, node: Node, besides: FileHandle) -> int:
        """Writable handles open on `node` other than `besides`."""
        return sum(1 for handle in self._handles.values()
                   if isinstance(handle, FileHandle) and handle.writable
                   and handle.node is node and handle is not besides)

    def pop_file(self, fh: int) -> FileHandle:
        handle = self.file(fh)
        del self._handles[fh]
        return handle

    def pop_dir(self, fh: int) -> DirHandle:
        handle = self.dir(fh)
        del self._handles[fh]
        return handle
