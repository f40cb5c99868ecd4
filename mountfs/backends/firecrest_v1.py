"""FirecREST API v1 (OpenAPI 1.16.1), as the driver asks it: the system in the `X-Machine-Name`
header, form fields (urlencoded, as pyfirecrest sends them), `/utilities/*` for what runs at
once (rename and copy included: v1 runs them within the utilities' time limit, no job), and
`/storage/xfer-external/*` tasks (followed through `/tasks`, codes 110-118) for staged
transfers. The systems come from `/status/systems`, their file systems from
`/status/filesystems`, the direct limit from `/status/parameters` (UTILITIES_MAX_FILE_SIZE, MB).

A staged upload waits for its task's form (111), sends the file to the presigned URL the form
names (a POST form with the file last, as the real service's curl command does, or a PUT),
then waits until the service has moved the file into place (114). A staged download waits for
its URL (117); its staged copy is invalidated when the driver releases it.
"""
from __future__ import annotations

from typing import Any

from cache.storage import Readable
from mountfs.backends.firecrest_api import Dialect, Staged
from mountfs.backends.http import multipart_around, streamed_body
from mountfs.backends.firecrest_wire import (TASK_FORM, TASK_STAGED, TASK_UPLOADED,
                                             V1_REFUSED, task_error, v1_entry)
from mountfs.backends.progress import Transfer
from mountfs.errors import BackendError

MB = 1024 * 1024  # UTILITIES_MAX_FILE_SIZE's unit: the real service multiplies by 1024 * 1024


