"""The FirecREST driver: its SOURCE forms (`firecrest://`, `firecrest://SYSTEM`,
`firecrest://SYSTEM/ABSOLUTE/PATH`), options and credentials (pyfirecrest's variables), and
the checks that stop a mount in one line. The store itself is firecrest_backend.py.

The CLI imports this module for every command: the store and its HTTP client (urllib3, trio)
are imported by the functions that run at mount (`_open`, `credentials`, the check), not here.
"""
from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING

from mountfs.backends import Scope, Source
from mountfs.backends.registry import Driver, DriverContext, Option
from mountfs.errors import BackendError, ConfigError

if TYPE_CHECKING:
    from mountfs.backends.http import HttpPool
    from mountfs.backends.oauth import TokenSource

THREADS = 16


class FirecrestSource(Source):
    """A mount of one system (or of a path in it): the system must exist and the path be a
    directory of its file systems, or the mount does not start."""

    async def check(self) -> None:
        from mountfs.backends.firecrest_backend import FirecrestBackend
        from mountfs.backends.firecrest_wire import path_of

        backend = self.backend
        assert isinstance(backend, FirecrestBackend)
        await backend.check()
        system = self.scope.bucket
        if system is None:
            return
        known = await backend.systems()
        if system not in known:
            raise ConfigError(f"{backend.describe()}: no system {system!r} (systems: "
                              f"{', '.join(sorted(known)) or 'none'})")
        if not self.scope.prefix:
            return
        path = path_of(self.scope.prefix)
        place = await backend.where(system, path)
        if place == "outside":
            raise ConfigError(f"{system}:{path} is outside the file systems of {system} "
                              f"({', '.join(known[system])})")
        if place == "inside":
            try:
                if not stat.S_ISDIR(int((await backend.dialect.stat(system, path))["mode"])):
                    raise ConfigError(f"{system}:{path} is not a directory")
            except BackendError as exc:
                raise ConfigError(f"{system}:{path}: {exc}") from None


def canonical(rest: str) -> str:
    return "//" + rest.strip("/")


async def _open(context: DriverContext) -> Source:
    """`firecrest://` (the systems), `firecrest://SYSTEM` (its file systems) or
    `firecrest://SYSTEM/PATH`, with the credentials found now: a missing one is one line."""
    from mountfs.backends.firecrest_backend import FirecrestBackend
    from mountfs.backends.http import HttpPool

    if not context.rest.startswith("//"):
        raise ConfigError(f"{context.source}: a FirecREST source is "
                          "firecrest://[SYSTEM[/ABSOLUTE/PATH]]")
    scope = Scope.parse(context.rest[2:], context.source)
    url = context["url"]
    if not url:
        raise ConfigError("FirecREST needs the service's URL: --firecrest-url URL or "
                          "FIRECREST_URL")
    http = HttpPool(THREADS)
    return FirecrestSource(FirecrestBackend(url, http, credentials(context, http),
                                            context["api_version"]), scope)


def credentials(context: DriverContext, http: HttpPool) -> TokenSource:
    """A plain token if one is given, else the client credentials (all three needed)."""
    from mountfs.backends.oauth import ClientCredentials, StaticToken

    token = context.secret("token_file")
    if token:
        return StaticToken(token)
    secret = context.secret("client_secret_file")
    missing = [what for what, value in (("a client id (FIRECREST_CLIENT_ID)", context["client_id"]),
                                        ("a client secret (FIRECREST_CLIENT_SECRET)", secret),
                                        ("a token URL (AUTH_TOKEN_URL)", context["token_url"]))
               if not value]
    if missing or secret is None:
        http.close()
        raise ConfigError("FirecREST needs a token (FIRECREST_TOKEN or --firecrest-token-file) "
                          "or client credentials: " + ", ".join(missing) + " missing")
    return ClientCredentials(http, context["token_url"], context["client_id"], secret)


def api_version(text: str) -> str:
    if text not in ("v1", "v2", "auto"):
        raise ValueError(f"the API version is v1, v2 or auto, not {text!r}")
    return text


DRIVER = Driver(
    name="firecrest", schemes=("firecrest",), open=_open, canonical=canonical,
    summary="FirecREST (HPC file systems): firecrest:// (the systems), firecrest://SYSTEM or "
            "firecrest://SYSTEM/ABSOLUTE/PATH; FIRECREST_URL, and FIRECREST_CLIENT_ID, "
            "FIRECREST_CLIENT_SECRET, AUTH_TOKEN_URL or FIRECREST_TOKEN",
    options=(
        Option("url", "the FirecREST service", env=("FIRECREST_URL",), metavar="URL",
               identity=True),
        Option("token_url", "the OAuth2 token endpoint of the client credentials",
               env=("AUTH_TOKEN_URL",), metavar="URL"),
        Option("client_id", "the OAuth2 client id", env=("FIRECREST_CLIENT_ID",), metavar="ID"),
        Option("client_secret_file", "the file holding the OAuth2 client secret",
               secret=True, env=("FIRECREST_CLIENT_SECRET",), parse=Path, metavar="FILE"),
        Option("token_file", "the file holding an access token (instead of client "
               "credentials; never renewed)", secret=True, env=("FIRECREST_TOKEN",),
               parse=Path, metavar="FILE"),
        Option("api_version", "v2, v1 or auto (v2 answers with an f7t-appversion header)",
               parse=api_version, default="auto", metavar="VERSION"),
    ))
