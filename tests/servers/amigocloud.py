"""A local AmigoCloud for the tests: the REST API of python-amigocloud 1.2.5 (protocols.md §4)
over users, projects and datasets held in memory, each dataset a list of GeoJSON features.

What it owns:

- tokens, sent as the `token` query parameter on every request (never a header): a user's READ
  token (`R:…`: GET only, and exports, which change nothing), a user's ADMIN token (`A:…`:
  everything a token may do; deleting a project never is) and a project token (`C:…`: CREATE in
  its project only, under `users/UID/projects/PID/…`, plus the jobs it started). A missing or
  unknown token is 401, a token without the right 403, `{"detail": …}` as Django REST framework
  answers;
- `/api/v1/me`, `/me/projects` (GET, POST `{"name","description"}`), `/users/UID/projects/PID`,
  its `datasets` and `datasets/DID` (GET, DELETE), lists in DRF's limit/offset shape
  (`{"count","next","previous","results"}`; `next` keeps the request's query, token included,
  as DRF's `replace_query_param` does);
- exports: `POST datasets/DID/export {"format": GEOJSON|CSV|KML}` answers `{"job"}`; the job is
  PENDING, then STARTED, each for `--job-delay`, then SUCCESS with `extra.link`, a URL under
  `/exports/` that needs no token (the link is the grant) and serves the file with a
  Content-Disposition;
- imports: `datasets/upload` (multipart `datafile`, under 8,000,000 bytes, else 413) and
  `datasets/chunked_upload` (multipart `datafile` + `Content-Range: bytes S-E/TOTAL`, the first
  chunk answers `upload_id`, the next ones send it as a form field and must start where the
  last ended, else 400 `{"detail": "Offsets do not match", "offset"}` as django-chunked-upload,
  whose reply fields these are, answers) then `chunked_upload/complete` (JSON
  `{"upload_id","md5"}`: a wrong MD5 is 400).
  Each answers `{"job"}`; the job walks PENDING, STARTED and ends SUCCESS (`extra.dataset_ids`,
  `extra.dataset_names`) with a new dataset named after the file (with the form field
  `dataset_write_action=overwrite`: the project's dataset of that name, its features replaced),
  or FAILURE (`extra.error`) when the file is no GeoJSON FeatureCollection nor a CSV with a
  header;
- jobs at `/api/v1/me/jobs/JOB` (`{"id","status","extra","url","project_id","created"}`, an
  import's `extra.filename` from its start), and their list at `/api/v1/me/jobs`, newest first
  (a project token sees its project's);
- the event channel: socket.io at `/v2_socket.io/socket.io/` speaking Engine.IO v3 (python-
  socketio 4.x; what socketIO-client 0.7.2, the official client's, speaks), namespace
  `/amigosocket`. `GET me/start_websocket_session` hands out a session; the event
  `authenticate` `{"userid","websocket_session"}` with it joins the user's room, which then
  receives `project:creation_succeeded` and `project:metadata_updated` `{user_id, project_id}`,
  `dataset:creation_succeeded` `{user_id, project_id, dataset_id, job}` and `dataset:deleted`.
  It offers the upgrade to websocket, as the real one does for socketIO-client (the service
  runs on gevent's WSGI server with gevent-websocket, the server python-engineio 3.x needs for
  websockets; jobs run in greenlets); `--no-websocket` offers none.

Decisions where the real service is not known: the token prefixes (`A:` for a user's full
token), the job's `extra.error` on FAILURE, the export link's path, the CSV export's columns
(`WKT` first, then the properties, as ogr2ogr's GEOMETRY=AS_WKT writes them), the events'
payloads beyond the help page's (`dataset_id`), a session good for one authentication, the
list of jobs and a job's `project_id` and `created`, what `overwrite` overwrites.

`python -m tests.servers.amigocloud --port N` runs it for a person and prints the URL, tokens and
the mount command; `AmigoCloudService` runs it as a subprocess for fixtures.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as the service: on gevent's server, which speaks websocket
    from gevent import monkey
    monkey.patch_all()

import argparse
import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import socketio
from flask import Flask, Response, jsonify, request
from gevent import pywsgi
from geventwebsocket.handler import WebSocketHandler
from werkzeug.exceptions import HTTPException

from .dcss import REPO_ROOT
from .s3 import free_port, running, start_server, stop_process

MAX_SIZE_SIMPLE_UPLOAD = 8_000_000  # the client's limit; the service refuses more (413)
PAGE_SIZE = 20  # DRF's default limit here
FORMATS = {"GEOJSON": ("geojson", "application/geo+json"), "CSV": ("csv", "text/csv"),
           "KML": ("kml", "application/vnd.google-earth.kml+xml")}
API = "/api/v1"
SOCKET_PATH = "v2_socket.io/socket.io"  # socketIO-client: base_url + /v2_socket.io + /socket.io
NAMESPACE = "/amigosocket"


def point(name: str, lon: float, lat: float, **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"name": name, **props}}


# The data each service starts with: (project name, {dataset name: features}). Two projects
# share a name, as they may on the real service.
SEED: list[tuple[str, dict[str, list[dict[str, Any]]]]] = [
    ("Parks", {"trees": [point("oak", -122.41, 37.77, height=12),
                         point("elm", -122.42, 37.78, height=9)],
               "benches": [point("north", -122.40, 37.79, seats=3)]}),
    ("Survey", {"wells": [point("w1", 5.1, 52.1, depth=30.5)]}),
    ("Survey", {}),
]


class ApiError(Exception):
    """An error reply: `{"detail": …}` and any `extra` fields."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


