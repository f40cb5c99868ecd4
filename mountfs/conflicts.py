"""Settling an upload that lost a race with another client (its condition failed).

`ConflictSettler.settle` is the write-back queue's `resolve_conflict`: the queue knows objects,
this knows the names. If another client replaced the object, that version keeps the name and
this mount's goes up beside it as `NAME.conflict-<UTC time>`; if it was deleted, this mount's
brings it back. Either way the queue uploads again at once.
"""
from __future__ import annotations

import logging
import time

from cache.blocks import BlockCache
from cache.objects import CachedObject
from mountfs.errors import PreconditionLost
from mountfs.nodes import NAME_MAX, Node

log = logging.getLogger(__name__)


class ConflictSettler:
    def __init__(self, cache: BlockCache, nodes: dict[int, Node]) -> None:
        self.cache = cache
        self.nodes = nodes  # the namespace's table, to find the nodes of an object

    def settle(self, obj: CachedObject, exc: BaseException) -> bool:
        """An upload's condition failed: the server's object is no longer the version this
        mount's data was based on. If another client replaced it, that version keeps the name
        and ours goes up beside it as `NAME.conflict-<UTC time>` (the cached object and its
        nodes are renamed; the kernel forgets the old name's entry). If it was deleted, ours
        brings it back. True: settled, upload again."""
        if not isinstance(exc, PreconditionLost) or obj.detached:
            return False
        rec = obj.record
        if not exc.exists:
            log.warning("%s/%s was deleted elsewhere since this mount read it; uploading this "
                        "mount's version", rec.bucket, rec.key)
            rec.on_server = False  # the base is now "no object"
            self.cache.set_server_version(obj, rec.etag, rec.mtime_ns)  # (saves the record)
            return True
        old_key = rec.key
        new_key = self._conflict_key(rec.bucket, old_key)
        log.warning("conflict: %s/%s was changed elsewhere since this mount read it (%s); "
                    "keeping the other version there and this mount's as %s", rec.bucket,
                    old_key, exc, new_key)
        rec.on_server = False  # nothing is there yet: the copy must not replace anything
        self.cache.rename(obj, rec.bucket, new_key)
        new_name = new_key.rsplit("/", 1)[-1]
        for node in [n for n in self.nodes.values() if n.obj is obj]:
            parent, old_name = node.parent, node.name
            node.on_server = False
            if node.unlinked or parent is None or parent.children is None \
                    or parent.children.get(old_name) is not node:
                continue
            del parent.children[old_name]
            node.name = new_name
            parent.children[new_name] = node
            parent.absent.pop(new_name, None)
            parent.absent.pop(old_name, None)
            parent.listed_at = -1e18  # the name now holds the other version: ask the server
            self._forget_kernel_entry(parent, old_name)
        return True

    def _conflict_key(self, bucket: str, key: str) -> str:
        """`key.conflict-<UTC time>`, its last component cut to fit NAME_MAX, unused here."""
        head, _, name = key.rpartition("/")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for n in range(1, 1000):
            suffix = f".conflict-{stamp}" + (f"-{n}" if n > 1 else "")
            room = NAME_MAX - len(suffix.encode())
            base = name.encode()[:room].decode(errors="ignore")
            candidate = (head + "/" if head else "") + base + suffix
            if self.cache.get(bucket, candidate) is None:
                return candidate
        raise AssertionError("a thousand conflicts of one key in one second")

    @staticmethod
    def _forget_kernel_entry(parent: Node, name: str) -> None:
        """Make the kernel look `name` up again rather than trust its cached entry (which now
        points at the conflict copy's node). Asynchronous: pyfuse3 runs it in its own thread,
        which may not wait on the request being handled."""
        try:
            import pyfuse3

            pyfuse3.invalidate_entry_async(parent.inode, name.encode(), ignore_enoent=True)
        except Exception as exc:  # not serving FUSE (tests of the namespace alone)
            log.debug("cannot invalidate the kernel's entry %r: %s", name, exc)
