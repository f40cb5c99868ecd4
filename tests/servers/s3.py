"""A real S3-compatible server for the tests: moto's standalone server, as its own process.

`python -m tests.servers.s3 --port N` runs it in the foreground; `S3Server` starts it on a free
port of 127.0.0.1 for a fixture and stops it afterwards. Also what every local server of the
tests uses to run as a process: a free port, starting one and waiting until it answers,
stopping it.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Protocol, TypeVar

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(port: int) -> list[str]:
    exe = shutil.which("moto_server")
    if exe is None:
        raise RuntimeError("moto_server not found: pip install 'moto[server]'")
    return [exe, "-H", "127.0.0.1", "-p", str(port)]


class S3Server:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> S3Server:
        self.proc = start_server(command(self.port), self.url + "/moto-api/", "moto_server",
                                 timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, **CREDENTIALS})
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


S = TypeVar("S", bound="Startable")


class Startable(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> None: ...


@contextlib.contextmanager
def running(service: S) -> Iterator[S]:
    """`service` started for a fixture, and stopped after it."""
    service.start()
    try:
        yield service
    finally:
        service.stop()


def answers(url: str) -> bool:
    """Whether a server answers at `url`, whatever its answer (a 401 or 403 too)."""
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def start_server(command: list[str], url: str, what: str, timeout: float = 30,
                 **popen: Any) -> subprocess.Popen[bytes]:
    """Start a server process and wait until it answers at `url`; RuntimeError naming `what`
    if it exits first or does not answer within `timeout` seconds."""
    proc: subprocess.Popen[bytes] = subprocess.Popen(command, **popen)
    deadline = time.monotonic() + timeout
    while not answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{what} did not start on {url} (see stderr)")
        time.sleep(0.1)
    return proc


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate a server process, killing it if it does not go within 10 s."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    print(f"S3 endpoint http://127.0.0.1:{args.port}  credentials: "
          + " ".join(f"{k}={v}" for k, v in CREDENTIALS.items()), flush=True)
    os.execvpe(command(args.port)[0], command(args.port), {**os.environ, **CREDENTIALS})


if __name__ == "__main__":
    sys.exit(main())
