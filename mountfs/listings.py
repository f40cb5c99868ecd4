"""What the store says a directory holds: lookups (with their negative cache and probes),
and listings merged into a directory's children and streamed to readdir. The metadata a
listing leaves out is read by mountfs/metadata_reads.py; what the store says of one name is
put on its node by mountfs/store_nodes.py.

A directory's children are authoritative for lookups (positive and negative) while its
listing is fresh: for the TTL from the listing's end, and while a program still reads it
(`NodeTable.listing_fresh`). Files being written live in the block cache until uploaded;
such "pending" nodes are kept in listings even though the server does not list them yet.
Against this mount's own changes a listing is as old as its request: what this mount created,
moved in or uploaded while it ran stays, and what this mount removed meanwhile is not brought
back by it.

A walk (`rsync`, `ls -l`, `find`) costs about one listing per directory plus the metadata its
entries need: the first lookup that misses in a directory never listed lists it (up to
`SMALL_DIR` entries; a larger one is probed name by name), a name a listing brought is checked
by the very request that reads its metadata, and concurrent lookups of one directory, or
metadata reads of one entry, share one request.

A listing need not carry metadata (S3 lists none; no store lists it for a common prefix). Its
entries then have default attributes until `complete` stats them, which the FUSE layer calls
before it shows a node's attributes (a directory's marker holds its mode and owner; an object's
metadata says whether it is a symlink); listing alone, as `ls` and `find` do, costs no stats.

The nodes live in the shared `NodeTable` (mountfs/table.py); creating and removing names is
`Namespace`'s (mountfs/namespace.py).
"""
from __future__ import annotations

import errno
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import trio

from cache.blocks import BlockCache
from mountfs.attrs import Defaults
from mountfs.backends.base import Backend, ObjectInfo
from mountfs.errors import BackendError, InvalidArgument, NameTooLong, NoSuchObject
from mountfs.nodes import Node, check_name
from mountfs.metadata_reads import MetadataReads
from mountfs.store_nodes import FOLDER_SUFFIX, StoreNodes, is_directory_object
from mountfs.table import NodeTable

log = logging.getLogger(__name__)

# A directory whose last listing fit one page of the server's answer is listed again to answer
# a lookup once its listing is stale: one request answers for every name, new ones included,
# where probing costs two per name.
SMALL_DIR = 1000
# Negative lookups remembered per directory (for the TTL) before the stale ones are dropped.
ABSENT_KEPT = 4096


