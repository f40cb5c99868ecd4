"""The one retry policy of every driver request: reads, stats, listing pages, deletes, copies,
metadata changes, and each request inside an upload (a PUT, one part of a multipart upload).

A program waits in a syscall while a request is retried, so the budget is short: up to TRIES
tries, none starting later than BUDGET seconds after the first; between them a full-jitter
exponential backoff (a random wait up to 0.1 s, 0.2 s, 0.4 s, … at most 2 s), or the wait the
service asked for in Retry-After (`TemporaryFailure.retry_after`; one longer than the budget
has left ends the retries at once, so no wait is ever longer than the budget). Whether a
failure is worth another try is the driver's `is_temp_failure`; a failed precondition never
is (`PreconditionFailed`: the same conditional request fails again; the write-back queue and
the namespace settle it). Whole uploads are retried again, on a longer schedule, by the
write-back queue (cache/writeback.py).

Each retry is logged once, at INFO, in one format for every driver, and told to each of
`observers` (the metrics count them).
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import tenacity
import trio

from mountfs.errors import PreconditionFailed

log = logging.getLogger(__name__)

T = TypeVar("T")

# Ten tries, not three or four: at a 20% fault rate four tries leave one request in 625
# failing, and listing and reading a directory of 1,500 files takes some 6,000 requests. What a
# program feels is BUDGET, which bounds the tries of a service that fails fast.
TRIES = 10
BUDGET = 8.0  # seconds from the first try after which no other starts
FIRST_WAIT, MAX_WAIT = 0.1, 2.0  # the backoff's first window and its largest, in seconds

# Called with the request's name at each retry (mountfs/metrics.py counts them).
observers: list[Callable[[str], None]] = []


def worth_retrying(exc: BaseException, is_temp: Callable[[BaseException], bool]) -> bool:
    """Whether the policy tries again after `exc` (never after a cancellation)."""
    return isinstance(exc, Exception) and not isinstance(exc, PreconditionFailed) \
        and is_temp(exc)


async def retrying(what: str, attempt: Callable[[], Awaitable[T]],
                   is_temp: Callable[[BaseException], bool]) -> T:
    """`attempt()` until it succeeds, fails in a way not worth retrying, or the tries or the
    budget run out; then its last error is raised as it is. `what` names the request in the
    log ("GET space/key")."""
    start = trio.current_time()  # trio's clock, not tenacity's: tests may run a MockClock
    # The first try outside tenacity: nearly every request succeeds at once, and building the
    # retryer cost ~15% of the CPU of a HEAD on the S3 fast path (`ls -l` of 10,000 files).
    try:
        return await attempt()
    except Exception as exc:
        if not worth_retrying(exc, is_temp):
            raise
        failed: list[Exception] = [exc]
    backoff = tenacity.wait_random_exponential(multiplier=FIRST_WAIT, max=MAX_WAIT)

    def wait(state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        asked = getattr(state.outcome.exception(), "retry_after", None)
        return float(asked) if asked is not None else backoff(state)

    def stop(state: tenacity.RetryCallState) -> bool:
        return state.attempt_number >= TRIES \
            or trio.current_time() - start + state.upcoming_sleep > BUDGET

    def before_sleep(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None
        log.info("retrying %s in %.2fs (try %d of %d): %s", what, state.upcoming_sleep,
                 state.attempt_number + 1, TRIES, state.outcome.exception())
        for observer in observers:
            observer(what)

    async def one_try() -> T:
        # A coroutine function, whatever `attempt` is (a lambda returning an awaitable):
        # tenacity awaits only what it sees to be one. Its first try is the one made above.
        if failed:
            raise failed.pop()
        return await attempt()

    retryer = tenacity.AsyncRetrying(
        sleep=trio.sleep, stop=stop, wait=wait, before_sleep=before_sleep, reraise=True,
        retry=tenacity.retry_if_exception(lambda exc: worth_retrying(exc, is_temp)))
    return await retryer(one_try)
