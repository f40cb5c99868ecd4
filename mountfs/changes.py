"""Follows a driver's change feed (`Backend.changes`): each change sets aside the listing it
names, with the attributes of the entries in it and the names remembered absent, so the next
`ls` or lookup there asks the service again instead of waiting out the metadata TTL; and makes
the kernel forget what it keeps of those entries for the TTL (their names, their attributes and
their files' pages), so that `stat` or a read of one asks the mount too.

The kernel does not cache directory listings, nor names found absent (lookup answers ENOENT
without an entry), so a listing set aside is enough for new and deleted entries.
"""
from __future__ import annotations

import logging

import pyfuse3
import trio

from mountfs.backends.base import Backend, Change
from mountfs.table import NodeTable

log = logging.getLogger(__name__)

Known = tuple[int, str, int | None]  # (parent inode, name, inode of a file) the kernel knows


async def follow_changes(table: NodeTable, backend: Backend) -> None:
    """Expire what each change of `backend`'s feed names, for as long as the mount runs."""
    async for change in backend.changes():
        known = expire(table, change)
        if known:
            # In a thread: dropping a file's pages waits for reads of them in flight, which
            # this event loop answers.
            await trio.to_thread.run_sync(forget_in_kernel, known, cancellable=True)


def expire(table: NodeTable, change: Change) -> list[Known]:
    """Set aside the listing of the directory `change` names, if this mount has read it; the
    entries in it the kernel knows."""
    known: list[Known] = []
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
            table.set_aside(node)
            for name, child in node.children.items():
                if child.lookups and not child.pending:
                    known.append((node.inode, name, None if child.is_dir else child.inode))
    return known


def forget_in_kernel(known: list[Known]) -> None:
    """Make the kernel look each entry up again and forget each file's attributes and pages.
    (An entry it has forgotten meanwhile is no error.)"""
    for parent, name, inode in known:
        try:
            pyfuse3.invalidate_entry(parent, name.encode())
        except OSError as exc:
            log.debug("the kernel's entry %r stays: %s", name, exc)
        if inode is not None:
            try:
                pyfuse3.invalidate_inode(inode, attr_only=False)
            except OSError as exc:
                log.debug("the kernel's inode %d stays: %s", inode, exc)
