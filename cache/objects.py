"""The state the cache keeps per object: its journal record, which blocks are on disk and how
long each is, the write generation the uploads snapshot, the pins, opens and read-ahead
position. Plain data: cache.blocks and its helpers change it, on the trio thread."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from cache.journal import ObjectRecord


@dataclass(eq=False)
class CachedObject:
    record: ObjectRecord
    blocks_dir: Path
    blocks: dict[int, int] = field(default_factory=dict)  # block number -> bytes on disk
    generation: int = 0
    uploaded_generation: int = -1
    open_count: int = 0
    pins: int = 0  # writers between fetching blocks and writing them: not evictable
    detached: bool = False  # unlinked: never uploaded, deleted once closed
    last_error: BaseException | None = None
    attempt_done: trio.Event = field(default_factory=trio.Event)
    next_read: int = -1  # where a sequential reader reads next
    streak: int = 0  # sequential reads in a row
    readahead_to: int = 0  # first block no read-ahead has been started for
    # When this cache last learned the server's version from a write of its own (an upload,
    # a copy): server answers to requests begun before then are older news.
    version_at: float = -1e18
    # Dirty at load: an upload of it may have been under way when the last process died, and
    # may have left an unfinished multipart upload on the server to abort.
    recovered: bool = False
    # With uploads in parts (cache/streams.py): the generation of each block's last write,
    # and the upload in parts under way (a Stream).
    written: dict[int, int] = field(default_factory=dict)
    stream: Any = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def size(self) -> int:
        return self.record.size

    @property
    def dirty(self) -> bool:
        return self.record.dirty

    def block_path(self, n: int) -> Path:
        return self.blocks_dir / f"{self.record.id}.{n}"