@dataclass
class Token:
    kind: str  # "R" read, "A" admin (a user's full token), "C" create (project token)
    user: int
    project: int | None = None


@dataclass
class Dataset:
    id: int
    name: str
    project: int
    features: list[dict[str, Any]]
    modified: float = field(default_factory=time.time)


@dataclass
class Project:
    id: int
    name: str
    owner: int
    description: str = ""
    modified: float = field(default_factory=time.time)


@dataclass
class Job:
    id: str
    user: int
    project: int | None
    status: str = "PENDING"
    extra: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)


@dataclass
class Upload:
    project: int
    name: str
    total: int
    data: bytearray = field(default_factory=bytearray)


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1e6) % 1000000:06d}Z"


class AmigoCloud:
    """The service's state; every method runs under one lock (requests and jobs run at once)."""

    def __init__(self, url: str, tokens: dict[str, Token], job_delay: float,
                 websocket: bool = True) -> None:
        self.url, self.tokens, self.job_delay = url, tokens, job_delay
        self.events = socketio.Server(async_mode="gevent", allow_upgrades=websocket)
        self.sessions: dict[str, int] = {}  # websocket session -> its user, until used
        self.lock = threading.RLock()
        self.ids = itertools.count(1)
        self.users = {1: "alice", 2: "bob"}
        self.projects: dict[int, Project] = {}
        self.datasets: dict[int, Dataset] = {}
        self.jobs: dict[str, Job] = {}
        self.uploads: dict[str, Upload] = {}
        self.exports: dict[str, tuple[str, str, bytes]] = {}  # key -> (filename, type, data)
        for name, datasets in SEED:
            project = self.add_project(1, name)
            for dname, features in datasets.items():
                self.add_dataset(project.id, dname, features)

    def add_project(self, owner: int, name: str, description: str = "") -> Project:
        project = Project(next(self.ids), name, owner, description)
        self.projects[project.id] = project
        self.emit(owner, "project:creation_succeeded", {"project_id": project.id})
        return project

    def add_dataset(self, project: int, name: str, features: list[dict[str, Any]],
                    job: str | None = None) -> Dataset:
        dataset = Dataset(next(self.ids), name, project, features)
        self.datasets[dataset.id] = dataset
        self.touch(self.projects[project])
        self.emit(self.projects[project].owner, "dataset:creation_succeeded",
                  {"project_id": project, "dataset_id": dataset.id, "job": job})
        return dataset

    def delete_dataset(self, dataset: Dataset) -> None:
        del self.datasets[dataset.id]
        project = self.projects[dataset.project]
        self.touch(project)
        self.emit(project.owner, "dataset:deleted",
                  {"project_id": project.id, "dataset_id": dataset.id})

    def touch(self, project: Project) -> None:
        project.modified = time.time()
        self.emit(project.owner, "project:metadata_updated", {"project_id": project.id})

    def emit(self, user: int, event: str, data: dict[str, Any]) -> None:
        """A multicast event to the user's authenticated sockets."""
        self.events.emit(event, {"user_id": user, **data}, room=f"user:{user}",
                         namespace=NAMESPACE)

    def authenticate_socket(self, sid: str, data: Any) -> None:
        """`authenticate` on /amigosocket: a session from start_websocket_session, for the
        user it names, joins the socket to the user's room; else an `authentication_failed`."""
        data = data if isinstance(data, dict) else {}
        with self.lock:
            user = self.sessions.pop(str(data.get("websocket_session")), None)
        if user is None or str(user) != str(data.get("userid")):
            self.events.emit("authentication_failed", {"detail": "invalid session"}, room=sid,
                             namespace=NAMESPACE)
            return
        self.events.enter_room(sid, f"user:{user}", namespace=NAMESPACE)
        self.events.emit("authentication_succeeded", {"user_id": user}, room=sid,
                         namespace=NAMESPACE)

    # ---- authorization ---------------------------------------------------------------------

    def authorize(self, path: str, method: str) -> Token:
        """The request's token, if it may do `method` on `path`; else ApiError."""
        text = request.args.get("token")
        token = self.tokens.get(text or "")
        if token is None:
            raise ApiError(401, "Invalid token." if text else
                           "Authentication credentials were not provided.")
        if token.kind == "C":
            own = f"{API}/users/{token.user}/projects/{token.project}"
            job = self.jobs.get(path.rsplit("/", 1)[-1]) if path.startswith(f"{API}/me/jobs/") \
                else None
            if not (path == own or path.startswith(own + "/") or path == f"{API}/me/jobs") \
                    and (job is None or job.project != token.project):
                raise ApiError(403, "This project token is not valid for this resource.")
        writes = method not in ("GET", "HEAD") and not path.endswith("/export")
        if writes and token.kind == "R":
            raise ApiError(403, "You do not have permission to perform this action "
                                "(READ token).")
        if method == "DELETE" and token.kind != "A":
            raise ApiError(403, "You do not have permission to perform this action.")
        return token

    def project(self, token: Token, uid: int, pid: int) -> Project:
        project = self.projects.get(pid)
        if project is None or project.owner != uid:
            raise ApiError(404, "Not found.")
        if project.owner != token.user:
            raise ApiError(403, "You do not have permission to perform this action.")
        return project

    def dataset(self, project: Project, did: int) -> Dataset:
        dataset = self.datasets.get(did)
        if dataset is None or dataset.project != project.id:
            raise ApiError(404, "Not found.")
        return dataset

    # ---- representations -------------------------------------------------------------------

    def project_json(self, p: Project) -> dict[str, Any]:
        url = f"{self.url}{API}/users/{p.owner}/projects/{p.id}"
        return {"id": p.id, "name": p.name, "description": p.description, "url": url,
                "owner": f"{self.url}{API}/users/{p.owner}", "datasets": url + "/datasets",
                "sql": url + "/sql", "last_modified": iso(p.modified)}

    def dataset_json(self, d: Dataset) -> dict[str, Any]:
        p = self.projects[d.project]
        url = f"{self.url}{API}/users/{p.owner}/projects/{p.id}/datasets/{d.id}"
        return {"id": d.id, "name": d.name, "url": url, "export": url + "/export",
                "submit_change": url + "/submit_change", "table_name": f"dataset_{d.id}",
                "geometry_column": "wkb_geometry", "feature_count": len(d.features),
                "last_modified": iso(d.modified), "project": p.id}

    def job_json(self, job: Job) -> dict[str, Any]:
        return {"id": job.id, "status": job.status, "extra": job.extra,
                "project_id": job.project, "created": iso(job.created),
                "url": f"{self.url}{API}/me/jobs/{job.id}"}

    # ---- jobs ------------------------------------------------------------------------------

    def start_job(self, token: Token, project: int | None, work: Any,
                  extra: dict[str, Any]) -> Job:
        """A job PENDING, STARTED after the delay, and done after another: `work()` gives its
        extra (SUCCESS) or raises ApiError (FAILURE, its detail as extra.error); `extra`
        until then, and kept under either."""
        job = Job(secrets.token_hex(8), token.user, project, extra=dict(extra))
        self.jobs[job.id] = job

        def run() -> None:
            time.sleep(self.job_delay)
            with self.lock:
                job.status = "STARTED"
            time.sleep(self.job_delay)
            with self.lock:
                try:
                    job.extra, job.status = {**extra, **work()}, "SUCCESS"
                except ApiError as exc:
                    job.extra, job.status = {**extra, "error": exc.detail}, "FAILURE"

        threading.Thread(target=run, daemon=True).start()
        return job

    def export(self, token: Token, d: Dataset, fmt: str) -> Job:
        if fmt not in FORMATS:
            raise ApiError(400, f"Unsupported format {fmt!r} (one of {', '.join(FORMATS)}).")
        ext, mime = FORMATS[fmt]

        def work() -> dict[str, Any]:
            key = secrets.token_urlsafe(12)
            self.exports[key] = (f"{d.name}.{ext}", mime, render(d.features, fmt, d.name))
            return {"link": f"{self.url}/exports/{key}/{urllib.parse.quote(d.name)}.{ext}"}

        return self.start_job(token, d.project, work, {"format": fmt, "dataset_id": d.id})

    def import_(self, token: Token, project: Project, name: str, data: bytes,
                action: str | None = None) -> Job:
        """An import job; with `action` "overwrite", the features of the project's dataset of
        the file's name are replaced (its id kept), if it has one."""
        def import_work() -> dict[str, Any]:
            features = parse(name, data)
            stem = name.rsplit(".", 1)[0] if "." in name else name
            same = [d for d in self.datasets.values()
                    if d.project == project.id and d.name == stem]
            if action == "overwrite" and same:
                dataset = same[0]
                dataset.features, dataset.modified = features, time.time()
                self.touch(project)
            else:
                dataset = self.add_dataset(project.id, stem, features, job.id)
            return {"dataset_ids": [dataset.id], "dataset_names": [dataset.name]}

        job = self.start_job(token, project.id, import_work,  # (runs after the delay)
                             {"filename": name})
        self.emit(token.user, "project:process_file_started",
                  {"project_id": project.id, "filename": name, "job": job.id})
        return job


