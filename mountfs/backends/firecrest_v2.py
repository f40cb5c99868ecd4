"""FirecREST API v2 (firecrest-v2), as the driver asks it: the system a path segment, JSON
bodies, `/filesystem/{system}/ops/*` for what runs at once, and `transfer/*` scheduler jobs for
moves, copies and staged transfers, each followed to its end with its output log read for the
outcome (as pyfirecrest does). Staged uploads send the presigned multipart parts the service
hands out, then complete the upload; a staged download is a presigned GET.
"""
from __future__ import annotations

from typing import Any

import trio

from cache.storage import Readable
from mountfs.backends.firecrest_api import Dialect, Staged
from mountfs.backends.firecrest_wire import JOB_ENDED, JOB_SUCCESS, V2_REFUSED, job_log_error
from mountfs.backends.progress import Transfer
from mountfs.errors import BackendError, NoSuchObject


class V2(Dialect):
    version = "v2"
    refused = V2_REFUSED

    async def systems(self) -> dict[str, list[str]]:
        answer = await self.api.call("GET", "/status/systems", "list systems")
        try:
            return {s["name"]: [fs["path"] for fs in s.get("fileSystems") or []]
                    for s in answer["systems"]}
        except (KeyError, TypeError) as exc:
            raise BackendError(f"/status/systems: not an answer of FirecREST API v2 "
                               f"({exc!r})") from None

    async def ls(self, system: str, path: str, recursive: bool) -> list[dict[str, Any]]:
        answer = await self.api.call("GET", f"/filesystem/{system}/ops/ls", f"ls {system}:{path}",
                                     {"path": path, "showHidden": "true", "numericUid": "true",
                                      "recursive": str(recursive).lower()})
        return list(answer.get("output") or [])

    async def stat(self, system: str, path: str) -> dict[str, Any]:
        answer = await self.api.call("GET", f"/filesystem/{system}/ops/stat",
                                     f"stat {system}:{path}", {"path": path})
        return dict(answer["output"])

    async def mkdir(self, system: str, path: str) -> None:
        await self.api.call("POST", f"/filesystem/{system}/ops/mkdir", f"mkdir {system}:{path}",
                            body={"sourcePath": path, "parent": True})

    async def rm(self, system: str, path: str) -> None:
        await self.api.call("DELETE", f"/filesystem/{system}/ops/rm", f"rm {system}:{path}",
                            {"path": path})

    async def chmod(self, system: str, path: str, mode: int) -> None:
        await self.api.call("PUT", f"/filesystem/{system}/ops/chmod", f"chmod {system}:{path}",
                            body={"sourcePath": path, "mode": f"{mode:o}"})

    async def symlink(self, system: str, target: str, link: str) -> None:
        await self.api.call("POST", f"/filesystem/{system}/ops/symlink",
                            f"symlink {system}:{link}", body={"sourcePath": target,
                                                              "linkPath": link})

    async def mv(self, system: str, src: str, dst: str) -> None:
        await self._job(system, "mv", src, dst)

    async def cp(self, system: str, src: str, dst: str) -> None:
        await self._job(system, "cp", src, dst)

    async def _job(self, system: str, command: str, src: str, dst: str) -> None:
        what = f"{command} {system}:{src} {dst}"
        answer = await self.api.call("POST", f"/filesystem/{system}/transfer/{command}", what,
                                     body={"sourcePath": src, "targetPath": dst})
        await self.follow(system, answer["transferJob"], what)

    async def upload(self, system: str, path: str, data: bytes) -> None:
        parent, _, name = path.rpartition("/")
        await self.api.call("POST", f"/filesystem/{system}/ops/upload",
                            f"upload {system}:{path}", {"path": parent or "/"},
                            form={"file": (name, data, "application/octet-stream")})

    async def download(self, system: str, path: str) -> bytes:
        reply = await self.api.request("GET", f"/filesystem/{system}/ops/download",
                                       f"download {system}:{path}", {"path": path})
        return bytes(reply.data)

    async def upload_staged(self, system: str, path: str, data: Readable, size: int,
                            transfer: Transfer) -> None:
        what = f"staged upload {system}:{path}"
        answer = await self.api.call("POST", f"/filesystem/{system}/transfer/upload", what,
                                     body={"sourcePath": path, "transferDirectives": {
                                         "transferMethod": "s3", "fileSize": size}})
        transfer.phase = "sending to the staging area"
        await self.upload_parts(answer["transferDirectives"], data, size, what, transfer)
        await self.follow(system, answer["transferJob"], what, transfer)

    async def stage_download(self, system: str, path: str, transfer: Transfer) -> Staged:
        what = f"stage {system}:{path}"
        answer = await self.api.call("POST", f"/filesystem/{system}/transfer/download", what,
                                     body={"sourcePath": path,
                                           "transferDirectives": {"transferMethod": "s3"}})
        await self.follow(system, answer["transferJob"], what, transfer)
        return Staged(answer["transferDirectives"]["downloadUrl"])

    # ---- scheduler jobs and the staging area ---------------------------------------------------

    async def follow(self, system: str, job: dict[str, Any], what: str,
                     transfer: Transfer | None = None) -> None:
        """Wait until the transfer job `job` (a reply's `transferJob`) has ended (its state
        the phase of `transfer`), then read its output log for the outcome, as pyfirecrest
        does (a job COMPLETEs also when its command failed); the error log says why it
        failed."""
        job_id = job["jobId"]

        async def ended() -> bool | None:
            answer = await self.api.call("GET", f"/compute/{system}/jobs/{job_id}",
                                         f"{what} (job {job_id})")
            states = [j.get("status", {}).get("state") for j in answer.get("jobs", [])]
            if transfer is not None:
                transfer.phase = f"job {'/'.join(map(str, states)) or 'submitted'}"
            return True if states and all(s in JOB_ENDED for s in states) else None

        await self.api.poll(ended)
        logs = job.get("logs", {})
        try:
            output = await self.download(system, logs["outputLog"])
        except NoSuchObject:
            output = b""  # a job cancelled before it ran writes none
        if any(s.encode() in output for s in JOB_SUCCESS):
            return
        try:
            error = await self.download(system, logs["errorLog"])
        except NoSuchObject:
            error = b""
        raise job_log_error(error.decode("utf-8", "replace"), what)

    async def upload_parts(self, directives: dict[str, Any], data: Readable, size: int,
                           what: str, transfer: Transfer) -> None:
        """Send `size` bytes of `data` to the presigned part URLs, each part read again from
        its offset for every try, then complete the multipart upload."""
        urls: list[str] = directives["partsUploadUrls"]
        part = int(directives.get("maxPartSize") or -(-size // max(1, len(urls))))
        etags = []
        for number, url in enumerate(urls, 1):
            offset = (number - 1) * part
            length = max(0, min(part, size - offset))

            def read(offset: int = offset, length: int = length) -> bytes:
                data.seek(offset)
                chunk = data.read(length)
                if len(chunk) != length:
                    raise BackendError(f"{what}: short read of the data to upload")
                return chunk

            async def put(url: str = url, number: int = number) -> str:
                chunk = await trio.to_thread.run_sync(read)
                reply = await self.api.staging("PUT", url, f"{what}: part {number}", chunk)
                return str(reply.headers.get("ETag", ""))

            etags.append(await self.api.backend.retried(f"{what}: part {number}", put))
            transfer.done += length
        body = "<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
            for n, etag in enumerate(etags, 1)) + "</CompleteMultipartUpload>"
        complete = directives["completeUploadUrl"]
        await self.api.backend.retried(f"{what}: complete", lambda: self.api.staging(
            "POST", complete, f"{what}: complete", body.encode()))
