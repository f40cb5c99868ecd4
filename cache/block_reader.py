"""Reading block files by path, outside the trio thread: `BlockReader`, a read-only file over
a snapshot of an object's blocks, which the upload worker reads in its own thread (it gives up,
Superseded, when the object is written meanwhile), and `read_block_into`."""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from cache.errors import DataLost, Superseded
from cache.objects import CachedObject

if TYPE_CHECKING:
    from cache.blocks import BlockCache


class BlockReader:
    """A read-only file over a snapshot of an object's blocks, for the upload worker's thread."""

    def __init__(self, cache: BlockCache, obj: CachedObject, generation: int) -> None:
        self.cache, self.obj, self.generation = cache, obj, generation
        self.size = obj.size
        self.pos = 0
        # The ranges read so far, merged: an upload's progress whatever the driver's order of
        # reads (parts in parallel) and however often it reads a range again (a retried part).
        self._covered: list[tuple[int, int]] = []
        self._covered_lock = threading.Lock()

    @property
    def done(self) -> int:
        """Bytes of the object the upload has read: the progress `mountfs status` shows."""
        with self._covered_lock:
            return sum(hi - lo for lo, hi in self._covered)

    def _cover(self, lo: int, hi: int) -> None:
        with self._covered_lock:
            kept = []
            for a, b in self._covered:
                if b < lo or a > hi:
                    kept.append((a, b))
                else:
                    lo, hi = min(lo, a), max(hi, b)
            kept.append((lo, hi))
            self._covered = sorted(kept)

    def changed(self) -> bool:
        """Whether the object was written since the snapshot (the upload must start over)."""
        return self.obj.generation != self.generation

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        buf = bytearray(max(0, end - self.pos))
        return bytes(buf[:self.readinto(buf)])

    def readinto(self, buf: bytearray | memoryview) -> int:
        """Fill `buf` from the snapshot: one copy, where read() of a large part holds two."""
        out = memoryview(buf)
        start = self.pos
        end = min(self.size, start + len(out))
        bs = self.cache.block_size
        try:
            while self.pos < end:
                b = self.pos // bs
                hi = min(end, (b + 1) * bs)
                read_block_into(self.obj, b, self.pos - b * bs,
                                out[self.pos - start:hi - start])
                self.pos = hi
        except FileNotFoundError as exc:
            if not self.changed():
                raise DataLost(f"block {self.pos // bs} of {self.obj.record.key} is gone from "
                               f"the cache ({exc.filename})") from None
        except OSError:
            if not self.changed():
                raise
        if self.changed():
            raise Superseded(self.obj.record.key)
        if end > start:
            self._cover(start, end)
        return end - start

    def close(self) -> None:
        pass


def read_block_into(obj: CachedObject, n: int, lo: int, out: memoryview) -> None:
    """Bytes [lo, lo + len(out)) of block n into `out` (a hole reads as zeros), opened by
    path: safe in a worker thread (the upload)."""
    got = 0
    have = obj.blocks.get(n, 0)  # once: the trio thread may drop the block meanwhile
    if lo < have:
        with open(obj.block_path(n), "rb", buffering=0) as f:
            f.seek(lo)
            got = f.readinto(out[:have - lo]) or 0
    out[got:] = bytes(len(out) - got)
