"""The pyfuse3 adapter: unpacks each FUSE request, calls the namespace and cache, maps errors.

Every handler's exceptions go through `fuse_error`, the one place an exception becomes an
errno (through mountfs.errors.to_errno): by the `fuse_errors` decorator, or, for read, the
hottest handler, by its own `try`. release and forget never fail.
"""
from __future__ import annotations

import collections
import errno
import functools
import json
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from mountfs.errors import InvalidArgument, NotPermitted, ReadOnly, to_errno
from mountfs.handles import DirHandle, FileHandle, HandleTable
from mountfs.namespace import Namespace, Node
from mountfs.nodes import NAME_MAX
from mountfs.status import DISCARD_XATTR, FLUSH_XATTR, STATUS_XATTR, SYNC_XATTR, Status

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR
FUSE_REQUEST_MAX = 1024 * 1024  # the most a read or write request carries (256 pages)
NODE_KINDS = frozenset({stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK})
# Entries one readdir reply hands out at most (see readdir).
READDIR_REPLY_ENTRIES = 64


def fuse_errors(fn: F) -> F:
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: Any) -> Any:
        args[0].requests[name] += 1
        try:
            return await fn(*args)
        except Exception as exc:
            raise fuse_error(fn.__name__, args[1:3], exc) from None
    return wrapper  # type: ignore[return-value]


