"""Where the mount's log goes, and how a line looks: one line per event, with its level.

To a file (`--log-file`, or `<cache-dir>/mountfs.log` for a background mount): `TIME LEVEL
LOGGER: message`. To the journal when stderr is systemd's journal stream (systemd sets
JOURNAL_STREAM to the device and inode of the stream it gave the service): `<N>LOGGER:
message`, the sd-daemon level prefix journald reads as the line's priority (no timestamp: the
journal stamps each line), with no libsystemd needed. Otherwise to stderr like a file. A
message of several lines (a traceback) is folded into one, so that every event is one line
and one journal entry. Secrets are redacted from every line (mountfs/secrets.py).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from mountfs.secrets import RedactSecrets

# sd-daemon(3) priorities by logging level (syslog's numbers)
JOURNAL_LEVELS = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                  logging.CRITICAL: 2}
FOLD = " | "  # what stands for a line break inside one event's line


def journal_stream() -> bool:
    """Whether stderr is the journal stream systemd gave this process (JOURNAL_STREAM names
    its device and inode; a child whose stderr was redirected keeps the variable, not the
    stream, so both are compared)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return device.isdigit() and inode.isdigit() \
        and (st.st_dev, st.st_ino) == (int(device), int(inode))


class OneLine(logging.Formatter):
    """A record, its traceback included, as one line."""

    def format(self, record: logging.LogRecord) -> str:
        return FOLD.join(line for line in super().format(record).splitlines() if line.strip())


class JournalLine(OneLine):
    """One line with the sd-daemon prefix of its level, `<4>` for a warning."""

    def format(self, record: logging.LogRecord) -> str:
        level = JOURNAL_LEVELS.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{level}>{super().format(record)}"


def setup_logging(log_file: Path | None, verbose: int) -> None:
    """The mount process's logging: `-v` INFO, `-vv` DEBUG, else WARNING; a log file and the
    journal get INFO at least (they are read after the fact)."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    handler: logging.Handler
    formatter: logging.Formatter
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # created 0600 before the handler opens it: no moment at the umask's mode
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        handler = logging.FileHandler(log_file)
        os.chmod(log_file, 0o600)  # a log file that existed before
        level = min(level, logging.INFO)
        formatter = OneLine("%(asctime)s %(levelname)s %(name)s: %(message)s")
    elif journal_stream():
        handler = logging.StreamHandler()
        level = min(level, logging.INFO)
        formatter = JournalLine("%(name)s: %(message)s")
    else:
        handler = logging.StreamHandler()
        formatter = OneLine("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    handler.addFilter(RedactSecrets())
    logging.basicConfig(level=level, handlers=[handler])
