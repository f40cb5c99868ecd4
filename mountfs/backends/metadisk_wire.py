"""What the Metadisk bridge (v0.3.0) checks of a request, and the one place it is made: the
secp256k1 key pair and its file, the signature of `METHOD\\nPATH\\nPAYLOAD`, the nonce that
never goes backwards nor repeats, the file hash, the bridge URL of a SOURCE, and the bridge's
`{"error": ...}` replies as mountfs errors.

No I/O but the key and nonce files: requests are sent by metadisk_api.py.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ecdsa
from ecdsa.util import sigencode_der

from mountfs.backends.http import status_error
from mountfs.errors import (BackendError, ConfigError, NoSuchBucket, QuotaExceeded,
                            TemporaryFailure)

KEY_FILE = "key.pem"  # in the driver's state directory: what `keys generate` makes
NONCE_FILE = "nonce"
# The bridge's refusals of a token (v0.3.0: a plain Error, so HTTP 500): a new token cures it.
TOKEN_REFUSED = "Invalid or expired token"
# The status the local bridge (and the later bridge, for its rate limits) answers a bucket
# over its storage with; v0.3.0 enforced no quota.
QUOTA_STATUS = 420
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class KeyPair:
    """A secp256k1 key: requests are signed with it; the bridge knows it by its public key in
    hex, compressed (33 bytes, `02…`/`03…`) as pymdc sends it."""

    def __init__(self, key: ecdsa.SigningKey) -> None:
        self.key = key

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(ecdsa.SigningKey.generate(curve=ecdsa.SECP256k1))

    @classmethod
    def load(cls, path: Path) -> KeyPair:
        """The key in the PEM file `path`; one line (ConfigError) when it is not one."""
        try:
            key = ecdsa.SigningKey.from_pem(path.read_text())
        except OSError as exc:
            raise ConfigError(f"Metadisk key file {path}: {exc.strerror}") from None
        except (ValueError, ecdsa.der.UnexpectedDER) as exc:
            raise ConfigError(f"Metadisk key file {path} holds no secp256k1 key: {exc}") \
                from None
        if key.curve != ecdsa.SECP256k1:
            raise ConfigError(f"Metadisk key file {path} holds a {key.curve.name} key, not "
                              "secp256k1")
        return cls(key)

    def save(self, path: Path) -> None:
        """Written 0600 from its creation; an existing file is never replaced."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key.to_pem())

    @property
    def public(self) -> str:
        return self.key.get_verifying_key().to_string("compressed").hex()

    def sign(self, method: str, path: str, payload: str) -> dict[str, str]:
        """The headers of a request signed as the bridge verifies it: ECDSA over SHA-256 of
        the contract, DER in hex."""
        contract = "\n".join((method, path, payload)).encode()
        signature = self.key.sign_deterministic(contract, hashfunc=hashlib.sha256,
                                                sigencode=sigencode_der)
        return {"x-signature": signature.hex(), "x-pubkey": self.public}


def valid_public_key(text: str) -> bool:
    """Whether `text` is a secp256k1 point in hex (compressed or not), as POST /keys checks."""
    try:
        ecdsa.VerifyingKey.from_string(bytes.fromhex(text), curve=ecdsa.SECP256k1)
    except (ValueError, ecdsa.errors.MalformedPointError):
        return False
    return True


def verify(public: str, signature: str, method: str, path: str, payload: str) -> bool:
    """The bridge's check of a signed request (the local bridge's, and the tests')."""
    try:
        key = ecdsa.VerifyingKey.from_string(bytes.fromhex(public), curve=ecdsa.SECP256k1)
        contract = "\n".join((method, path, payload)).encode()
        return key.verify(bytes.fromhex(signature), contract, hashfunc=hashlib.sha256,
                          sigdecode=ecdsa.util.sigdecode_der)
    except (ValueError, ecdsa.BadSignatureError, ecdsa.errors.MalformedPointError,
            ecdsa.der.UnexpectedDER):
        return False


def file_hash(sha256_hex: str) -> str:
    """A file's id on the bridge: RIPEMD-160 of the hex SHA-256 of its content."""
    return hashlib.new("ripemd160", sha256_hex.encode()).hexdigest()


def password_hash(password: str) -> str:
    """What the bridge takes as a password: its SHA-256 in hex."""
    return hashlib.sha256(password.encode()).hexdigest()


class NonceFile:
    """The nonces of one state directory: integers (microseconds since the epoch, or one
    more than the last when the clock has not moved on) kept in a file under an exclusive
    flock. The bridge refuses a nonce lower than the last it saw for the user, and a later
    bridge a repeated one, so every process signing with this directory's keys takes its
    nonces here, and holds the lock until its request is answered: requests signed on one
    machine reach the bridge in the order of their nonces (`signing`)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / NONCE_FILE

    @contextmanager
    def signing(self) -> Iterator[int]:
        """A fresh nonce, the lock held until the block ends. Blocking: run in a thread."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = os.pread(fd, 64, 0).decode().strip()
            last = int(text) if text.isdigit() else 0
            nonce = max(last + 1, time.time_ns() // 1000)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(nonce).encode(), 0)
            os.fsync(fd)  # a crash after the request must not give the nonce out again
            yield nonce
        finally:
            os.close(fd)  # releases the lock


def bridge_url(rest: str, plain_http: bool) -> str:
    """The bridge's base URL from what follows `metadisk:` (`//HOST[:PORT]`): https, except
    for a loopback host or with `plain_http`."""
    parts = urllib.parse.urlsplit("metadisk:" + rest)
    if not rest.startswith("//") or not parts.hostname or parts.path.strip("/") \
            or parts.query or parts.username:
        raise ConfigError(f"metadisk:{rest}: a Metadisk source is metadisk://HOST[:PORT]")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"metadisk:{rest}: not a port number") from None
    scheme = "http" if plain_http or parts.hostname in LOOPBACK else "https"
    return f"{scheme}://{parts.netloc}"


def error_of(status: int, body: bytes, what: str) -> BackendError:
    """The mountfs error for a bridge's refusal: its message from `{"error": ...}`."""
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode(errors="replace") or f"HTTP {status}"
    text = f"{what}: {message}"
    if message == TOKEN_REFUSED:
        return TemporaryFailure(text)  # used or expired: the next try takes a new token
    if status == QUOTA_STATUS:
        return QuotaExceeded(text)
    if status == 404 and message == "Bucket not found":
        return NoSuchBucket(text)
    return status_error(status, text)