def fuse_error(operation: str, args: tuple[Any, ...], exc: Exception) -> pyfuse3.FUSEError:
    """What the kernel is answered for `exc`, raised by `operation` called with `args`."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    code = to_errno(exc)
    log.debug("%s%r -> %s: %s", operation, args, errno.errorcode.get(code), exc)
    return pyfuse3.FUSEError(code)


def decode_name(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidArgument("names must be UTF-8 to be stored as keys") from None


class Operations(pyfuse3.Operations):
    def __init__(self, ns: Namespace, status: Status, block_size: int,
                 upload_on_close: bool = False) -> None:
        super().__init__()
        self.initialized = trio.Event()  # the kernel's INIT exchange is under way or done
        self.ns = ns
        self.cache = ns.cache
        self.queue = ns.queue
        self.status = status
        self.block_size = block_size
        # close(2) of a writer returns once its file is uploaded (pipelines handing the object
        # on as soon as `cp` returns), with the upload's error as close's.
        self.upload_on_close = upload_on_close
        self.handles = HandleTable()
        # FUSE requests by operation, those answered through `fuse_errors` (all but read,
        # release, releasedir, fsyncdir and forget): for the metrics, and for tests of what
        # programs cost.
        self.requests: collections.Counter[str] = collections.Counter()

    def init(self) -> None:
        self.initialized.set()

    # ---- attributes ------------------------------------------------------------------------

    def entry(self, node: Node) -> pyfuse3.EntryAttributes:
        a = node.attrs
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.inode
        # Defaults from a listing without metadata, or a size that is a stand-in: the kernel
        # must ask again, and get them.
        e.entry_timeout = e.attr_timeout = self.ns.ttl if node.meta_known and node.sized else 0
        e.st_mode = a.mode
        # Directories report 1 (as btrfs: "unknown"), which find and fts take as "count not".
        e.st_nlink = 0 if node.unlinked else 1
        e.st_uid, e.st_gid = a.uid, a.gid
        e.st_rdev = a.rdev
        e.st_size = 0 if node.is_dir else node.size
        # A program's I/O size: past a FUSE request's 1 MiB it gains nothing (Python buffers
        # every open file at it).
        e.st_blksize = min(self.block_size, FUSE_REQUEST_MAX)
        e.st_blocks = (e.st_size + 511) // 512
        e.st_mtime_ns, e.st_ctime_ns, e.st_atime_ns = a.mtime_ns, a.ctime_ns, a.atime_ns
        return e

    async def _node(self, inode: int) -> Node:
        """The node, with the attributes of its metadata (see Namespace.complete)."""
        return await self.ns.complete(self.ns.get(inode))

    def _lookup_reply(self, node: Node) -> pyfuse3.EntryAttributes:
        node.lookups += 1
        return self.entry(node)

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        try:
            text = decode_name(name)
        except InvalidArgument:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        node = await self.ns.lookup(self.ns.get(parent_inode), text)
        return self._lookup_reply(await self.ns.complete(node))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.ns.forget(inode, count)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.entry(await self.ns.getattr(self.ns.get(inode)))

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self._node(inode)  # the attributes not changed here are stored too
        now = time.time_ns()
        if fields.update_size:
            if fh is not None:
                handle = self.handles.file(fh)
                self.ns.check_size(attr.st_size)
                await self.cache.truncate(handle.obj, attr.st_size)
                handle.uncommitted = True
                handle.whole = handle.whole or attr.st_size == 0
                node.size = attr.st_size
                node.attrs.modified(now)
            else:
                await self.ns.truncate(node, attr.st_size)
        a = node.attrs
        before = (a.mode, a.uid, a.gid, a.mtime_ns, a.atime_ns)
        if fields.update_mode:
            a.mode = stat.S_IFMT(a.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            a.uid = attr.st_uid
        if fields.update_gid:
            a.gid = attr.st_gid
        if fields.update_mtime:
            a.mtime_ns = attr.st_mtime_ns
        if fields.update_atime:
            a.atime_ns = attr.st_atime_ns
        # Values equal to the current ones (rsync's fchmod to the mode it created the file
        # with) are no change: nothing to store.
        if (a.mode, a.uid, a.gid, a.mtime_ns, a.atime_ns) != before:
            node.attrs.changed(now)  # utimensat moves ctime too
            await self.ns.save_attrs(node)
        return self.entry(node)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.ns.readlink(self.ns.get(inode))

    # ---- names -----------------------------------------------------------------------------

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self.ns.mkdir(self.ns.get(parent_inode), decode_name(name), mode,
                                   ctx.uid, ctx.gid)
        return self._lookup_reply(node)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self.ns.symlink(self.ns.get(parent_inode), decode_name(name), target,
                                     ctx.uid, ctx.gid)
        return self._lookup_reply(node)

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        # FIFOs, sockets and device nodes are empty objects whose mode says what they are (as
        # s3fs stores them); the kernel gives them their behaviour, never asking the mount.
        if stat.S_IFMT(mode) not in NODE_KINDS:
            raise NotPermitted(f"mknod of file type {stat.S_IFMT(mode):#o}")
        node = await self.ns.create(self.ns.get(parent_inode), decode_name(name), mode,
                                    ctx.uid, ctx.gid, rdev)
        self.ns.commit(node)
        return self._lookup_reply(node)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise NotPermitted("object stores have no hard links")

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.ns.unlink(self.ns.get(parent_inode), decode_name(name))

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.ns.rmdir(self.ns.get(parent_inode), decode_name(name))

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:  # RENAME_EXCHANGE, RENAME_WHITEOUT
            raise InvalidArgument(f"rename flags {flags:#x} are not supported")
        await self.ns.rename(self.ns.get(parent_inode_old), decode_name(name_old),
                             self.ns.get(parent_inode_new), decode_name(name_new),
                             bool(flags & pyfuse3.RENAME_NOREPLACE))

    # ---- files -----------------------------------------------------------------------------

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.ns.get(inode)
        if node.is_dir:
            raise IsADirectoryError(errno.EISDIR, node.name)
        writable = bool(flags & WRITE_FLAGS)
        if writable and self.ns.read_only:
            raise ReadOnly("read-only mount")
        obj, keep_cache = await self.ns.open_data(node)
        handle = FileHandle(node, obj, writable, bool(flags & os.O_APPEND),
                            whole=writable and bool(flags & os.O_TRUNC))
        fh = self.handles.add(handle)
        if flags & os.O_TRUNC and writable and node.size:
            handle.uncommitted = True
            await self.cache.truncate(obj, 0)
            node.size = 0
            node.attrs.mtime_ns = time.time_ns()
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache)

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = await self.ns.create(self.ns.get(parent_inode), decode_name(name), mode,
                                    ctx.uid, ctx.gid)
        obj, _ = await self.ns.open_data(node)  # new: nothing of it in the kernel's cache
        fh = self.handles.add(FileHandle(node, obj, True, bool(flags & os.O_APPEND),
                                         uncommitted=True, whole=True))  # new, even if empty
        return pyfuse3.FileInfo(fh=fh), self._lookup_reply(node)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        # The hottest handler, so not wrapped by fuse_errors (a coroutine more per read); a
        # read of a cached block is answered without one of the cache's either.
        try:
            obj = self.handles.file(fh).obj
            data = self.cache.read_hit(obj, off, size)
            return data if data is not None else await self.cache.read(obj, off, size)
        except Exception as exc:
            raise fuse_error("read", (fh, off), exc) from None

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles.file(fh)
        if handle.append:
            off = handle.obj.size
        self.ns.check_size(off + len(buf))
        handle.uncommitted = True
        await self.cache.write(handle.obj, off, buf)
        handle.node.size = handle.obj.size
        handle.node.attrs.modified(time.time_ns())
        return len(buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        handle = self.handles.file(fh)
        self._commit(handle)
        if handle.writable and self.upload_on_close:
            await self.queue.sync(handle.obj)
            return
        # A failed upload is news for whoever wrote; a reader's close has nothing to report.
        if handle.writable and handle.obj.last_error is not None:
            raise handle.obj.last_error

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.handles.file(fh)
        self.ns.commit(handle.node)
        await self.queue.sync(handle.obj)

    async def release(self, fh: int) -> None:
        handle = self.handles.pop_file(fh)
        self._commit(handle)
        self.ns.close_data(handle.node)

    def _commit(self, handle: FileHandle) -> None:
        """Commit what this handle wrote since its last commit: flush commits, and release,
        which follows, or a reader's close, has nothing to add (a journal write each). A file
        this handle wrote whole, with no other writer left, goes up at once: the write-back
        delay is for programs that rewrite files in place (editors, logs, databases)."""
        if handle.uncommitted:
            handle.uncommitted = False
            self.ns.commit(handle.node, whole=handle.whole
                           and not self.handles.writers(handle.node, besides=handle))

    # ---- directories -----------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.ns.get(inode)
        if not node.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, node.name)
        handle = DirHandle(node, self.ns.list_dir(node))
        self.ns.table.reading(node, handle.opened_at)
        handle.ahead = self.ns.stat_ahead.open(node, handle.entries)
        try:
            await handle.more()  # the first page now, so that opendir reports a failure
        except BaseException:
            await self._close_dir(handle)
            raise
        return self.handles.add(handle)

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self.handles.dir(fh)
        i = start_id
        # Another page is fetched only while this reply is still empty: the kernel's buffer
        # may hold hundreds of entries (up to max_pages since Linux 6.x), and filling it from
        # later pages would hold the reader's first entries until several pages are in.
        # At most as many entries as are read ahead: a program that stats what it lists
        # (`ls -l`) then reads the directory again between its stats, and gets the entries
        # after the first reply with their attributes, sparing a lookup each (StatAhead.listed).
        # And at most READDIR_REPLY_ENTRIES: the first reply goes before any stat, so each of
        # its entries costs such a program a lookup.
        end = start_id + min(READDIR_REPLY_ENTRIES, self.ns.stat_ahead.ahead)
        while i < end and (i < len(handle.entries) or i == start_id and await handle.more()):
            if i >= len(handle.entries):
                continue  # an empty page
            name, node = handle.entries[i]
            read = self.ns.stat_ahead.listed(handle.ahead, i, node)
            if read is not None:
                await read.wait()
            if not pyfuse3.readdir_reply(token, name.encode(), self.entry(node), i + 1):
                break
            node.lookups += 1
            i += 1
        handle.fetch_ahead(self.ns.stat_ahead.start)  # the next page, while these are used

    async def releasedir(self, fh: int) -> None:
        await self._close_dir(self.handles.pop_dir(fh))

    async def _close_dir(self, handle: DirHandle) -> None:
        self.ns.table.done_reading(handle.node, handle.opened_at)
        self.ns.stat_ahead.close(handle.ahead)
        await handle.aclose()

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass  # directory changes reach the server as they happen

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = self.block_size
        s.f_blocks = s.f_bfree = s.f_bavail = 2**50 // self.block_size
        s.f_files = s.f_ffree = s.f_favail = 2**32
        s.f_namemax = NAME_MAX
        return s

    # ---- extended attributes ---------------------------------------------------------------

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == pyfuse3.ROOT_INODE and name == STATUS_XATTR:
            return json.dumps(self.status.snapshot()).encode()
        return self.ns.getxattr(await self._node(inode), name.decode(errors="surrogateescape"))

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [n.encode() for n in self.ns.listxattr(await self._node(inode))]

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        if inode == pyfuse3.ROOT_INODE and name == DISCARD_XATTR:  # `mountfs discard`
            await self.ns.discard_upload(value.decode(errors="surrogateescape"))
            return
        if inode == pyfuse3.ROOT_INODE and name == FLUSH_XATTR:  # `mountfs umount`
            self.queue.hurry()
            return
        if inode == pyfuse3.ROOT_INODE and name == SYNC_XATTR:  # `mountfs sync`
            self.status.upload_now(value.decode(errors="surrogateescape"))
            return
        await self.ns.setxattr(await self._node(inode), decode_name(name), value)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.ns.removexattr(await self._node(inode), decode_name(name))
