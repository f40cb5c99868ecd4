"""What AmigoCloud's replies mean to mountfs: its errors (`{"detail": …}`, DRF's shape) as
mountfs's error classes, its tokens' kinds, its timestamps, the export formats and the names a
project's datasets get as files. No requests here (amigocloud_api.py sends them).
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass

from mountfs.backends.http import status_error
from mountfs.errors import BackendError, TooLarge

# The files each dataset shows, by extension: the export format each is made with.
FORMATS = {"geojson": "GEOJSON", "csv": "CSV", "kml": "KML"}
# Token prefixes (python-amigocloud's README: `R:` read, `C:` a project's token; the rest full).
READ, PROJECT = "R:", "C:"
# The client's limit (python-amigocloud MAX_SIZE_SIMPLE_UPLOAD): a file this size or larger is
# sent in chunks of CHUNK_SIZE (the client's 100 kB is a request per 100 kB; 4 MiB here).
MAX_SIZE_SIMPLE_UPLOAD = 8_000_000
CHUNK_SIZE = 4 * 1024 * 1024
# Job states (GET /me/jobs/ID): the last two are final.
SUCCESS, FAILURE = "SUCCESS", "FAILURE"


def reply_error(status: int, body: bytes, what: str,
                retry_after: float | None = None) -> BackendError | None:
    """The error an HTTP reply stands for (None for a success), its message the service's
    `detail` when it gives one."""
    if status < 300:
        return None
    try:
        detail = json.loads(body).get("detail") or ""
    except (ValueError, AttributeError):
        detail = body[:200].decode("utf-8", "replace").strip()
    message = f"{what}: HTTP {status}" + (f": {detail}" if detail else "")
    if status == 413:
        return TooLarge(message)
    return status_error(status, message, retry_after)


def timestamp_ns(text: str | None) -> int:
    """An ISO 8601 time of the service (`2026-01-02T03:04:05.123456Z`) in ns; 0 if none."""
    if not text:
        return 0
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp() * 1e9)


def file_name(name: str) -> str:
    """A dataset's or project's name as a file name: '/' cannot be in one, NUL neither."""
    return name.replace("/", "\u2215").replace("\0", "") or "_"


def unique_names(items: list[dict]) -> dict[str, dict]:
    """Items (projects or datasets) by the file name each shows as: its name, or, where names
    repeat, its name with its id appended to all but the oldest (lowest id), so a name stays
    the same while the older item lives."""
    out: dict[str, dict] = {}
    for item in sorted(items, key=lambda i: int(i["id"])):
        name = file_name(str(item["name"]))
        out[name if name not in out else f"{name} ({item['id']})"] = item
    return out


@dataclass(frozen=True)
class DatasetFile:
    """A key under `datasets/`: the dataset's file name and the export format."""

    name: str
    ext: str

    @classmethod
    def parse(cls, key: str) -> DatasetFile | None:
        """`datasets/NAME.EXT` for a known EXT, else None."""
        if not key.startswith("datasets/") or "/" in key[len("datasets/"):]:
            return None
        stem, dot, ext = key[len("datasets/"):].rpartition(".")
        return cls(stem, ext) if dot and stem and ext in FORMATS else None

    @property
    def key(self) -> str:
        return f"datasets/{self.name}.{self.ext}"
