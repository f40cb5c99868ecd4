"""The block size of a cache dir, recorded in it (`<dir>/block-size`): block n of an object is
bytes [n*B, (n+1)*B) only at the B it was written with, so the blocks of objects not yet
uploaded are read at that size whatever a later mount asks for. A dir holding clean blocks
only is a cache like any other: those are dropped and the dir takes the size asked for."""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

BLOCK_SIZE_FILE = "block-size"
# What a dir from before the record was written with: every mountfs before it used 1 MiB
# blocks (`--block-size` is an unlisted knob).
UNRECORDED_BLOCK_SIZE = 1024 * 1024


def settle_block_size(directory: Path, wanted: int, holds_blocks: bool,
                      holds_dirty: bool) -> tuple[int, bool]:
    """The block size the dir's blocks are read and written at from now on, and whether the
    (clean) blocks on disk must be dropped first. Recorded durably before this returns: a
    block written at a size the dir does not name would be read at another after a crash."""
    recorded = recorded_block_size(directory)
    on_disk = recorded or (UNRECORDED_BLOCK_SIZE if holds_blocks else wanted)
    if on_disk != wanted and holds_dirty:
        log.warning("%s holds files not uploaded yet in blocks of %d KiB: this mount keeps "
                    "that size (%d KiB from a mount after they are uploaded)",
                    directory, on_disk // 1024, wanted // 1024)
        size, drop = on_disk, False
    else:
        size, drop = wanted, on_disk != wanted and holds_blocks
    if recorded != size:
        try:
            record_block_size(directory, size)
        except OSError as e:
            # A full disk must not keep the mount from starting (the journal rides it out
            # too). The dir goes on at the size it names without a record or with its old
            # one, so blocks written now are read at the same size after a crash.
            kept = recorded or UNRECORDED_BLOCK_SIZE
            log.warning("%s: cannot record the block size (%s): this mount uses %d KiB "
                        "blocks, the size the dir already names", directory, e, kept // 1024)
            return kept, False
    return size, drop


def recorded_block_size(directory: Path) -> int | None:
    path = directory / BLOCK_SIZE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    if text.strip().isdigit() and int(text) > 0:
        return int(text)
    log.warning("%s is not a block size (%r): taken as missing", path, text[:40])
    return None


def record_block_size(directory: Path, block_size: int) -> None:
    tmp = directory / (BLOCK_SIZE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.write(fd, f"{block_size}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.rename(tmp, directory / BLOCK_SIZE_FILE)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
