"""Moving objects to a new name on the store, in an order a crash cannot make lose both names.

`Namespace.rename` checks the names and moves the nodes; `Mover` moves what they stand for. A
file is copied on the server, then deleted (a file still being written here is renamed in the
cache instead, and uploaded under its new name). A service that renames on its own
(`Features.native_rename`: FirecREST's `mv`, the local store's rename(2)) moves a file or a
whole tree in one request instead, the uploads below it held meanwhile. Otherwise a directory
is every object below it and its markers, all copied before any is deleted, the markers last and
deepest first, so a crash leaves the old tree or the new one whole. A cached object whose server copy is about to go
(replaced by a rename, or unlinked) is dropped here too, its data kept for open handles.
"""
from __future__ import annotations

from cache.blocks import BlockCache
from cache.objects import CachedObject
from cache.writeback import WritebackQueue
from mountfs.backends.base import Backend
from mountfs.errors import NoSuchObject
from mountfs.nodes import Node


class Mover:
    def __init__(self, backend: Backend, cache: BlockCache, queue: WritebackQueue) -> None:
        self.backend = backend
        self.cache = cache
        self.queue = queue

    async def drop_cached(self, obj: CachedObject) -> bool:
        """Stop the uploads of `obj` and forget it: its file was unlinked or replaced. While a
        program still has it open, what is not cached yet is fetched first, so that it reads
        on to the end after the server copy goes. True: the server held a version of it."""
        await self.queue.cancel_inflight(obj)
        on_server = obj.record.on_server
        self.queue.discard(obj)
        self.cache.discard(obj)
        if obj.open_count > 0:
            await self.cache.fill(obj)
        return on_server

    async def move_object(self, node: Node, src_bucket: str, src_key: str, dst_bucket: str,
                          dst_key: str, replaced: Node | None) -> None:
        """Copy, then delete: a crash in between leaves both names, never neither.
        `replaced`: the file the server holds by the new name, now replaced."""
        replaces_on_server = replaced is not None
        # What an upload under the new name replaces there (its base version).
        replaced_etag = "" if replaced is None else \
            replaced.obj.record.etag if replaced.obj is not None else replaced.etag
        obj = node.obj or self.cache.get(src_bucket, src_key)
        old = self.cache.get(dst_bucket, dst_key)
        if old is not None and old is not obj:
            # Its upload, stopped here, may have stored it meanwhile: the new name then
            # replaces that version, not the absence (or older version) seen before.
            replaces_on_server = await self.drop_cached(old)
            replaced_etag = old.record.etag if replaces_on_server else ""
        if obj is not None and obj.dirty:
            await self.queue.cancel_inflight(obj)
            if obj.dirty:
                await self.cache.fill(obj)  # its unchanged blocks are about to leave the server
                await self.queue.cancel_inflight(obj)  # one may have started during the fill
        # No checkpoint from here to the cache rename: no upload can start under the old name.
        if obj is not None and obj.dirty:
            on_server = obj.record.on_server
            # The replaced object stays on the server until the upload overwrites it: so that
            # an unlink before then deletes it, the new name counts as being on the server.
            obj.record.on_server = node.on_server = replaces_on_server
            obj.record.etag = replaced_etag  # its blocks are all here: the old ETag names none
            self.cache.rename(obj, dst_bucket, dst_key)
        else:  # on the server, perhaps uploaded just now: move it there
            if self.native(src_bucket, dst_bucket):
                info = await self.backend.rename_object(src_bucket, src_key, dst_key)
                on_server = False  # nothing left under the old name
            else:
                info = await self.backend.copy_object(src_bucket, src_key, dst_bucket, dst_key)
                on_server = True
            if obj is not None:
                self.cache.rename(obj, dst_bucket, dst_key)
                self.cache.set_server_version(obj, info.etag, info.mtime_ns)
            node.etag = info.etag
        if on_server:
            await self.backend.delete_object(src_bucket, src_key)

    def native(self, src_bucket: str, dst_bucket: str) -> bool:
        """Whether the service moves objects from one bucket to the other itself."""
        return self.backend.features.native_rename and src_bucket == dst_bucket

    async def _rename_tree(self, bucket: str, src_prefix: str, dst_prefix: str) -> None:
        """One request of the service moves the tree; what is cached below it (written here
        and not uploaded yet, or read) follows under its new key, and uploads wait meanwhile.
        An object being written here keeps its place in the queue: its upload replaces the
        moved server copy, as it would have replaced the old one."""
        async with self.queue.held(bucket, src_prefix):
            await self.backend.rename_object(bucket, src_prefix, dst_prefix)
            for obj in self.cache.objects_under(bucket, src_prefix):
                self.cache.rename(obj, bucket, dst_prefix + obj.record.key[len(src_prefix):])

    async def move_tree(self, src_bucket: str, src_prefix: str, dst_bucket: str,
                        dst_prefix: str) -> None:
        """Every object below, copied first and deleted after, so a crash leaves one whole tree.
        Objects still being written here move in the cache and upload under the new name.
        A service that renames trees itself does it in one request."""
        if self.native(src_bucket, dst_bucket):
            await self._rename_tree(src_bucket, src_prefix, dst_prefix)
            return
        # Taken before the listing: an upload that ends during it leaves an object neither
        # listed nor dirty, yet still to move.
        local = self.cache.dirty_under(src_bucket, src_prefix)
        keys: list[str] = []
        async for page in self.backend.list_objects(src_bucket, src_prefix, delimiter=None):
            keys.extend(info.key for info in page if info.key != src_prefix)
        for key in keys:
            skipped = await self._copy_object(src_bucket, key, dst_bucket,
                                              dst_prefix + key[len(src_prefix):])
            if skipped is not None and skipped not in local:
                local.append(skipped)
        # Markers of non-empty subdirectories need not be listed (the local store lists a
        # directory as its marker only while it is empty), yet they hold the directory's
        # attributes and, left behind, would bring the old tree back: handle each one.
        markers = self._dirs_below(src_prefix, keys)
        for marker in sorted(markers.difference(keys)) + [src_prefix]:
            await self._copy_marker(src_bucket, marker, dst_bucket,
                                    dst_prefix + marker[len(src_prefix):])
        local += [o for o in self.cache.dirty_under(src_bucket, src_prefix) if o not in local]
        for obj in local:
            await self.queue.cancel_inflight(obj)
            if obj.dirty:
                await self.cache.fill(obj)
                await self.queue.cancel_inflight(obj)
            rec = obj.record
            if obj.detached or rec.bucket != src_bucket or not rec.key.startswith(src_prefix):
                continue  # removed or moved meanwhile
            if rec.on_server and rec.key not in keys:
                keys.append(rec.key)  # uploaded since the listing: delete it with the rest
            new_key = dst_prefix + rec.key[len(src_prefix):]
            if obj.dirty:
                rec.on_server = False
                self.cache.rename(obj, dst_bucket, new_key)
            else:  # its upload finished meanwhile: the server copy moves like the others
                await self._copy_object(src_bucket, rec.key, dst_bucket, new_key)
        for key in keys:
            if not key.endswith("/"):
                await self.backend.delete_object(src_bucket, key)
        # Then the markers, deepest first, so each directory is empty when its marker goes.
        markers = self._dirs_below(src_prefix, keys)
        for marker in sorted(markers, key=lambda k: k.count("/"), reverse=True) + [src_prefix]:
            await self.backend.delete_object(src_bucket, marker)

    @staticmethod
    def _dirs_below(prefix: str, keys: list[str]) -> set[str]:
        """The directory prefixes strictly below `prefix` that `keys` are in or are."""
        return {key[:i + 1] for key in keys for i in range(len(prefix), len(key))
                if key[i] == "/"}

    async def _copy_marker(self, src_bucket: str, src_prefix: str, dst_bucket: str,
                           dst_prefix: str) -> None:
        try:
            await self.backend.copy_object(src_bucket, src_prefix, dst_bucket, dst_prefix)
        except NoSuchObject:
            pass  # an implicit directory: its objects carry it

    async def _copy_object(self, src_bucket: str, key: str, dst_bucket: str,
                           dst_key: str) -> CachedObject | None:
        """Copy one object of a tree on the server; one being written here is left to the
        caller to move in the cache, and returned."""
        obj = self.cache.get(src_bucket, key)
        if obj is not None and obj.dirty:
            return obj
        info = await self.backend.copy_object(src_bucket, key, dst_bucket, dst_key)
        if obj is not None:
            self.cache.rename(obj, dst_bucket, dst_key)
            self.cache.set_server_version(obj, info.etag, info.mtime_ns)
        return None
