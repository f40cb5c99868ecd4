"""The one retry policy (mountfs/backends/retry.py) and the shared HTTP plumbing
(mountfs/backends/http.py): tries, backoff with jitter, Retry-After, what is never retried, the
log line; statuses and Retry-After headers read; and the S3 driver's botocore client sending each
request once, leaving the retries to the policy (a real moto_server behind the fault proxy).

The policy sleeps with trio.sleep and keeps its budget on trio's clock, so these tests run it
under trio's MockClock: its waits take no real time and are measured exactly.
"""
from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from mountfs.backends.http import retry_after, status_error
from mountfs.backends.retry import BUDGET, FIRST_WAIT, MAX_WAIT, TRIES, retrying
from mountfs.backends.s3_backend import S3Backend
from mountfs.errors import (BackendError, NoSuchObject, NotSupported, PermissionDenied,
                            PreconditionFailed, PreconditionLost, TemporaryFailure)
from servers.faults import FaultProxy
from servers.s3 import S3Server
from test_s3 import s3_env  # noqa: F401 (a fixture)


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    """Sleeps end at once, in virtual time (pytest-trio runs the test on this clock)."""
    return trio.testing.MockClock(autojump_threshold=0)


def is_temp(exc: BaseException) -> bool:
    return isinstance(exc, TemporaryFailure)


