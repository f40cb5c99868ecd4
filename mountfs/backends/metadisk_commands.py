"""The parser of `mountfs metadisk ...` (the account steps and the key pairs) and the
variables they read. What the commands do is metadisk_account.py, imported when one runs: the
CLI builds this parser for every command, and the bridge's client (trio, urllib3, websockets,
ecdsa) is not needed for that.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

BRIDGE_ENV, EMAIL_ENV, PASSWORD_ENV = "METADISK_BRIDGE", "METADISK_EMAIL", "METADISK_PASSWORD"


def run_command(args: argparse.Namespace) -> int:
    """The handler of every command here: metadisk_account's function of the command given."""
    from mountfs.backends.metadisk_account import COMMANDS

    return COMMANDS[args.key_action if args.action == "keys" else args.action](args)


def add_commands(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bridge", default=os.environ.get(BRIDGE_ENV), metavar="URL",
                        help=f"metadisk://HOST[:PORT] or an http(s) URL (else {BRIDGE_ENV})")
    sub = parser.add_subparsers(dest="action", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(handler=run_command)
        p.add_argument("--password-file", type=Path, metavar="FILE",
                       help=f"the password (else {PASSWORD_ENV}, else asked)")
        return p

    register = command("register", "register an account")
    register.add_argument("email_address", metavar="EMAIL")
    activate = command("activate", "activate the account with the token sent")
    activate.add_argument("token")
    keys = sub.add_parser("keys", help="the account's key pairs")
    key_sub = keys.add_subparsers(dest="key_action", required=True)
    for name, help in (
            ("generate", "make a key pair (0600 file, the state dir's unless --key-file)"),
            ("add", "register the key's public key with the account"),
            ("list", "the account's public keys"),
            ("delete", "remove a public key from the account")):
        p = key_sub.add_parser(name, help=help)
        p.set_defaults(handler=run_command)
        p.add_argument("--key-file", type=Path, metavar="FILE")
        p.add_argument("--email", help=f"the account (else {EMAIL_ENV})")
        p.add_argument("--password-file", type=Path, metavar="FILE",
                       help=f"the password (else {PASSWORD_ENV}, else asked)")
        if name == "delete":
            p.add_argument("public_key", nargs="?", help="hex (else the key file's)")
