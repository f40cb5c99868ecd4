"""The table of open block-file descriptors (`FdCache`): a read or write of a cached block is
one pread/pwrite on a kept descriptor instead of building a path and open + close. Bounded by
a share of the process's descriptor limit. Trio thread only (see cache.blocks for when a
descriptor must be closed)."""
from __future__ import annotations

import os
import resource

from cache.objects import CachedObject

# Block files kept open; at most a quarter of the process's descriptor limit (see FdCache).
MAX_OPEN_FDS = 1024


def fd_limit(wanted: int) -> int:
    """`wanted`, but at most a quarter of RLIMIT_NOFILE: sockets, the FUSE device and worker
    threads' files need the rest."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        soft = 1024
    if soft == resource.RLIM_INFINITY:
        return max(1, wanted)
    return max(1, min(wanted, soft // 4))


class FdCache(dict[tuple[CachedObject, int], int]):
    """Open descriptors of block files by (object, block), at most `limit` of them; past it
    the one opened first is closed (first in, first out: a warm read's lookup is then one
    dict lookup in C, `self[obj, n]`, with no reordering; a descriptor closed while its block
    is still read costs one open to get back).

    Used only on the trio thread. The descriptors are O_RDWR, opened on demand (a write to a
    new block creates its file); the cache never decides whether a block exists, its callers
    do (see the module docstring for when a descriptor must be closed). A missing file raises
    FileNotFoundError as an open by path would.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __missing__(self, key: tuple[CachedObject, int]) -> int:
        return self._open(key, os.O_RDWR)

    def create(self, obj: CachedObject, n: int) -> int:
        """The descriptor of block n's file, made if missing (a write)."""
        fd = self.get((obj, n))
        return fd if fd is not None else self._open((obj, n), os.O_RDWR | os.O_CREAT)

    def _open(self, key: tuple[CachedObject, int], flags: int) -> int:
        obj, n = key
        fd = os.open(f"{obj.blocks_dir}/{obj.record.id}.{n}", flags, 0o600)
        self[key] = fd
        if len(self) > self.limit:
            os.close(self.pop(next(iter(self))))
        return fd

    def close(self, obj: CachedObject, n: int) -> None:
        fd = self.pop((obj, n), None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        while self:
            os.close(self.popitem()[1])
