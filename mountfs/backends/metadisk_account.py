"""What `mountfs metadisk ...` does (its parser is metadisk_commands.py): the account steps a
mount needs first (the pymdc README's steps 1 and 2): register, activate, and the key pairs
(generate one in the driver's state directory, add it to the account, list, delete). Each
failure is one line and a non-zero exit.
"""
from __future__ import annotations

import argparse
import getpass
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from mountfs.backends.http import HttpPool
from mountfs.backends.metadisk_api import Auth, Basic, BridgeApi, Signer
from mountfs.backends.metadisk_wire import (KEY_FILE, KeyPair, NonceFile, bridge_url,
                                            password_hash)
from mountfs.backends.registry import state_dir
from mountfs.backends.metadisk_commands import BRIDGE_ENV, EMAIL_ENV, PASSWORD_ENV
from mountfs.errors import BackendError, ConfigError


def default_key_file() -> Path:
    return state_dir("metadisk") / KEY_FILE


def base_url(text: str | None) -> str:
    """The bridge of `--bridge` (or METADISK_BRIDGE): metadisk://HOST[:PORT] or an http(s) URL."""
    if not text:
        raise ConfigError(f"which bridge? --bridge metadisk://HOST[:PORT] or {BRIDGE_ENV}")
    if text.startswith(("http://", "https://")):
        return text.rstrip("/")
    scheme, sep, rest = text.partition(":")
    if scheme != "metadisk" or not sep:
        raise ConfigError(f"{text}: the bridge is metadisk://HOST[:PORT] or an http(s) URL")
    return bridge_url(rest, plain_http=False)


def read_password(path: Path | None, twice: bool = False) -> str:
    """From the file, else METADISK_PASSWORD, else the terminal."""
    if path is not None:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--password-file {path}: {exc.strerror}") from None
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    password = getpass.getpass("Metadisk password: ")
    if twice and getpass.getpass("again: ") != password:
        raise ConfigError("the passwords differ")
    return password


def run(args: argparse.Namespace, auth: Auth, method: str, path: str, what: str,
        params: dict[str, Any] | None = None) -> Any:
    """One request to the bridge; its refusal as one line."""
    async def request() -> Any:
        api = BridgeApi(base_url(args.bridge), HttpPool(1), auth)
        try:
            return await api.call(method, path, what, params)
        finally:
            api.http.close()
    try:
        return trio.run(request)
    except BackendError as exc:
        raise ConfigError(str(exc)) from None


def account(args: argparse.Namespace) -> Basic:
    email = args.email or os.environ.get(EMAIL_ENV)
    if not email:
        raise ConfigError(f"which account? --email EMAIL or {EMAIL_ENV}")
    return Basic(email, password_hash(read_password(args.password_file)))


def signer_or_account(args: argparse.Namespace) -> Auth:
    """The key (if it exists) signs; else the account's password."""
    key_file = args.key_file or default_key_file()
    if key_file.exists() and not (args.email or os.environ.get(EMAIL_ENV)):
        return Signer(KeyPair.load(key_file), NonceFile(state_dir("metadisk")))
    return account(args)


def cmd_register(args: argparse.Namespace) -> int:
    user = run(args, None, "POST", "/users", "register",
               {"email": args.email_address,
                "password": password_hash(read_password(args.password_file, twice=True))})
    print(f"registered {user['email']}: activate with the token the bridge sent "
          "(mountfs metadisk activate TOKEN)")
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    user = run(args, None, "GET", f"/activations/{args.token}", "activate")
    print(f"activated {user['email']}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    path = args.key_file or default_key_file()
    if path.exists():
        raise ConfigError(f"{path} exists: a key is never overwritten (delete it first)")
    key = KeyPair.generate()
    key.save(path)
    print(f"{key.public} in {path}: add it to the account with `mountfs metadisk keys add`")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    key = KeyPair.load(args.key_file or default_key_file())
    added = run(args, account(args), "POST", "/keys", "add key", {"key": key.public})
    print(f"added {added['key']} to {added['user']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for key in run(args, signer_or_account(args), "GET", "/keys", "list keys"):
        print(key["key"])
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    public = args.public_key or KeyPair.load(args.key_file or default_key_file()).public
    run(args, signer_or_account(args), "DELETE", f"/keys/{public}", "delete key")
    print(f"deleted {public}")
    return 0


# By the names metadisk_commands.py gives them on the command line.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "register": cmd_register, "activate": cmd_activate, "generate": cmd_generate,
    "add": cmd_add, "list": cmd_list, "delete": cmd_delete}
