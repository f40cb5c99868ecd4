"""The Metadisk store: buckets by name (two of one name shown as `NAME.ID`), each a flat set of
files kept by content hash, with the bucket's names in its name index (metadisk_names.py).

Reads have no ranges: a file's bytes come whole from its shards' data channels, in order
(`stream_object`, which the block cache uses to fill a file's blocks once per version;
`read_object` downloads and slices). Writes upload the whole file with a PUSH token, then
record its name. The bridge keeps no attributes: mode, owner and times are kept for the
mount's life only (`Features.kept_attributes` empty), as rclone does.
"""
from __future__ import annotations

import datetime
import io
import logging
import mimetypes
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from cache.storage import Readable
from mountfs.backends.base import Backend, Features, ObjectInfo
from mountfs.backends.metadisk_api import BridgeApi
from mountfs.backends import metadisk_names as index
from mountfs.backends.metadisk_names import INDEX_NAME, Named, Names
from mountfs.errors import (AlreadyExists, BackendError, ConfigError, NoSuchBucket,
                            NoSuchObject, NotEmpty, NotPermitted, PermissionDenied,
                            QuotaExceeded, TemporaryFailure)

log = logging.getLogger(__name__)
DEFAULT_MIMETYPE = "application/octet-stream"
UPLOADS = 3  # tries of an upload whose content a concurrent change freed meanwhile


