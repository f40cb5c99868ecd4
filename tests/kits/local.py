"""Kit of the `local` driver: a directory of the test's own, each subdirectory a bucket."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kits import Kit, Store

TMP = ".mountfs-tmp"  # where the local driver writes objects before renaming them in


class LocalKit(Kit):
    name = "local"
    refused_bucket = ".hidden"  # names starting with '.' are reserved at the top (README)
    lists_metadata = True
    remote = False
    any_key = False

    def make_store(self, request: pytest.FixtureRequest, directory: Path) -> Store:
        (directory / self.bucket).mkdir(parents=True)
        return Store(self, directory, f"local:{directory}")

    def leftovers(self, store: Store) -> list[str]:
        """The driver's temporary files."""
        tmp = Path(str(store.root)) / TMP
        return sorted(os.listdir(tmp)) if tmp.exists() else []


KIT = LocalKit()
