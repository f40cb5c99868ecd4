"""Hostile and odd names put into the store behind the mount's back (boto3 where the store is
S3, behind the s3 and dcss drivers; on local, only what a directory can hold). The mount stays
up, never shows an entry `.`, `..` or one holding `/`, reading everything below it touches only
paths below it, and each name is shown or hidden as README SEMANTICS "Names" says, the hidden
ones logged once.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conftest import BACKENDS, Mount, Mounter, is_mounted
from kits import Store

pytestmark = pytest.mark.backends(*BACKENDS)

LONG = "x" * 256
LONG_DIR = "y" * 300
# Keys S3 takes (any UTF-8) that cannot be file names: (key, hidden name, where it is listed).
S3_HIDDEN: list[tuple[str, str, str]] = [
    ("..", "..", ""), ("../escape", "..", ""), (".", ".", ""), ("./dot", ".", ""),
    ("/lead", "", ""),  # a leading '/': an empty first component
    ("dd//x", "", "dd/"),  # an empty component inside
    ("dd/..", "..", "dd/"), ("dd/../up", "..", "dd/"), ("dd/.", ".", "dd/"),
    (LONG, LONG, ""), (f"{LONG_DIR}/f", LONG_DIR, ""),
    # NUL: S3 takes it, no file name holds it (the kernel would cut the name there: `..`).
    ("..\0evil", "..\0evil", ""), ("nul\0", "nul\0", ""),
]
# Names that are odd but legal file names: shown as they are (README SEMANTICS). moto cannot
# store a key with a newline (its PUT answers 404), so that one is tried on local only.
NEWLINE = "ctl\nnewline"
CONTROL = ["ctl\x01one", "tab\there", "uni-\u00e9\u4e2d"]


def populate(store: Store) -> tuple[set[str], dict[str, bytes], list[tuple[str, str]]]:
    """Fill the store; returns the names the bucket should show, every file the mount should
    show (path below the bucket -> contents), and the hidden (name, where) that must be logged."""
    control = CONTROL if store.kit.any_key else [*CONTROL, NEWLINE]
    if not store.kit.control_characters:
        control = [name for name in control if name.isprintable()]
    files: dict[str, bytes] = {"plain": b"plain", "dd/ok": b"ok"}
    files.update({name: name.encode() for name in control})
    hidden: list[tuple[str, str]] = []
    if store.kit.any_key:
        put = store.stored.put_key  # type: ignore[attr-defined]  # an S3Path
        for key in files:
            put(key, files[key])
        for key, name, where in S3_HIDDEN:
            put(key, b"hostile " + key.encode())
            hidden.append((name, where))
        # A file and a directory of one name: the directory is shown.
        put("both", b"the file")
        put("both/inner", b"inner")
        files["both/inner"] = b"inner"
        # A directory marker with data: an empty directory; its data is not shown.
        put("marker/", b"data in a marker")
        top = {"plain", "dd", "both", "marker", *control}
    else:
        bucket = Path(str(store.stored))
        (bucket / "dd").mkdir()
        for key, data in files.items():
            (bucket / key).write_bytes(data)
        # Not UTF-8: cannot be a key (keys are UTF-8), so it is hidden.
        bad = os.fsencode(bucket) + b"/bad-\xff-utf8"
        with open(bad, "wb") as f:
            f.write(b"not utf-8")
        hidden.append((os.fsdecode(b"bad-\xff-utf8"), ""))
        if not store.kit.store_symlinks:
            # Symlinks out of the store are not objects: never followed, never shown. (Where
            # the store's symlinks are the service's own, they are symlinks on the mount.)
            os.symlink("/", bucket / "to-root")
            os.symlink("..", bucket / "dd" / "up")
        top = {"plain", "dd", *control}
    return top, files, hidden


def log_text(m: Mount) -> str:
    return (m.cache / "mountfs.log").read_text(errors="replace")


def walk_all(root: Path) -> dict[str, bytes]:
    """Every file below `root` (read in full) by path relative to it, checking that each entry
    is a proper name and stays below `root`."""
    seen: dict[str, bytes] = {}
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            assert name not in (".", "..") and "/" not in name and "\0" not in name, name
            path = os.path.join(dirpath, name)
            assert os.path.realpath(path).startswith(real_root + os.sep), path
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                seen[os.path.relpath(path, root)] = f.read()
    return seen


def test_hostile_names_are_hidden_or_shown_as_documented(mounter: Mounter,
                                                         store: Store) -> None:
    top, files, hidden = populate(store)
    # A short TTL: the second walk lists everything again, and must not log again.
    m = mounter.mount(store, "--metadata-ttl", "0.1")
    for _ in range(2):
        assert set(os.listdir(m.bucket)) == top
        assert walk_all(m.bucket) == files
        time.sleep(0.2)
    if store.kit.any_key:
        assert os.listdir(m.bucket / "marker") == []
        assert os.path.isdir(m.bucket / "both")
        # Looked up by name, not listed: the kernel resolves `..` (to the mount's root); the
        # objects `..` and `../escape` are not reachable as paths.
        assert os.stat(m.bucket / "..").st_ino == os.stat(m.path).st_ino
        assert not os.path.exists(m.bucket / ".." / "escape")
        assert not os.path.exists(m.bucket / "dd" / ".." / "up")
    for name in top - {"dd", "both", "marker"}:  # the files, read by name
        assert (m.bucket / name).read_bytes() == files[name]
    log = log_text(m)
    for name, where in hidden:
        line = f"hiding {name!r} under {store.kit.bucket_prefix + where!r}"
        assert log.count(line) == 1, (line, log.count(line))
    if store.kit.any_key:
        assert log.count(f"'both' in {store.bucket} is both a file and a directory") == 1
    assert is_mounted(m.path) and m.status()["pid"] == m.pid
    mounter.umount(m)


def kinds_by_lookup(m: Mount, names: list[str]) -> dict[str, str]:
    return {name: "dir" if (m.bucket / name).is_dir() else "file" for name in names}


@pytest.mark.parametrize("ttl", ["0", "5"])
def test_lookup_agrees_with_listing_on_file_beside_directory(mounter: Mounter, store: Store,
                                                             ttl: str) -> None:
    # A lookup of a never-listed directory (TTL 5: the bucket was not listed yet), or of any
    # directory with TTL 0, asks the server about the one name instead of listing; the answer
    # must be the listing's: a key `both` beside keys `both/...` is the directory.
    names = ["both", "plain", "dir"]
    if store.kit.any_key:
        put = store.stored.put_key  # type: ignore[attr-defined]  # an S3Path
        put("both", b"the file")
        put("both/inner", b"inner")
        put("plain", b"plain")
        put("dir/x", b"x")
        expected = {"both": "dir", "plain": "file", "dir": "dir"}
    else:  # a directory cannot hold a file and a directory of one name: the plain cases
        (store.stored / "both").mkdir()
        (store.stored / "both" / "inner").write_bytes(b"inner")
        (store.stored / "plain").write_bytes(b"plain")
        (store.stored / "dir").mkdir()
        (store.stored / "dir" / "x").write_bytes(b"x")
        expected = {"both": "dir", "plain": "file", "dir": "dir"}
    m = mounter.mount(store, "--metadata-ttl", ttl)
    assert kinds_by_lookup(m, names) == expected  # looked up by name first
    assert (m.bucket / "both" / "inner").read_bytes() == b"inner"
    listed = {e.name: "dir" if e.is_dir() else "file" for e in os.scandir(m.bucket)}
    assert listed == expected
    assert kinds_by_lookup(m, names) == expected  # and again after the listing
    if store.kit.any_key:
        assert log_text(m).count(f"'both' in {store.bucket} is both a file and a directory") \
            == 1
    mounter.umount(m)