class MetadiskBackend(Backend):
    features = Features(conditional_writes=False, special_files=False, symlinks=False,
                        kept_attributes=frozenset(), native_rename=True,
                        whole_reads_up_to=None)  # data channels serve whole shards only

    def __init__(self, api: BridgeApi, source: str, storage_gb: int | None,
                 transfer_gb: int | None) -> None:
        self.api, self.source = api, source
        self.storage_gb, self.transfer_gb = storage_gb, transfer_gb
        api.retried = self.retried
        self._buckets: dict[str, dict[str, Any]] = {}  # shown name -> the bridge's bucket
        # bucket -> its index versions read last, by hash (a version never changes)
        self._indexes: dict[str, dict[str, Names]] = {}
        self._locks: dict[str, trio.Lock] = {}  # index updates of one bucket, one at a time

    def describe(self) -> str:
        return self.source

    async def check(self) -> None:
        """The bridge answers and takes the key (or the password): one try, one line."""
        try:
            await self.api.call("GET", "/buckets", "list buckets", retry=False)
        except PermissionDenied as exc:
            raise ConfigError(f"{self.source}: refused: {exc} (register the key with "
                              "`mountfs metadisk keys add`, or activate the account)") from None
        except BackendError as exc:
            raise ConfigError(f"{self.source}: {exc}") from None

    # ---- buckets -----------------------------------------------------------------------------

    async def _refresh(self) -> dict[str, dict[str, Any]]:
        listed = await self.api.call("GET", "/buckets", "list buckets")
        counts: dict[str, int] = {}
        for bucket in listed:
            counts[bucket["name"]] = counts.get(bucket["name"], 0) + 1
        self._buckets = {(b["name"] if counts[b["name"]] == 1 else f"{b['name']}.{b['id']}"): b
                         for b in listed}
        return self._buckets

    async def _bucket(self, bucket: str) -> dict[str, Any]:
        found = self._buckets.get(bucket) or (await self._refresh()).get(bucket)
        if found is None:
            raise NoSuchBucket(bucket)
        return found

    async def list_buckets(self) -> list[str]:
        return sorted(await self._refresh())

    async def create_bucket(self, bucket: str) -> None:
        if bucket in await self._refresh():
            raise AlreadyExists(bucket)
        params: dict[str, Any] = {"name": bucket}
        if self.storage_gb is not None:
            params["storage"] = self.storage_gb
        if self.transfer_gb is not None:
            params["transfer"] = self.transfer_gb
        await self.api.call("POST", "/buckets", f"create bucket {bucket}", params)
        await self._refresh()

    async def delete_bucket(self, bucket: str) -> None:
        if (await self._view(bucket))[1]:
            raise NotEmpty(bucket)
        found = await self._bucket(bucket)
        await self.api.call("DELETE", f"/buckets/{found['id']}", f"delete bucket {bucket}")
        self._buckets.pop(bucket, None)

    # ---- names -------------------------------------------------------------------------------

    async def _view(self, bucket: str) -> tuple[list[dict[str, Any]], Names]:
        """The bucket's entries and its names as they are now."""
        found = await self._bucket(bucket)
        try:
            entries = await self.api.call("GET", f"/buckets/{found['id']}/files",
                                          f"list {bucket}")
        except NoSuchBucket:
            self._buckets.pop(bucket, None)
            raise
        known = self._indexes.get(bucket, {})
        versions = {}  # only the versions in the bucket now are kept
        for file_hash in index.index_hashes(entries):
            versions[file_hash] = known.get(file_hash) or \
                index.decode(await self._download(found, file_hash))
        self._indexes[bucket] = versions
        created = datetime.datetime.fromisoformat(found["created"].replace("Z", "+00:00"))
        return entries, index.visible(entries, index.merge(versions.values()),
                                      int(created.timestamp() * 1e9))

    async def _update(self, bucket: str, change: Callable[[Names], Names],
                      needs: str = "") -> Names | None:
        """Apply `change` to the bucket's names: the new index uploaded, the versions read
        deleted, then the content no name uses any more. The names as changed; None, and
        nothing changed, when the content `needs` is gone (a name it had was changed
        meanwhile, and the content freed)."""
        async with self._locks.setdefault(bucket, trio.Lock()):
            found = await self._bucket(bucket)
            entries, before = await self._view(bucket)
            if needs and all(e["hash"] != needs for e in entries):
                return None
            after = change(dict(before))
            if after == before:
                return after
            old = index.index_hashes(entries)
            new = ""
            if after:
                data = index.encode(after)
                new = (await self.api.upload(found["id"], INDEX_NAME, io.BytesIO(data),
                                             len(data), "application/json"))["hash"]
                self._indexes[bucket] = {new: after}
            for file_hash in [h for h in old if h != new] + sorted(index.freed(before, after)):
                await self._delete_hash(found, file_hash)
            return after

    async def _delete_hash(self, found: dict[str, Any], file_hash: str) -> None:
        try:
            await self.api.call("DELETE", f"/buckets/{found['id']}/files/{file_hash}",
                                f"delete {file_hash}")
        except NoSuchObject:
            pass  # another mount deleted it first

    def _info(self, bucket: str, key: str, named: Named) -> ObjectInfo:
        return ObjectInfo(bucket, key, named.size, named.mtime_ns, named.hash, {})

    async def check_key(self, bucket: str, key: str) -> None:
        """Metadisk files are flat: no directory can be made below a bucket (EPERM), and the
        name index's own name is the mount's."""
        if key.endswith("/"):
            why = (f"{self.source}: files in a Metadisk bucket are flat, no directory can be "
                   f"made ({bucket}/{key})")
            log.warning("%s", why)  # EPERM alone would not tell the user why
            raise NotPermitted(why)
        if key == INDEX_NAME:
            raise NotPermitted(f"{INDEX_NAME} is the name index of the mount, not a file")

    async def list_objects(self, bucket: str, prefix: str, delimiter: str | None = "/",
                           page_size: int = 1000) -> AsyncIterator[list[ObjectInfo]]:
        _, names = await self._view(bucket)
        out: dict[str, ObjectInfo] = {}
        for key, named in names.items():
            if not key.startswith(prefix):
                continue
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut < 0:
                out[key] = self._info(bucket, key, named)
            else:  # another client's name with '/': shown as a directory, as S3 shows it
                out[key[:cut + 1]] = ObjectInfo(bucket, key[:cut + 1], is_prefix=True)
        ordered = [out[k] for k in sorted(out, key=lambda k: k.encode())]
        for start in range(0, len(ordered), page_size):
            yield ordered[start:start + page_size]

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        _, names = await self._view(bucket)
        if key not in names:
            raise NoSuchObject(f"{bucket}/{key}")
        return self._info(bucket, key, names[key])

    # ---- content -----------------------------------------------------------------------------

    async def _download(self, found: dict[str, Any], file_hash: str) -> bytes:
        return b"".join([piece async for piece in self.api.content(found["id"], file_hash)])

    async def stream_object(self, bucket: str, key: str) -> AsyncIterator[bytes]:
        """The file's bytes from its start, shard by shard (the bridge stores 8 MiB ones)."""
        named = await self.stat_object(bucket, key)
        async for piece in self.api.content((await self._bucket(bucket))["id"], named.etag):
            yield piece

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        named = await self.stat_object(bucket, key)
        if offset >= named.size or length <= 0:
            return b""
        data = await self._download(await self._bucket(bucket), named.etag)
        return data[offset:offset + length]

    async def write_object(self, bucket: str, key: str, data: Readable, size: int,
                           metadata: dict[str, str]) -> ObjectInfo:
        if key == INDEX_NAME:
            raise NotPermitted(f"{INDEX_NAME} is the name index of the mount, not a file")
        found = await self._bucket(bucket)
        mimetype = mimetypes.guess_type(key)[0] or DEFAULT_MIMETYPE
        for _ in range(UPLOADS):
            try:
                entry = await self.api.upload(found["id"], key, data, size, mimetype)
            except QuotaExceeded as exc:
                log.warning("%s: %s", self.source, exc)  # the bridge's own words on its quota
                raise
            named = Named(entry["hash"], size, time.time_ns())

            def put(names: Names) -> Names:
                names[key] = named
                return names
            # Another write may have freed these bytes (uploaded before as another name's)
            # between the upload and now: then they go again.
            if await self._update(bucket, put, needs=named.hash) is not None:
                return self._info(bucket, key, named)
        raise TemporaryFailure(f"{bucket}/{key}: its content was deleted after each upload")

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        return await self.stat_object(bucket, key)  # nothing kept: see Features

    async def delete_object(self, bucket: str, key: str) -> None:
        def drop(names: Names) -> Names:
            names.pop(key, None)
            return names
        await self._update(bucket, drop)

    async def copy_object(self, bucket: str, key: str, dst_bucket: str,
                          dst_key: str) -> ObjectInfo:
        if bucket != dst_bucket:  # content is per bucket: the bytes go again
            source = await self.stat_object(bucket, key)
            data = await self._download(await self._bucket(bucket), source.etag)
            return await self.write_object(dst_bucket, dst_key, io.BytesIO(data), len(data),
                                           {})

        def add(names: Names) -> Names:
            if key not in names:
                raise NoSuchObject(f"{bucket}/{key}")
            names[dst_key] = Named(names[key].hash, names[key].size, time.time_ns())
            return names
        names = await self._update(bucket, add)
        assert names is not None  # nothing needed
        return self._info(bucket, dst_key, names[dst_key])

    async def rename_object(self, bucket: str, key: str, dst_key: str) -> ObjectInfo:
        """A change of the name index only: the content is never deleted nor sent again."""
        def move(names: Names) -> Names:
            moved = {k: v for k, v in names.items()
                     if k == key or (key.endswith("/") and k.startswith(key))}
            if not moved:
                raise NoSuchObject(f"{bucket}/{key}")
            for k in list(names):
                if k == dst_key or (dst_key.endswith("/") and k.startswith(dst_key)):
                    del names[k]
            for k, v in moved.items():
                del names[k]
                names[dst_key + k[len(key):]] = v
            return names
        names = await self._update(bucket, move)
        assert names is not None  # nothing needed
        return self._info(bucket, dst_key, names.get(dst_key, Named("", 0, time.time_ns())))

    async def aclose(self) -> None:
        self.api.http.close()
