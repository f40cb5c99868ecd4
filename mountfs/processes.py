"""Facts about processes, read from /proc: used by the CLI (is the mount still running?) and by
drivers (are the temporary files of a process orphans?)."""
from __future__ import annotations

from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
