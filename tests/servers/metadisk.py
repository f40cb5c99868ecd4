"""A local Metadisk bridge (v0.3.0, protocols.md §2) and its storage nodes, for the tests.

What it owns, as the bridge of storj/bridge tag v0.3.0 does it (lib/server/middleware/
authenticate.js, token-auth.js, routes/{users,pubkeys,buckets}.js, storage/models/*.js):

- users: `POST /users` (password = SHA-256 hex, stored hashed again), activation by the
  token the bridge would mail (`GET /activations/{token}`; here printed, and
  `Bridge.activation_token(email)` for the tests); Basic auth refused before activation;
- keys: `GET/POST /keys`, `DELETE /keys/{pubkey}`, a key known by its exact hex string;
- ECDSA auth: secp256k1 signature (DER hex, `x-signature`) over SHA-256 of
  `METHOD\\nPATH\\nPAYLOAD` (PATH raw, PAYLOAD the raw body, or the raw query for GET/DELETE),
  `x-pubkey` registered, and a `__nonce`. Nonces, as modelled: v0.3.0 refuses one lower than
  the user's last (an equal one passes there); the later bridge also refuses a (user, nonce)
  seen in the last 5 minutes. This bridge applies both rules, so a client passes only if its
  nonces never go backwards nor repeat;
- buckets (`GET/POST /buckets`, `GET/PATCH/DELETE /buckets/{id}`; 24-hex ids, default storage
  10 and transfer 30 GB), single-use tokens (`POST /buckets/{id}/tokens`: 64 hex, 5 minutes;
  a used or expired one is `500 Invalid or expired token`);
- files: `PUT /buckets/{id}/files` (multipart, `x-token` PUSH, `x-filesize`), id = RIPEMD-160
  of the content's SHA-256 hex, stored as 8 MiB shards on the storage nodes, one entry per
  (bucket, hash) whose filename the last upload sets (upsert); `GET /buckets/{id}/files`;
  `DELETE /buckets/{id}/files/{hash}`; `GET /buckets/{id}/files/{hash}` (`x-token` PULL) ->
  the shards' pointers `{"hash", "token", "operation": "PULL", "channel": "ws://..."}`;
- a storage quota, which v0.3.0 did not enforce: a bucket's `storage` GB (`gigabyte` bytes
  each, small in the tests) -> HTTP 420 `{"error": "Bucket storage quota exceeded ..."}`;
- storage nodes: websocket data channels as storj core v0.3.0's DataChannelServer serves
  them: the client sends `{"token", "hash", "operation": "PULL"}`, gets the shard as binary
  messages, then the node closes; a token the node was not told of, or used, or for another
  hash, is answered `{"code": 400, "message": ...}` and the channel closed.

Errors are `{"error": message}` with the status of errors.js (400, 401, 404, 500).
`Bridge` runs in threads of the calling process (the fixtures look at its state directly);
`python -m tests.servers.metadisk --port N` runs it for a person.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets.sync.server
from flask import Flask, Response, request
from werkzeug.serving import make_server

from mountfs.backends.metadisk_wire import QUOTA_STATUS, file_hash, valid_public_key, verify

SHARD_SIZE = 8 * 1024 * 1024
TOKEN_TTL = 300.0
NONCE_MEMORY = 300.0
SEND_PIECE = 64 * 1024  # the node sends a shard in messages of this size, as a file stream


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc) \
        .isoformat(timespec="milliseconds").replace("+00:00", "Z")


def content_hash(data: bytes) -> str:
    return file_hash(hashlib.sha256(data).hexdigest())


@dataclass
class User:
    email: str
    password: str  # sha256 of the sha256 hex the client sent
    created: float
    activation: str
    activated: bool = False
    nonce: float = 0
    nonces: dict[float, float] = field(default_factory=dict)  # nonce -> when seen

    def public(self) -> dict[str, Any]:
        return {"email": self.email, "created": iso(self.created),
                "activated": self.activated, "id": self.email}


@dataclass
class Token:
    bucket: str
    operation: str
    expires: float


@dataclass
class Entry:
    filename: str
    mimetype: str


class Node:
    """A storage node: shards by hash, and the tokens its data channel accepts."""

    def __init__(self) -> None:
        self.shards: dict[str, bytes] = {}
        self.allowed: dict[str, str] = {}  # token -> shard hash
        self.lock = threading.Lock()
        self.server = websockets.sync.server.serve(self.channel, "127.0.0.1", 0,
                                                   max_size=None)
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def accept(self, shard: str) -> str:
        token = secrets.token_hex(32)
        with self.lock:
            self.allowed[token] = shard
        return token

    def channel(self, socket: Any) -> None:
        try:
            message = json.loads(socket.recv(timeout=30))
            token, shard = message.get("token"), message.get("hash")
            with self.lock:
                allowed = self.allowed.pop(token, None) if token else None
            if not token:
                raise Refused(400, "You did not supply a token")
            if allowed is None:
                raise Refused(400, "The supplied token is not accepted")
            if allowed != shard:
                raise Refused(400, "Token not valid for hash")
            if message.get("operation") != "PULL":
                raise Refused(400, "Unknown operation")
            data = self.shards[shard]
            for start in range(0, len(data), SEND_PIECE):
                socket.send(data[start:start + SEND_PIECE])
        except Refused as exc:
            socket.send(json.dumps({"code": exc.status, "message": str(exc)}))
        except (ValueError, AttributeError):
            socket.send(json.dumps({"code": 400, "message": "Failed to parse message"}))


class Bridge:
    """The bridge's state and rules; `app` serves them over HTTP."""

    def __init__(self, nodes: int = 2, gigabyte: int = 1024**3) -> None:
        self.gigabyte = gigabyte
        self.users: dict[str, User] = {}
        self.keys: dict[str, str] = {}  # public key hex -> email
        self.buckets: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, Token] = {}
        self.files: dict[str, tuple[int, list[tuple[Node, str]]]] = {}  # hash -> size, shards
        self.entries: dict[str, dict[str, Entry]] = {}  # bucket id -> hash -> entry
        self.nodes = [Node() for _ in range(nodes)]
        self.refusals: list[str] = []  # every 401 given, for the tests
        self.clock: Callable[[], float] = time.time
        self.lock = threading.RLock()
        self.on_register: Callable[[User], None] = lambda user: None
        self.app = self._app()

    # ---- for the tests -----------------------------------------------------------------------

    def activation_token(self, email: str) -> str:
        return self.users[email].activation

    def reset(self) -> None:
        with self.lock:
            self.buckets.clear()
            self.entries.clear()
            self.tokens.clear()
            self.refusals.clear()

    def content(self, file_hash: str) -> bytes:
        return b"".join(node.shards[shard] for node, shard in self.files[file_hash][1])

    # ---- authentication ----------------------------------------------------------------------

    def authenticate(self) -> tuple[User, str | None]:
        """The user of the request (and the key that signed it), as authenticate.js decides."""
        auth = request.authorization
        if auth is not None and auth.type == "basic" and auth.username and auth.password:
            user = self.users.get(auth.username)
            if user is None or user.password != hashlib.sha256(
                    auth.password.encode()).hexdigest():
                raise Refused(401, "Invalid email or password")
            if not user.activated:
                raise Refused(401, "User account has not been activated")
            return user, None
        signature, public = request.headers.get("x-signature"), request.headers.get("x-pubkey")
        if not (signature and public):
            raise Refused(401, "No authentication strategy detected")
        raw_uri = request.environ.get("RAW_URI") or request.path
        path = raw_uri.split("?", 1)[0]
        if request.method in ("POST", "PATCH", "PUT"):
            payload = request.get_data(cache=True).decode()
            params = json.loads(payload or "{}")
        else:
            payload = request.query_string.decode()
            params = request.args
        if not verify(public, signature, request.method, path, payload):
            raise Refused(401, "Invalid signature")
        if public not in self.keys:
            raise Refused(401, "Public key not registered")
        user = self.users[self.keys[public]]
        try:
            nonce = float(params.get("__nonce"))
        except (TypeError, ValueError):
            nonce = None
        now = self.clock()
        user.nonces = {n: t for n, t in user.nonces.items() if now - t < NONCE_MEMORY}
        if nonce is None or nonce < user.nonce or nonce in user.nonces:
            raise Refused(401, "Invalid nonce supplied")
        user.nonce, user.nonces[nonce] = nonce, now
        return user, public

    def token(self, bucket_id: str, operation: str) -> Token:
        """token-auth.js: a live token, used up now."""
        token = self.tokens.get(request.headers.get("x-token", ""))
        if token is None or token.expires <= self.clock():
            raise Refused(500, "Invalid or expired token")
        token.expires = self.clock()
        if token.bucket != bucket_id or token.operation != operation:
            verb = "store in" if operation == "PUSH" else "retrieve from"
            raise Refused(401, f"Not authorized to {verb} bucket")
        return token

    def bucket(self, bucket_id: str, user: User | None) -> dict[str, Any]:
        bucket = self.buckets.get(bucket_id)
        if bucket is None or (user is not None and bucket["user"] != user.email):
            raise Refused(404, "Bucket not found")
        return bucket

    # ---- routes ------------------------------------------------------------------------------

    def _app(self) -> Flask:
        app = Flask("metadisk-bridge")
        bridge = self

        def route(rule: str, methods: list[str]) -> Callable[[Callable[..., Any]], Any]:
            def wrap(fn: Callable[..., Any]) -> Any:
                def view(**kwargs: Any) -> Response:
                    try:
                        with bridge.lock:
                            result = fn(**kwargs)
                    except Refused as exc:
                        if exc.status == 401:
                            bridge.refusals.append(str(exc))
                        return Response(json.dumps({"error": str(exc)}), exc.status,
                                        mimetype="application/json")
                    if isinstance(result, Response):
                        return result
                    return Response(json.dumps(result), 200, mimetype="application/json")
                view.__name__ = fn.__name__
                return app.route(rule, methods=methods)(view)
            return wrap

        @route("/users", ["POST"])
        def create_user() -> Any:
            body = request.get_json(force=True)
            email, password = body.get("email"), str(body.get("password", ""))
            if email in bridge.users:
                raise Refused(500, "Email is already registered")
            if len(password) != 64 or any(c not in "0123456789abcdef" for c in password):
                raise Refused(500, "Password must be hex encoded SHA-256 hash")
            user = User(email, hashlib.sha256(password.encode()).hexdigest(), bridge.clock(),
                        secrets.token_hex(32))
            bridge.users[email] = user
            if body.get("pubkey"):
                bridge.keys[body["pubkey"]] = email
            bridge.on_register(user)
            return user.public()

        @route("/activations/<token>", ["GET"])
        def activate(token: str) -> Any:
            user = next((u for u in bridge.users.values() if u.activation == token), None)
            if user is None:
                raise Refused(400, "Invalid activation token")
            user.activated = True
            return user.public()

        @route("/keys", ["GET"])
        def list_keys() -> Any:
            user, _ = bridge.authenticate()
            return [{"user": user.email, "key": k, "id": k}
                    for k, e in bridge.keys.items() if e == user.email]

        @route("/keys", ["POST"])
        def add_key() -> Any:
            user, _ = bridge.authenticate()
            key = str(request.get_json(force=True).get("key", ""))
            if ":" in key or not valid_public_key(key):
                raise Refused(400, "Invalid public key supplied")
            bridge.keys[key] = user.email
            return {"user": user.email, "key": key, "id": key}

        @route("/keys/<key>", ["DELETE"])
        def delete_key(key: str) -> Any:
            user, _ = bridge.authenticate()
            if bridge.keys.get(key) != user.email:
                raise Refused(404, "Public key was not found")
            del bridge.keys[key]
            return Response("", 200)

        @route("/buckets", ["GET"])
        def list_buckets() -> Any:
            user, _ = bridge.authenticate()
            return [b for b in bridge.buckets.values() if b["user"] == user.email]

        @route("/buckets", ["POST"])
        def create_bucket() -> Any:
            user, public = bridge.authenticate()
            body = request.get_json(force=True)
            pubkeys = list(body.get("pubkeys") or [])
            if public and public not in pubkeys:
                pubkeys.append(public)
            bucket = {"id": secrets.token_hex(12), "name": body.get("name", "New Bucket"),
                      "storage": int(body.get("storage", 10)),
                      "transfer": int(body.get("transfer", 30)), "status": "Active",
                      "pubkeys": pubkeys, "user": user.email, "created": iso(bridge.clock())}
            bridge.buckets[bucket["id"]] = bucket
            bridge.entries[bucket["id"]] = {}
            return bucket

        @route("/buckets/<bucket_id>", ["GET"])
        def get_bucket(bucket_id: str) -> Any:
            return bridge.bucket(bucket_id, bridge.authenticate()[0])

        @route("/buckets/<bucket_id>", ["PATCH"])
        def update_bucket(bucket_id: str) -> Any:
            bucket = bridge.bucket(bucket_id, bridge.authenticate()[0])
            body = request.get_json(force=True)
            bucket.update({k: body[k] for k in ("storage", "transfer", "name", "pubkeys")
                           if k in body})
            return bucket

        @route("/buckets/<bucket_id>", ["DELETE"])
        def delete_bucket(bucket_id: str) -> Any:
            bridge.bucket(bucket_id, bridge.authenticate()[0])
            del bridge.buckets[bucket_id]
            bridge.entries.pop(bucket_id, None)
            return Response("", 204)

        @route("/buckets/<bucket_id>/tokens", ["POST"])
        def create_token(bucket_id: str) -> Any:
            bridge.bucket(bucket_id, bridge.authenticate()[0])
            operation = request.get_json(force=True).get("operation")
            if operation not in ("PUSH", "PULL"):
                raise Refused(400, "Invalid operation supplied")
            value = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
            token = Token(bucket_id, operation, bridge.clock() + TOKEN_TTL)
            bridge.tokens[value] = token
            return {"bucket": bucket_id, "operation": operation, "expires": iso(token.expires),
                    "token": value, "id": value}

        @route("/buckets/<bucket_id>/files", ["PUT"])
        def store_file(bucket_id: str) -> Any:
            bridge.token(bucket_id, "PUSH")
            try:
                declared = int(request.headers.get("x-filesize", ""))
            except ValueError:
                raise Refused(400, "Missing or invalid x-filesize header sent") from None
            bucket = bridge.bucket(bucket_id, None)
            upload = next(iter(request.files.values()), None)
            if upload is None:
                raise Refused(400, "No file part in the request")
            data = upload.read()
            if len(data) != declared:
                raise Refused(400, "File does not match the declared size")
            used = sum(bridge.files[h][0] for h in bridge.entries[bucket_id])
            if used + len(data) > bucket["storage"] * bridge.gigabyte:
                raise Refused(QUOTA_STATUS, f"Bucket storage quota exceeded: {used} bytes used "
                              f"of {bucket['storage']} GB")
            the_hash = content_hash(data)
            if the_hash not in bridge.files:
                bridge.files[the_hash] = (len(data), bridge.shard(data))
            entry = Entry(upload.filename or "", upload.mimetype or "application/octet-stream")
            bridge.entries[bucket_id][the_hash] = entry
            return {"bucket": bucket_id, "mimetype": entry.mimetype,
                    "filename": entry.filename, "size": len(data), "hash": the_hash}

        @route("/buckets/<bucket_id>/files", ["GET"])
        def list_files(bucket_id: str) -> Any:
            bridge.bucket(bucket_id, bridge.authenticate()[0])
            return [{"bucket": bucket_id, "mimetype": e.mimetype, "filename": e.filename,
                     "size": bridge.files[h][0], "hash": h}
                    for h, e in bridge.entries[bucket_id].items()]

        @route("/buckets/<bucket_id>/files/<the_hash>", ["GET"])
        def pointers(bucket_id: str, the_hash: str) -> Any:
            bridge.token(bucket_id, "PULL")
            bridge.bucket(bucket_id, None)
            if the_hash not in bridge.entries[bucket_id]:
                raise Refused(404, "The requested file was not found")
            return [{"hash": shard, "token": node.accept(shard), "operation": "PULL",
                     "channel": node.url} for node, shard in bridge.files[the_hash][1]]

        @route("/buckets/<bucket_id>/files/<the_hash>", ["DELETE"])
        def delete_file(bucket_id: str, the_hash: str) -> Any:
            bridge.bucket(bucket_id, bridge.authenticate()[0])
            if bridge.entries[bucket_id].pop(the_hash, None) is None:
                raise Refused(404, "File not found")
            return Response("", 204)

        return app

    def shard(self, data: bytes) -> list[tuple[Node, str]]:
        """Stores `data` in 8 MiB shards on the nodes, in turn."""
        shards = []
        for index, start in enumerate(range(0, len(data), SHARD_SIZE)):
            piece = data[start:start + SHARD_SIZE]
            node = self.nodes[index % len(self.nodes)]
            shard = content_hash(piece)
            node.shards[shard] = piece
            shards.append((node, shard))
        return shards


