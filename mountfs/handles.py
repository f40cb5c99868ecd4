"""Open file and directory handles: what each open() or opendir() gave the kernel."""
from __future__ import annotations

import errno
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from itertools import count

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
    # its entries join `entries` as soon as it comes, so that the stat-ahead reads on into it
    # before the program is there; a failure waits for `more` to raise it. One at a time.
    _next: trio.Event | None = None
    _failure: BaseException | None = None
    _fetching: trio.CancelScope | None = None

    async def more(self) -> bool:
        """Make sure the page after `entries` is in it; False at the end of the listing."""
        have = len(self.entries)
        if self._next is not None:
            await self._next.wait()
            self._next, failure, self._failure = None, self._failure, None
            if failure is not None:
                raise failure  # a failure of the fetch ahead is this read's
        if len(self.entries) == have and not self.done:
            self._add(await anext(self.pages, None))
        return not self.done

    def _add(self, page: list[tuple[str, Node]] | None) -> None:
        if page is None:
            self.done = True
        else:
            self.entries.extend(page)

    def fetch_ahead(self, start: Callable[[Callable[[], Awaitable[None]]], bool]) -> None:
        """Ask for the next page now, in a task `start` runs, unless the listing is over or
        a page is on its way: `ls -l` stats a page's entries before it reads on, and the
        server's next page (0.3-0.7 s on s3rver for a prefix of 10,000) then waited for the
        stats to end. (Once a page came, the next is asked for at the next readdir: the
        reads of the stat-ahead went dry at each page's end while the program finished it,
        and on s3rver nothing was under way for ~30 ms before each of the 10 pages.)"""
        if self._next is not None:
            if not self._next.is_set() or self._failure is not None:
                return  # under way, or failed: `more` raises it
            self._next = None
        if self.done:
            return
        self._next = trio.Event()
        if not start(self._fetch):
            self._next = None

    async def _fetch(self) -> None:
        done = self._next
        assert done is not None
        came = False
        try:
            with trio.CancelScope() as self._fetching:
                try:
                    self._add(await anext(self.pages, None))
                except Exception as exc:  # the reader's, when it asks for the next page
                    self._failure = exc
                came = True
        finally:
            if not came:  # stopped: the directory was closed
                self._failure = trio.ClosedResourceError("directory closed")
            done.set()

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
