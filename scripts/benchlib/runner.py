"""The order of the benchmark: install, start s3rver, then for each workload its repetitions,
each repetition running every tool and then the baseline (interleaved, so that load from the
rest of the machine spreads over all of them); clean everything up whatever happens."""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib.config import FULL, QUICK, Sizes
from benchlib.deps import ensure_dependencies, log, node_options, program
from benchlib.procs import mounted_paths
from benchlib.report import Results, render
from benchlib.store import S3rver, Store, credentials_env
from benchlib.tools import (TOOL_NAMES, MemFs, Tool, ToolContext, checkout_version,
                             make_tools)
from benchlib.workloads import BASELINE, WORKLOADS, Bench, Workload, metrics

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark mountfs against s3fs and rclone mount on a local s3rver "
                    "(workloads (a)-(g) of issue 4, (h)-(i) of issue 16). Needs root (FUSE, "
                    "drop_caches).")
    parser.add_argument("--quick", action="store_true",
                        help="64 MiB instead of 1 GiB, 200 small files, 1,000 listed "
                             "objects, 1 repetition")
    parser.add_argument("--out", type=Path, default=Path("bench-results.md"),
                        help="where to write the Markdown table (default bench-results.md)")
    parser.add_argument("--reps", type=int, help="repetitions per tool (default 3, quick 1)")
    parser.add_argument("--tools", default=",".join(TOOL_NAMES),
                        help=f"comma-separated subset of {','.join(TOOL_NAMES)}")
    parser.add_argument("--workloads", default=",".join(w.key for w in WORKLOADS),
                        help="comma-separated subset of "
                             f"{','.join(w.key for w in WORKLOADS)}")
    parser.add_argument("--timeout", type=float, default=900,
                        help="bound in seconds on any one step (default 900)")
    parser.add_argument("--s3rver", help="s3rver executable (default: PATH, "
                                         "~/.cache/mountfs-bench/node, else npm install)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs, s3rver data)")
    args = parser.parse_args(argv)
    unknown = set(args.tools.split(",")) - set(TOOL_NAMES)
    unknown |= set(args.workloads.split(",")) - {w.key for w in WORKLOADS}
    if unknown:
        parser.error(f"unknown tools or workloads: {', '.join(sorted(unknown))}")
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    return dataclasses.replace(sizes, reps=args.reps) if args.reps else sizes


def first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except OSError:
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "?"


