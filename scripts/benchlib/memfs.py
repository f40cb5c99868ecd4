"""The pyfuse3 ceiling of workload (e): a minimal filesystem with one read-only file, `file`,
served from memory. What a pyfuse3 filesystem can do at best on this machine.

    python3 memfs.py MOUNTPOINT SIZE      (foreground; unmount with fusermount3 -u)
"""
from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

FILE_INODE = pyfuse3.ROOT_INODE + 1
NAME = b"file"


class MemFs(pyfuse3.Operations):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.data = bytes(size)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        if inode == pyfuse3.ROOT_INODE:
            attrs.st_mode, attrs.st_size = stat.S_IFDIR | 0o755, 0
        elif inode == FILE_INODE:
            attrs.st_mode, attrs.st_size = stat.S_IFREG | 0o644, len(self.data)
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attrs.st_ino = inode
        attrs.st_uid, attrs.st_gid = os.getuid(), os.getgid()
        attrs.st_blksize, attrs.st_blocks = 4096, -(-attrs.st_size // 512)
        attrs.attr_timeout = attrs.entry_timeout = 300
        return attrs

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE and name == NAME:
            return await self.getattr(FILE_INODE)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, await self.getattr(FILE_INODE), 1)

    async def releasedir(self, fh: int) -> None:
        pass

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.data[off:off + size]

    async def release(self, fh: int) -> None:
        pass


def main() -> int:
    mountpoint, size = sys.argv[1], int(sys.argv[2])
    options = set(pyfuse3.default_options) | {"fsname=bench-memfs", "ro"}
    pyfuse3.init(MemFs(size), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
