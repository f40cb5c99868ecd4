"""The AmigoCloud driver mounted for real against the local AmigoCloud service
(tests/servers/amigocloud.py): projects and datasets browsed, exports read in two formats and
parsed, files imported by copying them into uploads/ (simple and chunked), a failed import kept
and shown in `mountfs status`, a READ token mounted read-only, a project token's one project,
datasets deleted as the token allows, the mistakes that stop a mount in one line, and the
token kept out of the log and the command line.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import Mount, Mounter, run_cli
from servers.amigocloud import AmigoCloudService, amigocloud_service
from servers.faults import LoseReplies
from servers.s3_proxy import ProxyHandler, S3Proxy
from servers.s3 import free_port

TTL = "1"  # --metadata-ttl: a new dataset shows within a second of its import


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmigoCloudService]:
    with amigocloud_service(tmp_path_factory.mktemp("amigocloud"), job_delay=0.1) as running:
        yield running


def mount(mounter: Mounter, service: AmigoCloudService, token: str, *options: str,
          source: str = "amigocloud:", name: str = "mnt", url: str | None = None) -> Mount:
    """A mount of `service` (through `url`, a proxy, if given); the same `name` again (after
    an unmount) mounts on the same cache."""
    path, cache = mounter.tmp / name, mounter.tmp / f"cache-{name}"
    path.mkdir(exist_ok=True)
    m = Mount(source, path, cache, path, options=list(options))
    mounter.mounts.append(m)
    run_cli("mount", source, str(path), "--cache-dir", str(cache), "-v",
            "--writeback-delay", "0.1", "--metadata-ttl", TTL,
            "--amigocloud-url", url or service.url, *options, env={"AMIGOCLOUD_TOKEN": token})
    m.pid = m.served_status()["pid"]
    return m


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def api(service: AmigoCloudService, path: str) -> Any:
    reply = requests.get(f"{service.url}/api/v1/{path}", params={"token": service.token},
                         timeout=10)
    reply.raise_for_status()
    return reply.json()


def log_of(m: Mount) -> str:
    return (m.cache / "mountfs.log").read_text()


def oserror(fn: Callable[..., Any], *args: Any) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno or 0


def test_browse_and_read_exports(mounter: Mounter, service: AmigoCloudService) -> None:
    m = mount(mounter, service, service.token)
    projects = os.listdir(m.path)
    assert "Parks" in projects and "Survey" in projects
    twin = api(service, "me/projects")["results"][2]["id"]
    assert f"Survey ({twin})" in projects  # the younger of two projects named alike
    assert sorted(os.listdir(m.path / "Parks")) == ["datasets", "uploads"]
    datasets = m.path / "Parks" / "datasets"
    names = sorted(os.listdir(datasets))
    assert {"trees.geojson", "trees.csv", "trees.kml", "benches.geojson"} <= set(names)
    sizes = {n: (datasets / n).stat().st_size for n in names}  # ls -l: no export
    assert "export Parks" not in log_of(m)
    assert set(sizes.values()) == {0}  # the stand-in, until a file is opened
    with open(datasets / "trees.geojson") as f:
        doc = json.load(f)
    assert [feat["properties"]["name"] for feat in doc["features"]] == ["oak", "elm"]
    rows = list(csv.DictReader(io.StringIO((datasets / "trees.csv").read_text())))
    assert [r["name"] for r in rows] == ["oak", "elm"] and rows[0]["WKT"].startswith("POINT")
    # Once exported, the file shows its size, and an unchanged dataset's export is reused.
    size = wait_for("the export's size", lambda: (datasets / "trees.csv").stat().st_size)
    assert size == len((datasets / "trees.csv").read_bytes())
    time.sleep(float(TTL) + 0.2)
    assert (datasets / "trees.csv").read_bytes()
    assert log_of(m).count("export Parks/datasets/trees.csv: ") == 1


def test_import_by_copy(mounter: Mounter, service: AmigoCloudService, tmp_path: Path) -> None:
    m = mount(mounter, service, service.token)
    local = tmp_path / "stations.geojson"
    local.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [4.9, 52.4]},
         "properties": {"name": "central"}}]}))
    shutil.copy(local, m.path / "Parks" / "uploads")
    datasets = m.path / "Parks" / "datasets"
    wait_for("the new dataset", lambda: (datasets / "stations.geojson").exists())
    doc = json.loads((datasets / "stations.geojson").read_text())
    assert doc["features"][0]["properties"]["name"] == "central"
    assert "import Parks/uploads/stations.geojson: imported as dataset stations" in log_of(m)


def test_imported_files_leave_uploads(mounter: Mounter, service: AmigoCloudService,
                                      tmp_path: Path) -> None:
    """uploads/ holds what is still to import: an imported file is readable while listed
    (never EIO, though the cache is too small to keep it), leaves uploads/ on its dataset's
    event, well before the metadata TTL, and stays gone after a remount; its dataset stays."""
    options = ("--metadata-ttl", "60", "--cache-size", "1K")
    m = mount(mounter, service, service.token, *options, name="outbox")
    wait_for("the event channel", lambda: m.status()["changes"] == "events over websocket")
    data = b"name,longitude,latitude\n" + b"north,4.9,52.4\n" * 100
    uploads, datasets = m.path / "Survey" / "uploads", m.path / "Survey" / "datasets"
    (uploads / "outbox.csv").write_bytes(data)
    started, reads = time.monotonic(), 0
    while "outbox.csv" in os.listdir(uploads):
        assert time.monotonic() - started < 20, "still in uploads/"
        try:
            assert (uploads / "outbox.csv").read_bytes() == data
            reads += 1
        except FileNotFoundError:  # it left between the listing and the open
            pass
        time.sleep(0.05)
    assert reads and "outbox.csv" in os.listdir(datasets)
    assert "Parks/uploads/outbox.csv: imported" not in log_of(m)
    assert "Survey/uploads/outbox.csv: imported as dataset outbox" in log_of(m)
    mounter.umount(m)
    m = mount(mounter, service, service.token, *options, name="outbox")
    assert os.listdir(uploads) == [] and "outbox.geojson" in os.listdir(datasets)
    mounter.umount(m)


def datasets_named(service: AmigoCloudService, project: int, name: str) -> list[dict]:
    return [d for d in api(service, f"users/1/projects/{project}/datasets?limit=1000")
            ["results"] if d["name"] == name]


@pytest.mark.parametrize("rows, lost, skip, logged", [
    (10, r"/datasets/upload$", 0, "before its reply was lost"),
    (300_000, r"/chunked_upload/complete$", 0, "before its reply was lost"),
    (300_000, r"/chunked_upload$", 1, "had the chunk before its reply was lost")])
def test_import_once_though_its_reply_was_lost(mounter: Mounter, tmp_path: Path, rows: int,
                                               lost: str, skip: int, logged: str) -> None:
    """A request of an import takes effect but its reply is lost: the request that starts
    the job (a simple upload; a chunked upload's `complete`), whose retry finds the job it
    started; or a chunk (the second), whose retry the service refuses with the offset it has,
    the chunk's end. One dataset is made, not two, and the file is whole."""
    port = free_port()
    with amigocloud_service(tmp_path, job_delay=0.3, public_url=f"http://127.0.0.1:{port}") \
            as service:
        proxy = LoseReplies(service.url, "POST", lost, skip=skip, port=port).start()
        try:
            m = mount(mounter, service, service.token, url=proxy.url)
            local = tmp_path / "once.csv"
            with open(local, "w") as f:
                f.write("name,longitude,latitude\n")
                f.writelines(f"point-number-{i:07d},{i % 180}.5,{i % 90}.25\n"
                             for i in range(rows))
            shutil.copy(local, m.path / "Parks" / "uploads")
            wait_for("the new dataset", lambda: datasets_named(service, 1, "once"),
                     timeout=60)
            wait_for("the import's end", lambda: not m.status()["queue"], timeout=60)
            time.sleep(1)  # a second import, had one been started, would have ended by now
            assert proxy.lost == 1
            assert len(datasets_named(service, 1, "once")) == 1
            assert logged in log_of(m)
            assert os.listdir(m.path / "Parks" / "datasets").count("once.csv") == 1
            assert datasets_named(service, 1, "once")[0]["feature_count"] == rows
            mounter.umount(m)
        finally:
            proxy.stop()


def test_chunked_import(mounter: Mounter, service: AmigoCloudService, tmp_path: Path) -> None:
    m = mount(mounter, service, service.token)
    local = tmp_path / "many.csv"
    with open(local, "w") as f:
        f.write("name,longitude,latitude\n")
        f.writelines(f"point-number-{i:07d},{i % 180}.5,{i % 90}.25\n" for i in range(300_000))
    assert local.stat().st_size > 8_000_000  # over the simple upload's limit
    shutil.copy(local, m.path / "Survey" / "uploads")
    wait_for("the new dataset", lambda: (m.path / "Survey" / "datasets" / "many.csv").exists(),
             timeout=60)
    project = api(service, "me/projects")["results"][1]
    found = [d for d in api(service, f"users/1/projects/{project['id']}/datasets")["results"]
             if d["name"] == "many"]
    assert found and found[0]["feature_count"] == 300_000


def test_failed_import_shown_in_status(mounter: Mounter, service: AmigoCloudService,
                                       tmp_path: Path) -> None:
    m = mount(mounter, service, service.token)
    (m.path / "Parks" / "uploads" / "notes.txt").write_text("no GIS data here")

    def failed() -> dict | None:
        queue = m.status()["queue"]
        return next((e for e in queue if e["state"] == "failed"), None)
    entry = wait_for("a failed import", failed)
    assert entry["key"] == "uploads/notes.txt" and "not a supported format" in entry["error"]
    assert "import Parks/uploads/notes.txt failed" in log_of(m)
    run_cli("discard", str(m.path), "Parks/uploads/notes.txt")
    mounter.umount(m)


def test_read_token_mounts_read_only(mounter: Mounter, service: AmigoCloudService) -> None:
    m = mount(mounter, service, service.read_token)
    assert "READ token" in log_of(m) and "mounted read-only" in log_of(m)
    assert json.loads((m.path / "Parks" / "datasets" / "benches.geojson").read_text())
    assert oserror((m.path / "Parks" / "uploads" / "a.csv").write_text, "x") == errno.EROFS
    assert oserror(os.mkdir, m.path / "Another") == errno.EROFS
    mounter.umount(m)


def test_project_token(mounter: Mounter, service: AmigoCloudService) -> None:
    m = mount(mounter, service, service.project_token, source="amigocloud:users/1/projects/1")
    assert os.listdir(m.path) == ["Parks"]
    assert "trees.kml" in os.listdir(m.path / "Parks" / "datasets")
    # CREATE, not ADMIN: deleting a dataset is refused by the service.
    assert oserror(os.unlink, m.path / "Parks" / "datasets" / "benches.kml") == errno.EACCES
    assert oserror(os.mkdir, m.path / "Another") == errno.EPERM
    mounter.umount(m)


def test_edit_projects_and_datasets(mounter: Mounter, service: AmigoCloudService,
                                    tmp_path: Path) -> None:
    m = mount(mounter, service, service.token)
    os.mkdir(m.path / "Field work")
    assert "Field work" in [p["name"] for p in api(service, "me/projects")["results"]]
    # Its two folders show at once (the metadata TTL is a second: well before it).
    assert sorted(os.listdir(m.path / "Field work")) == ["datasets", "uploads"]
    assert os.listdir(m.path / "Field work" / "datasets") == []
    assert oserror((m.path / "Parks" / "datasets" / "mine.csv").write_text, "x") == errno.EPERM
    assert oserror(os.mkdir, m.path / "Parks" / "other") == errno.EPERM
    assert oserror(os.rmdir, m.path / "Field work") in (errno.EPERM, errno.ENOTEMPTY)
    (tmp_path / "gone.csv").write_text("name,longitude,latitude\nx,1,1\n")
    shutil.copy(tmp_path / "gone.csv", m.path / "Parks" / "uploads")
    datasets = m.path / "Parks" / "datasets"
    wait_for("the new dataset", lambda: (datasets / "gone.kml").exists())
    os.unlink(datasets / "gone.kml")  # deletes the dataset: every format of it goes
    wait_for("the dataset gone", lambda: not (datasets / "gone.geojson").exists())
    assert "gone" not in [d["name"] for d in api(service, "users/1/projects/1/datasets")
                          ["results"]]


def test_token_never_in_log_or_argv(mounter: Mounter, service: AmigoCloudService) -> None:
    m = mount(mounter, service, service.token, "-vv", name="verbose")
    (m.path / "Parks" / "datasets" / "benches.csv").read_bytes()
    log = log_of(m)
    assert "token=" in log  # urllib3 logs each URL at -vv ...
    assert "token=<redacted>" in log  # ... with the token redacted
    for form in (service.token, urllib.parse.quote(service.token, safe=""),
                 service.token.split(":", 1)[1]):
        assert form not in log
    assert service.token.encode() not in Path(f"/proc/{m.pid}/cmdline").read_bytes()
    mounter.umount(m)


@pytest.mark.parametrize("token, source, expected", [
    ("A:wrong-token", "amigocloud:", "the token is refused"),
    ("project", "amigocloud:", "a project token (C:…) works only in its project"),
    ("project", "amigocloud:users/1/projects/2", "the token is refused for project"),
    ("read", "amigocloud:somewhere", "an AmigoCloud source is"),
])
def test_mistakes_stop_the_mount_in_one_line(service: AmigoCloudService, tmp_path: Path,
                                             token: str, source: str, expected: str) -> None:
    token = {"project": service.project_token, "read": service.read_token}.get(token, token)
    (tmp_path / "mnt").mkdir()
    proc = run_cli("mount", source, str(tmp_path / "mnt"), "--cache-dir",
                   str(tmp_path / "cache"), "--amigocloud-url", service.url,
                   env={"AMIGOCLOUD_TOKEN": token}, check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and token not in proc.stderr


def import_elsewhere(service: AmigoCloudService, name: str) -> None:
    """A dataset imported by another client, over plain HTTP."""
    data = b"name,longitude,latitude\nfar,10,20\n"
    reply = requests.post(f"{service.url}/api/v1/users/1/projects/1/datasets/upload",
                          params={"token": service.token}, files={"datafile": (name, data)},
                          timeout=10)
    reply.raise_for_status()


def test_changes_elsewhere_show_by_events(mounter: Mounter, service: AmigoCloudService,
                                          tmp_path: Path) -> None:
    """With a metadata TTL of a minute, a dataset made through the official client shows
    within seconds: its event sets the listing aside."""
    official = pytest.importorskip("amigocloud")
    m = mount(mounter, service, service.token, "--metadata-ttl", "60", name="events")
    datasets = m.path / "Parks" / "datasets"
    assert "faraway.csv" not in os.listdir(datasets)
    wait_for("the event channel", lambda: m.status()["changes"] == "events over websocket")
    (tmp_path / "faraway.csv").write_text("name,longitude,latitude\nfar,10,20\n")
    official.AmigoCloud(token=service.token, base_url=service.url, use_websockets=False) \
        .upload_datafile(1, 1, str(tmp_path / "faraway.csv"))
    started = time.monotonic()
    wait_for("the dataset made elsewhere", lambda: "faraway.csv" in os.listdir(datasets),
             timeout=20)
    assert time.monotonic() - started < 10  # well before the TTL
    assert "changes made elsewhere: by events over websocket" in \
        run_cli("status", str(m.path)).stdout
    mounter.umount(m)


def features(path: Path) -> int:
    """How many features the GeoJSON file holds (-1: cut short, at a size the kernel kept)."""
    with open(path) as f:
        try:
            return len(json.load(f)["features"])
        except ValueError:
            return -1


def test_changed_dataset_reread_by_events(mounter: Mounter, service: AmigoCloudService,
                                          tmp_path: Path) -> None:
    """A dataset overwritten through the official client (its id kept, so the file is the
    same inode): the event makes the kernel forget the file's attributes and pages, so `stat`
    and a read show the new export within seconds, though the metadata TTL is a minute."""
    official = pytest.importorskip("amigocloud")
    client = official.AmigoCloud(token=service.token, base_url=service.url,
                                 use_websockets=False)
    local = tmp_path / "changing.csv"
    local.write_text("name,longitude,latitude\nfar,10,20\n")
    client.upload_datafile(1, 1, str(local))
    m = mount(mounter, service, service.token, "--metadata-ttl", "60", name="changing")
    wait_for("the event channel", lambda: m.status()["changes"] == "events over websocket")
    path = m.path / "Parks" / "datasets" / "changing.geojson"
    wait_for("the dataset", path.exists)
    assert features(path) == 1
    old = wait_for("the export's size", lambda: path.stat())
    local.write_text("name,longitude,latitude\n" + "far,10,20\n" * 5)
    client.upload_file("users/1/projects/1/datasets/upload", None, str(local),
                       extra_data={"dataset_write_action": "overwrite"})
    started = time.monotonic()

    wait_for("the new content", lambda: features(path) == 5, timeout=20)
    assert time.monotonic() - started < 10  # well before the TTL
    new = path.stat()
    assert new.st_ino == old.st_ino and new.st_size == len(path.read_bytes()) > old.st_size
    mounter.umount(m)


class HeldListing(S3Proxy):
    """Forwards every request; once `armed`, the next GET of `path` is answered upstream at
    once, and that answer handed on only when the test sets `release` (`held` says it is
    held; the wait is bounded)."""

    WAIT = 20.0

    def __init__(self, upstream: str, path: str, port: int) -> None:
        super().__init__(upstream, port=port)
        self.path, self.armed = path, False
        self.held, self.release = threading.Event(), threading.Event()

    def handle(self, h: ProxyHandler, op: str, body: bytes) -> None:
        with self.lock:
            hold = self.armed and h.command == "GET" and h.url_path == self.path
            self.armed = self.armed and not hold
        if not hold:
            super().handle(h, op, body)
            return
        reply = h.forward(body)
        self.held.set()
        self.release.wait(self.WAIT)
        h.answer(*reply)


@pytest.mark.parametrize("look", ["lookup", "readdir"])
def test_change_told_during_a_listing_is_not_lost(mounter: Mounter, tmp_path: Path,
                                                  look: str) -> None:
    """The service tells of a change while a listing of the directory is under way, answered
    before the change: neither the mount nor the kernel may trust it for the TTL (a minute),
    or the change is lost until then. A proxy holds the answer to the listing a lookup (or a
    readdir, whose entries the kernel keeps as a lookup's) makes after the overwrite's first
    event (its job started), until the mount has seen its second (the dataset changed)."""
    port = free_port()
    # Job steps of a second: the listing held is answered well before the dataset changes.
    with amigocloud_service(tmp_path, job_delay=1.0, websocket=False,
                            public_url=f"http://127.0.0.1:{port}") as service:
        proxy = HeldListing(service.url, "/api/v1/users/1/projects/1/datasets", port).start()
        try:
            def upload(rows: int, **form: str) -> None:
                data = "name,longitude,latitude\n" + "far,10,20\n" * rows
                requests.post(f"{service.url}/api/v1/users/1/projects/1/datasets/upload",
                              params={"token": service.token}, data=form,
                              files={"datafile": ("held.csv", data)},
                              timeout=10).raise_for_status()

            upload(1)
            wait_for("the dataset", lambda: datasets_named(service, 1, "held"))
            m = mount(mounter, service, service.token, "--metadata-ttl", "60", "-v",
                      url=proxy.url)  # -v twice: the debug log says what each event set aside
            wait_for("the event channel", lambda: m.status()["changes"].startswith("events"))
            path = m.path / "Parks" / "datasets" / "held.geojson"
            assert features(path) == 1

            def told() -> int:
                return log_of(m).count("changed on the service: Parks/datasets/")

            before = told()
            proxy.armed = True
            upload(5, dataset_write_action="overwrite")
            wait_for("the event of the job's start", lambda: told() > before, timeout=20)
            # Either lists datasets/ (the lookup to answer it).
            looking = threading.Thread(target=path.stat if look == "lookup" else
                                       lambda: os.listdir(path.parent))
            looking.start()
            assert proxy.held.wait(proxy.WAIT), "no listing of datasets/ after the event"
            wait_for("the event of the dataset's change", lambda: told() > before + 1,
                     timeout=20)
            proxy.release.set()
            looking.join(20)
            wait_for("the new content", lambda: features(path) == 5, timeout=15)
            mounter.umount(m)
        finally:
            proxy.release.set()
            proxy.stop()


def test_events_over_long_polling(mounter: Mounter, tmp_path: Path) -> None:
    """A service that offers no websocket: the event channel stays on long-polling, and
    `mountfs status` says so; its events still show a change at once."""
    with amigocloud_service(tmp_path, job_delay=0.1, websocket=False) as service:
        m = mount(mounter, service, service.token, "--metadata-ttl", "60")
        datasets = m.path / "Parks" / "datasets"
        assert "polled.csv" not in os.listdir(datasets)
        wait_for("the event channel", lambda: m.status()["changes"] == "events over polling")
        import_elsewhere(service, "longpolled.csv")
        started = time.monotonic()
        wait_for("the dataset made elsewhere", lambda: "longpolled.csv" in os.listdir(datasets),
                 timeout=20)
        assert time.monotonic() - started < 10
        mounter.umount(m)


def test_changes_elsewhere_show_by_polling(mounter: Mounter,
                                           service: AmigoCloudService) -> None:
    """A project token may not open the event channel: the projects are polled instead."""
    m = mount(mounter, service, service.project_token, "--metadata-ttl", "60",
              source="amigocloud:users/1/projects/1", name="polling")
    datasets = m.path / "Parks" / "datasets"
    assert "polled.csv" not in os.listdir(datasets)
    wait_for("polling", lambda: m.status()["changes"] == "polling")
    time.sleep(0.5)  # a first look at the projects, to compare the next with
    import_elsewhere(service, "polled.csv")
    started = time.monotonic()
    wait_for("the dataset made elsewhere", lambda: "polled.csv" in os.listdir(datasets),
             timeout=30)
    assert time.monotonic() - started < 20
    mounter.umount(m)


def test_event_packets_and_names() -> None:
    """Engine.IO v3 text framing (lengths in characters), Socket.IO events of the namespace
    (an ack id before the arguments, other namespaces ignored), and names made unique."""
    from mountfs.backends.amigocloud_events import decode, encode, event_of
    from mountfs.backends.amigocloud_wire import unique_names
    packets = ["40/amigosocket", '42/amigosocket,["dataset:creation_succeeded",{"n":"é"}]']
    assert decode(encode(packets).decode()) == packets
    assert event_of('2/amigosocket,7["realtime",{"a":1}]') == ("realtime", {"a": 1})
    assert event_of('2/other,["x",{}]') is None and event_of("0/amigosocket") is None
    named = unique_names([{"id": 9, "name": "a/b"}, {"id": 3, "name": "a/b"}])
    assert named == {"a\u2215b": {"id": 3, "name": "a/b"},
                     "a\u2215b (9)": {"id": 9, "name": "a/b"}}