def terminate_on_signals() -> None:
    """SIGTERM and SIGHUP end the run through the `finally` blocks, like Ctrl-C does."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("warning: not root; apt-get and drop_caches will fail")
    terminate_on_signals()
    s3rver = ensure_dependencies(REPO, args.s3rver)
    work = Path(tempfile.mkdtemp(prefix="mountfs-bench."))
    log(f"work directory {work}")
    try:
        report = benchmark(args, sizes_for(args), s3rver, work)
    finally:
        remove_work(work, args.keep)
    print(report, end="")
    args.out.write_text(report)
    log(f"wrote {args.out}")
    return 0


def benchmark(args: argparse.Namespace, sizes: Sizes, s3rver_exe: Path, work: Path) -> str:
    (work / "logs").mkdir()
    server = S3rver(s3rver_exe, work / "s3rver", work / "logs" / "s3rver.log", node_options())
    mounted_tools: list[Tool] = []
    try:
        server.start()
        store = Store(server.url, data_dir=server.data_dir)
        store.create_bucket()
        ctx = ToolContext(work=work, url=server.url, env={**os.environ, **credentials_env()},
                          repo=REPO, timeout=args.timeout, rclone=program("rclone") or "rclone",
                          memfs_size=sizes.fio_size)
        tools = make_tools(ctx, args.tools.split(","))
        ceiling = MemFs(ctx)
        mounted_tools = [*tools, ceiling]
        bench = Bench(sizes=sizes, store=store, work=work, timeout=args.timeout,
                      ceiling=ceiling)
        results = Results()
        chosen = [w for w in WORKLOADS if w.key in args.workloads.split(",")]
        checkout = checkout_version(REPO)  # taken before: others may commit during the run
        versions = [t.version() for t in mounted_tools]
        started = time.monotonic()
        for workload in chosen:
            run_workload(workload, tools, bench, results)
        elapsed = time.monotonic() - started
        header = describe(sizes, versions, server, elapsed)
        notes = footnotes(sizes, bench.caches_dropped)
        if checkout_version(REPO) != checkout:
            notes += ["", f"**The mountfs checkout changed during the run** ({checkout} at "
                      f"the start, {checkout_version(REPO)} at the end): later mounts ran "
                      "newer code."]
        runners = [t.name for t in tools] + [BASELINE]
        chosen_keys = {w.key for w in chosen}
        shown = [m for m in metrics(sizes) if m.workload in chosen_keys]
        return render(results, shown, runners, header, notes)
    finally:
        for tool in mounted_tools:
            tool.force_cleanup()
        server.stop()


def run_workload(workload: Workload, tools: list[Tool], bench: Bench,
                 results: Results) -> None:
    """Repetition 1 of every tool then the baseline, then repetition 2, ..."""
    if workload.prepare is not None:
        log(f"{workload.title}: preparing")
        try:
            workload.prepare(bench)
        except Exception as exc:  # every cell of this workload becomes "error"
            for name in [t.name for t in tools] + [BASELINE]:
                results.error(name, workload.key, f"preparing: {exc}")
            return
    for rep in range(1, bench.sizes.reps + 1):
        for tool in [*tools, None]:
            name = tool.name if tool is not None else BASELINE
            out: dict[str, float] = {}
            start = time.monotonic()
            try:
                if tool is None:
                    workload.baseline(bench, out)
                else:
                    workload.measure(tool, bench, out)
            except Exception as exc:
                message = f"run {rep}: {type(exc).__name__}: {exc}".replace(
                    str(bench.work), "$WORK")
                results.error(name, workload.key, message)
                log(f"{workload.key} {name} {message}")
            results.add(name, out)
            shown = ", ".join(f"{k} {v:.3g}" for k, v in out.items())
            log(f"{workload.key} run {rep} {name}: {shown} ({time.monotonic() - start:.0f} s)")


def describe(sizes: Sizes, tool_versions: list[str], server: S3rver,
             elapsed: float) -> list[str]:
    import boto3

    versions = ", ".join(dict.fromkeys(v for v in tool_versions if v))
    s3rver_version = first_line([str(server.exe), "--version"])
    node = first_line(["node", "--version"])
    fio = first_line(["fio", "--version"])
    return [
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, "
        f"kernel {platform.release()}, Python {platform.python_version()}; "
        f"{elapsed / 60:.1f} min.",
        "",
        f"Server: s3rver {s3rver_version} (node {node}) on 127.0.0.1; baseline: boto3 "
        f"{boto3.__version__}. Tools: {versions}, {fio}.",
        "",
        f"Sizes: {sizes.describe()}.",
    ]


def footnotes(sizes: Sizes, caches_dropped: bool) -> list[str]:
    notes = [
        f"Medians of {sizes.reps} run(s) per tool, interleaved (run 1 of every tool, then "
        "run 2, ...). ↓ lower is better, ↑ higher is better; \"mountfs ÷ X\" is the "
        "plain quotient of the two medians. A cold measurement is a fresh mount (new process, "
        "empty cache dir) after dropping the page cache; warm is a second read in the same "
        "mount. Every runner's (c) writes begin after a write-back and a drop of the caches "
        "too (on ext4 without a journal, files freed just before make every create dearer). "
        "* some runs failed (see Errors); \"error\": every run failed.",
        "",
        "Baseline column: boto3 on the same server in the same run — (a) multipart PUT, (b) "
        "ranged GETs, both 8 MiB parts on 8 threads; (c) PUTs on 8 threads, then a paginated "
        "ListObjectsV2; (d) a paginated ListObjectsV2 of the prefix; (f) CopyObject + "
        "DeleteObject. For (e) it is the ceiling: a minimal pyfuse3 filesystem serving the "
        "file from memory. rclone-full/off: `rclone mount --vfs-cache-mode full/off`; s3fs "
        "and rclone with their default options.",
        "",
        "s3rver 3.7 answers UploadPartCopy with 501 Not Implemented and s3fs 1.90 renames "
        "a file of this size with it, so s3fs's (f) fails on this server.",
    ]
    if not caches_dropped:
        notes += ["", "**The page cache could not be dropped (not root): cold reads may be "
                  "warm.**"]
    return notes


def remove_work(work: Path, keep: bool) -> None:
    still = [p for p in mounted_paths() if p.startswith(str(work) + "/")]
    if still:
        log(f"not removing {work}: still mounted: {', '.join(still)}")
    elif keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
