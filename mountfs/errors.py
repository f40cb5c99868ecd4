"""The errors backends raise, and the one table that maps every error to an errno.

Backends raise these (never errno values); the FUSE layer calls `to_errno` and nothing else
decides which errno a program sees.
"""
from __future__ import annotations

import errno
import logging

log = logging.getLogger(__name__)


class BackendError(Exception):
    """A failure of the storage service that fits no narrower class."""


class NoSuchBucket(BackendError):
    pass


class NoSuchObject(BackendError):
    pass


class NotADirectory(NoSuchObject):
    """A path through something that is not a directory (FirecREST v1's X-Not-A-Directory):
    nothing is there, as nothing is below a file's key in S3, and a program is told ENOTDIR."""


class IsADirectory(BackendError):
    """A file's operation on a directory (FirecREST v1's X-A-Directory)."""


class AlreadyExists(BackendError):
    pass


class NotEmpty(BackendError):
    pass


class PermissionDenied(BackendError):
    pass


class QuotaExceeded(BackendError):
    pass


class TooLarge(BackendError):
    pass


class NotSupported(BackendError):
    pass


class InvalidName(BackendError):
    """A name the service cannot store (not UTF-8, too long, reserved)."""


class NameTooLong(Exception):
    pass


class ReadOnly(Exception):
    """A write on a read-only mount, or to a backend that cannot write."""


class NotPermitted(Exception):
    """An operation the filesystem does not do (hard links, device nodes)."""


class NoSuchAttribute(Exception):
    pass


class InvalidArgument(Exception):
    pass


class TemporaryFailure(BackendError):
    """Worth retrying: throttling, 5xx, timeouts, dropped connections. `retry_after`: the
    seconds the service asked the client to wait first (its Retry-After header), if it said."""

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PreconditionFailed(TemporaryFailure):
    """A conditional request found its condition false (HTTP 412, S3's PreconditionFailed):
    the object is no longer the version the request named. The same request would fail again,
    so the retry policy (mountfs/backends/retry.py) never repeats it. Temporary for the
    write-back queue, whose next upload starts from what the server has then; a program that
    meets it (a copy whose source changed under it) sees EIO."""


class PreconditionLost(PreconditionFailed):
    """A conditional write (`write_object(if_match=...)`) found the object no longer the version
    it was based on: changed by someone else (`exists`), or gone (not `exists`). Temporary: the
    namespace settles it (a conflict copy, see Namespace._upload_conflict) and the write-back
    queue uploads again; a program sees ESTALE only where nothing settled it."""

    def __init__(self, message: str, exists: bool = True) -> None:
        super().__init__(message)
        self.exists = exists


class ConfigError(Exception):
    """Bad user input (source, option, credentials): reported as one line, exit code 2."""


_ERRNO: list[tuple[type[BaseException], int]] = [
    (NoSuchBucket, errno.ENOENT),
    (NotADirectory, errno.ENOTDIR),  # before NoSuchObject, its base
    (NoSuchObject, errno.ENOENT),
    (FileNotFoundError, errno.ENOENT),
    (AlreadyExists, errno.EEXIST),
    (FileExistsError, errno.EEXIST),
    (NotEmpty, errno.ENOTEMPTY),
    (IsADirectory, errno.EISDIR),
    (PermissionDenied, errno.EACCES),
    (PermissionError, errno.EACCES),
    (QuotaExceeded, errno.EDQUOT),
    (TooLarge, errno.EFBIG),
    (NotSupported, errno.ENOTSUP),
    (InvalidName, errno.EINVAL),
    (PreconditionLost, errno.ESTALE),
    (PreconditionFailed, errno.EIO),
    (TemporaryFailure, errno.EIO),
    (NameTooLong, errno.ENAMETOOLONG),
    (ReadOnly, errno.EROFS),
    (NotPermitted, errno.EPERM),
    (NoSuchAttribute, errno.ENODATA),
    (InvalidArgument, errno.EINVAL),
    (IsADirectoryError, errno.EISDIR),
    (NotADirectoryError, errno.ENOTDIR),
]


# What `_ERRNO` gives each exception type met so far: `ls -l` maps two errors per entry (the
# ENODATA of security.selinux and system.posix_acl_access), a scan of the list each.
_BY_TYPE: dict[type[BaseException], int] = {}


def to_errno(exc: BaseException) -> int:
    """The errno a program sees for `exc`; anything unknown is logged and becomes EIO."""
    code = _BY_TYPE.get(type(exc))
    if code is not None:
        return code
    for cls, code in _ERRNO:
        if isinstance(exc, cls):
            _BY_TYPE[type(exc)] = code
            return code
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    log.error("unexpected error, reported as EIO: %r", exc, exc_info=exc)
    return errno.EIO
