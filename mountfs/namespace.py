"""The tree the kernel sees, and what changes it: creating, removing and renaming names,
attributes and xattrs, and a file's data from open to commit.

The root lists buckets (or, scoped to one bucket, that bucket from a key prefix on); below a
bucket, directories are key prefixes (an empty one is a `dir/` marker object) and files are
objects. A node knows its parent and name, so renaming a directory moves its whole subtree at
once. `Namespace` is the FUSE layer's one door to the tree; behind it, rooms of their own: the
nodes and their fields (mountfs/nodes.py), the node table with inodes, locations and freshness
(mountfs/table.py, `NodeTable`), lookups and listings (mountfs/listings.py, `Listings`), moving
objects for a rename in a crash-safe order (mountfs/rename.py, `Mover`), and settling an upload
that lost a race with another client (mountfs/conflicts.py, `ConflictSettler`), and the
extended attributes kept (mountfs/xattrs.py, `Xattrs`).
"""
from __future__ import annotations

import contextlib
import errno
import io
import mimetypes
import stat
import time

import trio

from cache.blocks import BlockCache
from cache.objects import CachedObject
from cache.writeback import WritebackQueue
from mountfs import attrs as attrs_mod
from mountfs.attrs import Attributes, Defaults
from mountfs.backends import Scope
from mountfs.backends.base import CONTENT_TYPE, Backend, ObjectInfo
from mountfs.conflicts import ConflictSettler
from mountfs.dirtimes import DirTimes
from mountfs.errors import (InvalidArgument, NameTooLong, NoSuchObject, NotEmpty,
                            NotPermitted, ReadOnly, TooLarge)
from mountfs.listings import Listings
from mountfs.nodes import Node, check_name
from mountfs.rename import Mover
from mountfs.table import NodeTable
from mountfs.xattrs import Xattrs