class Failing:
    """An attempt that raises `errors` in turn (the last one for ever), recording when each
    try began on trio's clock; with `then`, it returns that once the errors are used up."""

    def __init__(self, *errors: Exception, then: str | None = None) -> None:
        self.errors, self.then = list(errors), then
        self.times: list[float] = []

    async def __call__(self) -> str:
        self.times.append(trio.current_time())
        if self.then is not None and len(self.times) > len(self.errors):
            return self.then
        raise self.errors[min(len(self.times), len(self.errors)) - 1]

    def waits(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


async def test_temporary_failures_are_tried_again_until_one_succeeds(
        mock_clock: trio.testing.MockClock) -> None:
    attempt = Failing(TemporaryFailure("503"), TemporaryFailure("503"), then="ok")
    assert await retrying("GET b/k", attempt, is_temp) == "ok"
    assert len(attempt.times) == 3


async def test_waits_are_full_jitter_exponential_within_the_budget(
        mock_clock: trio.testing.MockClock) -> None:
    waits_by_try: list[list[float]] = [[] for _ in range(TRIES - 1)]
    for _ in range(40):
        attempt = Failing(TemporaryFailure("503"))
        with pytest.raises(TemporaryFailure):
            await retrying("GET b/k", attempt, is_temp)
        assert 2 <= len(attempt.times) <= TRIES
        # No try starts after the budget; the policy stopped for the tries or the budget.
        assert attempt.times[-1] - attempt.times[0] <= BUDGET
        for n, wait in enumerate(attempt.waits()):
            assert 0 <= wait <= min(MAX_WAIT, FIRST_WAIT * 2 ** n)
            waits_by_try[n].append(wait)
    # Full jitter: the waits before the second try spread over their window, not one value.
    first = waits_by_try[0]
    assert max(first) - min(first) > FIRST_WAIT / 4


async def test_tries_are_at_most_tries(mock_clock: trio.testing.MockClock) -> None:
    attempt = Failing(TemporaryFailure("503", retry_after=0))
    with pytest.raises(TemporaryFailure):
        await retrying("GET b/k", attempt, is_temp)
    assert len(attempt.times) == TRIES


async def test_retry_after_is_honoured_and_one_past_the_budget_ends_the_tries(
        mock_clock: trio.testing.MockClock) -> None:
    attempt = Failing(TemporaryFailure("slow down", retry_after=1.5),
                      TemporaryFailure("slow down", retry_after=3.0), then="ok")
    assert await retrying("GET b/k", attempt, is_temp) == "ok"
    assert attempt.waits() == [1.5, 3.0]

    start = trio.current_time()
    attempt = Failing(TemporaryFailure("come back tomorrow", retry_after=86400))
    with pytest.raises(TemporaryFailure, match="tomorrow"):
        await retrying("GET b/k", attempt, is_temp)
    assert len(attempt.times) == 1 and trio.current_time() == start  # no wait at all


@pytest.mark.parametrize("error", [PreconditionFailed("412"),
                                   PreconditionLost("changed", exists=True)])
async def test_a_failed_precondition_is_not_tried_again(
        mock_clock: trio.testing.MockClock, error: Exception) -> None:
    assert is_temp(error)  # temporary for the write-back queue, never for the policy
    attempt = Failing(error, then="ok")
    with pytest.raises(type(error)):
        await retrying("PUT b/k", attempt, is_temp)
    assert len(attempt.times) == 1


@pytest.mark.parametrize("error", [PermissionDenied("403"), NoSuchObject("404"),
                                   BackendError("400"), ValueError("a bug")])
async def test_permanent_errors_are_raised_at_once(mock_clock: trio.testing.MockClock,
                                                   error: Exception) -> None:
    attempt = Failing(error, then="ok")
    with pytest.raises(type(error)):
        await retrying("GET b/k", attempt, is_temp)
    assert len(attempt.times) == 1


async def test_the_drivers_is_temp_decides(mock_clock: trio.testing.MockClock) -> None:
    attempt = Failing(ConnectionResetError("reset"), then="ok")
    assert await retrying("GET b/k", attempt, lambda e: isinstance(e, ConnectionError)) == "ok"
    attempt = Failing(TemporaryFailure("503"), then="ok")
    with pytest.raises(TemporaryFailure):
        await retrying("GET b/k", attempt, lambda e: False)


async def test_each_retry_is_one_log_line_in_one_format(
        mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mountfs.backends.retry")
    attempt = Failing(TemporaryFailure("HTTP 503", retry_after=0.25), then="ok")
    await retrying("GET space/a b", attempt, is_temp)
    lines = [r.getMessage() for r in caplog.records if r.name == "mountfs.backends.retry"]
    assert lines == [f"retrying GET space/a b in 0.25s (try 2 of {TRIES}): HTTP 503"]
    assert all(r.levelno == logging.INFO for r in caplog.records)


# ---- HTTP plumbing ---------------------------------------------------------------------------


@pytest.mark.parametrize("status, cls", [
    (401, PermissionDenied), (403, PermissionDenied), (404, NoSuchObject),
    (408, TemporaryFailure), (429, TemporaryFailure), (500, TemporaryFailure),
    (502, TemporaryFailure), (503, TemporaryFailure), (412, PreconditionFailed),
    (501, NotSupported), (400, BackendError), (409, BackendError)])
def test_status_error_maps_each_status_to_one_class(status: int, cls: type) -> None:
    error = status_error(status, f"HTTP {status}", retry_after=2.0)
    assert type(error) is cls and str(error) == f"HTTP {status}"
    if type(error) is TemporaryFailure:
        assert error.retry_after == 2.0


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(None) is None and retry_after("") is None
    assert retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after(later) or 0) <= 30
    earlier = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert retry_after(earlier) == 0.0


# ---- the S3 driver: one request per try, the policy's tries --------------------------------


@pytest.fixture
def failing_s3(s3_env: S3Server) -> Iterator[FaultProxy]:
    """A proxy in front of moto answering every request 503 SlowDown, Retry-After: 0."""
    proxy = FaultProxy(s3_env.url, rate=1.0, kinds=("slowdown",)).start()
    proxy.retry_after = "0"
    try:
        yield proxy
    finally:
        proxy.stop()


async def test_botocore_sends_once_and_the_policy_tries_again(failing_s3: FaultProxy) -> None:
    backend = S3Backend(endpoint_url=failing_s3.url, region="us-east-1", path_style=True)
    try:
        with pytest.raises(TemporaryFailure) as raised:
            await backend._once("list_buckets")
        assert failing_s3.requests == 1  # botocore did not retry
        assert raised.value.retry_after == 0.0  # read from the reply's Retry-After
        with pytest.raises(TemporaryFailure, match="SlowDown"):
            await backend.list_buckets()
        assert failing_s3.requests == 1 + TRIES
    finally:
        await backend.aclose()
