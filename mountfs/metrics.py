"""Prometheus metrics of a running mount (`--metrics-addr HOST:PORT`; off by default).

Driver operations are measured at one seam, whatever the driver: `Metrics.measure` wraps the
backend the mount hands to the namespace, the cache and the queue (`MeasuredBackend`), so each
call of a Backend method counts as a request of that operation, with its latency, its error
class if it raised, and the bytes it moved (read_object, read_into and stream_object down,
write_object up). Retries come from the one retry policy (`retry.observers`), labelled with the
operation that was running. The cache and the queue know nothing of this module: their plain
counters (`BlockCache.hits`, `misses`, `evictions`, `WritebackQueue.summary()`), and the FUSE
layer's count of requests by operation (`Operations.requests`), are read at each scrape, in
the trio thread (`trio.from_thread`), since the HTTP server answers in a thread of its own.

prometheus_client (the Prometheus project's own library) serves the text format and keeps the
counters thread-safe.
"""
from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, cast

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cache.blocks import BlockCache
from cache.writeback import WritebackQueue
from mountfs.backends import retry
from mountfs.backends.base import Backend
from mountfs.errors import ConfigError

# The Backend methods measured as one request each, and those that return a stream.
CALLS = frozenset({"list_buckets", "create_bucket", "delete_bucket", "stat_object",
                   "read_object", "read_into", "write_object", "set_metadata", "delete_object",
                   "copy_object", "rename_object", "check_key", "forget",
                   "abort_incomplete_uploads", "begin_upload", "upload_part",
                   "complete_upload", "abort_upload"})
STREAMS = frozenset({"list_objects", "stream_object"})

# The driver operation under way in this task, for the retries it makes.
_operation: contextvars.ContextVar[str] = contextvars.ContextVar("operation", default="other")


