"""Bearer tokens for drivers of OAuth2-protected services (FirecREST; others to come).

`ClientCredentials` gets access tokens with the client-credentials grant (RFC 6749 §4.4, the
form POST that Keycloak and pyfirecrest's ClientCredentialsAuth use), reuses one until shortly
before it expires, and fetches a new one once for all the requests that find it due at the same
time. A request answered 401 reports its token as refused (`refused`), and retries once with
a new one; a transfer under way with the old token is not interrupted: only requests that
start afterwards use the new token. `StaticToken` is a token the user already has (from a file
or the environment), which nothing can renew.
"""
from __future__ import annotations

import json
import logging
import time
import urllib.parse
from typing import Protocol

import trio

from mountfs import secrets
from mountfs.backends.base import TEMPORARY_FAILURES
from mountfs.backends.http import HttpPool
from mountfs.backends.retry import retrying
from mountfs.errors import BackendError, PermissionDenied, TemporaryFailure

log = logging.getLogger(__name__)

# A token is renewed this long before it expires: a request must not reach the service with a
# token that expires on the way (pyfirecrest's min_token_validity).
MIN_VALIDITY = 10.0


class TokenSource(Protocol):
    async def token(self) -> str:
        """A token to send now."""

    def refused(self, token: str) -> bool:
        """The service answered 401 to `token`: whether a retry may get another one."""


class StaticToken:
    """A token the user gave: sent as it is, never renewed."""

    def __init__(self, text: str) -> None:
        self.text = text
        secrets.remember(text)

    async def token(self) -> str:
        return self.text

    def refused(self, token: str) -> bool:
        return False


class ClientCredentials:
    def __init__(self, http: HttpPool, token_url: str, client_id: str,
                 client_secret: str) -> None:
        self.http, self.token_url = http, token_url
        self.client_id, self.client_secret = client_id, client_secret
        secrets.remember(client_secret)
        self._token = ""
        self._renew_at = 0.0  # time.monotonic() from which the token is not sent any more
        self._lock = trio.Lock()  # one renewal at a time; the others wait for its token

    async def token(self) -> str:
        if self._token and time.monotonic() < self._renew_at:
            return self._token
        async with self._lock:
            if not self._token or time.monotonic() >= self._renew_at:
                await self._renew()
            return self._token

    def refused(self, token: str) -> bool:
        if token == self._token:  # else renewed already, by another request's 401
            self._renew_at = 0.0
        return True

    async def _renew(self) -> None:
        body = urllib.parse.urlencode({"grant_type": "client_credentials",
                                       "client_id": self.client_id,
                                       "client_secret": self.client_secret})
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        asked_at = time.monotonic()
        reply = await retrying(
            f"token from {self.token_url}",
            lambda: self.http.run(lambda: self.http.request("POST", self.token_url, headers,
                                                            body)),
            lambda exc: isinstance(exc, TEMPORARY_FAILURES))
        if reply.status >= 500:
            raise TemporaryFailure(f"token endpoint {self.token_url}: HTTP {reply.status}")
        try:
            answer = json.loads(reply.data)
            token, lifetime = str(answer["access_token"]), float(answer.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            if reply.status in (400, 401, 403):
                raise PermissionDenied(f"token endpoint {self.token_url} refused the client "
                                       f"credentials: {reply.data[:200]!r}") from None
            raise BackendError(f"token endpoint {self.token_url} answered HTTP {reply.status} "
                               "without an access token") from None
        if reply.status >= 300:
            raise PermissionDenied(f"token endpoint {self.token_url}: HTTP {reply.status}")
        secrets.remember(token)
        self._token = token
        self._renew_at = asked_at + max(0.0, lifetime - MIN_VALIDITY)
        log.info("new access token from %s, valid %.0f s", self.token_url, lifetime)
