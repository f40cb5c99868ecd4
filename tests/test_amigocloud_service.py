"""Conformance of the local AmigoCloud service (tests/servers/amigocloud.py) with the official
client, python-amigocloud 1.2.5 (`pip install --no-deps amigocloud==1.2.5` plus gevent,
requests, six and socketIO-client 0.7.2): it logs in with each kind of token, lists projects and
datasets through its DRF cursor, creates a project, exports a dataset and reads the link,
imports files by simple and by chunked upload (Content-Range and the final MD5) and follows
their jobs, and meets the refusals of READ and project tokens. No mount is involved.
"""
from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

amigocloud = pytest.importorskip("amigocloud")
from amigocloud import AmigoCloud, AmigoCloudError  # noqa: E402

from servers.amigocloud import AmigoCloudService, amigocloud_service  # noqa: E402


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmigoCloudService]:
    with amigocloud_service(tmp_path_factory.mktemp("amigocloud"), job_delay=0.1) as s:
        yield s


def client(service: AmigoCloudService, token: str, project_url: str | None = None
           ) -> AmigoCloud:
    return AmigoCloud(token=token, project_url=project_url, base_url=service.url,
                      use_websockets=False)


def finished(ac: AmigoCloud, job: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = ac.get(f"/me/jobs/{job}")
        if state["status"] in ("SUCCESS", "FAILURE"):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


def test_me_and_projects(service: AmigoCloudService) -> None:
    ac = client(service, service.token)
    me = ac.get("me")
    assert me["id"] == 1 and me["username"] == "alice"
    names = [p["name"] for p in ac.get(me["visible_projects"])["results"]]
    assert names[:3] == ["Parks", "Survey", "Survey"]


def test_paging_follows_next(service: AmigoCloudService) -> None:
    ac = client(service, service.token)
    first = ac.get("me/projects", params={"limit": 1})
    assert first["count"] >= 3 and len(first["results"]) == 1 and first["next"]
    names = [p["name"] for p in ac.get_cursor("me/projects", params={"limit": 1})]
    assert len(names) == first["count"] and names[:3] == ["Parks", "Survey", "Survey"]


def test_datasets_and_export(service: AmigoCloudService) -> None:
    ac = client(service, service.token)
    datasets = ac.get("users/1/projects/1/datasets")["results"]
    trees = next(d for d in datasets if d["name"] == "trees")
    assert trees["feature_count"] == 2
    job = ac.post(trees["export"], {"format": "GEOJSON"})["job"]
    done = finished(ac, job)
    assert done["status"] == "SUCCESS"
    exported = requests.get(done["extra"]["link"], timeout=10)
    assert 'filename="trees.geojson"' in exported.headers["Content-Disposition"]
    doc = json.loads(exported.content)
    assert [f["properties"]["name"] for f in doc["features"]] == ["oak", "elm"]
    job = ac.post(trees["export"], {"format": "CSV"})["job"]
    rows = list(csv.DictReader(io.StringIO(requests.get(
        finished(ac, job)["extra"]["link"], timeout=10).text)))
    assert rows[0]["WKT"] == "POINT (-122.41 37.77)" and rows[1]["name"] == "elm"


def test_create_project(service: AmigoCloudService) -> None:
    ac = client(service, service.token)
    made = ac.post("me/projects", {"name": "New Project", "description": "from Python"})
    assert made["name"] == "New Project"
    assert "New Project" in [p["name"] for p in ac.get_cursor("me/projects")]


def test_simple_upload(service: AmigoCloudService, tmp_path: Path) -> None:
    ac = client(service, service.token)
    path = tmp_path / "stations.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]},
         "properties": {"name": "s1"}}]}))
    job = ac.upload_datafile(1, 1, str(path))["job"]
    done = finished(ac, job)
    assert done["status"] == "SUCCESS" and done["extra"]["dataset_names"] == ["stations"]
    dataset = ac.get(f"users/1/projects/1/datasets/{done['extra']['dataset_ids'][0]}")
    assert dataset["feature_count"] == 1


