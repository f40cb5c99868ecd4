"""Duckietown tokens: where mountfs finds one, and checking it before a mount starts.

A token is `<version>-<base58(payload JSON)>-<base58(signature)>`, version `dt1` or `dt2`; the
payload holds the user id `uid` and the expiry `exp` (UTC; dt1 `%Y-%m-%d`, dt2 `%Y-%m-%d/%H:%M`,
or null). The signature is ECDSA on NIST P-192 with SHA-1, raw r||s, over the payload bytes, as
the official `dt-authentication` library makes it. Checked here against Duckietown's public keys
(or one the user names), so a wrong token is one clear line at mount, not EACCES on every file.
The token itself never travels through argv: it comes from a file or the environment.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from mountfs.errors import ConfigError

# The environment variables a token is read from (by the registry, see dcss.DRIVER), in order:
# the name the Duckietown tools and containers use, then the one the Duckietown shell exports
# to the programs it runs.
TOKEN_ENV = ("DT_TOKEN", "DUCKIETOWN_TOKEN")

# Duckietown's token verification keys (public keys, as shipped in dt-authentication).
DUCKIETOWN_KEYS = {
    "dt1": """-----BEGIN PUBLIC KEY-----
MEkwEwYHKoZIzj0CAQYIKoZIzj0DAQEDMgAEQr/8RJmJZT+Bh1YMb1aqc2ao5teE
ixOeCMGTO79Dbvw5dGmHJLYyNPwnKkWayyJS
-----END PUBLIC KEY-----""",
    "dt2": """-----BEGIN PUBLIC KEY-----
MEkwEwYHKoZIzj0CAQYIKoZIzj0DAQEDMgAEHIqMBPGB2tzRgrMKhQSkEiKQ317q
msEAqq1CS86oV1vjHYVq6FLvtnDsuWzbW2Nz
-----END PUBLIC KEY-----""",
}
EXPIRY_FORMAT = {"dt1": "%Y-%m-%d", "dt2": "%Y-%m-%d/%H:%M"}


@dataclass(frozen=True)
class Token:
    text: str  # the token as given: what the authorize service is sent
    version: str
    uid: int
    expires: datetime.datetime | None  # UTC, naive

    def __repr__(self) -> str:  # never the secret itself, should a token end up in a log
        return f"Token({self.version}, uid={self.uid}, expires={self.expires})"


def load_public_key(path: Path | None) -> str | None:
    """The PEM of `--token-public-key`, which then verifies tokens of either version."""
    if path is None:
        return None
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"--token-public-key {path}: {exc.strerror}") from None


def parse_token(text: str, public_key_pem: str | None = None,
                now: datetime.datetime | None = None) -> Token:
    """The verified, unexpired token `text`; ConfigError naming the part that is wrong."""
    import base58
    import ecdsa
    import ecdsa.util

    parts = text.split("-")
    if len(parts) != 3:
        raise ConfigError("Duckietown token: not of the form dt2-PAYLOAD-SIGNATURE "
                          f"({len(parts)} dash-separated parts, not 3)")
    version, payload_b58, signature_b58 = parts
    if version not in EXPIRY_FORMAT:
        raise ConfigError(f"Duckietown token: version {version[:8]!r} unknown (dt1 or dt2)")
    try:
        payload_bytes = base58.b58decode(payload_b58)
        payload = json.loads(payload_bytes)
    except ValueError:
        raise ConfigError("Duckietown token: the payload is not base58-encoded JSON") from None
    try:
        signature = base58.b58decode(signature_b58)
    except ValueError:
        raise ConfigError("Duckietown token: the signature is not base58") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("uid"), int) \
            or "exp" not in payload:
        raise ConfigError("Duckietown token: the payload lacks the user id 'uid' or 'exp'")
    pem = public_key_pem or DUCKIETOWN_KEYS[version]
    whose = "the key of --token-public-key" if public_key_pem else f"Duckietown's {version} key"
    try:
        key = ecdsa.VerifyingKey.from_pem(pem)
    except (ValueError, ecdsa.der.UnexpectedDER) as exc:
        raise ConfigError(f"--token-public-key is not an ECDSA public key in PEM: {exc}") from None
    try:
        key.verify(signature, payload_bytes)  # SHA-1: python-ecdsa's default, as the issuer's
    except (ecdsa.BadSignatureError, ecdsa.util.MalformedSignature, ValueError):
        raise ConfigError(f"Duckietown token: the signature does not verify with {whose} "
                          "(forged, altered or from another service)") from None
    expires = _expiry(payload["exp"], version)
    now = now or datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    if expires is not None and expires < now:
        raise ConfigError(f"Duckietown token of user {payload['uid']} expired on "
                          f"{expires:%Y-%m-%d %H:%M} UTC; get a new one")
    return Token(text, version, payload["uid"], expires)


def _expiry(exp: object, version: str) -> datetime.datetime | None:
    if exp is None:
        return None
    try:
        return datetime.datetime.strptime(str(exp), EXPIRY_FORMAT[version])
    except ValueError:
        raise ConfigError(f"Duckietown token: expiry {str(exp)[:32]!r} is not "
                          f"{EXPIRY_FORMAT[version]}") from None