def render(features: list[dict[str, Any]], fmt: str, name: str) -> bytes:
    """A dataset's features as an export file."""
    if fmt == "GEOJSON":
        return json.dumps({"type": "FeatureCollection", "name": name, "features": features},
                          indent=1).encode()
    if fmt == "CSV":
        columns = sorted({k for f in features for k in (f.get("properties") or {})})
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["WKT", *columns])
        for f in features:
            props = f.get("properties") or {}
            writer.writerow([wkt(f.get("geometry")), *(props.get(c, "") for c in columns)])
        return out.getvalue().encode()
    marks = "".join(
        f"<Placemark><name>{(f.get('properties') or {}).get('name', '')}</name>"
        + (f"<Point><coordinates>{','.join(map(str, f['geometry']['coordinates']))}"
           "</coordinates></Point>" if (f.get("geometry") or {}).get("type") == "Point" else "")
        + "</Placemark>" for f in features)
    return ('<?xml version="1.0" encoding="utf-8"?><kml xmlns="http://www.opengis.net/kml/2.2">'
            f"<Document><name>{name}</name>{marks}</Document></kml>").encode()


def wkt(geometry: dict[str, Any] | None) -> str:
    if not geometry:
        return ""
    if geometry.get("type") == "Point":
        return "POINT ({} {})".format(*geometry["coordinates"][:2])
    return json.dumps(geometry)  # other types as GeoJSON: enough for the tests' data


