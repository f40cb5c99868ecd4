"""The AmigoCloud driver: its SOURCE forms (`amigocloud:` for the token's projects,
`amigocloud:users/UID/projects/PID` for one), options and token, and the checks that stop a
mount in one line (a wrong URL or token, a project token without its project or for another
one). The store itself is amigocloud_backend.py.

The CLI imports this module for every command: the store and its HTTP client (urllib3, trio)
are imported by `_open` and the check, which run at mount, not here.
"""
from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

from mountfs import secrets
from mountfs.backends import Scope, Source
from mountfs.backends.registry import Driver, DriverContext, Option
from mountfs.errors import BackendError, ConfigError, NoSuchObject, PermissionDenied

THREADS = 8
DEFAULT_URL = "https://app.amigocloud.com"
PROJECT_PATH = re.compile(r"users/\d+/projects/\d+")


class AmigoCloudSource(Source):
    async def check(self) -> None:
        """The service answers as AmigoCloud and takes the token (for the project, if one is
        named): one try, so a wrong URL or token is one line at once."""
        from mountfs.backends.amigocloud_backend import AmigoCloudBackend

        backend = self.backend
        assert isinstance(backend, AmigoCloudBackend)
        target = backend.project_path or "/me"
        what = f"project {target}" if backend.project_path else "the token's user"
        try:
            await backend.api.once("GET", backend.api.url(target), f"get {what}")
        except PermissionDenied as exc:
            raise ConfigError(f"{backend.describe()}: the token is refused for {what}: "
                              f"{exc}") from None
        except NoSuchObject:
            raise ConfigError(f"{backend.describe()}: no {what} (is {backend.url} an "
                              "AmigoCloud service?)") from None
        except BackendError as exc:
            raise ConfigError(f"{backend.describe()}: {exc}") from None


def project_path(text: str) -> str:
    """`users/UID/projects/PID`, as a project token's project is named (a URL ending so is
    taken too)."""
    found = PROJECT_PATH.search(text.strip())
    if found is None:
        raise ValueError(f"a project is users/UID/projects/PID, not {text!r}")
    return found.group(0)


async def _open(context: DriverContext) -> Source:
    from mountfs.backends.amigocloud_backend import AmigoCloudBackend
    from mountfs.backends.amigocloud_wire import PROJECT
    from mountfs.backends.http import HttpPool

    rest = context.rest.strip("/")
    project = rest or None
    if rest and not PROJECT_PATH.fullmatch(rest):
        raise ConfigError(f"{context.source}: an AmigoCloud source is amigocloud: or "
                          "amigocloud:users/UID/projects/PID")
    given = context["project"]
    if project and given and project != given:
        raise ConfigError(f"{context.source} and --amigocloud-project {given} name two "
                          "projects")
    project = project or given
    token = context.secret("token_file")
    if not token:
        raise ConfigError("AmigoCloud needs a token: AMIGOCLOUD_TOKEN or "
                          "--amigocloud-token-file FILE")
    # As it travels: in a query, ':' is escaped (redacted also where a URL is logged whole).
    secrets.remember(urllib.parse.quote(token, safe=""))
    if token.startswith(PROJECT) and project is None:
        raise ConfigError("a project token (C:…) works only in its project: mount "
                          "amigocloud:users/UID/projects/PID or give --amigocloud-project")
    url = context["url"]
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--amigocloud-url {url}: not an http(s) URL")
    return AmigoCloudSource(AmigoCloudBackend(url, token, HttpPool(THREADS), project), Scope())


DRIVER = Driver(
    name="amigocloud", schemes=("amigocloud",), open=_open,
    summary="AmigoCloud (GIS projects and datasets): amigocloud: (the token's projects) or "
            "amigocloud:users/UID/projects/PID; AMIGOCLOUD_TOKEN or --amigocloud-token-file",
    options=(
        Option("url", "the service", env=("AMIGOCLOUD_URL",), default=DEFAULT_URL,
               metavar="URL", identity=True),
        Option("token_file", "the file holding the API token (R: read-only, C: a project's)",
               secret=True, env=("AMIGOCLOUD_TOKEN",), parse=Path, metavar="FILE"),
        Option("project", "the project of a project token: users/UID/projects/PID",
               env=("AMIGOCLOUD_PROJECT",), parse=project_path, metavar="PROJECT",
               identity=True),
    ))
