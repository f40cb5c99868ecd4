"""The systemd unit template (scripts/systemd/mountfs@.service) run as systemd runs it: its
ExecStart with NOTIFY_SOCKET set to a listening datagram socket sends READY=1 once mounted
and STATUS= lines with the queue; its ExecStop uploads what is queued, then unmounts."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Mount, Mounter, is_mounted, run_cli
from kits import Store, environment
from mountfs.notify import notify

pytestmark = pytest.mark.mounted

UNIT = Path(__file__).resolve().parent.parent / "scripts" / "systemd" / "mountfs@.service"


def unit_command(key: str, instance: str, mountpoint: Path) -> list[str]:
    """The unit's `key=` command for `mountfs@<instance>`, as systemd would run it, with
    `/usr/bin/env mountfs` being this tree's mountfs."""
    lines = [line.partition("=")[2] for line in UNIT.read_text().splitlines()
             if line.startswith(f"{key}=")]
    assert len(lines) == 1, key
    text = lines[0].replace("%i", instance).replace("${MOUNTPOINT}", str(mountpoint))
    argv = shlex.split(text)
    assert argv[:2] == ["/usr/bin/env", "mountfs"], argv
    return [sys.executable, "-m", "mountfs", *argv[2:]]


def receive(sock: socket.socket, until: str, timeout: float = 30) -> list[str]:
    """Datagrams until one holds the line `until` (or a line starting so)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            raise AssertionError(f"no {until!r} from the mount; got {got}") from None
        got.append(message)
        if any(line.startswith(until) for line in message.splitlines()):
            return got


def test_unit_notifies_and_stop_drains(mounter: Mounter, store: Store, tmp_path: Path) -> None:
    assert "Type=notify" in UNIT.read_text().splitlines()
    env = {**os.environ, **store.env, "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    run_cli("remote", "add", "work", store.source, *store.options, env=env)
    path = tmp_path / "mnt"
    path.mkdir()
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        start = unit_command("ExecStart", "work", path) + ["--writeback-delay", "60",
                                                             "--whole-file-delay", "60"]
        proc = subprocess.Popen(start, env={**env, "NOTIFY_SOCKET": address},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            got = receive(sock, "READY=1")
            assert is_mounted(path)  # READY=1 comes once the mount is there
            m = Mount("work:", path, Path(), store, pid=proc.pid)
            mounter.mounts.append(m)
            assert any("STATUS=0 uploads queued" in g for g in got), got
            (m.bucket / "queued").write_bytes(b"waits for the stop")
            receive(sock, "STATUS=1 uploads queued")
            assert not (store.stored / "queued").exists()  # the delay is a minute

            stop = subprocess.run(unit_command("ExecStop", "work", path), env=env,
                                  capture_output=True, text=True, timeout=120)
            assert stop.returncode == 0, stop.stderr
            assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
            receive(sock, "STOPPING=1")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    assert not is_mounted(path)
    assert (store.stored / "queued").read_bytes() == b"waits for the stop"


def test_abstract_socket_and_no_systemd() -> None:
    """'@NAME' is the abstract namespace; without NOTIFY_SOCKET nothing is sent."""
    name = f"mountfs-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        with environment({"NOTIFY_SOCKET": "@" + name}):
            assert notify(STATUS="two words", READY=1)
        assert receive(sock, "STATUS=") == ["STATUS=two words\nREADY=1"]
    with environment({"NOTIFY_SOCKET": ""}):
        assert not notify(READY=1)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_verifies(tmp_path: Path) -> None:
    """systemd's own check of the template, instantiated as mountfs@work.service."""
    (tmp_path / UNIT.name).write_text(UNIT.read_text())
    (tmp_path / "mountfs@work.service").symlink_to(UNIT.name)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           str(tmp_path / "mountfs@work.service")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stderr