def parse(name: str, data: bytes) -> list[dict[str, Any]]:
    """The features of an imported file (GeoJSON or CSV); ApiError when it is neither."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{name}: not a supported format (not text)") from None
    # By the name's extension, else by the content: the client's chunks carry no file name.
    lower, head = name.lower(), text.lstrip()[:1]
    if lower.endswith((".geojson", ".json")) or "." not in name and head == "{":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ApiError(400, f"{name}: invalid GeoJSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
            raise ApiError(400, f"{name}: invalid GeoJSON: not a FeatureCollection")
        return list(doc.get("features") or [])
    if lower.endswith(".csv") or "." not in name and "," in text.partition("\n")[0]:
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows:
            raise ApiError(400, f"{name}: empty CSV")
        features = []
        for row in rows:
            lon, lat = row.pop("longitude", None), row.pop("latitude", None)
            try:
                geometry = {"type": "Point", "coordinates": [float(lon), float(lat)]} \
                    if lon and lat else None
            except ValueError:
                raise ApiError(400, f"{name}: invalid coordinates {lon!r}, {lat!r}") from None
            features.append({"type": "Feature", "geometry": geometry, "properties": row})
        return features
    raise ApiError(400, f"{name}: not a supported format")


def page(items: list[dict[str, Any]]) -> dict[str, Any]:
    """One page of `items` in DRF's limit/offset shape; next/previous keep the query."""
    limit = int(request.args.get("limit", PAGE_SIZE))
    offset = int(request.args.get("offset", 0))

    def link(at: int) -> str:
        query = {**request.args.to_dict(), "limit": str(limit), "offset": str(at)}
        return f"{request.base_url}?{urllib.parse.urlencode(query)}"

    return {"count": len(items),
            "next": link(offset + limit) if offset + limit < len(items) else None,
            "previous": link(max(0, offset - limit)) if offset > 0 else None,
            "results": items[offset:offset + limit]}