class Metrics:
    def __init__(self, driver: str) -> None:
        self.driver = driver
        self.registry = CollectorRegistry()
        labels = ("driver", "operation")
        self.requests = Counter("mountfs_backend_requests", "Driver operations called (counted "
                                "as they start; their latency and errors as they end)",
                                labels, registry=self.registry)
        self.errors = Counter("mountfs_backend_errors", "Driver operations that raised, by "
                              "error class", (*labels, "error"), registry=self.registry)
        self.latency = Histogram("mountfs_backend_request_seconds", "Time a driver operation "
                                 "took (a stream: from its call to its end)", labels,
                                 registry=self.registry)
        self.retries = Counter("mountfs_backend_retries", "Requests tried again by the retry "
                               "policy, by the operation they served", labels,
                               registry=self.registry)
        self.bytes = Counter("mountfs_bytes", "Bytes moved by the driver: direction up "
                             "(uploads) or down (reads)", ("driver", "direction"),
                             registry=self.registry)
        self._server: Any = None
        self._observer = self._retried

    def measure(self, backend: Backend) -> Backend:
        """The backend as the mount uses it, with every operation measured."""
        return cast(Backend, MeasuredBackend(backend, self))

    def _retried(self, what: str) -> None:
        self.retries.labels(self.driver, _operation.get()).inc()

    def serve(self, addr: tuple[str, int], cache: BlockCache, queue: WritebackQueue,
              fuse_requests: Mapping[str, int]) -> None:
        """Serve the metrics on addr, from now until close(); called in the trio thread."""
        self.registry.register(MountCollector(cache, queue, fuse_requests,
                                              trio.lowlevel.current_trio_token()))
        try:
            self._server, _ = start_http_server(addr[1], addr[0], registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-addr {addr[0]}:{addr[1]}: "
                              f"{exc.strerror or exc}") from None
        retry.observers.append(self._observer)

    def close(self) -> None:
        if self._observer in retry.observers:
            retry.observers.remove(self._observer)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class MeasuredBackend:
    """A backend whose operations are counted and timed; everything else is the backend's."""

    def __init__(self, inner: Backend, metrics: Metrics) -> None:
        self._inner, self._metrics = inner, metrics

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in CALLS:
            return self._call(name, attr)
        if name in STREAMS:
            return self._stream(name, attr)
        return attr

    def _labels(self, operation: str) -> tuple[str, str]:
        return self._metrics.driver, operation

    def _started(self, operation: str) -> float:
        self._metrics.requests.labels(*self._labels(operation)).inc()
        return time.perf_counter()

    def _done(self, operation: str, started: float, exc: BaseException | None) -> None:
        m = self._metrics
        m.latency.labels(*self._labels(operation)).observe(time.perf_counter() - started)
        if exc is not None and isinstance(exc, Exception):
            m.errors.labels(*self._labels(operation), type(exc).__name__).inc()

    def _call(self, operation: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def measured(*args: Any, **kwargs: Any) -> Any:
            started, token = self._started(operation), _operation.set(operation)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._done(operation, started, exc)
                raise
            finally:
                _operation.reset(token)
            self._done(operation, started, None)
            if operation == "read_object":
                self._metrics.bytes.labels(self._metrics.driver, "down").inc(len(result))
            elif operation == "read_into":
                self._metrics.bytes.labels(self._metrics.driver, "down").inc(result)
            elif operation == "write_object":
                size = kwargs["size"] if "size" in kwargs else args[3]
                self._metrics.bytes.labels(self._metrics.driver, "up").inc(size)
            elif operation == "upload_part" and result is not None:
                size = kwargs["length"] if "length" in kwargs else args[6]
                self._metrics.bytes.labels(self._metrics.driver, "up").inc(size)
            return result
        return measured

    def _stream(self, operation: str, fn: Callable[..., AsyncIterator[Any]]
                ) -> Callable[..., AsyncIterator[Any]]:
        async def measured(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            started, stream = self._started(operation), fn(*args, **kwargs)
            error: BaseException | None = None
            try:
                while True:
                    # The operation is set around each step only: between steps the task runs
                    # the consumer's code.
                    token = _operation.set(operation)
                    try:
                        item = await stream.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        _operation.reset(token)
                    if operation == "stream_object":
                        self._metrics.bytes.labels(self._metrics.driver, "down").inc(len(item))
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
                if not isinstance(error, GeneratorExit):  # a consumer that stopped early
                    self._done(operation, started, error)
        return measured


class MountCollector(Collector):
    """The cache's, the queue's and the FUSE layer's own counters, read in the trio thread at
    each scrape."""

    def __init__(self, cache: BlockCache, queue: WritebackQueue,
                 fuse_requests: Mapping[str, int], token: trio.lowlevel.TrioToken) -> None:
        self.cache, self.queue, self.token = cache, queue, token
        self.fuse_requests = fuse_requests

    def _read(self) -> tuple[dict[str, float], dict[str, int]]:
        c = self.cache
        return ({"hits": c.hits, "misses": c.misses, "evictions": c.evictions,
                 "used": c.used, "cap": c.cap, **self.queue.summary()},
                dict(self.fuse_requests))

    def collect(self) -> Iterator[Metric]:
        try:
            now, fuse_requests = trio.from_thread.run_sync(self._read, trio_token=self.token)
        except trio.RunFinishedError:
            return  # the mount is ending
        requests = CounterMetricFamily("mountfs_fuse_requests", "FUSE requests answered, by "
                                       "operation (read, release, releasedir, fsyncdir and forget "
                                       "not counted)",
                                       labels=("operation",))
        for operation, count in sorted(fuse_requests.items()):
            requests.add_metric((operation,), count)
        yield requests
        for name, help_text in (("hits", "Block reads served from the cache"),
                                ("misses", "Blocks fetched from the store"),
                                ("evictions", "Clean blocks evicted to keep under the cap")):
            yield CounterMetricFamily(f"mountfs_cache_{name}", help_text, value=now[name])
        yield GaugeMetricFamily("mountfs_cache_used_bytes", "Bytes in the cache",
                                value=now["used"])
        yield GaugeMetricFamily("mountfs_cache_cap_bytes", "The cache's cap", value=now["cap"])
        yield GaugeMetricFamily("mountfs_queue_length", "Files queued for upload",
                                value=now["queued"])
        yield GaugeMetricFamily("mountfs_queue_failed", "Queued uploads that failed for good "
                                "or lost their data", value=now["failed"])
        yield GaugeMetricFamily("mountfs_queue_oldest_seconds", "How long the file queued "
                                "longest has waited (0: none)", value=now["oldest_age"])
