"""Registering an access grant with Storj's auth service, and the credentials it gave, kept.

`POST {auth}/v1/access` with `{"access_grant", "public": false}` is answered
`{"access_key_id", "secret_key", "endpoint"}`: S3 credentials for the gateway at `endpoint`
(storj/edge httpauth). Its errors are plain text: 422 (the body), 413 (too large), 500
("error storing request in database: ...", also for a grant the service cannot parse).

The credentials are kept in the driver's state directory, one 0600 file per (auth service,
grant), named by a hash of both: a remount uses them without registering again, and
`forget` drops them when the gateway refuses them (expired, or the grant revoked).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from mountfs.backends.http import HttpPool, status_error
from mountfs.backends.retry import retrying
from mountfs.backends.storj_grant import Grant
from mountfs.errors import BackendError, ConfigError, TemporaryFailure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_key: str
    endpoint: str


class Registrations:
    """The credentials of grants registered with the auth service at `auth_url`."""

    def __init__(self, directory: Path, auth_url: str) -> None:
        self.directory = directory
        self.auth_url = auth_url.rstrip("/")

    def path(self, grant: Grant) -> Path:
        name = hashlib.sha256(f"{self.auth_url}\n{grant.text}".encode()).hexdigest()[:32]
        return self.directory / f"credentials-{name}.json"

    def cached(self, grant: Grant) -> S3Credentials | None:
        """The credentials a registration of this grant gave earlier, if kept (a file that
        cannot be read is dropped: the grant is registered again)."""
        path = self.path(grant)
        try:
            return S3Credentials(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("dropping unreadable Storj credentials %s: %s", path, exc)
            path.unlink(missing_ok=True)
            return None

    def forget(self, grant: Grant) -> None:
        self.path(grant).unlink(missing_ok=True)

    async def register(self, grant: Grant, http: HttpPool) -> S3Credentials:
        """Register the grant (one request under the retry policy), keep what it gave."""
        url = f"{self.auth_url}/v1/access"
        body = json.dumps({"access_grant": grant.text, "public": False}).encode()

        async def once() -> S3Credentials:
            reply = await http.run(lambda: http.request(
                "POST", url, {"Content-Type": "application/json"}, body))
            text = reply.data.decode("utf-8", "replace").strip().splitlines()
            if reply.status != 200:
                raise status_error(reply.status, f"{reply.status} {text[0] if text else ''}")
            try:
                found = json.loads(reply.data)
                return S3Credentials(str(found["access_key_id"]), str(found["secret_key"]),
                                     str(found["endpoint"]))
            except (ValueError, KeyError, TypeError):
                raise BackendError(f"{url} did not answer as a Storj auth service") from None

        try:
            credentials = await retrying(f"POST {url}", once,
                                         lambda exc: isinstance(exc, TemporaryFailure)
                                         and "database" not in str(exc))
        except BackendError as exc:
            raise ConfigError(f"the Storj auth service {self.auth_url} refused the access "
                              f"grant: {exc}") from None
        self.keep(grant, credentials)
        log.info("registered the access grant with %s: gateway %s", self.auth_url,
                 credentials.endpoint)
        return credentials

    def keep(self, grant: Grant, credentials: S3Credentials) -> None:
        """Write the file 0600 from its creation (never readable by others, not even briefly)."""
        path = self.path(grant)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(credentials), f)
        os.replace(tmp, path)