# How long after its mtime a version told apart by its mtime in whole seconds is unsure
# (the second itself, and some clock skew between the service and this machine).
UNSURE_VERSION_NS = 2 * 10**9
# New files' Content-Type, from the name's extension as s3fs finds it in /etc/mime.types.
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class Namespace:
    def __init__(self, backend: Backend, scope: Scope, cache: BlockCache, queue: WritebackQueue,
                 defaults: Defaults, ttl: float, read_only: bool,
                 dir_times_delay: float = 1.0) -> None:
        self.backend = backend
        self.cache = cache
        self.queue = queue
        self.ttl = ttl  # (the FUSE layer's kernel cache timeouts)
        self.read_only = read_only
        self.table = NodeTable(scope, ttl, Attributes(
            defaults.mode(stat.S_IFDIR), defaults.uid, defaults.gid, time.time_ns()))
        self.listings = Listings(backend, cache, self.table, defaults)
        # The FUSE layer's entry points that live in the rooms behind this door.
        self.get, self.forget = self.table.get, self.table.forget
        self.lookup, self.list_dir = self.listings.lookup, self.listings.list_dir
        self.complete, self.getattr = self.listings.metadata.complete, \
            self.listings.metadata.getattr
        self.stat_ahead = self.listings.metadata.stat_ahead
        xattrs = Xattrs(backend, self.save_attrs)
        self.getxattr, self.listxattr = xattrs.get, xattrs.names
        self.setxattr, self.removexattr = xattrs.set, xattrs.remove
        self._mover = Mover(backend, cache, queue)
        # Uploads state the version they replace; a lost race with another client is settled
        # where names are known.
        queue.conditional = backend.features.conditional_writes
        queue.resolve_conflict = ConflictSettler(cache, self.table.nodes).settle
        if queue.streams is not None:
            queue.streams.loosen = attrs_mod.without_write_times
        self.dir_times = DirTimes(self._save_dir_times, dir_times_delay)
        self._marker_changes = trio.Lock()  # rmdir, directory renames against dir-times saves

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnly("read-only mount")

    # ---- creating and removing -------------------------------------------------------------

    def _new_attrs(self, mode: int, uid: int, gid: int) -> Attributes:
        return Attributes(mode, uid, gid, time.time_ns())

    def _entries_changed(self, *directories: Node) -> None:
        """Names were created, removed or renamed in `directories`: their mtime and ctime
        move, here at once and on their markers after a quiet delay (mountfs/dirtimes.py).
        The root and buckets carry no metadata: theirs live as long as the mount."""
        now = time.time_ns()
        for directory in directories:
            directory.attrs.modified(now)
            directory.entries_changed_ns = now
            if directory.parent is not None and not self.table.lists_buckets(directory.parent):
                self.dir_times.touch(directory)

    async def _save_dir_times(self, node: Node) -> None:
        """Store a directory's moved times on its marker; a directory without one (a prefix of
        other keys) keeps them in memory, as does one removed meanwhile."""
        if node.unlinked or self.read_only:
            return
        changed_ns = node.entries_changed_ns
        await self.complete(node)  # the marker's mode and owner go back with the times
        async with self._marker_changes:  # not while an rmdir or a rename takes the marker
            if node.unlinked:
                return
            bucket, key = self.table.location(node)
            try:
                await self.backend.set_metadata(bucket, key, attrs_mod.encode(node.attrs))
            except NoSuchObject:
                return
        if node.entries_changed_ns == changed_ns:  # else changed again meanwhile: saved later
            node.entries_changed_ns = 0

    async def _check_absent(self, parent: Node, name: str) -> None:
        try:
            await self.lookup(parent, name)
        except FileNotFoundError:
            return
        raise FileExistsError(errno.EEXIST, name)

    async def create(self, parent: Node, name: str, mode: int, uid: int, gid: int,
                     rdev: int = 0) -> Node:
        """A new empty file, or (by the file type bits of `mode`) a FIFO, socket or device
        node: an empty object whose metadata says what it is."""
        self._writable()
        if self.table.lists_buckets(parent):
            raise NotPermitted("files cannot live at the root, only buckets")
        self._check_key(parent, name)
        await self._check_absent(parent, name)
        await self._check_storable(parent, name)
        attrs = self._new_attrs((stat.S_IFMT(mode) or stat.S_IFREG) | stat.S_IMODE(mode),
                                uid, gid)
        if attrs.kind != stat.S_IFREG and not self.backend.features.special_files:
            raise NotPermitted(f"{self.backend.describe()} cannot hold special files")
        if attrs.kind in (stat.S_IFCHR, stat.S_IFBLK):
            attrs.rdev = rdev
        if attrs.kind == stat.S_IFREG:  # what a web server or browser reading the store needs
            attrs.other[CONTENT_TYPE] = mimetypes.guess_type(name)[0] or DEFAULT_CONTENT_TYPE
        node = self.table.new(parent, name, attrs, on_server=False)
        bucket, key = self.table.location(node)
        node.obj = self.cache.create_object(bucket, key, attrs_mod.encode(node.attrs))
        self._entries_changed(parent)
        return node

    async def mkdir(self, parent: Node, name: str, mode: int, uid: int, gid: int) -> Node:
        self._writable()
        self._check_key(parent, name + "/")
        await self._check_absent(parent, name)
        await self._check_storable(parent, name + "/")
        attrs = self._new_attrs(stat.S_IFDIR | stat.S_IMODE(mode), uid, gid)
        if self.table.lists_buckets(parent):
            self._buckets_editable()
            await self.backend.create_bucket(name)
        else:
            bucket, prefix = self.table.location(parent)
            await self._put_small(bucket, prefix + name + "/", b"", attrs)
        node = self.table.new(parent, name, attrs)
        if not self.table.lists_buckets(parent):
            # New and empty: nothing to list. A new bucket is listed once: a service may make
            # one with things in it (an AmigoCloud project has its datasets/ and uploads/).
            node.listed_at, node.listed_size = time.monotonic(), 0
        self._entries_changed(parent)
        return node

    async def symlink(self, parent: Node, name: str, target: bytes, uid: int, gid: int) -> Node:
        self._writable()
        if self.table.lists_buckets(parent):
            raise NotPermitted("symlinks cannot live at the root, only buckets")
        if not self.backend.features.symlinks:
            raise NotPermitted(f"{self.backend.describe()} cannot hold symlinks")
        self._check_key(parent, name)
        await self._check_absent(parent, name)
        await self._check_storable(parent, name)
        if not target.startswith(b"/") and not self.backend.features.relative_symlinks:
            raise OSError(errno.ENOTSUP, f"{self.backend.describe()} makes symlinks to "
                          f"absolute paths only, not to {target!r}")
        attrs = self._new_attrs(stat.S_IFLNK | 0o777, uid, gid)
        bucket, prefix = self.table.location(parent)
        info = await self._put_small(bucket, prefix + name, target, attrs)
        node = self.table.new(parent, name, attrs, len(target), info.etag)
        node.link_target = target
        self._entries_changed(parent)
        return node

    async def _put_small(self, bucket: str, key: str, data: bytes,
                         attrs: Attributes) -> ObjectInfo:
        return await self.backend.write_object(bucket, key, io.BytesIO(data), len(data),
                                               attrs_mod.encode(attrs))

    async def readlink(self, node: Node) -> bytes:
        if not stat.S_ISLNK(node.attrs.mode):
            raise InvalidArgument("not a symlink")
        if node.link_target is None:
            bucket, key = self.table.location(node)
            node.link_target = await self.backend.read_object(bucket, key, 0, node.size)
        return node.link_target

    async def unlink(self, parent: Node, name: str) -> None:
        self._writable()
        node = await self.lookup(parent, name)
        if node.is_dir:
            raise IsADirectoryError(errno.EISDIR, name)
        await self._remove_file(node)

    async def _remove_file(self, node: Node) -> None:
        bucket, key = self.table.location(node)
        on_server = node.exists_on_server
        obj = node.obj or self.cache.get(bucket, key)
        if obj is not None and await self._mover.drop_cached(obj):
            on_server = True
        if on_server:
            await self.backend.delete_object(bucket, key)
        node.unlinked = True
        node.attrs.changed(time.time_ns())  # its link count fell, for descriptors still open
        assert node.parent is not None
        self._entries_changed(node.parent)
        self.table.detach(node)

    async def rmdir(self, parent: Node, name: str) -> None:
        self._writable()
        node = await self.lookup(parent, name)
        if not node.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, name)
        if self.table.lists_buckets(parent):
            self._buckets_editable()
        await self._check_empty(node)
        bucket, prefix = self.table.location(node)
        # A save of its times under way would write its marker back after the delete (and its
        # parent would not be empty for the next rmdir of `rm -r`).
        async with self._marker_changes:
            if self.table.lists_buckets(parent):
                await self.backend.delete_bucket(bucket)
            else:
                await self.backend.delete_object(bucket, prefix)
                if node.directory_object:  # else the directory comes back, as an older tool's
                    await self.backend.delete_object(bucket, node.directory_object)
            node.unlinked = True
        self._entries_changed(parent)
        self.table.detach(node)

    async def _check_empty(self, node: Node) -> None:
        assert node.children is not None
        node.listed_at = -1e18
        await self.listings.refresh_listing(node)
        if node.children:
            raise NotEmpty("/".join(node.path()))

    # ---- rename ----------------------------------------------------------------------------

    async def rename(self, old_parent: Node, old_name: str, new_parent: Node, new_name: str,
                     noreplace: bool) -> None:
        self._writable()
        check_name(new_name)
        node = await self.lookup(old_parent, old_name)
        self._check_key(new_parent, new_name + ("/" if node.is_dir else ""))
        if self.table.lists_buckets(old_parent) or self.table.lists_buckets(new_parent):
            raise NotPermitted("buckets cannot be renamed")
        if node.is_dir and new_parent.is_under(node):
            raise InvalidArgument("cannot move a directory into itself")
        try:
            target: Node | None = await self.lookup(new_parent, new_name)
        except FileNotFoundError:
            target = None
        if target is node:
            return
        await self._check_storable(new_parent, new_name + ("/" if node.is_dir else ""))
        if target is not None:
            if noreplace:
                raise FileExistsError(errno.EEXIST, new_name)
            if node.is_dir and not target.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, new_name)
            if target.is_dir and not node.is_dir:
                raise IsADirectoryError(errno.EISDIR, new_name)
            if target.is_dir:
                await self._check_empty(target)
        # A directory's times saved meanwhile (mountfs/dirtimes.py) would write a marker of the
        # tree being moved back under its old name.
        async with self._marker_changes if node.is_dir else contextlib.nullcontext():
            src_bucket, src_key = self.table.location(node)
            dst_bucket, dst_prefix = self.table.location(new_parent)
            dst_key = dst_prefix + new_name + ("/" if node.is_dir else "")
            if node.is_dir:
                # An older tool's directory moves as a marker of ours: made before the tree
                # is copied, or after a service moved it whole (over the marker).
                native = self._mover.native(src_bucket, dst_bucket)
                if node.directory_object and not native:
                    await self._put_small(dst_bucket, dst_key, b"", node.attrs)
                await self._mover.move_tree(src_bucket, src_key, dst_bucket, dst_key)
                if node.directory_object:
                    if native:
                        await self._put_small(dst_bucket, dst_key, b"", node.attrs)
                    await self.backend.delete_object(src_bucket, node.directory_object)
                    node.directory_object = ""
            else:
                await self._mover.move_object(node, src_bucket, src_key, dst_bucket, dst_key,
                                              target if target is not None
                                              and target.exists_on_server else None)
            if target is not None:
                target.unlinked = True
                self.table.detach(target)
            assert old_parent.children is not None and new_parent.children is not None
            del old_parent.children[old_name]
            self.table.note_removed(old_parent, old_name)
            node.parent, node.name = new_parent, new_name
            new_parent.children[new_name] = node
            new_parent.absent.pop(new_name, None)
            node.refreshed_at = time.monotonic()  # newer than any listing of new_parent under way
            node.attrs.changed(time.time_ns())
            self._entries_changed(old_parent, new_parent)

    # ---- attributes ------------------------------------------------------------------------

    async def save_attrs(self, node: Node) -> None:
        """Store changed mode/owner/times/xattrs: with the data if it is pending, else now."""
        self._writable()
        node.refreshed_at = time.monotonic()
        if node.parent is None or self.table.lists_buckets(node.parent):
            # The root and buckets carry no metadata: their attributes live as long as the mount.
            return
        meta = attrs_mod.encode(node.attrs)
        if node.obj is not None and node.obj.dirty:
            self.cache.set_metadata(node.obj, meta)
            return
        bucket, key = self.table.location(node)
        try:
            info = await self.backend.set_metadata(bucket, key, meta)
        except NoSuchObject:
            if not node.is_dir:
                raise
            info = await self.backend.write_object(bucket, key, io.BytesIO(b""), 0, meta)
        if not node.is_dir:
            node.etag = info.etag
            obj = self.cache.get(bucket, key)
            if obj is not None:
                self.cache.set_server_version(obj, info.etag, info.mtime_ns)

    # ---- file data -------------------------------------------------------------------------

    async def open_data(self, node: Node) -> tuple[CachedObject, bool]:
        """The cached object behind a file, revalidated against the server (close-to-open),
        and whether the kernel may keep the pages it cached of the file: only while the
        version is the one it last opened (where versions are told apart by size and mtime
        in seconds, the kernel would not see a new one by its attributes)."""
        await self.complete(node)  # its metadata goes with the next upload
        node.settle()
        if node.obj is None or not node.obj.dirty:
            if not node.sized:
                node.refreshed_at = -1e18  # its size is a listing's stand-in: ask the file's
            if not self.table.fresh(node.refreshed_at) and node.exists_on_server:
                await self.getattr(node)
            bucket, key = self.table.location(node)
            node.obj = self.cache.open_object(bucket, key, node.size,
                                              await self._version(node, bucket, key),
                                              node.attrs.mtime_ns)
        node.open_count += 1
        self.cache.opened(node.obj)
        version, node.kernel_version = node.kernel_version, node.obj.record.etag
        return node.obj, version == node.kernel_version

    async def _version(self, node: Node, bucket: str, key: str) -> str:
        """The ETag the cache keys a file's blocks by. Where versions are only size and mtime
        in seconds, one whose second may not be over (another write of the same size could
        follow within it, under the same ETag) gets an ETag of its own, and the driver drops
        what it keeps of the data: what is read now is not served to a later open."""
        if self.backend.features.exact_versions or \
                time.time_ns() - node.attrs.mtime_ns > UNSURE_VERSION_NS:
            return node.etag
        await self.backend.forget(bucket, key)
        return f"{node.etag}~unsure-{time.time_ns()}"

    def close_data(self, node: Node) -> None:
        obj = node.obj
        assert obj is not None
        node.open_count -= 1
        self.cache.closed(obj)
        node.settle()
        self.table.maybe_drop(node)

    async def discard_upload(self, entry: str) -> None:
        """Give up the queued upload of `entry` ("BUCKET/KEY"), the user's choice after it
        failed: its data leaves the cache, and the file shows what the server has, if any."""
        bucket, _, key = entry.partition("/")
        obj = self.cache.get(bucket, key)
        holders = [node for node in self.table.nodes.values()
                   if obj is not None and node.obj is obj]
        if any(node.open_count for node in holders):
            raise OSError(errno.EBUSY, f"{entry} is open")
        if obj is None or not await self.queue.abandon(bucket, key):
            raise FileNotFoundError(errno.ENOENT, f"{entry}: not in the upload queue")
        for node in holders:
            node.obj = None
            if obj.record.on_server:  # an older version stays: read it anew
                node.on_server, node.etag, node.refreshed_at = True, "", -1e18
            else:
                node.unlinked = True
                self.table.detach(node)

    def commit(self, node: Node, whole: bool = False) -> None:
        """A program closed the file: its metadata goes with the upload queued now (`whole`:
        written whole, so with the queue's delay for such files)."""
        obj = node.obj
        if obj is not None and obj.dirty and not node.unlinked:
            obj.record.metadata = attrs_mod.encode(node.attrs)
            self.queue.commit(obj, whole=whole)

    async def truncate(self, node: Node, size: int) -> None:
        self._writable()
        if node.is_dir:
            raise IsADirectoryError(errno.EISDIR, node.name)
        self.check_size(size)
        obj, _ = await self.open_data(node)
        try:
            await self.cache.truncate(obj, size)
            node.size = size
            node.attrs.modified(time.time_ns())
            self.commit(node)
        finally:
            self.close_data(node)

    def check_size(self, size: int) -> None:
        """EFBIG for a file the store could not hold, at the write, not at the upload."""
        limit = self.backend.features.max_object_size
        if limit is not None and size > limit:
            raise TooLarge(f"{size} bytes: the store holds objects of up to {limit} bytes")

    def _check_key(self, parent: Node, name: str) -> None:
        """ENAMETOOLONG for a name whose key the store could not hold (S3: 1,024 bytes)."""
        limit = self.backend.features.max_key_length
        if limit is None or self.table.lists_buckets(parent):
            return
        key = self.table.location(parent)[1] + name
        if len(key.encode()) > limit:
            raise NameTooLong(f"{key[:40]}...: keys hold up to {limit} bytes")

    async def _check_storable(self, parent: Node, name: str) -> None:
        """What the driver knows it will never store is refused now (FirecREST: nothing above
        or outside a system's file systems), not at the upload after close."""
        if not self.table.lists_buckets(parent):
            bucket, prefix = self.table.location(parent)
            await self.backend.check_key(bucket, prefix + name)

    def _buckets_editable(self) -> None:
        if not self.backend.features.buckets_editable:
            raise NotPermitted(f"{self.backend.describe()} has a fixed set of buckets")

    def statfs_counts(self) -> tuple[int, int]:
        return len(self.table.nodes), self.cache.used
