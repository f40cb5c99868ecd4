"""The Metadisk bridge's REST API (v0.3.0) as calls: the three ways a request is authorised
(an ECDSA signature with a nonce, HTTP Basic with the password's SHA-256, a single-use bucket
token), the JSON bodies and replies, the multipart upload, and the storage nodes' websocket
data channel the bytes of a file come from.

Each call is one request; `BridgeApi.retried` puts it under the driver's retry policy (the
account commands, which run without a mount, try once). A token is taken inside the attempt
that uses it: tokens are single-use, so a retried upload or download asks for a new one.
"""
from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
import websockets.exceptions
import websockets.sync.client

from cache.storage import Readable
from mountfs.backends.http import HttpPool, multipart_around, streamed_body
from mountfs.backends.metadisk_wire import KeyPair, NonceFile, error_of
from mountfs.errors import TemporaryFailure

T = TypeVar("T")
FROM_BODY = ("POST", "PATCH", "PUT")  # the others sign and carry their nonce in the query


@dataclass(frozen=True)
class Basic:
    """HTTP Basic: the email and the password's SHA-256 in hex."""

    email: str
    password_sha256: str

    def header(self) -> dict[str, str]:
        pair = f"{self.email}:{self.password_sha256}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


@dataclass(frozen=True)
class Signer:
    """ECDSA: a registered key and the nonces of its state directory."""

    key: KeyPair
    nonces: NonceFile


Auth = Signer | Basic | None


async def once(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """No retry policy: the attempt, once."""
    return await attempt()


class BridgeApi:
    """The bridge at `url` with one account's credentials (`auth`; None for the requests
    that need none: register, activate)."""

    def __init__(self, url: str, http: HttpPool, auth: Auth = None) -> None:
        self.url, self.http, self.auth = url.rstrip("/"), http, auth
        self.retried: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]] = once

    # ---- requests ----------------------------------------------------------------------------

    def _send(self, method: str, path: str, what: str, params: dict[str, Any] | None) -> Any:
        """Blocking: the request with the API's credentials, its JSON reply (None when
        empty)."""
        params = dict(params or {})
        headers = {"Accept": "application/json"}
        auth = self.auth
        if isinstance(auth, Signer):
            with auth.nonces.signing() as nonce:
                params["__nonce"] = nonce
                return self._reply(method, path, what, params, headers, auth.key)
        if isinstance(auth, Basic):
            headers.update(auth.header())
        return self._reply(method, path, what, params, headers, None)

    def _reply(self, method: str, path: str, what: str, params: dict[str, Any],
               headers: dict[str, str], key: KeyPair | None) -> Any:
        body: bytes | None = None
        query = ""
        if method in FROM_BODY:
            # Compact, as pymdc sends it: the bridge verifies these very bytes.
            text = json.dumps(params, separators=(",", ":"))
            body, payload = text.encode(), text
            headers["Content-Type"] = "application/json"
        else:
            query = payload = urllib.parse.urlencode(params)
        path = urllib.parse.quote(path)  # signed as sent: the bridge checks the raw path
        if key is not None:
            headers.update(key.sign(method, path, payload))
        url = self.url + path + ("?" + query if query else "")
        reply = self.http.request(method, url, headers=headers, body=body)
        if reply.status >= 300:
            raise error_of(reply.status, reply.data, what)
        return json.loads(reply.data) if reply.data.strip() else None

    async def call(self, method: str, path: str, what: str,
                   params: dict[str, Any] | None = None, retry: bool = True) -> Any:
        """A JSON request with the API's credentials, under the retry policy (else tried
        once: a mount's first request, which must fail in one line at once)."""
        return await (self.retried if retry else once)(what, lambda: self.http.run(
            lambda: self._send(method, path, what, params)))

    # ---- tokens, files -----------------------------------------------------------------------

    def _token(self, bucket_id: str, operation: str) -> str:
        """Blocking: a new single-use token of the bucket for PUSH or PULL."""
        reply = self._send("POST", f"/buckets/{bucket_id}/tokens", f"{operation} token",
                           {"operation": operation})
        return str(reply["token"])

    async def upload(self, bucket_id: str, name: str, data: Readable, size: int,
                     mimetype: str) -> dict:
        """PUT the file (multipart, as pymdc posts it) with a new PUSH token: its entry. The
        body is streamed from `data`, from its start at each try."""
        def attempt() -> dict:
            token = self._token(bucket_id, "PUSH")
            head, tail, content_type = multipart_around([("file", (name, b"", mimetype))])
            headers = {"x-token": token, "x-filesize": str(size), "Content-Type": content_type,
                       "Content-Length": str(len(head) + size + len(tail)),
                       "Accept": "application/json"}
            reply = self.http.request("PUT", f"{self.url}/buckets/{bucket_id}/files",
                                      headers=headers,
                                      body=streamed_body(data, size, f"upload {name}", head,
                                                         tail))
            if reply.status >= 300:
                raise error_of(reply.status, reply.data, f"upload {name}")
            return json.loads(reply.data)
        return await self.retried(f"upload {name}", lambda: self.http.run(attempt))

    def pointers(self, bucket_id: str, file_hash: str) -> list[dict[str, Any]]:
        """Blocking: where the file's shards are, in order, with a new PULL token."""
        token = self._token(bucket_id, "PULL")
        reply = self.http.request("GET", f"{self.url}/buckets/{bucket_id}/files/{file_hash}",
                                  headers={"x-token": token, "Accept": "application/json"})
        if reply.status >= 300:
            raise error_of(reply.status, reply.data, f"pointers of {file_hash}")
        return list(json.loads(reply.data))

    async def content(self, bucket_id: str, file_hash: str) -> AsyncIterator[bytes]:
        """The file's bytes, shard by shard, from the storage nodes' data channels. A shard
        that fails is tried again from new pointers: a node's token is single-use."""
        def fresh() -> list[dict[str, Any]]:
            return self.pointers(bucket_id, file_hash)
        held = [await self.retried(f"pointers of {file_hash}", lambda: self.http.run(fresh))]
        for index in range(len(held[0])):
            async def attempt() -> bytes:
                if not held:  # the last try spent its token
                    held.append(await self.http.run(fresh))
                try:
                    return await trio.to_thread.run_sync(
                        lambda: b"".join(pull(held[0][index])), limiter=self.http.limiter)
                except TemporaryFailure:
                    held.clear()
                    raise
            yield await self.retried(f"shard {index} of {file_hash}", attempt)


def pull(pointer: dict[str, Any]) -> Iterator[bytes]:
    """Blocking: a storage node's data channel (storj core's DataChannelClient.retrieve): a
    websocket to the pointer's `channel`, one JSON message with its token and hash, then the
    shard as binary messages until the node closes; a text message is the node's
    `{"code", "message"}` refusal."""
    try:
        with websockets.sync.client.connect(pointer["channel"], max_size=None,
                                            open_timeout=10) as channel:
            channel.send(json.dumps({"token": pointer["token"], "hash": pointer["hash"],
                                     "operation": "PULL"}))
            while True:
                try:
                    message = channel.recv(timeout=60)
                except websockets.exceptions.ConnectionClosedOK:
                    return
                if isinstance(message, str):
                    refusal = json.loads(message)
                    if refusal.get("code", 200) != 200:  # new pointers bring new tokens
                        raise TemporaryFailure(f"storage node {pointer['channel']}: "
                                               f"{refusal.get('message')}")
                    continue
                yield message
    except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
        raise TemporaryFailure(f"storage node {pointer['channel']}: {exc}") from exc
