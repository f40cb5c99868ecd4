"""systemd's notify protocol (sd_notify(3)): READY=1 once mounted, STATUS= lines with the
upload queue while it runs, STOPPING=1 when it ends; nothing at all without NOTIFY_SOCKET.

The protocol is one datagram of `KEY=VALUE` lines to the AF_UNIX socket NOTIFY_SOCKET names
(a leading '@' is the abstract namespace), so it is written here in a few lines: the
`sdnotify` package does the same but has had no release since 2017, and systemd-python
needs libsystemd's headers to build.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import trio

from mountfs.sizes import human

log = logging.getLogger(__name__)

SOCKET_ENV = "NOTIFY_SOCKET"
STATUS_EVERY = 1.0  # seconds between looks at the queue; a line is sent only when it changed


def notify(**fields: object) -> bool:
    """Send `KEY=VALUE` lines to systemd; False when not run under it (or it is gone)."""
    address = os.environ.get(SOCKET_ENV)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "\n".join(f"{key}={value}" for key, value in fields.items())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:  # systemd gone or the socket not ours: the mount goes on
        log.debug("sd_notify to %s: %s", address, exc)
        return False
    return True


def status_line(snapshot: dict[str, Any]) -> str:
    """What `systemctl status` shows: the queue and the cache, from the status document."""
    cache = snapshot["cache"]
    line = (f"{snapshot['queued']} uploads queued ({human(cache['dirty'])} not uploaded), "
            f"cache {human(cache['used'])} of {human(cache['cap'])}")
    failed = sum(e["state"] == "failed" for e in snapshot["queue"])
    return line + (f", {failed} failing" if failed else "")


async def report(snapshot: Callable[[], dict[str, Any]]) -> None:
    """READY=1 now (the mount is up), then a STATUS= line whenever the queue or cache moved."""
    if not notify(READY=1, STATUS=status_line(snapshot()), MAINPID=os.getpid()):
        return
    shown = ""
    while True:
        line = status_line(snapshot())
        if line != shown:
            notify(STATUS=line)
            shown = line
        await trio.sleep(STATUS_EVERY)


def stopping(snapshot: dict[str, Any]) -> None:
    notify(STOPPING=1, STATUS=f"stopping: uploading {snapshot['queued']} queued files first")
