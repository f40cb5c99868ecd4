"""Follows a driver's change feed (`Backend.changes`): each change sets aside the listing it
names, with the attributes of the entries in it and the names remembered absent, so the next
`ls` or lookup there asks the service again instead of waiting out the metadata TTL.

The kernel needs nothing more: it does not cache directory listings, and the entries of a
changed listing whose size is not known (`ObjectInfo.sized`) carry no attribute cache time;
other entries' kernel attributes expire by the TTL as before.
"""
from __future__ import annotations

import logging

from mountfs.backends.base import Backend, Change
from mountfs.table import NodeTable

log = logging.getLogger(__name__)


async def follow_changes(table: NodeTable, backend: Backend) -> None:
    """Expire what each change of `backend`'s feed names, for as long as the mount runs."""
    async for change in backend.changes():
        expire(table, change)


def expire(table: NodeTable, change: Change) -> None:
    """Set aside the listing of the directory `change` names, if this mount has read it."""
    for node in list(table.nodes.values()):
        if not node.is_dir or node.children is None or node.unlinked:
            continue
        if change.bucket is None:
            hit = table.lists_buckets(node)
        else:
            hit = not table.lists_buckets(node) and table.location(node) == \
                (change.bucket, change.prefix)
        if hit:
            log.debug("changed on the service: %s/%s", change.bucket or "", change.prefix)
            node.listed_at = -1e18
            node.absent.clear()
            for child in node.children.values():
                child.refreshed_at = -1e18
