"""AmigoCloud's event channel: a socket.io client over Engine.IO v3, the protocol
socketIO-client 0.7.2 (the official client's) speaks to `BASE/v2_socket.io/socket.io/`.

It opens a session by long-polling and, when the server offers it, upgrades it to a websocket
(probe `2probe`/`3probe`, then `5`), as socketIO-client does; else it stays on long-polling.
It joins the namespace `/amigosocket`, authenticates with a session from
`me/start_websocket_session` (`{"userid", "websocket_session"}`), then yields each event
(`dataset:creation_succeeded`, `project:metadata_updated`, …) as (name, data), pinging the
server once `pingInterval` has passed, as Engine.IO v3 wants of its clients. Any failure ends the
iteration with an error (the driver falls back to polling). Polled payloads are asked for in
text framing (`b64=1`: `LENGTH:PACKET…`); a websocket message is one packet.

Its requests and websocket calls run in worker threads that a cancellation abandons (a long
poll waits up to the server's pingTimeout), through a pool of its own whose read timeout is
above that wait. They are not under the retry policy: a failure ends the channel, the driver
polls meanwhile and opens a new one later (amigocloud_backend.py).
"""
from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import trio
import urllib3
import websockets.exceptions
import websockets.sync.client
from websockets.sync.client import ClientConnection

from mountfs.errors import BackendError, TemporaryFailure

log = logging.getLogger(__name__)
T = TypeVar("T")

PATH = "/v2_socket.io/socket.io/"
NAMESPACE = "/amigosocket"
# Engine.IO packet types (v3) a client sends or reads: open, close, ping, pong, message,
# upgrade.
OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE = "0", "1", "2", "3", "4", "5"
# Socket.IO packet types (v2 protocol) inside a message.
SIO_CONNECT, SIO_EVENT, SIO_ERROR = "0", "2", "4"


def encode(packets: list[str]) -> bytes:
    return "".join(f"{len(p)}:{p}" for p in packets).encode()


def decode(payload: str) -> list[str]:
    """The packets of a text-framed payload (`LENGTH:PACKET` repeated, LENGTH in characters)."""
    out, at = [], 0
    while at < len(payload):
        colon = payload.index(":", at)
        length = int(payload[at:colon])
        out.append(payload[colon + 1:colon + 1 + length])
        at = colon + 1 + length
    return out


def send_all(socket: ClientConnection, packets: list[str]) -> None:
    """Packets over a websocket, a message each."""
    for packet in packets:
        socket.send(packet)


def event_of(packet: str) -> tuple[str, Any] | None:
    """(name, data) of a Socket.IO event packet for the namespace; None for others; an error
    packet (the namespace refused) raises."""
    kind, body = packet[:1], packet[1:]
    if not body.startswith(NAMESPACE):
        return None
    rest = body[len(NAMESPACE):].lstrip(",")
    if kind == SIO_ERROR:
        raise BackendError(f"the event channel refused {NAMESPACE}: {rest}")
    if kind != SIO_EVENT:
        return None
    start = rest.find("[")  # after an ack id, if any
    args = json.loads(rest[start:]) if start >= 0 else []
    return (str(args[0]), args[1] if len(args) > 1 else None) if args else None


