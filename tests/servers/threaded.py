"""The HTTP server class of the local servers built on the standard library's."""
from __future__ import annotations

import http.server


class ThreadedServer(http.server.ThreadingHTTPServer):
    """A thread per connection, and the listen backlog a service's front end has: the
    standard library's 5 drops the SYNs of a client opening dozens of connections at once,
    which tries again a second later."""

    daemon_threads = True
    request_queue_size = 128