def create_app(ac: AmigoCloud) -> Flask:
    app = Flask("amigocloud")
    app.config["MAX_CONTENT_LENGTH"] = None
    app.url_map.strict_slashes = False  # the client asks for a project token's URL + "/"

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        response = jsonify({"detail": exc.detail, **exc.extra})
        response.status_code = exc.status
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        response = jsonify({"detail": exc.description})
        response.status_code = exc.code or 500
        return response

    @app.before_request
    def lock() -> None:
        ac.lock.acquire()

    @app.teardown_request
    def unlock(_: BaseException | None) -> None:
        ac.lock.release()

    def auth() -> Token:
        return ac.authorize(request.path, request.method)

    @app.get(f"{API}/me")
    def me() -> Response:
        token = auth()
        base = f"{ac.url}{API}/me"
        return jsonify({"id": token.user, "username": ac.users[token.user],
                        "email": f"{ac.users[token.user]}@example.org",
                        "projects": base + "/projects", "visible_projects": base + "/projects",
                        "jobs": base + "/jobs"})

    @app.route(f"{API}/me/projects", methods=["GET", "POST"])
    def my_projects() -> Any:
        token = auth()
        if request.method == "POST":
            body = request.get_json(silent=True) or {}
            name = str(body.get("name") or "").strip()
            if not name:
                raise ApiError(400, "name: This field is required.")
            project = ac.add_project(token.user, name, str(body.get("description") or ""))
            return jsonify(ac.project_json(project)), 201
        mine = [ac.project_json(p) for p in ac.projects.values() if p.owner == token.user]
        return jsonify(page(mine))

    @app.route(f"{API}/users/<int:uid>/projects/<int:pid>", methods=["GET", "DELETE"])
    def project(uid: int, pid: int) -> Any:
        token = auth()
        p = ac.project(token, uid, pid)
        if request.method == "DELETE":
            raise ApiError(403, "Projects cannot be deleted with API tokens.")
        return jsonify(ac.project_json(p))

    @app.get(f"{API}/users/<int:uid>/projects/<int:pid>/datasets")
    def datasets(uid: int, pid: int) -> Response:
        p = ac.project(auth(), uid, pid)
        return jsonify(page([ac.dataset_json(d) for d in ac.datasets.values()
                             if d.project == p.id]))

    @app.route(f"{API}/users/<int:uid>/projects/<int:pid>/datasets/<int:did>",
               methods=["GET", "DELETE"])
    def dataset(uid: int, pid: int, did: int) -> Any:
        p = ac.project(auth(), uid, pid)
        d = ac.dataset(p, did)
        if request.method == "DELETE":
            ac.delete_dataset(d)
            return "", 204
        return jsonify(ac.dataset_json(d))

    @app.post(f"{API}/users/<int:uid>/projects/<int:pid>/datasets/<int:did>/export")
    def export(uid: int, pid: int, did: int) -> Response:
        token = auth()
        d = ac.dataset(ac.project(token, uid, pid), did)
        body = request.get_json(silent=True) or {}
        return jsonify({"job": ac.export(token, d, str(body.get("format", "")).upper()).id})

    @app.post(f"{API}/users/<int:uid>/projects/<int:pid>/datasets/upload")
    def upload(uid: int, pid: int) -> Response:
        token = auth()
        p = ac.project(token, uid, pid)
        if request.content_length and request.content_length > MAX_SIZE_SIMPLE_UPLOAD + 65536:
            raise ApiError(413, "File too large for a simple upload: use chunked_upload.")
        file = request.files.get("datafile")
        if file is None:
            raise ApiError(400, "datafile: No file was submitted.")
        data = file.read()
        if len(data) >= MAX_SIZE_SIMPLE_UPLOAD:
            raise ApiError(413, "File too large for a simple upload: use chunked_upload.")
        return jsonify({"job": ac.import_(token, p, file.filename or "datafile", data,
                                          request.form.get("dataset_write_action")).id})

    @app.post(f"{API}/users/<int:uid>/projects/<int:pid>/datasets/chunked_upload")
    def chunked_upload(uid: int, pid: int) -> Response:
        p = ac.project(auth(), uid, pid)
        file = request.files.get("datafile")
        spec = request.headers.get("Content-Range", "")
        try:
            unit, _, rest = spec.partition(" ")
            span, _, total_text = rest.partition("/")
            start, end, total = int(span.split("-")[0]), int(span.split("-")[1]), \
                int(total_text)
            assert unit == "bytes"
        except (ValueError, IndexError, AssertionError):
            raise ApiError(400, f"Invalid Content-Range header: {spec!r}") from None
        if file is None:
            raise ApiError(400, "datafile: No file was submitted.")
        chunk = file.read()
        upload_id = request.form.get("upload_id")
        if upload_id is None:
            if start != 0:
                raise ApiError(400, "The first chunk must start at byte 0.")
            upload_id = secrets.token_hex(12)
            name = request.form.get("filename") or file.filename or "datafile"
            ac.uploads[upload_id] = Upload(p.id, name, total)
        up = ac.uploads.get(upload_id)
        if up is None or up.project != p.id:
            raise ApiError(404, "Upload not found.")
        if start != len(up.data):  # as django-chunked-upload answers, with what it has
            raise ApiError(400, "Offsets do not match", offset=len(up.data))
        if end - start + 1 != len(chunk) or total != up.total:
            raise ApiError(400, f"Chunk bytes {start}-{end}/{total} does not match the chunk "
                                f"of {len(chunk)} bytes of an upload of {up.total}.")
        up.data += chunk
        return jsonify({"upload_id": upload_id, "offset": len(up.data),
                        "expires": iso(time.time() + 86400)})

    @app.post(f"{API}/users/<int:uid>/projects/<int:pid>/datasets/chunked_upload/complete")
    def chunked_complete(uid: int, pid: int) -> Response:
        token = auth()
        p = ac.project(token, uid, pid)
        body = request.get_json(silent=True) or request.form.to_dict()
        up = ac.uploads.get(str(body.get("upload_id")))
        if up is None or up.project != p.id:
            raise ApiError(404, "Upload not found.")
        if len(up.data) != up.total:
            raise ApiError(400, f"Upload incomplete: {len(up.data)} of {up.total} bytes.")
        if hashlib.md5(up.data).hexdigest() != body.get("md5"):
            raise ApiError(400, "md5 does not match the uploaded data.")
        del ac.uploads[str(body["upload_id"])]
        name = str(body.get("filename") or up.name)
        return jsonify({"job": ac.import_(token, p, name, bytes(up.data),
                                          body.get("dataset_write_action")).id})

    @app.get(f"{API}/me/jobs")
    def jobs() -> Response:
        token = auth()
        mine = sorted((j for j in ac.jobs.values() if j.user == token.user and
                       (token.project is None or j.project == token.project)),
                      key=lambda j: j.created, reverse=True)
        return jsonify(page([ac.job_json(j) for j in mine]))

    @app.get(f"{API}/me/jobs/<job_id>")
    def job(job_id: str) -> Response:
        token = auth()
        found = ac.jobs.get(job_id)
        if found is None or found.user != token.user:
            raise ApiError(404, "Not found.")
        return jsonify(ac.job_json(found))

    @app.get(f"{API}/me/start_websocket_session")
    def websocket_session() -> Response:
        session = secrets.token_hex(16)
        ac.sessions[session] = auth().user
        return jsonify({"websocket_session": session})

    @app.get("/exports/<key>/<path:name>")
    def exported(key: str, name: str) -> Response:
        found = ac.exports.get(key)
        if found is None:
            raise ApiError(404, "Export not found or expired.")
        filename, mime, data = found
        return Response(data, mimetype=mime, headers={
            "Content-Disposition": f'attachment; filename="{filename}"'})

    ac.events.on("authenticate", ac.authenticate_socket, namespace=NAMESPACE)
    return app


