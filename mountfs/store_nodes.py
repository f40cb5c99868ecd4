"""What the store says of a name, put on its node: attributes decoded from an object's
metadata (or a listing's defaults), a node refreshed from the server unless this mount holds
newer data of its own, and the child a listing or a stat found made or updated in its
parent. Shared by listings (mountfs/listings.py) and metadata reads
(mountfs/metadata_reads.py).
"""
from __future__ import annotations

import stat
import time

from cache.blocks import BlockCache
from mountfs import attrs as attrs_mod
from mountfs.attrs import Attributes, Defaults
from mountfs.backends.base import CONTENT_TYPE, ObjectInfo
from mountfs.nodes import Node
from mountfs.table import NodeTable

# Directories as older tools write them, beside the `dir/` marker of s3fs and rclone: a key
# `NAME_$folder$` (Hadoop, S3 Organizer), and an empty object `NAME` whose Content-Type says it
# is a directory (older s3fs). Both show as the directory NAME; the object itself is not shown.
FOLDER_SUFFIX = "_$folder$"
DIRECTORY_TYPE = "application/x-directory"


def is_directory_object(info: ObjectInfo) -> bool:
    """An empty object that an older tool wrote for a directory (known only from metadata)."""
    return (not info.is_prefix and info.size == 0 and info.metadata is not None
            and info.metadata.get(CONTENT_TYPE) == DIRECTORY_TYPE)


class StoreNodes:
    def __init__(self, cache: BlockCache, table: NodeTable, defaults: Defaults) -> None:
        self.cache = cache  # to see whether this mount wrote a newer version than a listing's
        self.table = table
        self.defaults = defaults

    def attrs(self, info: ObjectInfo, kind: int) -> Attributes:
        return attrs_mod.decode(info.metadata, kind, info.mtime_ns or time.time_ns(),
                                self.defaults)

    def apply(self, node: Node, info: ObjectInfo, kind: int, asked_at: float) -> None:
        """Refresh a node from the server, unless it holds newer data of its own. `asked_at`:
        when the request that brought `info` began."""
        self.table.refreshed_now(node, asked_at)
        node.settle()
        if node.pending:
            return
        if info.metadata is None and node.etag == info.etag and not node.is_dir:
            return  # a listing without metadata says nothing new about an unchanged object
        if not node.is_dir and info.etag != node.etag:
            obj = self.cache.get(*self.table.location(node))
            if obj is not None and obj.version_at > asked_at:
                # This mount wrote a newer version (an upload ended while the request was
                # under way): taking the older one would make it the base of the next upload,
                # which would then conflict with this mount's own.
                return
        new = self.attrs(info, kind)
        if node.is_dir != stat.S_ISDIR(new.mode):
            return  # a file and a directory of one name: the node keeps its kind
        if node.entries_changed_ns:  # this mount's change, not yet on the marker (dirtimes)
            new.mtime_ns = max(new.mtime_ns, node.entries_changed_ns)
            new.ctime_ns = max(new.ctime_ns, node.entries_changed_ns)
        if info.metadata is not None or not node.is_dir:
            node.attrs = new
            node.meta_known = info.metadata is not None or self.defaults.from_listings
        if not node.is_dir:
            node.size, node.etag, node.on_server = info.size, info.etag, True
            node.sized = info.sized
            node.link_target = None

    def child(self, parent: Node, name: str, info: ObjectInfo, is_dir: bool,
              asked_at: float) -> Node:
        kind = stat.S_IFDIR if is_dir else stat.S_IFREG
        assert parent.children is not None
        node = parent.children.get(name)
        if node is not None and node.is_dir == is_dir:
            self.apply(node, info, kind, asked_at)
        else:
            if node is not None:
                self.table.detach(node)
            node = self.table.new(parent, name, self.attrs(info, kind), info.size, info.etag)
            self.table.refreshed_now(node, asked_at)
            node.sized = info.sized
            node.meta_known = (info.metadata is not None or self.table.lists_buckets(parent)
                               or self.defaults.from_listings)
        if is_dir and info.key and not info.is_prefix and not info.key.endswith("/"):
            node.directory_object = info.key  # an older tool's directory object
        return node
