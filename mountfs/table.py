"""The node table: the inodes the kernel may name, where each stands on the store, and how long
what the store said stays fresh.

A node stays in the table while it is in its parent's children, or the kernel (its lookup
count) or an open handle holds it; `detach`, `forget` and `maybe_drop` let it go once none
does. `location` is the one place a node becomes (bucket, key) under the mount's scope. The
listings (mountfs/listings.py) and the operations on names (mountfs/namespace.py) share it.
"""
from __future__ import annotations

import errno
import time

from mountfs.attrs import Attributes
from mountfs.backends import Scope
from mountfs.nodes import Node

ROOT_INODE = 1


class NodeTable:
    def __init__(self, scope: Scope, ttl: float, root_attrs: Attributes) -> None:
        self.scope = scope
        self.ttl = ttl
        self.nodes: dict[int, Node] = {}
        self.read_dirs: set[Node] = set()  # directories a program has open (Node.readers)
        self._next_inode = ROOT_INODE
        self.root = self.new(None, "", root_attrs)

    def new(self, parent: Node | None, name: str, attrs: Attributes, size: int = 0,
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

    def get(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, f"inode {inode}") from None

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

    def fresh(self, stamp: float) -> bool:
        return time.monotonic() - stamp < self.ttl

    def listing_fresh(self, node: Node) -> bool:
        """A directory's children are the whole directory: its last listing ended less than
        the TTL ago, or a program that opened the directory before that listing ended still
        has it open (`ls -l` stats each entry between its readdir calls). A listing set aside
        (`listed_at` reset) is never fresh."""
        return node.listed_at > -1e18 and (
            self.fresh(node.listed_at)
            or self.ttl > 0 and bool(node.readers) and min(node.readers) <= node.listed_at)

    def set_aside(self, node: Node) -> None:
        """The directory changed on the service (a driver's change feed said so): its listing,
        the attributes of its entries and the names remembered absent are asked for again. A
        listing or stat under way now leaves them set aside too (`refreshed_now`)."""
        assert node.children is not None
        node.listed_at = -1e18
        node.changed_at = time.monotonic()
        node.absent.clear()
        for child in node.children.values():
            child.refreshed_at = -1e18

    def refreshed_now(self, node: Node, asked_at: float) -> None:
        """`node` got its attributes from the server by a request begun at `asked_at`: fresh
        from now, unless the service said since that its directory changed. The answer may
        then predate the change: it is used, and asked for again next time."""
        parent = node.parent
        node.refreshed_at = -1e18 if parent is not None and parent.changed_at >= asked_at \
            else time.monotonic()

    def held_fresh(self, node: Node) -> bool:
        """The node's attributes came from the server (or changed here) since a program that
        still has its directory open opened it: as its listing (`listing_fresh`), they hold
        while that program reads and stats the directory, however long that takes."""
        parent = node.parent
        return self.ttl > 0 and parent is not None and bool(parent.readers) \
            and node.refreshed_at >= min(parent.readers)

    def reading(self, node: Node, opened_at: float) -> None:
        """A program opened the directory (opendir) at `opened_at`: its listing stays fresh
        while it is read (`listing_fresh`)."""
        node.readers.append(opened_at)
        self.read_dirs.add(node)

    def done_reading(self, node: Node, opened_at: float) -> None:
        node.readers.remove(opened_at)
        if not node.readers:
            self.read_dirs.discard(node)

    def on_read_path(self, node: Node) -> bool:
        """A directory a program has open, or one on the path to such a directory: it holds
        for lookups in its parent while the program reads, as the open directory's listing
        and entries do. `ls -l DIR` stats DIR/NAME by its whole path, so past the TTL the
        kernel asks again for each directory on that path, and each would list its parent
        again, for as long as the `ls` runs (at a bucket's root on s3rver, a walk of every
        key in the bucket each time: `ls -l` of 100,000 took 208 s, since 165 s)."""
        return self.ttl > 0 and any(opened.is_under(node) for opened in self.read_dirs)

    def forget(self, inode: int, count: int) -> None:
        node = self.nodes.get(inode)
        if node is None:
            return
        node.lookups -= count
        self.maybe_drop(node)

    def maybe_drop(self, node: Node) -> None:
        attached = (node.parent is not None and node.parent.children is not None
                    and node.parent.children.get(node.name) is node)
        if node.lookups <= 0 and node.open_count == 0 and not attached and node is not self.root:
            self.nodes.pop(node.inode, None)

    def detach(self, node: Node) -> None:
        """Take a node out of its parent's listing (it was removed or replaced)."""
        parent = node.parent
        if parent is not None and parent.children is not None \
                and parent.children.get(node.name) is node:
            del parent.children[node.name]
            self.note_removed(parent, node.name)
        self.maybe_drop(node)

    def note_removed(self, parent: Node, name: str) -> None:
        """`name` left `parent`: a listing under way may have read it from the server before."""
        if parent.listings:
            parent.removed[name] = time.monotonic()
