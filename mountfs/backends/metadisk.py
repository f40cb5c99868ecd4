"""The Metadisk driver: `metadisk://HOST[:PORT]` (the bridge; https, or http for a loopback
host or with --metadisk-plain-http), its options and credentials (a registered key file, else
METADISK_EMAIL and METADISK_PASSWORD), and its account subcommands (metadisk_commands.py). The
store is metadisk_backend.py.

The CLI imports this module for every command: the store and the bridge's client (trio,
urllib3, websockets, ecdsa) are imported by `_open` and `credentials`, which run at mount.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mountfs.backends import Scope, Source
from mountfs.backends.metadisk_commands import EMAIL_ENV, add_commands
from mountfs.backends.registry import Driver, DriverContext, Option
from mountfs.errors import ConfigError

if TYPE_CHECKING:
    from mountfs.backends.metadisk_api import Auth

THREADS = 8


def credentials(context: DriverContext) -> Auth:
    """The account's password when an email is given, else the key file: given, or the one
    `mountfs metadisk keys generate` made."""
    from mountfs.backends.metadisk_account import default_key_file
    from mountfs.backends.metadisk_api import Basic, Signer
    from mountfs.backends.metadisk_wire import KeyPair, NonceFile, password_hash

    email = context["email"]
    if email:
        password = context.secret("password_file")
        if not password:
            raise ConfigError("Metadisk basic auth needs the password too: "
                              "--metadisk-password-file FILE or METADISK_PASSWORD")
        return Basic(email, password_hash(password))
    path = context["key_file"] or default_key_file()
    if not path.exists():
        raise ConfigError(f"no Metadisk key {path}: make one (mountfs metadisk keys generate, "
                          f"then keys add) or give --metadisk-key-file, or {EMAIL_ENV} and "
                          "METADISK_PASSWORD")
    return Signer(KeyPair.load(path), NonceFile(context.state_dir()))


def canonical(rest: str) -> str:
    """`//HOST[:PORT]` in lower case; anything else as given, for `_open` to refuse."""
    return "//" + rest[2:].strip("/").lower() if rest.startswith("//") else rest


async def _open(context: DriverContext) -> Source:
    from mountfs.backends.http import HttpPool
    from mountfs.backends.metadisk_api import BridgeApi
    from mountfs.backends.metadisk_backend import MetadiskBackend
    from mountfs.backends.metadisk_wire import bridge_url

    url = bridge_url(context.rest, context["plain_http"])
    auth = credentials(context)  # a missing one is one line, before any connection is made
    api = BridgeApi(url, HttpPool(THREADS), auth)
    return Source(MetadiskBackend(api, context.source, context["storage"],
                                  context["transfer"]), Scope())


def gigabytes(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"a number of GB above 0, not {text!r}")
    return value


DRIVER = Driver(
    name="metadisk", schemes=("metadisk",), open=_open, canonical=canonical,
    commands=add_commands,
    summary="Metadisk bridge: metadisk://HOST[:PORT]; a key registered with "
            "`mountfs metadisk keys add` (--metadisk-key-file, default the one `keys generate` "
            "made), or METADISK_EMAIL and METADISK_PASSWORD",
    options=(
        Option("key_file", "the secp256k1 key (PEM) that signs the requests", parse=Path,
               env=("METADISK_KEY_FILE",), metavar="FILE"),
        Option("email", "the account, for HTTP Basic instead of a key", env=(EMAIL_ENV,),
               metavar="EMAIL", identity=True),
        Option("password_file", "the file holding the account's password", secret=True,
               env=("METADISK_PASSWORD",), parse=Path, metavar="FILE"),
        Option("storage", "GB of storage of a bucket made by mkdir (else the bridge's 10)",
               parse=gigabytes, metavar="GB"),
        Option("transfer", "GB of transfer of a bucket made by mkdir (else the bridge's 30)",
               parse=gigabytes, metavar="GB"),
        Option("plain_http", "http even for a host that is not loopback", switch=True,
               default=False),
    ))
