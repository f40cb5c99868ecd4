"""Benchmark sizes: the full run of issue 4 and the `--quick` run used while developing."""
from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class Sizes:
    big: int             # (a)/(b): the file written with dd and read back
    small_count: int     # (c): number of small files
    small_size: int      # (c): size of each small file
    listing_count: int   # (d): objects under the listed prefix
    fio_size: int        # (e): the file read at random
    fio_runtime: int     # (e): seconds of fio
    rename_size: int     # (f): the renamed file
    reps: int            # repetitions of each workload per tool
    huge: int = 10 * GiB  # (h): the file written and read back through a small cache
    huge_cache: int = 2 * GiB  # (h): the tools' cache cap (mountfs --cache-size)
    huge_listing_count: int = 100_000  # (i): objects under the large listed prefix

    def describe(self) -> str:
        return (f"(a,b) {human_size(self.big)}; (c) {self.small_count} x "
                f"{human_size(self.small_size)}; (d) {self.listing_count} objects; "
                f"(e) {human_size(self.fio_size)}, {self.fio_runtime} s; "
                f"(f) {human_size(self.rename_size)}; (h) {human_size(self.huge)} through "
                f"a {human_size(self.huge_cache)} cache; (i) {self.huge_listing_count} "
                f"objects; {self.reps} run(s) each")


def human_size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


FULL = Sizes(big=GiB, small_count=1000, small_size=4096, listing_count=10_000,
             fio_size=256 * MiB, fio_runtime=10, rename_size=100 * MiB, reps=3)
QUICK = Sizes(big=64 * MiB, small_count=200, small_size=4096, listing_count=1000,
              fio_size=256 * MiB, fio_runtime=3, rename_size=100 * MiB, reps=1,
              huge=512 * MiB, huge_cache=128 * MiB, huge_listing_count=3000)
