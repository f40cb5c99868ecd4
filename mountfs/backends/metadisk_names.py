"""The names of a Metadisk bucket: what a filesystem needs over a content-addressed store.

The bridge keeps one entry per (bucket, content hash) with one filename: uploading the same
bytes under a second name renames the entry (upsert), and a delete is by hash. So the mount
keeps the bucket's names in a small JSON object of its own in the bucket, the name index
(`INDEX_NAME`, hidden from listings): name -> (hash, size, mtime). Two names may share a
hash; a hash is deleted only when no name uses it any more; a rename or a same-bucket copy
changes the index only, never the content. Entries that no index names (uploaded by other
clients) are shown by their filename.

The index is itself content-addressed, so a new version is a new entry: a writer uploads
its version, then deletes the versions it read. Two mounts updating one bucket at the same
moment leave two versions; readers merge them (the union of their names, the later of two
claims on one name), so names added concurrently both stay. A name whose hash is gone from
the bucket is not shown, whatever an index says.

Pure functions: the backend (metadisk_backend.py) does the requests.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

INDEX_NAME = ".mountfs-names"


@dataclass(frozen=True)
class Named:
    hash: str
    size: int
    mtime_ns: int


Names = dict[str, Named]


def encode(names: Names) -> bytes:
    return json.dumps({"names": {n: asdict(v) for n, v in sorted(names.items())}},
                      separators=(",", ":")).encode()


def decode(data: bytes) -> Names:
    """An index's names; an index that cannot be read holds none (never a crash)."""
    try:
        raw = json.loads(data)["names"]
        return {str(name): Named(str(v["hash"]), int(v["size"]), int(v["mtime_ns"]))
                for name, v in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def merge(indexes: Iterable[Names]) -> Names:
    """One view of several versions of the index: every name, the latest claim on each."""
    merged: Names = {}
    for names in indexes:
        for name, named in names.items():
            if name not in merged or named.mtime_ns > merged[name].mtime_ns:
                merged[name] = named
    return merged


def visible(entries: list[dict[str, Any]], indexed: Names, foreign_mtime_ns: int) -> Names:
    """The bucket's names: those of the index whose content is in the bucket, then the
    entries no name uses, by their filename (`foreign_mtime_ns` as their mtime: the bridge
    keeps none)."""
    present = {e["hash"]: e for e in entries if e.get("filename") != INDEX_NAME}
    names = {n: v for n, v in indexed.items() if v.hash in present}
    used = {v.hash for v in names.values()}
    for file_hash, entry in present.items():
        name = entry.get("filename") or file_hash
        if file_hash not in used and name not in names:
            names[name] = Named(file_hash, int(entry.get("size", 0)), foreign_mtime_ns)
    return names


def index_hashes(entries: list[dict[str, Any]]) -> list[str]:
    """The versions of the index in the bucket."""
    return [e["hash"] for e in entries if e.get("filename") == INDEX_NAME]


def freed(before: Names, after: Names) -> set[str]:
    """The hashes no name uses any more."""
    return {v.hash for v in before.values()} - {v.hash for v in after.values()}
