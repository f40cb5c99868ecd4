"""The tree the kernel sees: inodes <-> (bucket, key), attributes, listings and their TTLs.

The root lists buckets (or, scoped to one bucket, that bucket from a key prefix on); below a
bucket, directories are key prefixes (an empty one is a `dir/` marker object) and files are
objects. A node knows its parent and name, so renaming a directory
moves its whole subtree at once. Nodes stay in the table while they are in their parent's
children (or the kernel or an open handle holds them); a directory's children are
authoritative for lookups (positive and negative) while its listing is younger than the TTL.

Files being written live in the block cache until uploaded; such "pending" nodes are kept in
listings even though the server does not list them yet. A listing is as old as its request:
what this mount created, moved in or uploaded while it ran stays, and what this mount removed
meanwhile is not brought back by it.

A listing need not carry metadata (S3 lists none; no store lists it for a common prefix). Its
entries then have default attributes until `complete` stats them, which the FUSE layer calls
before it shows a node's attributes (a directory's marker holds its mode and owner; an object's
metadata says whether it is a symlink); listing alone, as `ls` and `find` do, costs no stats.

Rooms of their own: the nodes and their fields (mountfs/nodes.py), moving objects for a rename
in a crash-safe order (mountfs/rename.py, `Mover`), and settling an upload that lost a race with
another client (mountfs/conflicts.py, `ConflictSettler`).
"""
from __future__ import annotations

import errno
import io
import logging
import stat
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from itertools import islice

import trio

from cache.blocks import BlockCache, CachedObject
from cache.writeback import WritebackQueue
from mountfs import attrs as attrs_mod
from mountfs.attrs import Attributes, Defaults
from mountfs.backends import Scope
from mountfs.backends.base import Backend, ObjectInfo
from mountfs.conflicts import ConflictSettler
from mountfs.errors import (InvalidArgument, NameTooLong, NoSuchAttribute, NoSuchObject,
                            NotEmpty, NotPermitted, ReadOnly, TooLarge)
from mountfs.nodes import Node, check_name
from mountfs.rename import Mover

log = logging.getLogger(__name__)

ROOT_INODE = 1
# A directory whose last listing fit one page of the server's answer is listed again to answer
# a lookup once its listing is stale: one request answers for every name, new ones included,
# where probing costs two per name.
SMALL_DIR = 1000
# Attributes a listing left out are read for this many entries of a directory at once, in
# parallel: `ls -l` asks for each in turn, and one round trip each would dominate.
METADATA_BATCH = 64
# Negative lookups remembered per directory (for the TTL) before the stale ones are dropped.
ABSENT_KEPT = 4096