def test_chunked_upload_checks_md5(service: AmigoCloudService, tmp_path: Path) -> None:
    ac = client(service, service.token)
    rows = "".join(f"p{i},{i % 180},{i % 90}\n" for i in range(30000))
    data = ("name,longitude,latitude\n" + rows).encode()
    assert len(data) > 3 * 100000  # several chunks
    job = ac.upload_datafile(1, 1, io.BytesIO(data), force_chunked=True)["job"]
    done = finished(ac, job)
    assert done["status"] == "SUCCESS"  # its name: the chunks' field name, the client's
    dataset = ac.get(f"users/1/projects/1/datasets/{done['extra']['dataset_ids'][0]}")
    assert dataset["feature_count"] == 30000
    first = ac.post("users/1/projects/1/datasets/chunked_upload", files={"datafile": b"ab"},
                    headers={"Content-Range": "bytes 0-1/2"})
    with pytest.raises(AmigoCloudError) as refused:
        ac.post("users/1/projects/1/datasets/chunked_upload/complete",
                {"upload_id": first["upload_id"], "md5": "0" * 32})
    assert refused.value.response.status_code == 400 and "md5" in refused.value.text


def test_failed_import(service: AmigoCloudService) -> None:
    ac = client(service, service.token)
    job = ac.upload_datafile(1, 1, io.BytesIO(b"not json"))["job"]
    assert finished(ac, job)["status"] == "FAILURE"
    assert "not a supported format" in ac.get(f"/me/jobs/{job}")["extra"]["error"]


def test_read_token_reads_only(service: AmigoCloudService) -> None:
    ac = client(service, service.read_token)
    assert ac.get("me")["id"] == 1
    with pytest.raises(AmigoCloudError) as refused:
        ac.post("me/projects", {"name": "nope"})
    assert refused.value.response.status_code == 403


def test_project_token(service: AmigoCloudService) -> None:
    ac = client(service, service.project_token, project_url=service.project_url)
    assert ac.get("datasets")["count"] >= 2  # relative to the project URL
    with pytest.raises(AmigoCloudError) as refused:
        client(service, service.project_token, project_url="users/1/projects/2")
    assert refused.value.response.status_code == 403
    with pytest.raises(AmigoCloudError):
        client(service, service.project_token)  # GET /me: not under its project


def test_bad_token(service: AmigoCloudService) -> None:
    with pytest.raises(AmigoCloudError) as refused:
        client(service, "A:wrong")
    assert refused.value.response.status_code == 401


def test_events_reach_the_official_client(service: AmigoCloudService, tmp_path: Path) -> None:
    """The client's socket.io channel (Engine.IO v3, /amigosocket): after
    listen_user_events (start_websocket_session, then `authenticate`), an import made with
    another client brings `dataset:creation_succeeded` and `project:metadata_updated`."""
    listener = AmigoCloud(token=service.token, base_url=service.url)
    received: list[tuple[str, dict[str, Any]]] = []
    for event in ("dataset:creation_succeeded", "project:metadata_updated"):
        listener.add_callback(event, lambda data, event=event: received.append((event, data)))
    listener.listen_user_events()
    listener.start_listening(seconds=0.5)  # the authentication is handled
    path = tmp_path / "evented.csv"
    path.write_text("name,longitude,latitude\na,1,2\n")
    job = client(service, service.token).upload_datafile(1, 1, str(path))["job"]
    deadline = time.monotonic() + 10
    while not any(e == "dataset:creation_succeeded" for e, _ in received):
        assert time.monotonic() < deadline, received
        listener.start_listening(seconds=0.5)
    created = next(d for e, d in received if e == "dataset:creation_succeeded")
    assert created["user_id"] == 1 and created["project_id"] == 1 and created["job"] == job
    assert ("project:metadata_updated", {"user_id": 1, "project_id": 1}) in received
    listener.socketio.disconnect()


def test_events_need_a_session(service: AmigoCloudService) -> None:
    """Only a session handed out to the user authenticates a socket."""
    listener = AmigoCloud(token=service.token, base_url=service.url)
    outcome: list[str] = []
    listener.add_callback("authentication_failed", lambda data: outcome.append("failed"))
    listener.add_callback("authentication_succeeded", lambda data: outcome.append("ok"))
    listener.amigosocket.emit("authenticate", {"userid": 1, "websocket_session": "made-up"})
    listener.start_listening(seconds=1)
    listener.listen_user_events()
    listener.start_listening(seconds=1)
    assert outcome == ["failed", "ok"]
    listener.socketio.disconnect()
