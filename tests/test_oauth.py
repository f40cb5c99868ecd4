"""OAuth2 client credentials against a real token endpoint on 127.0.0.1: one token for all
requests until shortly before it expires, one renewal for many callers, a refused token renewed
once, refused credentials a clear PermissionDenied."""
from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import trio

from mountfs.backends import oauth
from mountfs.backends.http import HttpPool
from mountfs.errors import PermissionDenied


@dataclass
class TokenEndpoint:
    """Client credentials `cid`/`secret`; tokens `tok-1`, `tok-2`, … valid `lifetime` s."""

    lifetime: float = 300
    issued: list[dict[str, str]] = field(default_factory=list)
    delay: float = 0.0
    url: str = ""

    def answer(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        if form.get("client_id") != "cid" or form.get("client_secret") != "secret":
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        self.issued.append(form)
        return 200, {"access_token": f"tok-{len(self.issued)}", "expires_in": self.lifetime,
                     "token_type": "Bearer"}


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    state = TokenEndpoint()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            threading.Event().wait(state.delay)
            status, body = state.answer(form)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/token"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


async def test_one_token_until_shortly_before_it_expires(endpoint: TokenEndpoint) -> None:
    source = oauth.ClientCredentials(HttpPool(4), endpoint.url, "cid", "secret")
    assert [await source.token() for _ in range(5)] == ["tok-1"] * 5
    assert endpoint.issued == [{"grant_type": "client_credentials", "client_id": "cid",
                                "client_secret": "secret"}]
    endpoint.lifetime = oauth.MIN_VALIDITY + 0.3  # renewed 0.3 s after it is issued
    source.refused("tok-1")
    assert await source.token() == "tok-2"
    assert await source.token() == "tok-2"
    await trio.sleep(0.4)
    assert await source.token() == "tok-3"


async def test_many_callers_one_renewal(endpoint: TokenEndpoint) -> None:
    endpoint.delay = 0.2
    source = oauth.ClientCredentials(HttpPool(8), endpoint.url, "cid", "secret")
    got: list[str] = []

    async def caller() -> None:
        got.append(await source.token())

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(caller)
    assert got == ["tok-1"] * 8 and len(endpoint.issued) == 1


async def test_a_refused_token_is_renewed_once(endpoint: TokenEndpoint) -> None:
    source = oauth.ClientCredentials(HttpPool(4), endpoint.url, "cid", "secret")
    old = await source.token()
    # two requests with the old token answered 401 at once: one renewal
    assert source.refused(old) and source.refused(old)
    assert await source.token() == "tok-2"
    source.refused(old)  # a late 401 of a request sent with the old token: no new renewal
    assert await source.token() == "tok-2" and len(endpoint.issued) == 2


async def test_refused_credentials(endpoint: TokenEndpoint) -> None:
    source = oauth.ClientCredentials(HttpPool(4), endpoint.url, "cid", "wrong")
    with pytest.raises(PermissionDenied, match="refused the client credentials"):
        await source.token()


async def test_a_static_token_is_never_renewed() -> None:
    source = oauth.StaticToken("given-token")
    assert await source.token() == "given-token"
    assert not source.refused("given-token")