class Namespace:
    def __init__(self, backend: Backend, scope: Scope, cache: BlockCache, queue: WritebackQueue,
                 defaults: Defaults, ttl: float, read_only: bool) -> None:
        self.backend = backend
        self.scope = scope
        self.cache = cache
        self.queue = queue
        self.defaults = defaults
        self.ttl = ttl
        self.read_only = read_only
        self.nodes: dict[int, Node] = {}
        self._next_inode = ROOT_INODE
        self.root = self._new_node(None, "", Attributes(
            defaults.mode(stat.S_IFDIR), defaults.uid, defaults.gid, time.time_ns()))
        self._warned: set[str] = set()
        self._mover = Mover(backend, cache, queue)
        # Uploads state the version they replace; a lost race with another client is settled
        # where names are known.
        queue.conditional = backend.features.conditional_writes
        queue.resolve_conflict = ConflictSettler(cache, self.nodes).settle

    # ---- the table -------------------------------------------------------------------------

    def _new_node(self, parent: Node | None, name: str, attrs: Attributes, size: int = 0,
                  etag: str = "", on_server: bool = True) -> Node:
        node = Node(self._next_inode, parent, name, attrs, size, etag, on_server,
                    refreshed_at=time.monotonic())
        self._next_inode += 1
        if node.is_dir:
            node.children = {}
        self.nodes[node.inode] = node
        if parent is not None and parent.children is not None:
            parent.children[name] = node
            parent.absent.pop(name, None)
        return node

    def location(self, node: Node) -> tuple[str, str]:
        """(bucket, key) of a node; a directory's key is its prefix, ending in '/'."""
        parts = node.path()
        bucket = self.scope.bucket
        if bucket is None:
            bucket, parts = parts[0], parts[1:]
        key = "/".join(parts)
        return bucket, self.scope.prefix + (key + "/" if node.is_dir and key else key)

    def lists_buckets(self, node: Node) -> bool:
        """The root of a mount of every bucket: its entries are buckets, not objects."""
        return node is self.root and self.scope.bucket is None

    def get(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, f"inode {inode}") from None

    def forget(self, inode: int, count: int) -> None:
        node = self.nodes.get(inode)
        if node is None:
            return
        node.lookups -= count
        self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        attached = (node.parent is not None and node.parent.children is not None
                    and node.parent.children.get(node.name) is node)
        if node.lookups <= 0 and node.open_count == 0 and not attached and node is not self.root:
            self.nodes.pop(node.inode, None)

    def _detach(self, node: Node) -> None:
        """Take a node out of its parent's listing (it was removed or replaced)."""
        parent = node.parent
        if parent is not None and parent.children is not None \
                and parent.children.get(node.name) is node:
            del parent.children[node.name]
            self._note_removed(parent, node.name)
        self._maybe_drop(node)

    def _note_removed(self, parent: Node, name: str) -> None:
        """`name` left `parent`: a listing under way may have read it from the server before."""
        if parent.listings:
            parent.removed[name] = time.monotonic()

    def _fresh(self, stamp: float) -> bool:
        return time.monotonic() - stamp < self.ttl

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnly("read-only mount")

    # ---- attributes from the store ---------------------------------------------------------

    def _attrs(self, info: ObjectInfo, kind: int) -> Attributes:
        return attrs_mod.decode(info.metadata, kind, info.mtime_ns or time.time_ns(),
                                self.defaults)

    def _apply(self, node: Node, info: ObjectInfo, kind: int, asked_at: float) -> None:
        """Refresh a node from the server, unless it holds newer data of its own. `asked_at`:
        when the request that brought `info` began."""
        node.refreshed_at = time.monotonic()
        node.settle()
        if node.pending:
            return
        if info.metadata is None and node.etag == info.etag and not node.is_dir:
            return  # a listing without metadata says nothing new about an unchanged object
        if not node.is_dir and info.etag != node.etag:
            obj = self.cache.get(*self.location(node))
            if obj is not None and obj.version_at > asked_at:
                # This mount wrote a newer version (an upload ended while the request was
                # under way): taking the older one would make it the base of the next upload,
                # which would then conflict with this mount's own.
                return
        new = self._attrs(info, kind)
        if node.is_dir != stat.S_ISDIR(new.mode):
            return  # a file and a directory of one name: the node keeps its kind
        if info.metadata is not None or not node.is_dir:
            node.attrs = new
            node.meta_known = info.metadata is not None
        if not node.is_dir:
            node.size, node.etag, node.on_server = info.size, info.etag, True
            node.link_target = None

    def _child_from_info(self, parent: Node, name: str, info: ObjectInfo, is_dir: bool,
                         asked_at: float) -> Node:
        kind = stat.S_IFDIR if is_dir else stat.S_IFREG
        assert parent.children is not None
        node = parent.children.get(name)
        if node is not None and node.is_dir == is_dir:
            self._apply(node, info, kind, asked_at)
            return node
        if node is not None:
            self._detach(node)
        node = self._new_node(parent, name, self._attrs(info, kind), info.size, info.etag)
        node.meta_known = info.metadata is not None or self.lists_buckets(parent)
        return node

    def _name_ok(self, where: str, name: str) -> bool:
        try:
            check_name(name)
            return True
        except (NameTooLong, InvalidArgument):
            if where + name not in self._warned:
                self._warned.add(where + name)
                log.warning("hiding %r under %r: not a valid file name", name, where)
            return False

    # ---- lookup and listing ----------------------------------------------------------------

    async def lookup(self, parent: Node, name: str) -> Node:
        if not parent.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, name)
        check_name(name)
        assert parent.children is not None
        child = parent.children.get(name)
        if child is not None and (child.pending or self._fresh(child.refreshed_at)):
            return child
        if child is None and self._fresh(parent.absent.get(name, -1e18)):
            raise FileNotFoundError(errno.ENOENT, name)
        if self._small(parent):
            await self.refresh_listing(parent)
        if self._fresh(parent.listed_at):
            child = parent.children.get(name)
            if child is None:
                raise FileNotFoundError(errno.ENOENT, name)
            return child
        found = await self._probe(parent, name)
        if found is None:
            if child is not None:
                self._detach(child)
            self._remember_absent(parent, name)
            raise FileNotFoundError(errno.ENOENT, name)
        return found

    def _small(self, node: Node) -> bool:
        """Listing it answers a lookup as cheaply as probing for the name would (and a listing
        answers lookups at all: not with a zero TTL)."""
        return self.ttl > 0 and (self.lists_buckets(node) or
                                 node.listed_size is not None and node.listed_size < SMALL_DIR)

    def _remember_absent(self, parent: Node, name: str) -> None:
        if len(parent.absent) >= ABSENT_KEPT:
            parent.absent = {n: t for n, t in parent.absent.items() if self._fresh(t)}
        parent.absent[name] = time.monotonic()

    async def _probe(self, parent: Node, name: str) -> Node | None:
        """Ask the server what `name` is under `parent`: object, marker, prefix, or nothing."""
        if self.lists_buckets(parent):
            if name in await self.backend.list_buckets():
                info = ObjectInfo(name, "")
                return self._child_from_info(parent, name, info, True, time.monotonic())
            return None
        bucket, prefix = self.location(parent)
        key = prefix + name
        # Both questions at once, always: a key `a` beside keys `a/...` must show the directory,
        # as a listing does (README "Names"), so a found file is not the answer until the
        # listing said there is no directory. In parallel, the probe costs one round trip.
        file: list[ObjectInfo] = []
        below: list[ObjectInfo] = []
        asked_at = time.monotonic()

        async def head() -> None:
            try:
                file.append(await self.backend.stat_object(bucket, key))
            except NoSuchObject:
                pass

        async def first_below() -> None:
            # One listing finds a directory both by its marker and by the objects below it.
            async for page in self.backend.list_objects(bucket, key + "/", page_size=1):
                below.extend(page[:1])
                if page:
                    break

        await self._both(head, first_below)
        if below:
            if file:
                self._warn_once(parent, name,
                                "is both a file and a directory; showing the directory")
            node = self._child_from_info(parent, name, ObjectInfo(bucket, key + "/"), True,
                                         asked_at)
            # Its marker, if it has one, holds its attributes (read by `complete`); without
            # one, the defaults are its attributes.
            node.meta_known = below[0].key != key + "/"
            return node
        if file:
            return self._child_from_info(parent, name, file[0], False, asked_at)
        return None

    @staticmethod
    async def _both(first: Callable[[], Awaitable[None]],
                    second: Callable[[], Awaitable[None]]) -> None:
        """Run both at once; the first failure is raised alone (not as a group), so callers
        and the errno table see the backend's own error."""
        failures: list[Exception] = []

        async def run(fn: Callable[[], Awaitable[None]]) -> None:
            try:
                await fn()
            except Exception as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, first)
            nursery.start_soon(run, second)
        if failures:
            raise failures[0]

    async def refresh_listing(self, node: Node) -> None:
        """Read the directory from the server, unless its listing is fresh."""
        async for _ in self.list_dir(node):
            pass

    async def list_dir(self, node: Node) -> AsyncGenerator[list[tuple[str, Node]], None]:
        """The directory's entries, a page at a time as the server sends them, then what only
        this mount has; from the last listing, if it is fresh. Merged into `node.children`:
        the listing is complete (and fresh) only when the iteration ran to its end."""
        assert node.children is not None
        if self._fresh(node.listed_at):
            yield sorted(node.children.items())
            return
        started = time.monotonic()
        was_pending = {child for child in node.children.values() if child.pending}
        seen: set[str] = set()
        node.listings += 1
        try:
            async for page in self._list_server(node):
                yield self._merge_page(node, page, seen, started)
        finally:
            node.listings -= 1
            if not node.listings:
                node.removed.clear()
        node.absent = {n: t for n, t in node.absent.items() if t > started}
        for name, child in list(node.children.items()):
            # Kept although not listed: what only this mount has, and what changed here since
            # the listing began (an upload finished, a file was created or moved in).
            if name not in seen and not child.pending and child not in was_pending \
                    and child.refreshed_at < started:
                self._detach(child)
        node.listed_at = started  # the server's answer is as old as the request
        node.listed_size = len(seen)
        yield sorted((name, child) for name, child in node.children.items() if name not in seen)

    def _merge_page(self, node: Node, page: list[tuple[str, ObjectInfo, bool]], seen: set[str],
                    started: float) -> list[tuple[str, Node]]:
        """Apply one page of a listing begun at `started`; its entries, as nodes."""
        assert node.children is not None
        names: list[str] = []
        # A file `a` sorts before the prefix `a/` of one page: skip the file outright, or every
        # listing would replace the directory's node by a file's and back (new inodes each
        # time; the kernel's `a` then is a file). Across a page boundary `seen` decides below.
        dirs = {name for name, _, is_dir in page if is_dir}
        for name, info, is_dir in page:
            if node.removed.get(name, -1.0) >= started:
                continue  # removed here since the listing began: the server said so before
            if name in seen or not is_dir and name in dirs:
                if is_dir:  # a file `a` beside keys `a/...`: the directory wins
                    self._child_from_info(node, name, info, True, started)
                self._warn_once(node, name,
                                "is both a file and a directory; showing the directory")
                continue
            seen.add(name)
            names.append(name)
            self._child_from_info(node, name, info, is_dir, started)
        return [(name, node.children[name]) for name in names if name in node.children]

    def _warn_once(self, node: Node, name: str, what: str) -> None:
        tag = f"{node.inode}/{name}"
        if tag not in self._warned:
            self._warned.add(tag)
            log.warning("%r in %s %s", name, "/".join(node.path()) or "/", what)

    async def _list_server(self, node: Node
                           ) -> AsyncIterator[list[tuple[str, ObjectInfo, bool]]]:
        """Pages of (name, info, is_dir) as the server lists them; names that cannot be file
        names are left out (and logged once)."""
        if self.lists_buckets(node):
            yield [(bucket, ObjectInfo(bucket, ""), True)
                   for bucket in await self.backend.list_buckets() if self._name_ok("/", bucket)]
            return
        bucket, prefix = self.location(node)
        async for page in self.backend.list_objects(bucket, prefix):
            entries: list[tuple[str, ObjectInfo, bool]] = []
            for info in page:
                rest = info.key[len(prefix):]
                is_dir = info.is_prefix or rest.endswith("/")
                name = rest[:-1] if rest.endswith("/") else rest
                if not rest or "/" in name:
                    continue  # the directory's own marker, or a key with '//' inside
                if self._name_ok(prefix, name):
                    entries.append((name, info, is_dir))
            yield entries

    async def complete(self, node: Node) -> Node:
        """The node with the attributes its metadata gives, read now if a listing left them out.
        Call before attributes are shown or changed. Siblings the listing also left incomplete
        are read with it, in parallel: whoever asks for one entry's attributes (`ls -l`,
        a file manager) is about to ask for the others'."""
        if node.meta_known:
            return node
        siblings: list[Node] = []
        if node.parent is not None and node.parent.children is not None:
            siblings = list(islice((sibling for sibling in node.parent.children.values()
                                    if not sibling.meta_known and sibling is not node),
                                   METADATA_BATCH - 1))
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            for sibling in siblings:
                nursery.start_soon(self._read_metadata_if_can, sibling)
            try:
                await self._read_metadata(node)
            except Exception as exc:  # raised past the nursery, not wrapped in a group by it
                failure = exc
        if failure is not None:
            raise failure
        return node

    async def _read_metadata_if_can(self, node: Node) -> None:
        """A sibling read on speculation: a failure leaves it for its own turn to report."""
        try:
            await self._read_metadata(node)
        except Exception as exc:
            log.debug("metadata of %s not read ahead: %s", "/".join(node.path()), exc)

    async def _read_metadata(self, node: Node) -> None:
        bucket, key = self.location(node)
        asked_at = time.monotonic()
        try:
            info = await self.backend.stat_object(bucket, key)
        except NoSuchObject:
            pass  # a directory without a marker, or gone since listed: the defaults hold
        else:
            self._apply(node, info, stat.S_IFDIR if node.is_dir else stat.S_IFREG, asked_at)
        node.meta_known = True  # (a pending node's own attributes win over the server's)

    async def getattr(self, node: Node) -> Node:
        """The node, its attributes re-read from the server once the TTL has passed."""
        await self.complete(node)
        node.settle()
        if node.is_dir or node.pending or node.unlinked or self._fresh(node.refreshed_at) \
                or not node.exists_on_server:
            return node
        bucket, key = self.location(node)
        asked_at = time.monotonic()
        try:
            self._apply(node, await self.backend.stat_object(bucket, key), stat.S_IFREG,
                        asked_at)
        except NoSuchObject:
            node.refreshed_at = time.monotonic()  # gone on the server; keep serving what we had
        return node

    # ---- creating and removing -------------------------------------------------------------

    def _new_attrs(self, mode: int, uid: int, gid: int) -> Attributes:
        return Attributes(mode, uid, gid, time.time_ns())

    async def _check_absent(self, parent: Node, name: str) -> None:
        try:
            await self.lookup(parent, name)
        except FileNotFoundError:
            return
        raise FileExistsError(errno.EEXIST, name)

    async def create(self, parent: Node, name: str, mode: int, uid: int, gid: int) -> Node:
        self._writable()
        if self.lists_buckets(parent):
            raise NotPermitted("files cannot live at the root, only buckets")
        await self._check_absent(parent, name)
        node = self._new_node(parent, name, self._new_attrs(stat.S_IFREG | stat.S_IMODE(mode),
                                                            uid, gid), on_server=False)
        bucket, key = self.location(node)
        node.obj = self.cache.create_object(bucket, key, attrs_mod.encode(node.attrs))
        return node

    async def mkdir(self, parent: Node, name: str, mode: int, uid: int, gid: int) -> Node:
        self._writable()
        await self._check_absent(parent, name)
        attrs = self._new_attrs(stat.S_IFDIR | stat.S_IMODE(mode), uid, gid)
        if self.lists_buckets(parent):
            self._buckets_editable()
            await self.backend.create_bucket(name)
        else:
            bucket, prefix = self.location(parent)
            await self._put_small(bucket, prefix + name + "/", b"", attrs)
        node = self._new_node(parent, name, attrs)
        node.listed_at, node.listed_size = time.monotonic(), 0  # new and empty: nothing to list
        return node

    async def symlink(self, parent: Node, name: str, target: bytes, uid: int, gid: int) -> Node:
        self._writable()
        if self.lists_buckets(parent):
            raise NotPermitted("symlinks cannot live at the root, only buckets")
        await self._check_absent(parent, name)
        attrs = self._new_attrs(stat.S_IFLNK | 0o777, uid, gid)
        bucket, prefix = self.location(parent)
        info = await self._put_small(bucket, prefix + name, target, attrs)
        node = self._new_node(parent, name, attrs, len(target), info.etag)
        node.link_target = target
        return node

    async def _put_small(self, bucket: str, key: str, data: bytes,
                         attrs: Attributes) -> ObjectInfo:
        return await self.backend.write_object(bucket, key, io.BytesIO(data), len(data),
                                               attrs_mod.encode(attrs))

    async def readlink(self, node: Node) -> bytes:
        if not stat.S_ISLNK(node.attrs.mode):
            raise InvalidArgument("not a symlink")
        if node.link_target is None:
            bucket, key = self.location(node)
            node.link_target = await self.backend.read_object(bucket, key, 0, node.size)
        return node.link_target

    async def unlink(self, parent: Node, name: str) -> None:
        self._writable()
        node = await self.lookup(parent, name)
        if node.is_dir:
            raise IsADirectoryError(errno.EISDIR, name)
        await self._remove_file(node)

    async def _remove_file(self, node: Node) -> None:
        bucket, key = self.location(node)
        on_server = node.exists_on_server
        obj = node.obj or self.cache.get(bucket, key)
        if obj is not None and await self._mover.drop_cached(obj):
            on_server = True
        if on_server:
            await self.backend.delete_object(bucket, key)
        node.unlinked = True
        self._detach(node)

    async def rmdir(self, parent: Node, name: str) -> None:
        self._writable()
        node = await self.lookup(parent, name)
        if not node.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, name)
        if self.lists_buckets(parent):
            self._buckets_editable()
        await self._check_empty(node)
        bucket, prefix = self.location(node)
        if self.lists_buckets(parent):
            await self.backend.delete_bucket(bucket)
        else:
            await self.backend.delete_object(bucket, prefix)
        node.unlinked = True
        self._detach(node)

    async def _check_empty(self, node: Node) -> None:
        assert node.children is not None
        node.listed_at = -1e18
        await self.refresh_listing(node)
        if node.children:
            raise NotEmpty("/".join(node.path()))

    # ---- rename ----------------------------------------------------------------------------

    async def rename(self, old_parent: Node, old_name: str, new_parent: Node, new_name: str,
                     noreplace: bool) -> None:
        self._writable()
        check_name(new_name)
        node = await self.lookup(old_parent, old_name)
        if self.lists_buckets(old_parent) or self.lists_buckets(new_parent):
            raise NotPermitted("buckets cannot be renamed")
        if node.is_dir and new_parent.is_under(node):
            raise InvalidArgument("cannot move a directory into itself")
        try:
            target: Node | None = await self.lookup(new_parent, new_name)
        except FileNotFoundError:
            target = None
        if target is node:
            return
        if target is not None:
            if noreplace:
                raise FileExistsError(errno.EEXIST, new_name)
            if node.is_dir and not target.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, new_name)
            if target.is_dir and not node.is_dir:
                raise IsADirectoryError(errno.EISDIR, new_name)
            if target.is_dir:
                await self._check_empty(target)
        src_bucket, src_key = self.location(node)
        dst_bucket, dst_prefix = self.location(new_parent)
        dst_key = dst_prefix + new_name + ("/" if node.is_dir else "")
        if node.is_dir:
            await self._mover.move_tree(src_bucket, src_key, dst_bucket, dst_key)
        else:
            await self._mover.move_object(node, src_bucket, src_key, dst_bucket, dst_key,
                                          target if target is not None
                                          and target.exists_on_server else None)
        if target is not None:
            target.unlinked = True
            self._detach(target)
        assert old_parent.children is not None and new_parent.children is not None
        del old_parent.children[old_name]
        self._note_removed(old_parent, old_name)
        node.parent, node.name = new_parent, new_name
        new_parent.children[new_name] = node
        new_parent.absent.pop(new_name, None)
        node.refreshed_at = time.monotonic()  # newer than any listing of new_parent under way

    # ---- attributes ------------------------------------------------------------------------

    async def save_attrs(self, node: Node) -> None:
        """Store changed mode/owner/times/xattrs: with the data if it is pending, else now."""
        self._writable()
        node.refreshed_at = time.monotonic()
        if node.parent is None or self.lists_buckets(node.parent):
            # The root and buckets carry no metadata: their attributes live as long as the mount.
            return
        meta = attrs_mod.encode(node.attrs)
        if node.obj is not None and node.obj.dirty:
            self.cache.set_metadata(node.obj, meta)
            return
        bucket, key = self.location(node)
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

    def getxattr(self, node: Node, name: str) -> bytes:
        try:
            return node.attrs.xattrs[name]
        except KeyError:
            raise NoSuchAttribute(name) from None

    async def setxattr(self, node: Node, name: str, value: bytes) -> None:
        if not name.startswith("user."):
            # setxattr(2): ENOTSUP is the answer for a namespace prefix the filesystem lacks.
            raise OSError(errno.ENOTSUP, f"only user.* attributes are kept, not {name}")
        node.attrs.xattrs[name] = value
        await self.save_attrs(node)

    async def removexattr(self, node: Node, name: str) -> None:
        if name not in node.attrs.xattrs:
            raise NoSuchAttribute(name)
        del node.attrs.xattrs[name]
        await self.save_attrs(node)

    # ---- file data -------------------------------------------------------------------------

    async def open_data(self, node: Node) -> CachedObject:
        """The cached object behind a file, revalidated against the server (close-to-open)."""
        await self.complete(node)  # its metadata goes with the next upload
        node.settle()
        if node.obj is None or not node.obj.dirty:
            if not self._fresh(node.refreshed_at) and node.exists_on_server:
                await self.getattr(node)
            bucket, key = self.location(node)
            node.obj = self.cache.open_object(bucket, key, node.size, node.etag,
                                              node.attrs.mtime_ns)
        node.open_count += 1
        self.cache.opened(node.obj)
        return node.obj

    def close_data(self, node: Node) -> None:
        obj = node.obj
        assert obj is not None
        node.open_count -= 1
        self.cache.closed(obj)
        node.settle()
        self._maybe_drop(node)

    async def discard_upload(self, entry: str) -> None:
        """Give up the queued upload of `entry` ("BUCKET/KEY"), the user's choice after it
        failed: its data leaves the cache, and the file shows what the server has, if any."""
        bucket, _, key = entry.partition("/")
        obj = self.cache.get(bucket, key)
        holders = [node for node in self.nodes.values() if obj is not None and node.obj is obj]
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
                self._detach(node)

    def commit(self, node: Node) -> None:
        """A program closed the file: its metadata goes with the upload queued now."""
        obj = node.obj
        if obj is not None and obj.dirty and not node.unlinked:
            obj.record.metadata = attrs_mod.encode(node.attrs)
            self.queue.commit(obj)

    async def truncate(self, node: Node, size: int) -> None:
        self._writable()
        if node.is_dir:
            raise IsADirectoryError(errno.EISDIR, node.name)
        self.check_size(size)
        obj = await self.open_data(node)
        try:
            await self.cache.truncate(obj, size)
            node.size = size
            node.attrs.mtime_ns = time.time_ns()
            self.commit(node)
        finally:
            self.close_data(node)

    def check_size(self, size: int) -> None:
        """EFBIG for a file the store could not hold, at the write, not at the upload."""
        limit = self.backend.features.max_object_size
        if limit is not None and size > limit:
            raise TooLarge(f"{size} bytes: the store holds objects of up to {limit} bytes")

    def _buckets_editable(self) -> None:
        if not self.backend.features.buckets_editable:
            raise NotPermitted(f"{self.backend.describe()} has a fixed set of buckets")

    def statfs_counts(self) -> tuple[int, int]:
        return len(self.nodes), self.cache.used