class Listings:
    def __init__(self, backend: Backend, cache: BlockCache, table: NodeTable,
                 defaults: Defaults) -> None:
        self.backend = backend
        self.table = table
        self.defaults = defaults
        self.nodes = StoreNodes(cache, table, defaults)
        self.metadata = MetadataReads(backend, table, self.nodes)
        self._warned: set[str] = set()  # names logged once as hidden or ambiguous
        # Requests under way that others would repeat: a lookup's listing of a directory, a
        # probe of a name. Whoever comes second waits for it.
        self._listing: dict[Node, trio.Event] = {}
        self._probing: dict[tuple[Node, str], trio.Event] = {}

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
        if child is not None and (child.pending or self.table.fresh(child.refreshed_at)
                                  or self.table.held_fresh(child)
                                  or self.table.on_read_path(child)):
            return child
        if child is None and self.table.fresh(parent.absent.get(name, -1e18)):
            raise FileNotFoundError(errno.ENOENT, name)
        if child is not None and not child.is_dir and (
                not child.meta_known
                or not self.defaults.from_listings and not self._listable(parent)):
            # A file the server listed or stat'ed: the read of its metadata (a HEAD, which the
            # caller needs anyway if it was never read) also says whether it is still there,
            # where a probe would cost a one-key LIST more (a directory of its name made
            # elsewhere since shows from the next listing). A small directory is listed again
            # instead, below: one request for every name.
            child.meta_known = False  # stale: read again
            node = await self.metadata.complete(child)
            if parent.children.get(name) is node:
                return node
            if name not in parent.children:
                self._remember_absent(parent, name)
            raise FileNotFoundError(errno.ENOENT, name)
        if self._listable(parent):
            await self._list_to_answer(parent)
        if self.table.listing_fresh(parent):
            child = parent.children.get(name)
            if child is None:
                raise FileNotFoundError(errno.ENOENT, name)
            return child
        probing = self._probing.get((parent, name))
        if probing is not None:  # the kernel asks again, or another program: one answer
            await probing.wait()
            return await self.lookup(parent, name)
        done = self._probing[parent, name] = trio.Event()
        try:
            found = await self._probe(parent, name)
        finally:
            del self._probing[parent, name]
            done.set()
        if found is None:
            if child is not None:
                self.table.detach(child)
            self._remember_absent(parent, name)
            raise FileNotFoundError(errno.ENOENT, name)
        return found

    def _listable(self, node: Node) -> bool:
        """Listing it answers a lookup as cheaply as probing for the name would: it was small
        when last listed, or it was never listed (then `_list_to_answer` stops where it is
        not small); and a listing answers lookups at all (not with a zero TTL)."""
        return self.table.ttl > 0 and (self.table.lists_buckets(node) or
                                       node.listed_size is None or node.listed_size < SMALL_DIR)

    async def _list_to_answer(self, node: Node) -> None:
        """List the directory to answer lookups in it, unless its listing is fresh; one such
        listing at a time (lookups meanwhile wait for it). A listing that reaches `SMALL_DIR`
        entries stops there: the entries it read answer for themselves, and the directory is
        probed name by name until a program lists it whole."""
        if self.table.listing_fresh(node):
            return  # (without walking its children: a lookup before each create of 1,000)
        listing = self._listing.get(node)
        if listing is not None:
            await listing.wait()
            return
        done = self._listing[node] = trio.Event()
        try:
            entries = 0
            pages = self.list_dir(node)
            try:
                async for page in pages:
                    entries += len(page)
                    if entries >= SMALL_DIR and not self.table.listing_fresh(node):
                        node.listed_size = entries
                        break
            except BackendError as exc:
                # No answer, but the names can still be asked one by one (a DCSS service that
                # cannot continue a listing past its first page): probe them from now on.
                log.info("listing %s to answer lookups failed (%s); asking name by name",
                         "/".join(node.path()) or "/", exc)
                node.listed_size = SMALL_DIR
            finally:
                await pages.aclose()
        finally:
            del self._listing[node]
            done.set()

    def _remember_absent(self, parent: Node, name: str) -> None:
        if len(parent.absent) >= ABSENT_KEPT:
            parent.absent = {n: t for n, t in parent.absent.items() if self.table.fresh(t)}
        parent.absent[name] = time.monotonic()

    async def _probe(self, parent: Node, name: str) -> Node | None:
        """Ask the server what `name` is under `parent`: object, marker, prefix, or nothing."""
        if self.table.lists_buckets(parent):
            if name in await self.backend.list_buckets():
                info = ObjectInfo(name, "")
                return self.nodes.child(parent, name, info, True, time.monotonic())
            return None
        bucket, prefix = self.table.location(parent)
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
            node = self.nodes.child(parent, name, ObjectInfo(bucket, key + "/"), True,
                                    asked_at)
            # Its marker, if it has one, holds its attributes (read by `complete`); without
            # one, the defaults are its attributes.
            node.meta_known = below[0].key != key + "/" or self.defaults.from_listings
            return node
        if file:
            return self.nodes.child(parent, name, file[0], is_directory_object(file[0]),
                                    asked_at)
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
        if self.table.listing_fresh(node):
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
                self.table.detach(child)
        if node.changed_at < started:
            # Fresh from its end: a listing of many pages is used as long as a short one.
            # (This mount's own changes while it ran were merged above by `started`.)
            node.listed_at = time.monotonic()
        # Else the service said the directory changed while the listing ran, perhaps after it
        # was answered: it stays set aside, or the change would be lost for the TTL (a lookup
        # that waited for it probes its name instead, and tells the kernel what is new).
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
                    self.nodes.child(node, name, info, True, started)
                if not (is_dir and info.key.endswith(FOLDER_SUFFIX)):  # NAME_$folder$ and NAME/
                    self._warn_once(node, name,  # are one directory, as the tools meant
                                    "is both a file and a directory; showing the directory")
                continue
            seen.add(name)
            names.append(name)
            self.nodes.child(node, name, info, is_dir, started)
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
        if self.table.lists_buckets(node):
            yield [(bucket, ObjectInfo(bucket, ""), True)
                   for bucket in await self.backend.list_buckets() if self._name_ok("/", bucket)]
            return
        bucket, prefix = self.table.location(node)
        async for page in self.backend.list_objects(bucket, prefix):
            entries: list[tuple[str, ObjectInfo, bool]] = []
            for info in page:
                rest = info.key[len(prefix):]
                is_dir = info.is_prefix or rest.endswith("/")
                name = rest[:-1] if rest.endswith("/") else rest
                if not rest or "/" in name:
                    continue  # the directory's own marker, or a key with '//' inside
                if not is_dir and name.endswith(FOLDER_SUFFIX) and len(name) > len(FOLDER_SUFFIX):
                    name, is_dir = name[:-len(FOLDER_SUFFIX)], True
                is_dir = is_dir or is_directory_object(info)  # where listings carry metadata
                if self._name_ok(prefix, name):
                    entries.append((name, info, is_dir))
            yield entries
