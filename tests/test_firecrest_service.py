"""Conformance of the local FirecREST service (tests/servers/firecrest.py) with the official
client, pyfirecrest: `firecrest.v2.Firecrest` and `firecrest.v1.Firecrest`, authenticated by
its ClientCredentialsAuth against the service's token endpoint, list, stat, make, move, copy,
chmod, link and delete files, upload and download small files directly and large ones through
the S3 staging area (v2 jobs, v1 tasks with curl), and meet the errors the real services give
(missing files, permissions, existing paths, single quotes, expired tokens). The files are
checked on the service's tree directly. No mount is involved.

The fixtures live here until the FirecREST driver's kit takes them over.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import firecrest
import pytest
import requests
from firecrest.FirecrestException import FirecrestException, HeaderException
from firecrest.v1 import Firecrest as FirecrestV1
from firecrest.v2 import Firecrest as FirecrestV2

from servers.firecrest import FirecrestService, firecrest_service
from servers.s3 import S3Server

SYSTEM = "cluster"
TOKEN_LIFETIME = 3  # seconds: expiry is tested by waiting it out
STAGED = 5 * 1024 * 1024 + 12345  # over both direct limits: two parts of the staged upload
LAST_MODIFIED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.fixture(scope="module")
def v2_service(s3_server: S3Server) -> Iterator[FirecrestService]:
    with firecrest_service(s3_server.url, api="v2", token_lifetime=TOKEN_LIFETIME) as service:
        yield service


@pytest.fixture(scope="module")
def v1_service(s3_server: S3Server) -> Iterator[FirecrestService]:
    with firecrest_service(s3_server.url, api="v1", token_lifetime=TOKEN_LIFETIME) as service:
        yield service


def credentials(service: FirecrestService) -> firecrest.ClientCredentialsAuth:
    # min_token_validity below the lifetime, or every call would fetch a token
    return firecrest.ClientCredentialsAuth(service.client_id, service.client_secret,
                                           service.token_url, min_token_validity=1)


@pytest.fixture
def v2(v2_service: FirecrestService) -> FirecrestV2:
    return FirecrestV2(v2_service.url, credentials(v2_service))


@pytest.fixture
def v1(v1_service: FirecrestService) -> FirecrestV1:
    return FirecrestV1(v1_service.url, credentials(v1_service))


@pytest.fixture
def home(request: pytest.FixtureRequest) -> str:
    """A fresh directory (a system path) in the user's home for one test, on the service
    the test uses."""
    service: FirecrestService = request.getfixturevalue(
        "v2_service" if {"v2", "v2_service"} & set(request.fixturenames) else "v1_service")
    path = f"{service.home()}/{request.node.name.replace('[', '-').rstrip(']')}"
    service.host_path(SYSTEM, path).mkdir()
    return path


def host(service: FirecrestService, path: str) -> Path:
    return service.host_path(SYSTEM, path)


def status_of(exc: pytest.ExceptionInfo[FirecrestException]) -> int:
    return exc.value.responses[-1].status_code


def body_of(exc: pytest.ExceptionInfo[FirecrestException]) -> dict:
    return exc.value.responses[-1].json()


def local_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- v2 -----------------------------------------------------------------------------------------

def test_v2_systems(v2: FirecrestV2, v2_service: FirecrestService) -> None:
    [system] = v2.systems()
    assert system["name"] == SYSTEM
    assert [fs["path"] for fs in system["fileSystems"]] == ["/home", "/scratch"]
    assert v2.server_version() == "2"  # the f7t-appversion header the real one sends
    res = requests.get(v2_service.url + "/status/systems",
                       headers={"Authorization": f"Bearer {v2_service.static_token}"}, timeout=10)
    assert res.status_code == 200 and res.headers["f7t-appversion"] == "2.x.x"


def test_v2_files(v2: FirecrestV2, v2_service: FirecrestService, home: str,
                  tmp_path: Path) -> None:
    made = v2.mkdir(SYSTEM, f"{home}/a/b", create_parents=True)
    assert made["name"] == f"{home}/a/b" and made["type"] == "d"
    v2.upload(SYSTEM, local_file(tmp_path, "f", b"hello\n"), f"{home}/a", "f.txt")
    [entry] = v2.list_files(SYSTEM, f"{home}/a/b/..")[1:]
    assert entry["name"] == "f.txt" and entry["size"] == "6" and entry["type"] == "-"
    assert LAST_MODIFIED.fullmatch(entry["lastModified"])
    assert v2.stat(SYSTEM, f"{home}/a/f.txt")["size"] == 6

    v2.mv(SYSTEM, f"{home}/a/f.txt", f"{home}/a/b/g.txt")  # a job, followed to its end
    v2.cp(SYSTEM, f"{home}/a/b", f"{home}/c")
    assert host(v2_service, f"{home}/c/g.txt").read_bytes() == b"hello\n"
    assert not host(v2_service, f"{home}/a/f.txt").exists()
    v2.mv(SYSTEM, f"{home}/c", f"{home}/d")  # a whole directory in one call
    assert sorted(os.listdir(host(v2_service, home))) == ["a", "d"]

    assert v2.chmod(SYSTEM, f"{home}/d/g.txt", "640")["permissions"] == "rw-r-----"
    assert host(v2_service, f"{home}/d/g.txt").stat().st_mode & 0o777 == 0o640
    link = v2.symlink(SYSTEM, f"{home}/d/g.txt", f"{home}/link")["output"]
    assert link["type"] == "l" and link["linkTarget"] == f"{home}/d/g.txt"
    v2.download(SYSTEM, f"{home}/link", tmp_path / "via-link")  # the target is in the system
    assert (tmp_path / "via-link").read_bytes() == b"hello\n"

    v2.rm(SYSTEM, f"{home}/a")  # rm -r: the directory goes with what it holds
    assert sorted(os.listdir(host(v2_service, home))) == ["d", "link"]


def test_v2_staged_transfers(v2: FirecrestV2, v2_service: FirecrestService, home: str,
                             tmp_path: Path) -> None:
    data = os.urandom(STAGED)
    v2.upload(SYSTEM, local_file(tmp_path, "big", data), home, "big.bin")
    assert host(v2_service, f"{home}/big.bin").read_bytes() == data
    v2.download(SYSTEM, f"{home}/big.bin", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


def test_v2_jobs_pass_through_real_states(v2_service: FirecrestService, home: str) -> None:
    host(v2_service, f"{home}/x").write_text("x")
    auth = {"Authorization": f"Bearer {v2_service.static_token}"}
    res = requests.post(f"{v2_service.url}/filesystem/{SYSTEM}/transfer/mv", headers=auth,
                        json={"sourcePath": f"{home}/x", "targetPath": f"{home}/y"}, timeout=10)
    assert res.status_code == 201, res.text
    job = res.json()["transferJob"]
    seen = []
    while not seen or seen[-1] != "COMPLETED":
        info = requests.get(f"{v2_service.url}/compute/{SYSTEM}/jobs/{job['jobId']}",
                            headers=auth, timeout=10).json()["jobs"][0]
        if not seen or seen[-1] != info["status"]["state"]:
            seen.append(info["status"]["state"])
        time.sleep(0.05)
    assert seen == ["PENDING", "RUNNING", "COMPLETED"]
    log = host(v2_service, job["logs"]["outputLog"]).read_text()
    assert "Files were successfully moved." in log
    assert host(v2_service, f"{home}/y").read_text() == "x"


def test_v2_names_as_ls_prints_them(v2: FirecrestV2, v2_service: FirecrestService,
                                    home: str) -> None:
    for name in ("new\nline", "café", "back\\slash", 'dq"uote', "it's"):
        (host(v2_service, home) / name).write_text("")
    names = {e["name"] for e in v2.list_files(SYSTEM, home)}
    assert names == {"new\\nline", "café", "back\\slash", 'dq"uote', "it's"}
    [entry] = v2.list_files(SYSTEM, f"{home}/café")
    assert entry["name"] == f"{home}/café"  # ls of a file: the path asked


def test_v2_upload_writes_into_the_directory(v2: FirecrestV2, v2_service: FirecrestService,
                                             home: str, tmp_path: Path) -> None:
    v2.upload(SYSTEM, local_file(tmp_path, "1", b"one"), home, "f")
    v2.upload(SYSTEM, local_file(tmp_path, "2", b"two"), home, "f")  # overwrites silently
    assert host(v2_service, f"{home}/f").read_bytes() == b"two"
    with pytest.raises(FirecrestException) as exc:
        v2.upload(SYSTEM, local_file(tmp_path, "3", b"x"), f"{home}/missing", "f")
    assert status_of(exc) == 404
    over = requests.post(f"{v2_service.url}/filesystem/{SYSTEM}/ops/upload",
                         params={"path": home}, files={"file": ("big", b"\0" * (5 * 2**20 + 1))},
                         headers={"Authorization": f"Bearer {v2_service.static_token}"},
                         timeout=30)
    assert over.status_code == 413


def test_v2_errors(v2: FirecrestV2, v2_service: FirecrestService, home: str,
                   tmp_path: Path) -> None:
    with pytest.raises(FirecrestException) as exc:
        v2.stat(SYSTEM, f"{home}/missing")
    assert status_of(exc) == 404 and "No such file or directory" in body_of(exc)["message"]
    assert set(body_of(exc)) == {"errorType", "message", "causedBy", "data", "user"}

    secret = host(v2_service, f"{home}/secret")
    secret.write_text("no")
    secret.chmod(0)  # the service user (this uid) may not read it, root or not
    with pytest.raises(FirecrestException) as exc:
        v2.download(SYSTEM, f"{home}/secret", tmp_path / "secret")
    assert status_of(exc) == 403

    v2.mkdir(SYSTEM, f"{home}/d")
    with pytest.raises(FirecrestException) as exc:
        v2.mkdir(SYSTEM, f"{home}/d")
    assert status_of(exc) == 400
    v2.mkdir(SYSTEM, f"{home}/d", create_parents=True)

    for system, path, status in ((SYSTEM, "/etc", 400), ("nowhere", home, 404)):
        with pytest.raises(FirecrestException) as exc:
            v2.list_files(system, path)
        assert status_of(exc) == status

    with pytest.raises(FirecrestException) as exc:
        v2.list_files(SYSTEM, f"{home}/d/it's")
    assert status_of(exc) == 500
    with pytest.raises(FirecrestException) as exc:
        v2.mkdir(SYSTEM, f"{home}/it's")
    assert status_of(exc) == 500
    assert sorted(os.listdir(host(v2_service, home))) == ["d", "its", "secret"]  # another name

    for header in ({}, {"Authorization": "Bearer nonsense"}):
        res = requests.get(f"{v2_service.url}/filesystem/{SYSTEM}/ops/ls",
                           params={"path": home}, headers=header, timeout=10)
        assert res.status_code == 401 and res.json()["errorType"] == "error"


# --- tokens -------------------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["v2", "v1"])
def test_tokens_expire_and_are_renewed(api: str, request: pytest.FixtureRequest) -> None:
    service: FirecrestService = request.getfixturevalue(f"{api}_service")
    auth = credentials(service)
    client = FirecrestV2(service.url, auth) if api == "v2" else FirecrestV1(service.url, auth)

    def list_home() -> None:
        client.list_files(SYSTEM, service.home())  # the same call in both clients

    list_home()
    token = auth.get_access_token()
    time.sleep(TOKEN_LIFETIME + 0.2)
    stale = requests.get(service.url + "/status/systems",
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert stale.status_code == 401
    list_home()  # ClientCredentialsAuth fetched a new token
    assert auth.get_access_token() != token
    wrong = firecrest.ClientCredentialsAuth(service.client_id, "wrong", service.token_url)
    with pytest.raises(firecrest.ClientsCredentialsException):
        wrong.get_access_token()


# --- v1 -----------------------------------------------------------------------------------------

def test_v1_systems(v1: FirecrestV1) -> None:
    assert [s["system"] for s in v1.all_systems()] == [SYSTEM]
    names = {p["name"] for p in v1.parameters()["utilities"]}
    assert "UTILITIES_MAX_FILE_SIZE" in names


def test_v1_files(v1: FirecrestV1, v1_service: FirecrestService, home: str,
                  tmp_path: Path) -> None:
    v1.mkdir(SYSTEM, f"{home}/a/b", p=True)
    v1.simple_upload(SYSTEM, local_file(tmp_path, "f", b"hello\n"), f"{home}/a", "f.txt")
    entries = {e["name"]: e for e in v1.list_files(SYSTEM, f"{home}/a")}
    assert entries["f.txt"]["size"] == "6" and entries["b"]["type"] == "d"
    assert LAST_MODIFIED.fullmatch(entries["f.txt"]["last_modified"])
    assert v1.stat(SYSTEM, f"{home}/a/f.txt")["size"] == 6
    v1.mv(SYSTEM, f"{home}/a/f.txt", f"{home}/a/b/g.txt")
    v1.copy(SYSTEM, f"{home}/a/b", f"{home}/c")
    v1.chmod(SYSTEM, f"{home}/c/g.txt", "600")
    assert host(v1_service, f"{home}/c/g.txt").stat().st_mode & 0o777 == 0o600
    v1.symlink(SYSTEM, f"{home}/c/g.txt", f"{home}/link")
    [link] = v1.list_files(SYSTEM, f"{home}/link")
    assert link["type"] == "l" and link["link_target"] == f"{home}/c/g.txt"
    v1.simple_download(SYSTEM, f"{home}/link", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == b"hello\n"
    v1.simple_delete(SYSTEM, f"{home}/a")  # non-empty: rm -r
    assert sorted(os.listdir(host(v1_service, home))) == ["c", "link"]


def test_v1_external_transfers(v1: FirecrestV1, v1_service: FirecrestService, home: str,
                               tmp_path: Path) -> None:
    data = os.urandom(STAGED)
    up = v1.external_upload(SYSTEM, str(local_file(tmp_path, "big.bin", data)), home)
    assert up.status in ("100", "110", "111")
    up.finish_upload()  # runs the task's curl command against the staging area
    while up.in_progress:
        time.sleep(0.1)
    assert up.status == "114"
    assert host(v1_service, f"{home}/big.bin").read_bytes() == data

    down = v1.external_download(SYSTEM, f"{home}/big.bin")
    while down.in_progress:
        time.sleep(0.1)
    assert down.status == "117"
    down.finish_download(tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data
    down.invalidate_object_storage_link()
    assert requests.get(down.object_storage_link, timeout=10).status_code == 404


def test_v1_errors(v1: FirecrestV1, v1_service: FirecrestService, home: str,
                   tmp_path: Path) -> None:
    def header_of(call: object) -> set[str]:
        with pytest.raises(FirecrestException) as exc:
            call()  # type: ignore[operator]
        return {h for h in exc.value.responses[-1].headers if h.startswith("X-")}

    with pytest.raises(HeaderException):
        v1.stat(SYSTEM, f"{home}/missing")
    assert header_of(lambda: v1.stat(SYSTEM, f"{home}/missing")) == {"X-Not-Found"}
    assert header_of(lambda: v1.list_files(SYSTEM, f"{home}/missing")) == {"X-Invalid-Path"}
    secret = host(v1_service, f"{home}/secret")
    secret.write_text("no")
    secret.chmod(0)
    assert header_of(lambda: v1.simple_download(SYSTEM, f"{home}/secret", tmp_path / "s")) \
        == {"X-Permission-Denied"}
    assert header_of(lambda: v1.mkdir(SYSTEM, f"{home}/secret")) == {"X-Exists"}
    assert header_of(lambda: v1.list_files("nowhere", home)) == {"X-Machine-Does-Not-Exist"}
    big = host(v1_service, f"{home}/big")
    big.write_bytes(b"\0" * (v1_service.max_ops_size + 1))
    assert header_of(lambda: v1.simple_download(SYSTEM, f"{home}/big", tmp_path / "b")) \
        == {"X-Size-Limit"}
    with pytest.raises(FirecrestException) as exc:  # refused up front, nothing made
        v1.mkdir(SYSTEM, f"{home}/it's")
    assert status_of(exc) == 400 and "invalid char" in body_of(exc)["error"]
    assert sorted(os.listdir(host(v1_service, home))) == ["big", "secret"]
