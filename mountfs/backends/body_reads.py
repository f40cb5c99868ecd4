"""A streamed reply's body handed to a sink (the cache's block files) as it arrives: the read
loop of every ranged GET into the cache (S3's `Downloads`, DCSS's `read_into`), in the worker
thread that made the request.

A plain socket is read blocking, under a read timeout the kernel keeps (SO_RCVTIMEO), not
Python's: a socket with a Python timeout polls before every recv, two system calls and two
hand-offs of the GIL for each ~128 KiB read. 256 MiB read cold through a fresh mount from
s3rver, the mount's system calls counted by `strace -c -f` (2026-12-05): poll 1,995 -> 57,
futex 55,319 -> 33,067 (the GIL handed over less often), recvfrom the same. 1 GiB read cold,
paired rounds: the mount's CPU per GiB median 0.99 s against 1.09 in one set of 6, 1.10
against 1.07 in the next (s3rver's own CPU per GiB varied 1.0-2.1 s in it: the noise of this
2-core VM). A read that times out gets no more bytes (the kernel's EAGAIN, which Python's
socket file reads as no data), and urllib3 reports the body cut short (IncompleteRead, an
HTTPError), as it reports Python's timeout. A TLS socket keeps Python's timeout
(`kernel_read_timeout`).
"""
from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import urllib3

from cache.storage import Sink

# Bytes read from the socket and handed to the sink at a time: small enough to be copied into
# the block file while still in the CPU's cache (through the mount, 512 MiB, load 8-11: 64 KiB
# to 512 KiB pieces 1.14-1.50 s of CPU per GiB, 1 MiB pieces 1.52-2.16).
PIECE = 256 * 1024


def stream_into(reply: urllib3.BaseHTTPResponse, sink: Sink) -> int:
    """Hand the body of `reply` (requested with stream=True) to `sink(position, data)` a
    PIECE at a time; the bytes handed over. Raises urllib3's HTTPError where the transport
    fails: reset, cut short, nothing for the read timeout."""
    done = 0
    with kernel_read_timeout(reply):
        for piece in reply.stream(PIECE, decode_content=False):
            sink(done, piece)
            done += len(piece)
    return done


@contextmanager
def kernel_read_timeout(reply: urllib3.BaseHTTPResponse) -> Iterator[None]:
    """The socket of `reply` blocking, with its Python read timeout moved into the kernel,
    while the body is read; as it was afterwards, for the connection's next request. Only
    for a plain socket's body of known length: a chunked body's framing would read the
    timeout's "no data" as a malformed chunk, and a TLS socket in blocking mode retries a
    read that wants more data for as long as it gets none (CPython's ssl module: a body
    stalled for 8 s failed after 8 s under a kernel timeout of 1 s), so TLS keeps Python's
    timeout."""
    sock = getattr(reply.connection, "sock", None)
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        yield
        return
    timeout = sock.gettimeout()
    if timeout is None or reply.length_remaining is None:
        yield
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(timeout))
    sock.settimeout(None)
    try:
        yield
    finally:
        if sock.fileno() != -1:  # not closed by urllib3 after a failure
            sock.settimeout(timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(0))


def timeval(seconds: float) -> bytes:
    """A struct timeval of `seconds`, as setsockopt takes it."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
