"""The metadata a listing leaves out, read when a program is about to see it: an entry's
attributes read with those of its incomplete siblings in one batch (`complete`), ahead of the
program by the stat-ahead (mountfs/statahead.py), and again once the TTL has passed
(`getattr`). Concurrent reads of one entry's metadata share one request.
"""
from __future__ import annotations

import logging
import stat
import time
from itertools import islice

import trio

from mountfs.backends.base import Backend
from mountfs.errors import NoSuchObject
from mountfs.nodes import Node
from mountfs.statahead import StatAhead
from mountfs.store_nodes import StoreNodes, is_directory_object
from mountfs.table import NodeTable

log = logging.getLogger(__name__)

# Attributes a listing left out are read for this many entries of a directory at once, in
# parallel: `ls -l` asks for each in turn, and one round trip each would dominate.
METADATA_BATCH = 64


class MetadataReads:
    def __init__(self, backend: Backend, table: NodeTable, nodes: StoreNodes) -> None:
        self.backend = backend
        self.table = table
        self.nodes = nodes
        # Reads of a node's metadata under way: whoever comes second waits for it.
        self._reading: dict[Node, trio.Event] = {}
        # Reads the entries of directories being read and stat'ed, ahead of the stats.
        self.stat_ahead = StatAhead(self.claim, self._read_metadata_if_can, self.forgo,
                                    self._reading.get,
                                    backend.features.parallel_metadata_reads)

    async def complete(self, node: Node) -> Node:
        """The node with the attributes its metadata gives, read now if a listing left them out.
        Call before attributes are shown or changed. Siblings the listing also left incomplete
        are read with it, in parallel: whoever asks for one entry's attributes (`ls -l`,
        a file manager) is about to ask for the others'."""
        # A program reading its directory: read this entry, and ahead of it. Known entries
        # move the edge too, or reads would stop once the program reached what was read ahead
        # and start again only at the next unknown entry, a full round trip later each time.
        self.stat_ahead.stat_seen(node)
        if node.meta_known:
            return node
        reading = self._reading.get(node)
        if reading is not None:  # read with the siblings of another entry: one HEAD
            await reading.wait()
            if node.meta_known:
                return node
        siblings: list[Node] = []
        if node.parent is not None and node.parent.children is not None:
            siblings = list(islice((sibling for sibling in node.parent.children.values()
                                    if not sibling.meta_known and sibling is not node
                                    and sibling not in self._reading),
                                   METADATA_BATCH - 1))
        done = {each: trio.Event() for each in (node, *siblings)}
        self._reading.update(done)
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            for sibling in siblings:
                nursery.start_soon(self._read_metadata_if_can, sibling, done[sibling])
            try:
                node = await self._read_metadata(node, done[node])
            except Exception as exc:  # raised past the nursery, not wrapped in a group by it
                failure = exc
        if failure is not None:
            raise failure
        return node

    def claim(self, node: Node) -> trio.Event | None:
        """Register a read of the node's metadata about to start elsewhere (the stat-ahead),
        for others to wait for; None: it is known, or a read is under way."""
        if node.meta_known or node in self._reading:
            return None
        done = self._reading[node] = trio.Event()
        return done

    def forgo(self, node: Node, done: trio.Event) -> None:
        """A claimed read not made after all: whoever waits for it reads the node itself."""
        if self._reading.get(node) is done:
            del self._reading[node]
        done.set()

    async def _read_metadata_if_can(self, node: Node, done: trio.Event) -> None:
        """A sibling read on speculation: a failure leaves it for its own turn to report."""
        try:
            await self._read_metadata(node, done)
        except Exception as exc:
            log.debug("metadata of %s not read ahead: %s", "/".join(node.path()), exc)

    async def _read_metadata(self, node: Node, done: trio.Event) -> Node:
        """Read the node's metadata (`complete` registered the read in `_reading` as `done`);
        the node that stands for its name now (a directory, if the metadata says an older tool
        wrote the object for one). A file gone from the server since listed leaves its parent."""
        try:
            return await self._read_metadata_now(node)
        finally:
            if self._reading.get(node) is done:
                del self._reading[node]
            done.set()

    async def _read_metadata_now(self, node: Node) -> Node:
        bucket, key = self.table.location(node)
        asked_at = time.monotonic()
        try:
            info = await self.backend.stat_object(bucket, key)
        except NoSuchObject:
            # A directory without a marker: the defaults hold. A file deleted elsewhere since
            # listed: gone (unless it changed here meanwhile: renamed, written).
            if not node.is_dir and not node.pending and node.refreshed_at < asked_at \
                    and self.table.location(node) == (bucket, key):
                self.table.detach(node)
        else:
            if not node.is_dir and is_directory_object(info) and node.parent is not None \
                    and not node.pending:
                # Listed as an empty file; a directory by its Content-Type. A new node (a new
                # inode): the kernel cannot turn a file's inode into a directory's.
                return self.nodes.child(node.parent, node.name, info, True, asked_at)
            self.nodes.apply(node, info, stat.S_IFDIR if node.is_dir else stat.S_IFREG, asked_at)
        node.meta_known = True  # (a pending node's own attributes win over the server's)
        return node

    async def getattr(self, node: Node) -> Node:
        """The node, its attributes re-read from the server once the TTL has passed. (Should
        `complete` find it is a directory, the kernel learns of that by its next lookup: the
        node, whose metadata was unknown, has no kernel cache time.)"""
        await self.complete(node)
        node.settle()
        if node.is_dir or node.pending or node.unlinked or self.table.fresh(node.refreshed_at) \
                or self.table.held_fresh(node) or not node.exists_on_server:
            return node
        bucket, key = self.table.location(node)
        asked_at = time.monotonic()
        try:
            self.nodes.apply(node, await self.backend.stat_object(bucket, key), stat.S_IFREG,
                             asked_at)
        except NoSuchObject:
            node.refreshed_at = time.monotonic()  # gone on the server; keep serving what we had
        return node
