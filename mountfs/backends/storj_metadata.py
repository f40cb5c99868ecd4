"""Storj custom metadata <-> `user.*` extended attributes, one metadata entry per attribute.

mountfs keeps extended attributes packed in one metadata key (`attrs.py`: `xattr`, JSON of
base64 values), which other Storj tools (uplink, the satellite's web UI, boto3 on the gateway)
would see as one opaque entry. On Storj each `user.NAME` attribute is the custom metadata
entry NAME of its own (`x-amz-meta-NAME` on the gateway), as uplink's `set_custom_metadata`
writes entries, and every entry other tools wrote reads as `user.NAME`. mountfs's own keys
(mode, owner, times: s3fs's names) stay entries of those names.

An attribute that cannot be a header of its own stays packed in `xattr`: a name outside the
`user.` namespace, with characters an HTTP header name cannot hold or upper case (S3 keys
are case-insensitive, the gateway returns them lower-cased), one of mountfs's own names, or
a value that is not printable ASCII (binary values, which headers cannot carry as they are).

Expiry: `user.object-expires` is the entry `Object-Expires`, which Storj's gateway reads as
the object's expiry (uplink's UploadOptions.expires): an RFC 3339 time, or a duration such
as `+24h`. A value of another form is kept packed (and logged): the gateway would refuse the
upload.
"""
from __future__ import annotations

import datetime
import logging
import re

from mountfs.attrs import META_XATTR, OWN_KEYS
from mountfs.attrs import pack_xattrs as pack
from mountfs.attrs import unpack_xattrs as unpack

log = logging.getLogger(__name__)

USER = "user."
EXPIRES = "object-expires"
# Header-name characters (RFC 9110 tchar) that S3 keeps as they are, lower case only.
_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_VALUE = re.compile(r"[\x20-\x7e]*")
_DURATION = re.compile(r"\+?\d+(\.\d+)?(ns|us|ms|s|m|h)(\d+(\.\d+)?(ns|us|ms|s|m|h))*")


def valid_expiry(text: str) -> bool:
    """RFC 3339 (what the gateway parses) or a Go duration from now (`+2h30m`)."""
    if _DURATION.fullmatch(text):
        return True
    try:
        datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def entry_of(name: str, value: bytes) -> tuple[str, str] | None:
    """The metadata entry (name, value) an attribute is stored as, or None: kept packed."""
    if not name.startswith(USER):
        return None
    key = name[len(USER):]
    if not _NAME.fullmatch(key) or key in OWN_KEYS:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not _VALUE.fullmatch(text) or text != text.strip():  # headers lose outer blanks
        return None
    if key == EXPIRES and not valid_expiry(text):
        log.warning("user.%s %r is no RFC 3339 time or +duration: kept, but not as the "
                    "object's expiry", EXPIRES, text)
        return None
    return key, text


def to_storj(metadata: dict[str, str]) -> dict[str, str]:
    """mountfs's metadata (attrs.encode) as stored on Storj: each `user.*` attribute that can
    be an entry of its own as one; the rest packed as before."""
    out = {k: v for k, v in metadata.items() if k != META_XATTR}
    packed = unpack(metadata.get(META_XATTR))
    rest: dict[str, bytes] = {}
    for name, value in packed.items():
        entry = entry_of(name, value)
        if entry is None:
            rest[name] = value
        else:
            out[entry[0]] = entry[1]
    if rest:
        out[META_XATTR] = pack(rest)
    return out


def from_storj(metadata: dict[str, str]) -> dict[str, str]:
    """Metadata read from Storj as mountfs carries it: every entry that is not mountfs's own
    (nor a standard header) is the attribute `user.<entry>`, merged with the packed ones."""
    out: dict[str, str] = {}
    xattrs = unpack(metadata.get(META_XATTR))
    for key, value in metadata.items():
        if key in OWN_KEYS or key.startswith(":"):
            if key != META_XATTR:
                out[key] = value
        else:
            xattrs[USER + key] = value.encode()
    if xattrs:
        out[META_XATTR] = pack(xattrs)
    return out

