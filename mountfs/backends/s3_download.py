"""The S3 fast path's ranged GETs into a sink (the cache's block files): signed by the CRT as
every fast-path request, sent and read by urllib3 in a worker thread.

Why not the CRT's connections (`Wire._exchange`): they hand Python the body in ~16 KiB
chunks, each a callback that takes the GIL from the CRT's thread. urllib3 reads the body in
pieces (body_reads.py) with the GIL released, in the thread that writes them to the sink.
Measured against s3rver (8 ranged GETs of 8 MiB in flight into block files, fetch only, one
run, 2026-12-04, load ~10 on 2 cores): the CRT's connections 1.6-1.7 s of CPU per GiB at
130-170 MiB/s, urllib3 0.7 s/GiB at 230-370 MiB/s.

The same semantics as the rest of the fast path: the request's URL from the bucket's `Base`
(path or virtual addressing, endpoint, port), its SigV4 signature from `Wire.signed` (the one
botocore session's credentials, session token, the bucket's region), TLS verified against
AWS_CA_BUNDLE where set, the connect and read timeouts of every driver, no retries here (the
driver puts each try under the one retry policy), an error reply raised as botocore's
`ClientError` (`error_from`; mapped to mountfs errors in one place, `S3Backend.translate`),
a transport failure or a body cut short as TemporaryFailure. A GET through a proxy
(HTTP_PROXY / HTTPS_PROXY, less NO_PROXY) stays on the CRT's connections, which take it.
"""
from __future__ import annotations

import urllib3

from mountfs.backends.base import Sink
from mountfs.backends.body_reads import stream_into
from mountfs.backends.http import HttpPool, give_back
from mountfs.backends.s3_wire import Base, Reply, Wire, error_from, proxy_for
from mountfs.errors import TemporaryFailure


class Downloads:
    """Ranged GETs into sinks, at most the Wire's `limiter` of requests at once."""

    def __init__(self, wire: Wire, connections: int, ca_bundle: str | None) -> None:
        self.wire = wire
        self.http = HttpPool(connections, ca_certs=ca_bundle)

    def takes(self, base: Base) -> bool:
        """Whether `base`'s GETs go here: those through a proxy stay on the Wire."""
        return proxy_for(base) is None

    async def get(self, operation: str, base: Base, key: str, headers: dict[str, str],
                  sink: Sink) -> Reply:
        """One GET whose 2xx body goes to `sink(position, data)` as it arrives; its reply
        (headers, bytes received). The sink is not called once this returns."""
        request = await self.wire.signed(operation, "GET", base, key, headers=headers)
        url = f"{base.scheme}://{base.host_header}{request.path}"
        sent = dict(request.headers)
        async with self.wire.limiter:
            # Not abandoned on cancellation: the thread ends (its read timeout bounds it)
            # before the caller may close the sink's files.
            return await self.http.run(lambda: self._once(operation, url, sent, sink))

    def _once(self, operation: str, url: str, headers: dict[str, str], sink: Sink) -> Reply:
        """Blocking: the GET and the reading of its body, one try."""
        reply = self.http.request("GET", url, headers, stream=True)
        try:
            raw = list(reply.headers.items())
            fields = {name.lower(): value for name, value in raw}
            if not 200 <= reply.status < 300:
                raise error_from(Reply(reply.status, fields, reply.read(), raw), operation)
            return Reply(reply.status, fields, b"", raw, stream_into(reply, sink))
        except urllib3.exceptions.HTTPError as exc:  # reset, timed out, cut short
            raise TemporaryFailure(f"{operation} {urllib3.util.parse_url(url).netloc}: "
                                   f"{exc}") from exc
        finally:
            give_back(reply)

    def close(self) -> None:
        self.http.close()
