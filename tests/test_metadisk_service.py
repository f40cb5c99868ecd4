"""The local Metadisk bridge (tests/servers/metadisk.py) itself: that it refuses what the
v0.3.0 bridge refuses (and a repeated nonce, as the later bridge does), so that a driver
passing the other tests would pass the real checks. Requests are made by hand here."""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
import websockets.sync.client

from mountfs.backends.metadisk_api import Basic
from mountfs.backends.metadisk_wire import (QUOTA_STATUS, KeyPair, file_hash,
                                            password_hash)
from servers.metadisk import TOKEN_TTL, Bridge, BridgeServer

EMAIL, PASSWORD = "svc@example.org", "secret"
BASIC = Basic(EMAIL, password_hash(PASSWORD)).header()
http = urllib3.PoolManager(retries=False)


@pytest.fixture
def server() -> Iterator[BridgeServer]:
    server = BridgeServer(Bridge(gigabyte=1000)).start()
    try:
        yield server
    finally:
        server.stop()


def call(server: BridgeServer, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None, query: str = "") -> tuple[int, Any]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    reply = http.request(method, server.url + path + (f"?{query}" if query else ""),
                         body=data, headers={"Content-Type": "application/json",
                                             **(headers or {})})
    return reply.status, json.loads(reply.data) if reply.data.strip() else None


def signed(server: BridgeServer, key: KeyPair, method: str, path: str, nonce: int,
           body: dict[str, Any] | None = None, tamper: bool = False) -> tuple[int, Any]:
    if method in ("POST", "PATCH", "PUT"):
        text = json.dumps({**(body or {}), "__nonce": nonce}, separators=(",", ":"))
        headers = key.sign(method, path, text)
        if tamper:  # the body changed after signing
            text = text.replace(str(nonce), str(nonce + 1))
        return call(server, method, path, text.encode(), headers)
    query = f"__nonce={nonce}"
    headers = key.sign(method, path, query)
    return call(server, method, path, headers=headers,
                query=f"__nonce={nonce + 1}" if tamper else query)


@pytest.fixture
def account(server: BridgeServer) -> KeyPair:
    """An activated account with a registered key."""
    status, user = call(server, "POST", "/users", {
        "email": EMAIL, "password": hashlib.sha256(PASSWORD.encode()).hexdigest()})
    assert status == 200 and user == {**user, "email": EMAIL, "activated": False}
    status, _ = call(server, "GET", "/keys", headers=BASIC)
    assert status == 401  # not activated yet
    token = server.bridge.activation_token(EMAIL)
    assert call(server, "GET", f"/activations/{token}")[1]["activated"] is True
    key = KeyPair.generate()
    status, added = call(server, "POST", "/keys", {"key": key.public},
                         headers=BASIC)
    assert status == 200 and added["key"] == key.public and key.public[:2] in ("02", "03")
    return key


def test_registration_refusals(server: BridgeServer, account: KeyPair) -> None:
    password = hashlib.sha256(b"x").hexdigest()
    assert call(server, "POST", "/users", {"email": EMAIL, "password": password}) == \
        (500, {"error": "Email is already registered"})
    assert call(server, "GET", "/activations/" + "0" * 64) == \
        (400, {"error": "Invalid activation token"})
    assert call(server, "POST", "/keys", {"key": "03zz"}, headers=BASIC)[0] \
        == 400


def test_signed_requests_and_their_refusals(server: BridgeServer, account: KeyPair) -> None:
    assert signed(server, account, "GET", "/buckets", 100) == (200, [])
    status, bucket = signed(server, account, "POST", "/buckets", 101, {"name": "b"})
    assert status == 200 and (bucket["storage"], bucket["transfer"]) == (10, 30)
    assert bucket["pubkeys"] == [account.public]
    refused = {"error": "Invalid signature"}
    assert signed(server, account, "GET", "/buckets", 102, tamper=True) == (401, refused)
    assert signed(server, account, "POST", "/buckets", 103, {"name": "c"}, tamper=True) == \
        (401, refused)
    nonce = {"error": "Invalid nonce supplied"}
    assert signed(server, account, "GET", "/buckets", 50) == (401, nonce)  # older
    assert signed(server, account, "GET", "/buckets", 101) == (401, nonce)  # replayed
    assert call(server, "GET", "/buckets", headers=account.sign("GET", "/buckets", "")) == \
        (401, nonce)  # none
    stranger = KeyPair.generate()
    assert signed(server, stranger, "GET", "/buckets", 200) == \
        (401, {"error": "Public key not registered"})
    assert call(server, "GET", "/buckets") == \
        (401, {"error": "No authentication strategy detected"})
    assert signed(server, account, "GET", "/buckets", 104)[0] == 200  # still in step


