"""S3's errors as mountfs errors: the one mapping of the S3 driver's failures, boto3's
`ClientError` and connection errors (the fast path raises its replies' errors as the same
`ClientError`, s3_wire.py)."""
from __future__ import annotations

from mountfs.backends.http import retry_after, status_error
from mountfs.errors import (AlreadyExists, BackendError, InvalidName, NoSuchBucket,
                            NoSuchObject, NotEmpty, NotSupported, PermissionDenied,
                            PreconditionFailed, QuotaExceeded, TemporaryFailure, TooLarge)

# S3 error codes; a reply whose code is not here (a HEAD's has none) is mapped by its status.
BY_CODE: dict[str, type[BackendError]] = {
    "NoSuchBucket": NoSuchBucket,
    "NoSuchKey": NoSuchObject,
    "NotFound": NoSuchObject,
    "AccessDenied": PermissionDenied,
    "Forbidden": PermissionDenied,
    "AllAccessDisabled": PermissionDenied,
    "BucketAlreadyExists": AlreadyExists,
    "BucketAlreadyOwnedByYou": AlreadyExists,
    "BucketNotEmpty": NotEmpty,
    "InvalidBucketName": InvalidName,
    "EntityTooLarge": TooLarge,
    "QuotaExceeded": QuotaExceeded,
    "NotImplemented": NotSupported,
    # An If-Match failed: the object changed since we looked at it.
    "PreconditionFailed": PreconditionFailed,
    "SlowDown": TemporaryFailure,
    "Throttling": TemporaryFailure,
    "ThrottlingException": TemporaryFailure,
    "RequestTimeout": TemporaryFailure,
    "RequestTimeTooSkewed": TemporaryFailure,
    "InternalError": TemporaryFailure,
    "ServiceUnavailable": TemporaryFailure,
    "TooManyRequests": TemporaryFailure,
    "TooManyRequestsException": TemporaryFailure,
    "RequestLimitExceeded": TemporaryFailure,
    "RequestThrottled": TemporaryFailure,
    "BandwidthLimitExceeded": TemporaryFailure,
}


def error_code(exc: BaseException) -> str:
    """The S3 error code behind an error `_call` translated ('' when there is none)."""
    response = getattr(exc.__cause__, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def translate(exc: BaseException) -> BaseException:
    """The mountfs error `exc` means (`exc` itself where it is none of S3's)."""
    import botocore.exceptions as bx

    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        meta = exc.response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode", 0)
        text = f"{code or status}: {err.get('Message', '')}".strip()
        asked = retry_after(meta.get("HTTPHeaders", {}).get("retry-after"))
        cls = BY_CODE.get(code)
        if cls is None:
            return status_error(status, text, asked)
        error = cls(text)
        if isinstance(error, TemporaryFailure):
            error.retry_after = asked
        return error
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError,
                        bx.ReadTimeoutError, bx.ConnectTimeoutError,
                        bx.ResponseStreamingError, bx.IncompleteReadError)):
        return TemporaryFailure(str(exc))
    if isinstance(exc, bx.NoCredentialsError):
        return PermissionDenied("no S3 credentials found")
    return exc