class BridgeServer:
    """The bridge on 127.0.0.1:`port` (0: any free one) and its nodes, in daemon threads."""

    def __init__(self, bridge: Bridge, port: int = 0) -> None:
        self.bridge = bridge
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.http = make_server("127.0.0.1", port, bridge.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.source = f"metadisk://127.0.0.1:{self.http.server_port}"

    def start(self) -> BridgeServer:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        for node in self.bridge.nodes:
            node.thread.start()
        return self

    def stop(self) -> None:
        self.http.shutdown()
        for node in self.bridge.nodes:
            node.server.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.metadisk",
                                     description="a local Metadisk bridge (v0.3.0)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--gigabyte", type=int, default=1024**3,
                        help="bytes in a GB of bucket storage (small to try the quota)")
    args = parser.parse_args(argv)
    bridge = Bridge(gigabyte=args.gigabyte)
    bridge.on_register = lambda user: print(
        f"activation mail to {user.email}: {server.url}/activations/{user.activation}\n"
        f"  mountfs metadisk --bridge {server.source} activate {user.activation}", flush=True)
    server = BridgeServer(bridge, args.port).start()
    print(f"Metadisk bridge at {server.url}, storage nodes at "
          f"{', '.join(n.url for n in bridge.nodes)}\n"
          f"  export METADISK_BRIDGE={server.source}\n"
          "  mountfs metadisk register you@example.com     # prints the activation here\n"
          "  mountfs metadisk activate TOKEN\n"
          "  mountfs metadisk keys generate && mountfs metadisk keys add --email you@example.com\n"
          f"  mountfs mount {server.source} MOUNTPOINT", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