class EventChannel:
    """One connection at a time to the event channel of the service at `base_url`."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url.rstrip("/") + PATH
        # Read timeout: the server holds a poll up to its pingTimeout (60 s by default).
        self.pool = urllib3.PoolManager(maxsize=2, retries=False, timeout=urllib3.Timeout(
            connect=10, read=90))
        self._socket: ClientConnection | None = None  # the websocket, once upgraded

    async def _request(self, method: str, query: dict[str, str], body: bytes | None = None
                       ) -> str:
        url = self.url + "?" + urllib.parse.urlencode(
            {"EIO": "3", "transport": "polling", "b64": "1", "t": f"{time.time():.6f}", **query})

        def send() -> urllib3.BaseHTTPResponse:
            return self.pool.request(method, url, body=body, redirect=False, headers={
                "Content-Type": "text/plain;charset=UTF-8"} if body is not None else None)
        try:
            reply = await trio.to_thread.run_sync(send, cancellable=True)
        except urllib3.exceptions.HTTPError as exc:
            raise TemporaryFailure(f"event channel: {exc}") from exc
        if reply.status != 200:
            raise BackendError(f"event channel: HTTP {reply.status}")
        return reply.data.decode("utf-8", "replace")

    async def listen(self, user_id: int, session: str, opened: Callable[[str], None]
                     ) -> AsyncIterator[tuple[str, Any]]:
        """Connect (upgraded to a websocket when the server offers it), authenticate as
        `user_id` with `session` (then call `opened` with the transport), then each event as
        it comes."""
        packets = decode(await self._request("GET", {}))
        if not packets or not packets[0].startswith(OPEN):
            raise BackendError("event channel: no Engine.IO v3 handshake")
        handshake = json.loads(packets[0][1:])
        sid, interval = str(handshake["sid"]), float(handshake.get("pingInterval", 25000)) / 1000
        joining = [MESSAGE + SIO_CONNECT + NAMESPACE, MESSAGE + SIO_EVENT + NAMESPACE + "," +
                   json.dumps(["authenticate", {"userid": user_id,
                                                "websocket_session": session}])]
        socket = await self._upgrade(sid) if "websocket" in handshake.get("upgrades", []) \
            else None
        if socket is None:
            await self._request("POST", {"sid": sid}, encode(joining))
            opened("polling")
            packets_of = self._polled(sid, interval)
        else:
            await self._run(lambda: send_all(socket, joining))
            opened("websocket")
            packets_of = self._received(socket, interval)
        async for packet in packets_of:
            if packet.startswith(CLOSE):
                raise TemporaryFailure("event channel: closed by the server")
            if packet.startswith(MESSAGE):
                event = event_of(packet[1:])
                if event is not None:
                    yield event

    async def _polled(self, sid: str, interval: float) -> AsyncIterator[str]:
        """The packets long polls bring, pinging between them."""
        pinged = time.monotonic()
        while True:
            # The server ends a poll within its pingTimeout, so a ping sent between polls
            # once pingInterval has passed is never later than interval + timeout allows.
            if time.monotonic() - pinged >= interval:
                await self._request("POST", {"sid": sid}, encode([PING]))
                pinged = time.monotonic()
            for packet in decode(await self._request("GET", {"sid": sid})):
                yield packet

    async def _upgrade(self, sid: str) -> ClientConnection | None:
        """The session moved to a websocket (probe `2probe`, answer `3probe`, then upgrade
        `5`); None if that fails (the session stays on long-polling)."""
        url = self.url.replace("http", "ws", 1) + "?" + urllib.parse.urlencode(
            {"EIO": "3", "transport": "websocket", "sid": sid})
        try:
            socket = await self._run(lambda: websockets.sync.client.connect(
                url, open_timeout=10, close_timeout=1))
        except TemporaryFailure as exc:
            log.info("event channel stays on long-polling: %s", exc)
            return None
        try:
            await self._run(lambda: socket.send(PING + "probe"))
            answer = await self._run(lambda: socket.recv(timeout=10))
            if answer != PONG + "probe":
                raise BackendError(f"event channel: probe answered {answer!r}")
            await self._run(lambda: socket.send(UPGRADE))
        except (BackendError, TemporaryFailure) as exc:
            log.info("event channel stays on long-polling: %s", exc)
            socket.close()
            return None
        self._socket = socket
        return socket

    async def _received(self, socket: ClientConnection, interval: float
                        ) -> AsyncIterator[str]:
        """The packets the websocket brings, pinging every `interval`."""
        pinged = time.monotonic()
        while True:
            wait = pinged + interval - time.monotonic()
            if wait <= 0:
                await self._run(lambda: socket.send(PING))
                pinged = time.monotonic()
                continue
            try:
                message = await self._run(lambda: socket.recv(timeout=wait))
            except TimeoutError:
                continue
            yield message if isinstance(message, str) else message.decode("utf-8", "replace")

    @staticmethod
    async def _run(fn: Callable[[], T]) -> T:
        """A websocket call in a worker thread; its failures temporary."""
        try:
            return await trio.to_thread.run_sync(fn, cancellable=True)
        except (OSError, websockets.exceptions.WebSocketException) as exc:
            raise TemporaryFailure(f"event channel: {exc}") from exc

    def close(self) -> None:
        self.pool.clear()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
