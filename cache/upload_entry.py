"""One object in the write-back queue: where its upload stands, how a failure changes that, and
how `mountfs status` shows it.

The queue (cache/writeback.py) decides when an entry goes up; this owns what an entry records
between tries: the tries made, the error kept for the next fsync or close, whether it failed
for good ("failed": retried only every MAX_BACKOFF seconds and at each fsync) or lost its data
("lost": never tried again), and when it is due next.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from cache.block_reader import BlockReader
from cache.objects import CachedObject

log = logging.getLogger("cache.writeback")  # the queue's voice: one logger for its lines

MAX_BACKOFF = 60.0
# Longest wait before retrying a temporary failure once the queue is hurried (unmounting).
HURRIED_BACKOFF = 2.0


@dataclass(eq=False)
class Entry:
    obj: CachedObject
    due: float
    tries: int = 0
    sent: bool = False  # handed to a worker, not finished yet
    reader: BlockReader | None = None
    error: str = ""
    permanent: bool = False  # the last try failed in a way retrying alone will not cure
    lost: bool = False  # its data is gone from the cache: never tried again
    queued_at: float = 0.0  # trio time it was queued (for how long the oldest waits)

    @property
    def awaited(self) -> bool:
        """Whether a drain waits for it: every upload that may still succeed."""
        return not self.lost

    def failed(self, exc: Exception, now: float, *, permanent: bool, hurried: bool) -> None:
        """A try failed with `exc`: keep it for fsync and close, and retry after a backoff
        (doubling from half a second; the longest at once for a permanent failure, which
        the user may still fix)."""
        self.tries += 1
        self.error = f"{type(exc).__name__}: {exc}"
        self.obj.last_error = exc
        self.permanent = permanent
        backoff = MAX_BACKOFF if permanent else \
            min(HURRIED_BACKOFF if hurried else MAX_BACKOFF, 0.5 * 2 ** (self.tries - 1))
        self.due = now + backoff
        self._log_failure(backoff)

    def lost_data(self, exc: Exception) -> None:
        """The data to upload is gone from the cache: never tried again."""
        self.tries += 1
        self.lost, self.due = True, math.inf
        self.error = f"{type(exc).__name__}: {exc}"
        self.obj.last_error = exc
        rec = self.obj.record
        log.error("upload of %s/%s is impossible: %s; not tried again. Its data cannot be "
                  "recovered: give it up with mountfs discard", rec.bucket, rec.key, exc)

    def succeeded(self, now: float, delay: float) -> bool:
        """A try succeeded; True when the object was written meanwhile and goes up again after
        `delay`."""
        self.error, self.permanent = "", False
        if not self.obj.dirty:
            return False
        self.due = now + delay
        self.tries = 0
        return True

    def row(self, now: float, streamed_done: int | None) -> dict[str, Any]:
        """The entry in `mountfs status`; `streamed_done`: bytes of its parts sent, when it
        goes up in parts (cache/streams.py)."""
        rec = self.obj.record
        state = ("uploading" if self.sent else "lost" if self.lost
                 else "failed" if self.permanent else "retrying" if self.tries
                 else "waiting")
        # Progress: what the driver has read of the data, which it reads as it sends (the S3
        # driver a MiB at a time per part; a single PUT of up to 8 MiB reads it whole).
        reading = self.sent and self.reader is not None
        size = self.reader.size if reading and self.reader else self.obj.size
        done = self.reader.done if reading and self.reader else \
            streamed_done if self.sent and streamed_done is not None else 0
        return {
            "bucket": rec.bucket, "key": rec.key, "size": size, "done": done,
            "percent": round(100 * done / size, 1) if size else 0.0,
            "state": state, "tries": self.tries, "error": self.error,
            "next_try": None if self.sent or self.lost else round(max(0.0, self.due - now), 1),
        }

    def _log_failure(self, backoff: float) -> None:
        """One line: the file, the service's message, and what happens next."""
        rec = self.obj.record
        at = time.strftime("%H:%M:%S", time.localtime(time.time() + backoff))
        if self.permanent:
            log.error("upload of %s/%s failed (try %d): %s; retrying alone will not cure "
                      "this: tried again in %.0fs (at %s) and at each fsync of the file, kept "
                      "in the cache until then; to give it up: mountfs discard MOUNTPOINT "
                      "%s/%s", rec.bucket, rec.key, self.tries, self.error, backoff, at,
                      rec.bucket, rec.key)
        else:
            log.warning("upload of %s/%s failed (try %d): %s; retrying in %.1fs (at %s)",
                        rec.bucket, rec.key, self.tries, self.error, backoff, at)
