"""Writing block files: a fetched range streamed into consecutive block files as it arrives
(`BlockSink`, on the driver's thread), whole blocks written by a worker thread (`write_files`),
the pwrite that never writes short silently, and the disk given to a new block file at once.
No state: cache.fetches decides what goes where."""
from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

from cache.errors import ObjectChanged

# The blocks a cached object is kept in (`mountfs mount --block-size`). Each block file costs
# an inode's creation and its bookkeeping, which bound a cold read on a busy machine: 1 GiB
# read cold from s3rver on 2 cores, 5 paired rounds, median ratio to boto3's GETs 0.85 with
# 1 MiB blocks, 0.88 with 2, 0.96 with 4, 0.92 with 8 (the mount's CPU 1.61, 1.48, 1.35, 1.46 s).
# A cold random read fetches a whole block: 4 MiB, as JuiceFS's blocks.
DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def allocate(fd: int, length: int) -> None:
    """Give the new, empty file `fd` its `length` bytes of disk at once (fallocate: the file is
    then that long, zeros until written). Why: ext4's delayed allocation reserves each page as
    it is written (~11 % of the mount's CPU under perf on a cold read); pages written into an
    allocated range skip that. 1 GiB read cold from s3rver, 12 paired rounds: the mount's CPU
    per GiB 1.08 s against 1.13, throughput +3 % (2026-12-05). On a file system without
    fallocate the writes allocate as before (not glibc's posix_fallocate, which would write
    the zeros instead)."""
    if _libc.fallocate(fd, 0, 0, length) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(code, os.strerror(code))


def create(path: str, length: int) -> int:
    """A new file at `path` (replacing any) for `length` bytes of a block, opened to write
    (and read: a repeated fetch checks what it wrote)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        allocate(fd, length)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_files(files: list[tuple[str, memoryview]]) -> None:
    """Create each path holding its data (a worker thread writes fetched blocks with this)."""
    for path, data in files:
        fd = create(path, len(data))
        try:
            pwrite_all(fd, data, 0)
        finally:
            os.close(fd)


class BlockSink:
    """A ranged read's body written into consecutive block files as it arrives: byte p of the
    range goes to file p // block_size at p % block_size. Called from the driver's thread
    (see `Backend.read_into`); each call is one pwrite per block it spans, no copy in Python,
    and a file is created when its first byte comes (on that thread, not the trio thread).
    A file is given the disk for its part of the range when created (`allocate`).
    Once a file holds all its bytes, `whole(index, length)` is called on the same thread: the
    block may go into place, and be read, before the rest of the range comes. It is never
    written again: a try repeated from the range's start only checks that it brings the same
    bytes (ObjectChanged if not: the object was replaced between the two tries).
    A context manager: the descriptors are closed on exit."""

    def __init__(self, paths: list[str], block_size: int, length: int,
                 whole: Callable[[int, int], None] | None = None) -> None:
        self.paths, self.block_size, self.length = paths, block_size, length
        self.whole = whole
        self.fds: dict[int, int] = {}  # block index in the range -> its file, once written
        self.complete: set[int] = set()  # the blocks whose files hold all their bytes

    def __enter__(self) -> BlockSink:
        return self

    def __exit__(self, *_: object) -> None:
        while self.fds:
            os.close(self.fds.popitem()[1])

    def __call__(self, pos: int, data: bytes | memoryview) -> None:
        view, bs = memoryview(data), self.block_size
        while view:
            n, inside = divmod(pos, bs)
            if n >= len(self.paths):
                raise ValueError(f"a read wrote past its range (at {pos})")
            size = min(bs, self.length - n * bs)
            piece = view[:bs - inside]
            if n in self.complete:
                if os.pread(self.fds[n], len(piece), inside) != piece:
                    raise ObjectChanged(f"a repeated read brought other bytes at {pos}")
            else:
                fd = self.fds.get(n)
                if fd is None:
                    fd = self.fds[n] = create(self.paths[n], size)
                pwrite_all(fd, piece, inside)
                if inside + len(piece) == size:
                    self.complete.add(n)
                    if self.whole is not None:
                        self.whole(n, size)
            pos += len(piece)
            view = view[len(piece):]

    def cut(self, length: int) -> None:
        """Make the files not yet whole hold exactly the range's first `length` bytes (a read
        that came back short leaves them as long as the range; a try cut short and repeated
        as a shorter read may have written more)."""
        for n, fd in self.fds.items():
            if n not in self.complete:
                os.ftruncate(fd, max(0, min(self.block_size, length - n * self.block_size)))


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite every byte of `data` (a regular file writes short only when the disk is full,
    and then the retry raises ENOSPC instead of losing the tail silently)."""
    done = os.pwrite(fd, data, offset)
    while done < len(data):
        done += os.pwrite(fd, memoryview(data)[done:], offset + done)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