def upload(server: BridgeServer, bucket: str, token: str, data: bytes,
           name: str = "f.txt") -> tuple[int, Any]:
    body, kind = urllib3.encode_multipart_formdata({"file": (name, data, "text/plain")})
    return call(server, "PUT", f"/buckets/{bucket}/files", body,
                {"x-token": token, "x-filesize": str(len(data)), "Content-Type": kind})


def test_tokens_uploads_and_data_channels(server: BridgeServer, account: KeyPair) -> None:
    nonce = iter(range(1000, 2000))
    bucket = signed(server, account, "POST", "/buckets", next(nonce), {"storage": 1})[1]["id"]

    def token(operation: str) -> str:
        status, reply = signed(server, account, "POST", f"/buckets/{bucket}/tokens",
                               next(nonce), {"operation": operation})
        assert status == 200 and len(reply["token"]) == 64 and reply["bucket"] == bucket
        return reply["token"]

    push = token("PUSH")
    status, entry = upload(server, bucket, push, b"hello")
    assert status == 200
    assert entry["hash"] == file_hash(hashlib.sha256(b"hello").hexdigest())
    assert entry["hash"] == hashlib.new("ripemd160", hashlib.sha256(b"hello").hexdigest()
                                        .encode()).hexdigest()
    assert upload(server, bucket, push, b"again") == \
        (500, {"error": "Invalid or expired token"})  # used
    late = token("PUSH")
    server.bridge.clock = lambda: time.time() + TOKEN_TTL + 1
    try:
        assert upload(server, bucket, late, b"late") == \
            (500, {"error": "Invalid or expired token"})  # expired
    finally:
        server.bridge.clock = time.time
    assert upload(server, bucket, token("PULL"), b"x") == \
        (401, {"error": "Not authorized to store in bucket"})
    status, same = upload(server, bucket, token("PUSH"), b"hello", name="second.txt")
    listed = signed(server, account, "GET", f"/buckets/{bucket}/files", next(nonce))[1]
    assert [(e["filename"], e["hash"]) for e in listed] == [("second.txt", entry["hash"])]
    assert upload(server, bucket, token("PUSH"), b"x" * 1001)[0] == QUOTA_STATUS

    pull = token("PULL")
    status, pointers = call(server, "GET", f"/buckets/{bucket}/files/{entry['hash']}",
                            headers={"x-token": pull})
    assert status == 200 and pointers[0]["operation"] == "PULL"
    [pointer] = pointers
    assert channel(pointer) == [b"hello"]
    assert channel(pointer) == [{"code": 400, "message": "The supplied token is not accepted"}]
    other = call(server, "GET", f"/buckets/{bucket}/files/{entry['hash']}",
                 headers={"x-token": token("PULL")})[1][0]
    assert channel({**other, "hash": "0" * 40}) == \
        [{"code": 400, "message": "Token not valid for hash"}]
    assert signed(server, account, "DELETE", f"/buckets/{bucket}/files/{entry['hash']}",
                  next(nonce)) == (204, None)
    assert signed(server, account, "DELETE", f"/buckets/{bucket}/files/{entry['hash']}",
                  next(nonce)) == (404, {"error": "File not found"})


def channel(pointer: dict[str, Any]) -> list[Any]:
    """What a storage node's data channel sends for a pointer, until it closes."""
    got: list[Any] = []
    with websockets.sync.client.connect(pointer["channel"]) as ws:
        ws.send(json.dumps({"token": pointer["token"], "hash": pointer["hash"],
                            "operation": "PULL"}))
        for message in ws:
            got.append(message if isinstance(message, bytes) else json.loads(message))
    return got
