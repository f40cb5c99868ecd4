"""POSIX attributes <-> object metadata, in the s3fs format so both tools share a bucket.

An object's user metadata (S3: `x-amz-meta-<key>`) holds, under s3fs's names, the mode (file
type bits included: symlinks, FIFOs, sockets and device nodes are objects whose mode says so),
owner, group, the three times (seconds since the epoch, with a fraction where it is not whole),
a device node's rdev, and the extended attributes as one JSON object of base64 values. Every
other key belongs to other tools: it is kept as it is (`Attributes.other`) and written back
with every change.
"""
from __future__ import annotations

import base64
import binascii
import json
import stat
from dataclasses import dataclass, field
from typing import TypeVar

META_MODE = "mode"  # st_mode in decimal, file type bits included
META_UID = "uid"
META_GID = "gid"
META_MTIME = "mtime"
META_CTIME = "ctime"
META_ATIME = "atime"
META_RDEV = "rdev"
META_XATTR = "xattr"
OWN_KEYS = frozenset({META_MODE, META_UID, META_GID, META_MTIME, META_CTIME, META_ATIME,
                      META_RDEV, META_XATTR})
# File types a regular object's metadata may turn it into: what the kernel needs to know of a
# symlink, FIFO, socket or device node is its mode (and rdev).
SPECIAL_KINDS = frozenset({stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR,
                           stat.S_IFBLK})


@dataclass
class Defaults:
    """Attributes of objects that carry none (written by other tools), from mount options."""

    uid: int
    gid: int
    umask: int
    # Listed objects take these (and the listing's size and mtime) as they are, never asking
    # for their own metadata (`--attributes-from-listings`, as goofys and mountpoint-s3 do): a
    # walk costs a listing per directory and nothing per entry, but modes, owners and
    # symlinks kept in metadata (by other tools, or by earlier mounts) are not seen.
    from_listings: bool = False

    def mode(self, kind: int) -> int:
        return kind | ((0o777 if kind != stat.S_IFREG else 0o666) & ~self.umask)


@dataclass
class Attributes:
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    ctime_ns: int = -1  # -1: as mtime
    atime_ns: int = -1  # -1: as mtime
    rdev: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    other: dict[str, str] = field(default_factory=dict)  # other tools' metadata, kept

    def __post_init__(self) -> None:
        if self.ctime_ns < 0:
            self.ctime_ns = self.mtime_ns
        if self.atime_ns < 0:
            self.atime_ns = self.mtime_ns

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)

    def changed(self, now_ns: int) -> None:
        """The inode changed (mode, owner, xattrs, links, a rename): ctime moves."""
        self.ctime_ns = now_ns

    def modified(self, now_ns: int) -> None:
        """The data (or, of a directory, its entries) changed: mtime and ctime move."""
        self.mtime_ns = self.ctime_ns = now_ns


def decode(metadata: dict[str, str] | None, kind: int, mtime_ns: int,
           defaults: Defaults) -> Attributes:
    """Attributes from object metadata; the kind comes from the store (file or prefix) unless
    the metadata of a file names a special kind, and anything missing or malformed takes the
    default (times: the store's modification time)."""
    meta = metadata or {}
    attrs = Attributes(defaults.mode(kind), defaults.uid, defaults.gid, mtime_ns)
    mode = _int(meta.get(META_MODE), None)
    if mode is not None:
        if kind == stat.S_IFREG and stat.S_IFMT(mode) in SPECIAL_KINDS:
            kind = stat.S_IFMT(mode)
        attrs.mode = kind | stat.S_IMODE(mode)
    elif kind == stat.S_IFLNK:
        attrs.mode = kind | 0o777
    attrs.uid = _int(meta.get(META_UID), defaults.uid)
    attrs.gid = _int(meta.get(META_GID), defaults.gid)
    attrs.mtime_ns = _time(meta.get(META_MTIME), mtime_ns)
    attrs.ctime_ns = _time(meta.get(META_CTIME), attrs.mtime_ns)
    attrs.atime_ns = _time(meta.get(META_ATIME), attrs.mtime_ns)
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        attrs.rdev = _int(meta.get(META_RDEV), 0)
    attrs.xattrs = unpack_xattrs(meta.get(META_XATTR))
    attrs.other = {k: v for k, v in meta.items() if k not in OWN_KEYS}
    return attrs


def encode(attrs: Attributes) -> dict[str, str]:
    meta = dict(attrs.other)
    meta.update({
        META_MODE: str(attrs.mode),
        META_UID: str(attrs.uid),
        META_GID: str(attrs.gid),
        META_MTIME: _stamp(attrs.mtime_ns),
        META_CTIME: _stamp(attrs.ctime_ns),
        META_ATIME: _stamp(attrs.atime_ns),
    })
    if attrs.rdev:
        meta[META_RDEV] = str(attrs.rdev)
    if attrs.xattrs:
        meta[META_XATTR] = pack_xattrs(attrs.xattrs)
    return meta


def without_write_times(metadata: dict[str, str]) -> dict[str, str]:
    """The metadata a file uploaded while it is written is stored with (its upload begins
    long before its last write): without the times when only writes set them (mtime equals
    ctime), so that the object's LastModified, the upload's end, stands for them; else as
    it is (cp -p, touch -d: they are then stored after the upload, as set)."""
    if metadata.get(META_MTIME) != metadata.get(META_CTIME):
        return dict(metadata)
    return {k: v for k, v in metadata.items() if k not in (META_MTIME, META_CTIME, META_ATIME)}


def pack_xattrs(xattrs: dict[str, bytes]) -> str:
    """Extended attributes as the one metadata value `xattr`: JSON of base64 values."""
    return json.dumps({k: base64.b64encode(v).decode() for k, v in sorted(xattrs.items())})


def unpack_xattrs(raw: str | None) -> dict[str, bytes]:
    """The attributes of an `xattr` value; none where it is missing or malformed."""
    if not raw:
        return {}
    try:
        return {k: base64.b64decode(v) for k, v in json.loads(raw).items()}
    except (ValueError, AttributeError, binascii.Error):
        return {}


def _stamp(ns: int) -> str:
    sec, frac = divmod(ns, 10**9)
    return f"{sec}.{frac:09d}" if frac else str(sec)


def _time(text: str | None, default: int) -> int:
    if not text:
        return default
    try:
        sec, _, frac = text.partition(".")
        return int(sec) * 10**9 + int((frac + "000000000")[:9] or 0)
    except ValueError:
        return default


D = TypeVar("D", int, None)


def _int(value: str | None, default: D) -> int | D:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
