"""Keeping secrets out of logs: the one filter every log handler of mountfs carries.

What it redacts: every secret a driver read through the registry (`remember`), the values of
the environment variables drivers declare as credentials (`watch_variables`), and the
credential fields of HTTP requests that client libraries log at -vv (Authorization headers,
S3 session tokens, a `token` query parameter as AmigoCloud's API takes it), whichever driver
sent them.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

REDACTED = "<redacted>"
# At -vv botocore logs each request's headers and canonical request: the session token (a
# credential) and the Authorization header are in both, whatever file the credentials came from.
# (An Authorization value, "AWS4-HMAC-SHA256 Credential=..., Signature=...", holds spaces.)
SECRET_FIELDS = re.compile(r"(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,}]+"
                           r"|(authorization['\"]?\s*[:=]\s*b?['\"]?)[^'\"\n]+"
                           r"|([?&]token=)[^&#'\"\s]+", re.IGNORECASE)
# Shorter values would redact ordinary words of log lines; no credential is that short.
MIN_SECRET = 6

_secrets: set[str] = set()


def remember(value: str) -> None:
    """Redact `value` from every log line from now on."""
    if len(value) >= MIN_SECRET:
        _secrets.add(value)


def watch_variables(names: Iterable[str]) -> None:
    """Redact the values the environment variables `names` hold now."""
    for name in names:
        remember(os.environ.get(name, ""))


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = SECRET_FIELDS.sub(lambda m: (m.group(1) or m.group(2) or m.group(3)) + REDACTED,
                                  message)
        for value in _secrets:
            clean = clean.replace(value, REDACTED)
        if clean != message:
            record.msg, record.args = clean, None
        return True
