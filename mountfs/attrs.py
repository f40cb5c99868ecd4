"""POSIX attributes <-> object metadata, in the s3fs format so both tools share a bucket."""
from __future__ import annotations

import base64
import binascii
import json
import stat
from dataclasses import dataclass, field

from mountfs.backends.base import META_GID, META_MODE, META_MTIME, META_UID, META_XATTR


@dataclass
class Defaults:
    """Attributes of objects that carry none (written by other tools), from mount options."""

    uid: int
    gid: int
    umask: int

    def mode(self, kind: int) -> int:
        return kind | ((0o777 if kind != stat.S_IFREG else 0o666) & ~self.umask)


@dataclass
class Attributes:
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)


def decode(metadata: dict[str, str] | None, kind: int, mtime_ns: int,
           defaults: Defaults) -> Attributes:
    """Attributes from object metadata; the kind comes from the store (file or prefix) unless
    the metadata names a symlink, and anything missing or malformed takes the default."""
    meta = metadata or {}
    attrs = Attributes(defaults.mode(kind), defaults.uid, defaults.gid, mtime_ns)
    mode = _int(meta.get(META_MODE))
    if mode is not None:
        if kind == stat.S_IFREG and stat.S_ISLNK(mode):
            kind = stat.S_IFLNK
        attrs.mode = kind | stat.S_IMODE(mode)
    elif kind == stat.S_IFLNK:
        attrs.mode = kind | 0o777
    attrs.uid = _int(meta.get(META_UID), defaults.uid)
    attrs.gid = _int(meta.get(META_GID), defaults.gid)
    mtime = meta.get(META_MTIME)
    if mtime:
        try:
            sec, _, frac = mtime.partition(".")
            attrs.mtime_ns = int(sec) * 10**9 + int((frac + "000000000")[:9] or 0)
        except ValueError:
            pass
    raw = meta.get(META_XATTR)
    if raw:
        try:
            attrs.xattrs = {k: base64.b64decode(v) for k, v in json.loads(raw).items()}
        except (ValueError, AttributeError, binascii.Error):
            pass
    return attrs


def encode(attrs: Attributes) -> dict[str, str]:
    sec, ns = divmod(attrs.mtime_ns, 10**9)
    meta = {
        META_MODE: str(attrs.mode),
        META_UID: str(attrs.uid),
        META_GID: str(attrs.gid),
        META_MTIME: f"{sec}.{ns:09d}" if ns else str(sec),
    }
    if attrs.xattrs:
        meta[META_XATTR] = json.dumps(
            {k: base64.b64encode(v).decode() for k, v in sorted(attrs.xattrs.items())})
    return meta


def _int(value: str | None, default: int | None = None) -> int | None:  # type: ignore[misc]
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