def make_tokens() -> dict[str, Token]:
    """One token of each kind for alice (user 1), and a project token of her first project."""
    return {f"R:{secrets.token_urlsafe(24)}": Token("R", 1),
            f"A:{secrets.token_urlsafe(24)}": Token("A", 1),
            f"C:{secrets.token_urlsafe(24)}": Token("C", 1, 1),
            f"A:{secrets.token_urlsafe(24)}": Token("A", 2)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.amigocloud",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=18557)
    parser.add_argument("--job-delay", type=float, default=0.3, metavar="SECONDS",
                        help="time a job stays PENDING, and then STARTED")
    parser.add_argument("--no-websocket", action="store_true",
                        help="offer the event channel's clients no upgrade to websocket")
    parser.add_argument("--public-url", metavar="URL",
                        help="the URL its replies' links name, when a proxy is in front")
    parser.add_argument("--tokens", help="a JSON file {token: [kind, user, project]} "
                                         "(default: made up and printed)")
    return parser.parse_args(argv)


def describe(url: str, tokens: dict[str, Token]) -> str:
    lines = [f"AmigoCloud test service on {url}"]
    for text, t in tokens.items():
        what = {"R": "READ user token", "A": "full user token",
                "C": f"project token of users/{t.user}/projects/{t.project}"}[t.kind]
        lines.append(f"  {what} of user {t.user}: {text}")
    full = next(text for text, t in tokens.items() if t.kind == "A")
    lines += ["mount with:",
              f"  AMIGOCLOUD_TOKEN='{full}' mountfs mount amigocloud: MNT "
              f"--amigocloud-url {url}", "Ctrl-C stops."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    url = args.public_url or f"http://127.0.0.1:{args.port}"
    if args.tokens:
        with open(args.tokens) as f:
            tokens = {k: Token(*v) for k, v in json.load(f).items()}
    else:
        tokens = make_tokens()
    ac = AmigoCloud(url, tokens, args.job_delay, websocket=not args.no_websocket)
    # The REST API and, under SOCKET_PATH, the event channel, on one port.
    app = socketio.WSGIApp(ac.events, create_app(ac), socketio_path=SOCKET_PATH)
    server = pywsgi.WSGIServer(("127.0.0.1", args.port), app, handler_class=WebSocketHandler,
                               log=None)
    print(describe(url, tokens), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.stop()
    return 0


class AmigoCloudService:
    """The service as a subprocess. `read_token`, `token` (alice's full token), `project_token`
    (of `project_url`, alice's first project) and `other_token` (bob's full token); with
    `public_url` (a proxy in front of it) its replies' links name that URL; without
    `websocket` its event channel stays on long-polling."""

    def __init__(self, tmp: Any, *, port: int | None = None, job_delay: float = 0.2,
                 public_url: str | None = None, websocket: bool = True) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.job_delay, self.public_url, self.websocket = job_delay, public_url, websocket
        self.read_token = f"R:{secrets.token_urlsafe(24)}"
        self.token = f"A:{secrets.token_urlsafe(24)}"
        self.project_token = f"C:{secrets.token_urlsafe(24)}"
        self.other_token = f"A:{secrets.token_urlsafe(24)}"
        self.project_url = "users/1/projects/1"
        self.tokens_file = tmp / "amigocloud-tokens.json"
        self.tokens_file.write_text(json.dumps({
            self.read_token: ["R", 1], self.token: ["A", 1],
            self.project_token: ["C", 1, 1], self.other_token: ["A", 2]}))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> AmigoCloudService:
        self.proc = start_server(
            [sys.executable, "-m", "tests.servers.amigocloud", "--port", str(self.port),
             "--job-delay", str(self.job_delay), "--tokens", str(self.tokens_file)]
            + (["--public-url", self.public_url] if self.public_url else [])
            + ([] if self.websocket else ["--no-websocket"]),
            self.url + f"{API}/me", "the AmigoCloud service", timeout, cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


def amigocloud_service(tmp: Any, **options: Any) -> contextlib.AbstractContextManager[
        AmigoCloudService]:
    """A running AmigoCloudService for a fixture; `tmp` a directory for its token file."""
    return running(AmigoCloudService(tmp, **options))


if __name__ == "__main__":
    sys.exit(main())