class V1(Dialect):
    version = "v1"
    refused = V1_REFUSED

    async def _call(self, method: str, path: str, system: str, what: str,
                    query: dict[str, Any] | None = None,
                    form: dict[str, Any] | None = None) -> Any:
        return await self.api.call(method, path, what, query, form=form,
                                   headers={"X-Machine-Name": system})

    async def systems(self) -> dict[str, list[str]]:
        listed = await self.api.call("GET", "/status/systems", "list systems")
        try:
            names = [s["system"] for s in listed["out"]]
        except (KeyError, TypeError) as exc:
            raise BackendError(f"/status/systems: not an answer of FirecREST API v1 "
                               f"({exc!r})") from None
        mounted = (await self.api.call("GET", "/status/filesystems", "list file systems"))["out"]
        parameters = await self.api.call("GET", "/status/parameters", "read parameters")
        for parameter in parameters["out"].get("utilities") or []:
            if parameter.get("name") == "UTILITIES_MAX_FILE_SIZE":
                self.direct_limit = int(float(parameter["value"]) * MB)
        return {name: [fs["path"] for fs in mounted.get(name) or []] for name in names}

    async def ls(self, system: str, path: str, recursive: bool) -> list[dict[str, Any]]:
        answer = await self._call("GET", "/utilities/ls", system, f"ls {system}:{path}",
                                  {"targetPath": path, "showhidden": "true", "numericUid": "true",
                                   "recursive": str(recursive).lower()})  # 1.16.0 and later
        return [v1_entry(entry) for entry in answer.get("output") or []]

    async def stat(self, system: str, path: str) -> dict[str, Any]:
        answer = await self._call("GET", "/utilities/stat", system, f"stat {system}:{path}",
                                  {"targetPath": path})
        return dict(answer["output"])

    async def mkdir(self, system: str, path: str) -> None:
        await self._call("POST", "/utilities/mkdir", system, f"mkdir {system}:{path}",
                         form={"targetPath": path, "p": "true"})

    async def rm(self, system: str, path: str) -> None:
        await self._call("DELETE", "/utilities/rm", system, f"rm {system}:{path}",
                         form={"targetPath": path})

    async def chmod(self, system: str, path: str, mode: int) -> None:
        await self._call("PUT", "/utilities/chmod", system, f"chmod {system}:{path}",
                         form={"targetPath": path, "mode": f"{mode:o}"})

    async def symlink(self, system: str, target: str, link: str) -> None:
        await self._call("POST", "/utilities/symlink", system, f"symlink {system}:{link}",
                         form={"targetPath": target, "linkPath": link})

    async def mv(self, system: str, src: str, dst: str) -> None:
        await self._call("PUT", "/utilities/rename", system, f"mv {system}:{src} {dst}",
                         form={"sourcePath": src, "targetPath": dst})

    async def cp(self, system: str, src: str, dst: str) -> None:
        await self._call("POST", "/utilities/copy", system, f"cp {system}:{src} {dst}",
                         form={"sourcePath": src, "targetPath": dst})

    async def upload(self, system: str, path: str, data: bytes) -> None:
        parent, _, name = path.rpartition("/")
        await self._call("POST", "/utilities/upload", system, f"upload {system}:{path}",
                         form={"file": (name, data, "application/octet-stream"),
                               "targetPath": parent or "/"})

    async def download(self, system: str, path: str) -> bytes:
        reply = await self.api.request("GET", "/utilities/download", f"download {system}:{path}",
                                       {"sourcePath": path}, headers={"X-Machine-Name": system})
        return bytes(reply.data)

    async def upload_staged(self, system: str, path: str, data: Readable, size: int,
                            transfer: Transfer) -> None:
        parent, _, name = path.rpartition("/")
        what = f"staged upload {system}:{path}"
        # The file lands in the directory targetPath under sourcePath's last component.
        answer = await self._call("POST", "/storage/xfer-external/upload", system, what,
                                  form={"targetPath": parent or "/", "sourcePath": name})
        task_id = str(answer["task_id"])
        task = await self._task(task_id, TASK_FORM, what, transfer)
        transfer.phase = "sending to the staging area"
        await self._send(task["data"]["msg"]["parameters"], name, data, size, what)
        transfer.done = size
        await self._task(task_id, TASK_UPLOADED, what, transfer)

    async def stage_download(self, system: str, path: str, transfer: Transfer) -> Staged:
        what = f"stage {system}:{path}"
        answer = await self._call("POST", "/storage/xfer-external/download", system, what,
                                  form={"sourcePath": path})
        task_id = str(answer["task_id"])
        task = await self._task(task_id, TASK_STAGED, what, transfer)
        return Staged(task["data"]["url"], task_id)

    async def release(self, staged: Staged) -> None:
        await self.api.call("POST", "/storage/xfer-external/invalidate",
                            f"invalidate the staged copy of task {staged.ticket}",
                            headers={"X-Task-Id": str(staged.ticket)})

    # ---- tasks and the staging area ------------------------------------------------------------

    async def _task(self, task_id: str, status: int, what: str,
                    transfer: Transfer) -> dict[str, Any]:
        """The task once its status has reached `status` (each status seen the phase of
        `transfer`); its error if it fails first."""
        async def reached() -> dict[str, Any] | None:
            answer = await self.api.call("GET", "/tasks", f"{what} (task {task_id})",
                                         {"tasks": task_id})
            task = (answer.get("tasks") or {}).get(task_id)
            if task is None:
                raise BackendError(f"{what}: the service knows no task {task_id}")
            transfer.phase = f"task {task['status']} {task.get('description') or ''}".strip()
            error = task_error(task, what)
            if error is not None:
                raise error
            return task if int(task["status"]) >= status else None

        return await self.api.poll(reached)

    async def _send(self, form: dict[str, Any], name: str, data: Readable, size: int,
                    what: str) -> None:
        """The file to the staging area as the task's form says (its `parameters`: method,
        url, data, headers), streamed and read again from the start for every try."""
        method = str(form.get("method") or "POST").upper()
        headers = {str(k): str(v) for k, v in (form.get("headers") or {}).items()}
        head = tail = b""
        if method == "POST":
            # The form's fields, then the file as the last part (S3 ignores fields after it).
            fields = [*(form.get("data") or {}).items(), ("file", (name, b""))]
            head, tail, headers["Content-Type"] = multipart_around(fields)
        headers["Content-Length"] = str(len(head) + size + len(tail))
        await self.api.backend.retried(what, lambda: self.api.staging(
            method, form["url"], what, streamed_body(data, size, what, head, tail), headers))
