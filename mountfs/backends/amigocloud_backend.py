"""The AmigoCloud store: GIS projects and datasets as folders and files.

Owns the mapping of AmigoCloud onto mountfs's object stores. A bucket is a project, by its
name (projects sharing a name: all but the oldest get their id appended, `Survey (7)`); a
project token's mount shows its one project. In a project:

- `datasets/NAME.EXT`, one file per dataset and export format (FORMATS: .geojson, .csv,
  .kml), from the dataset listing. Its data is an export: stat or open runs the export job,
  follows it, and learns the file's size from its link; reads stream the link into the cache
  (no ranges: `whole_reads_up_to=None`). The version (ETag) is the dataset's id and
  last_modified, so the export is reused, by this driver and by the cache, while the dataset
  is unchanged. A listing cannot know the size of an export not made yet (making one per
  entry would cost `ls -l` a job per file): such entries show size 0 and are marked
  `sized=False`, so that opening one asks for its size first; an export made before shows its
  size. Deleting any of a dataset's files deletes the dataset (EACCES if the token may not).
- `uploads/NAME`, an outbox: a file written there is imported when the write-back queue
  uploads it (amigocloud_imports.py: simple or chunked upload, the job started once, then
  followed; its phases show in `mountfs status`). On SUCCESS the new dataset is logged and the
  file leaves uploads/ (the service keeps no copy): nothing lists it, and the listing is set
  aside by the dataset's event (which waits until the import is settled here, as the event
  may come first) or the next poll; the cache serves it until then. On FAILURE the service's
  error is raised as a permanent failure, so the queue keeps the file and shows it as failed.

Changes made elsewhere (`changes`): the event channel (amigocloud_events.py) with a user
token; a dataset or project event sets aside the project's `datasets/` and `uploads/`, a project's
creation, deletion or metadata the list of projects. While the channel is down (and always
with a project token, which may not open it) the projects are polled every POLL_INTERVAL s:
a project whose `last_modified` moved (the service moves it when its datasets change) has its
`datasets/` and `uploads/` listings set aside; the channel is tried again every EVENTS_RETRY s.

Nothing else can be written (EPERM at once, `check_key`); mkdir at the root creates a
project; projects are never deleted (no token may).
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import trio

from cache.storage import Readable
from mountfs.backends.amigocloud_api import AmigoApi
from mountfs.backends.amigocloud_wire import (FORMATS, PROJECT, READ, SUCCESS, DatasetFile,
                                              timestamp_ns, unique_names)
from mountfs.backends.amigocloud_events import EventChannel
from mountfs.backends.amigocloud_imports import Importer
from mountfs.backends.base import Backend, Change, Features, ObjectInfo
from mountfs.backends.http import HttpPool, give_back
from mountfs.backends.progress import Transfers
from mountfs.errors import (BackendError, NoSuchBucket, NoSuchObject, NotPermitted,
                            NotSupported)

log = logging.getLogger(__name__)

TOP = ("datasets/", "uploads/")
POLL_INTERVAL = 5.0  # seconds between looks at the projects while the event channel is down
EVENTS_RETRY = 30.0  # seconds of polling before the event channel is tried again
# The events that tell an import job's end (the help page's names), which may come before
# this mount, following the job, has settled its import.
IMPORT_ENDS = frozenset({"dataset:creation_succeeded", "dataset:creation_failed",
                         "project:process_file_finished", "project:process_datasource_failed"})


@dataclass(frozen=True)
class Export:
    """An export made: of which version of the dataset, its link and its size."""

    version: str
    link: str
    size: int


class AmigoCloudBackend(Backend):
    def __init__(self, url: str, token: str, http: HttpPool,
                 project_path: str | None = None) -> None:
        self.url, self.http, self.project_path = url.rstrip("/"), http, project_path
        self.api = AmigoApi(self, self.url, token, http)
        read_only = token.startswith(READ)
        # Exports serve whole files; no attributes are kept; a project token cannot make
        # projects; a READ token cannot write at all.
        self.features = Features(
            writable=not read_only,
            why_read_only="the token is a READ token (R:…): give one that may create",
            buckets_editable=not read_only and project_path is None,
            special_files=False, kept_attributes=frozenset(), relative_symlinks=False,
            whole_reads_up_to=None, server_side_copy=False)
        self._projects: dict[str, dict[str, Any]] = {}  # by bucket name, as last listed
        self._exports: dict[tuple[int, str], Export] = {}  # (dataset id, ext) -> its export
        self.progress = Transfers()
        self.importer = Importer(self.api, self.progress)
        self._imported: set[str] = set()  # projects imported into since the last poll
        # How changes are learnt now: "events over websocket" (or "over polling"), "polling".
        self._via = ""
        self._stamps: dict[str, str] | None = None  # each project's last_modified, polled

    def describe(self) -> str:
        where = self.url.split("://", 1)[-1]
        return f"amigocloud:{where}" + (f"/{self.project_path}" if self.project_path else "")

    def transfers(self) -> list[dict[str, Any]]:
        return self.progress.snapshot()

    # ---- projects ----------------------------------------------------------------------------

    async def projects(self) -> dict[str, dict[str, Any]]:
        """The projects shown, by bucket name (asked anew)."""
        if self.project_path is not None:
            found = [await self.api.call("GET", self.project_path, "get the project")]
        else:
            found = await self.api.pages("/me/projects", "list projects")
        self._projects = unique_names(found)
        return self._projects

    async def _project(self, bucket: str) -> dict[str, Any]:
        project = self._projects.get(bucket) or (await self.projects()).get(bucket)
        if project is None:
            raise NoSuchBucket(f"no project {bucket!r} on {self.describe()}")
        return project

    async def list_buckets(self) -> list[str]:
        return sorted(await self.projects())

    async def create_bucket(self, bucket: str) -> None:
        if self.project_path is not None:
            raise NotPermitted("a project token's mount shows its one project")
        await self.api.call("POST", "/me/projects", f"create project {bucket!r}",
                            body={"name": bucket, "description": "made by mountfs"})

    async def delete_bucket(self, bucket: str) -> None:
        raise NotPermitted("AmigoCloud lets no API token delete a project")

    # ---- datasets ----------------------------------------------------------------------------

    async def _datasets(self, bucket: str) -> dict[str, dict[str, Any]]:
        project = await self._project(bucket)
        return unique_names(await self.api.pages(project["datasets"],
                                                 f"list datasets of {bucket}"))

    @staticmethod
    def _version(dataset: dict[str, Any]) -> str:
        return f"{dataset['id']}@{dataset.get('last_modified', '')}"

    def _dataset_info(self, bucket: str, file: DatasetFile, dataset: dict[str, Any],
                      export: Export | None) -> ObjectInfo:
        sized = export is not None and export.version == self._version(dataset)
        return ObjectInfo(bucket, file.key, export.size if export and sized else 0,
                          timestamp_ns(dataset.get("last_modified")), self._version(dataset),
                          {}, sized=sized)

    async def _export(self, bucket: str, file: DatasetFile, dataset: dict[str, Any]
                      ) -> Export:
        """The dataset's export in the file's format: the one made of this version, else a new
        one (its job followed), its size learnt from its link."""
        known = self._exports.get((dataset["id"], file.ext))
        if known is not None and known.version == self._version(dataset):
            return known
        what = f"export {bucket}/{file.key}"
        with self.progress.track(what) as transfer:
            transfer.phase = "starting the export"
            job = (await self.api.call("POST", dataset["export"], what,
                                       body={"format": FORMATS[file.ext]}))["job"]
            state = await self.api.job(job, what, transfer)
            if state.get("status") != SUCCESS:
                raise BackendError(f"{what} failed: "
                                   f"{(state.get('extra') or {}).get('error', 'no reason given')}")
            link = str(state["extra"]["link"])
            transfer.phase = "sizing the export"
            reply = await self.api.open_link(link, what)
            length = reply.headers.get("Content-Length", "")
            if length.isdigit():
                size = int(length)
                give_back(reply)  # closed unread: the cache streams it when it is read
            else:
                size = sum([len(piece) async for piece in self.api.stream(reply, what)])
        export = Export(self._version(dataset), link, size)
        self._exports[(dataset["id"], file.ext)] = export
        log.info("%s: %d bytes", what, size)
        return export

    async def _dataset_of(self, bucket: str, key: str) -> tuple[DatasetFile, dict[str, Any]]:
        file = DatasetFile.parse(key)
        dataset = (await self._datasets(bucket)).get(file.name) if file else None
        if file is None or dataset is None:
            raise NoSuchObject(f"{bucket}/{key}")
        return file, dataset

    # ---- the tree ----------------------------------------------------------------------------

    async def _files(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        """Every file of the project whose key could start with `prefix`."""
        files: list[ObjectInfo] = []
        if "datasets/".startswith(prefix) or prefix.startswith("datasets/"):
            for name, dataset in (await self._datasets(bucket)).items():
                for ext in FORMATS:
                    file = DatasetFile(name, ext)
                    files.append(self._dataset_info(
                        bucket, file, dataset, self._exports.get((dataset["id"], ext))))
        await self._project(bucket)  # a project gone: NoSuchBucket, whatever the prefix
        return sorted((f for f in files if f.key.startswith(prefix)), key=lambda i: i.key)

    async def list_objects(self, bucket: str, prefix: str, delimiter: str | None = "/",
                           page_size: int = 1000) -> AsyncIterator[list[ObjectInfo]]:
        files = await self._files(bucket, prefix)
        infos: list[ObjectInfo] = []
        if delimiter is None:
            infos = files
        else:
            tops = {top for top in TOP if top.startswith(prefix) and top != prefix}
            infos = [f for f in files if "/" not in f.key[len(prefix):]]
            infos += [ObjectInfo(bucket, top, is_prefix=True) for top in sorted(tops)]
            infos.sort(key=lambda i: i.key)
        if not infos and prefix in TOP:
            infos = [ObjectInfo(bucket, prefix, metadata={})]  # the empty folder's marker
        for start in range(0, len(infos), page_size):
            yield infos[start:start + page_size]

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        await self._project(bucket)
        if key in TOP:
            return ObjectInfo(bucket, key, metadata={})
        if key.startswith("uploads/"):
            raise NoSuchObject(f"{bucket}/{key}: imported files are not kept")
        file, dataset = await self._dataset_of(bucket, key)
        return self._dataset_info(bucket, file, dataset,
                                  await self._export(bucket, file, dataset))

    async def stream_object(self, bucket: str, key: str) -> AsyncIterator[bytes]:
        """The export, from its link; made first if the dataset changed since."""
        if key.startswith("uploads/"):
            # Gone from uploads/ since its import: as a file deleted elsewhere, not an EIO.
            raise NoSuchObject(f"{bucket}/{key}: imported, and AmigoCloud keeps no copy")
        file, dataset = await self._dataset_of(bucket, key)
        export = await self._export(bucket, file, dataset)
        what = f"read {bucket}/{key}"
        async for piece in self.api.stream(await self.api.open_link(export.link, what), what):
            yield piece

    async def read_object(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        """Exports have no ranges: the whole file, cut (the cache streams instead)."""
        data = b"".join([piece async for piece in self.stream_object(bucket, key)])
        return data[offset:offset + length]

    # ---- imports -------------------------------------------------------------------------------

    async def check_key(self, bucket: str, key: str) -> None:
        name = key[len("uploads/"):]
        if not key.startswith("uploads/") or not name or "/" in name:
            raise NotPermitted(f"{bucket}/{key}: only files copied into uploads/ can be "
                               "written (they are imported as datasets)")

    async def write_object(self, bucket: str, key: str, data: Readable, size: int,
                           metadata: dict[str, str]) -> ObjectInfo:
        await self.check_key(bucket, key)
        project = await self._project(bucket)
        what = f"import {bucket}/{key}"
        name = key[len("uploads/"):]
        async with self.importer.importing(project, name, data, size, what) as state:
            extra = state.get("extra") or {}
            if state.get("status") != SUCCESS:
                # Permanent: the queue keeps the file and shows it failed, with this reason.
                message = f"{what} failed: {extra.get('error', 'no reason given')}"
                log.warning("%s", message)
                raise BackendError(message)
            log.info("%s: imported as dataset %s", what,
                     ", ".join(map(str, extra.get("dataset_names") or extra.get("dataset_ids")
                                   or ["?"])))
            # Imported, the file leaves uploads/ when the folder is listed next: its
            # dataset's event, or the next poll, sets the listing aside. The cache serves
            # it until then.
            self._imported.add(bucket)
            return ObjectInfo(bucket, key, size, time.time_ns(), f"import-{state['id']}", {})

    # ---- changes made elsewhere -------------------------------------------------------------

    def changes_via(self) -> str:
        return self._via

    async def changes(self) -> AsyncIterator[Change]:
        channel = EventChannel(self.url)
        try:
            while True:
                if not self.api.token.startswith(PROJECT):
                    try:
                        async for name, data in await self._listen(channel):
                            for change in await self._changes_of(name, data):
                                yield change
                    except (BackendError, ValueError, KeyError, TypeError) as exc:
                        log.warning("AmigoCloud event channel down (%s): polling every %gs",
                                    exc, POLL_INTERVAL)
                self._via = "polling"
                retry = trio.current_time() + EVENTS_RETRY
                while trio.current_time() < retry or self.api.token.startswith(PROJECT):
                    for change in await self._poll():
                        yield change
                    await trio.sleep(POLL_INTERVAL)
        finally:
            channel.close()

    async def _listen(self, channel: EventChannel) -> AsyncIterator[tuple[str, Any]]:
        me = await self.api.call("GET", "/me", "get the token's user")
        session = await self.api.call("GET", "/me/start_websocket_session",
                                      "start an event session")

        def opened(transport: str) -> None:
            self._via = f"events over {transport}"
            log.info("following AmigoCloud's events over %s", transport)
        return channel.listen(int(me["id"]), str(session["websocket_session"]), opened)

    async def _changes_of(self, name: str, data: Any) -> list[Change]:
        """What an event changed: the project list, a project's datasets, or both."""
        found: list[Change] = []
        if name.startswith("project:") and not name.startswith("project:process_file"):
            found.append(Change(None))
        project_id = data.get("project_id") if isinstance(data, dict) else None
        settled = self.importer.following.get(str(data.get("job"))) \
            if isinstance(data, dict) and name in IMPORT_ENDS else None
        if settled is not None:
            # The end of an import of this mount's, told before the import is settled here:
            # uploads/ is listed again once its file is no longer being uploaded.
            await settled.wait()
        if project_id is not None:
            known = {int(p["id"]): b for b, p in self._projects.items()}
            if int(project_id) not in known:
                known = {int(p["id"]): b for b, p in (await self.projects()).items()}
            if int(project_id) in known:
                found += self._project_changed(known[int(project_id)])
        return found

    async def _poll(self) -> list[Change]:
        """The changes a look at the projects shows since the last look."""
        try:
            stamps = {b: str(p.get("last_modified")) for b, p in (await self.projects()).items()}
        except BackendError as exc:
            log.debug("polling AmigoCloud: %s", exc)
            return []
        last, self._stamps = self._stamps, stamps
        if last is None:
            return []
        found = [Change(None)] if set(stamps) != set(last) else []
        found += [Change(b, "uploads/") for b in self._imported]
        self._imported.clear()
        return found + [change for b, s in stamps.items() if b in last and last[b] != s
                        for change in self._project_changed(b)]

    @staticmethod
    def _project_changed(bucket: str) -> list[Change]:
        """A project's datasets changed: its datasets/, and its uploads/, which a file
        imported as a dataset leaves."""
        return [Change(bucket, "datasets/"), Change(bucket, "uploads/")]

    # ---- the rest ------------------------------------------------------------------------------

    async def delete_object(self, bucket: str, key: str) -> None:
        """A dataset's file deletes the dataset (every format of it); a file of uploads/ is
        not on the service (the dataset made of it stays)."""
        if key.startswith("uploads/"):
            return
        if key in TOP:
            raise NotPermitted(f"{bucket}/{key} is part of every project")
        try:
            _, dataset = await self._dataset_of(bucket, key)
        except NoSuchObject:
            return
        await self.api.call("DELETE", dataset["url"], f"delete dataset {bucket}/{key}")
        for ext in FORMATS:
            self._exports.pop((dataset["id"], ext), None)

    async def set_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> ObjectInfo:
        """AmigoCloud keeps no attributes (`kept_attributes` is empty): nothing to store."""
        return await self.stat_object(bucket, key)

    async def copy_object(self, bucket: str, key: str, dst_bucket: str,
                          dst_key: str) -> ObjectInfo:
        raise NotSupported("AmigoCloud copies nothing on the server")

    async def aclose(self) -> None:
        self.http.close()
