"""Results of the runs, and the Markdown report: medians, ratios mountfs / each anchor, the
targets of issue 4 checked against them, and every value run by run."""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from benchlib.workloads import BASELINE, Metric

SUBJECT = "mountfs"


class Results:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.errors: dict[tuple[str, str], list[str]] = defaultdict(list)

    def add(self, runner: str, out: dict[str, float]) -> None:
        for key, value in out.items():
            self.values[(runner, key)].append(value)

    def error(self, runner: str, workload: str, message: str) -> None:
        self.errors[(runner, workload)].append(message)

    def median(self, runner: str, metric: str) -> float | None:
        values = self.values.get((runner, metric))
        return statistics.median(values) if values else None


def number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell(results: Results, runner: str, metric: Metric) -> str:
    value = results.median(runner, metric.key)
    failed = bool(results.errors.get((runner, metric.workload)))
    if value is None:
        return "error" if failed else "—"
    return number(value) + ("*" if failed else "")


def ratio(results: Results, metric: Metric, anchor: str) -> str:
    mine, theirs = results.median(SUBJECT, metric.key), results.median(anchor, metric.key)
    if mine is None or theirs is None or theirs == 0:
        return ""
    return f"{mine / theirs:.2f}×"


def metric_table(metrics: list[Metric], runners: list[str],
                 cells: Callable[[Metric, list[str]], list[str] | None]) -> str:
    """A Markdown table of a row per metric, its workload named on its first row only: then
    `cells(metric, anchors)` (the metric's label, a cell per runner, a quotient per anchor);
    None leaves the metric out."""
    anchors = [r for r in runners if r != SUBJECT]
    head = ["Workload", "Metric", *runners, *(f"{SUBJECT} ÷ {a}" for a in anchors)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    previous = ""
    for m in metrics:
        row = cells(m, anchors)
        if row is None:
            continue
        lines.append("| " + " | ".join([m.row if m.row != previous else "", *row]) + " |")
        previous = m.row
    return "\n".join(lines)


def table(results: Results, metrics: list[Metric], runners: list[str]) -> str:
    def medians(m: Metric, anchors: list[str]) -> list[str]:
        arrow = "↑" if m.higher_is_better else "↓"
        return [f"{m.label} {arrow}", *(cell(results, r, m) for r in runners),
                *(ratio(results, m, a) for a in anchors)]

    return metric_table(metrics, runners, medians)


def run_by_run(results: Results, metrics: list[Metric], runners: list[str]) -> str:
    """Each metric's values in run order, and mountfs's quotient against each anchor run by
    run (run n of every tool ran before run n + 1 of any): the spread a median hides. A tool
    with a failed run has fewer values, which no longer pair: its quotients are left out."""
    def runs(m: Metric, anchors: list[str]) -> list[str] | None:
        values = {r: results.values.get((r, m.key), []) for r in runners}
        if not any(values.values()):
            return None
        mine = values[SUBJECT]
        return [m.label, *(", ".join(map(number, values[r])) or "—" for r in runners),
                *(", ".join(f"{a / b:.2f}" for a, b in zip(mine, values[anchor]) if b)
                  if mine and len(mine) == len(values[anchor]) else "" for anchor in anchors)]

    return metric_table(metrics, runners, runs)


@dataclass(frozen=True)
class Target:
    text: str
    measure: Callable[[Results], float | None]   # the quantity compared with `bound`
    bound: float
    at_least: bool                               # True: measure >= bound passes
    unit: str = "×"


def quotient(top: tuple[str, str], bottom: tuple[str, str]) -> Callable[[Results], float | None]:
    def measure(results: Results) -> float | None:
        a, b = results.median(*top), results.median(*bottom)
        return None if a is None or b is None or b == 0 else a / b
    return measure


def peak_memory(results: Results) -> float | None:
    values = [v for v in (results.median(SUBJECT, "g.rss"), results.median(SUBJECT, "g.hwm"))
              if v is not None]
    return max(values) if values else None


M, RF, BL = SUBJECT, "rclone-full", BASELINE
TARGETS = [
    Target("(a) close: speed ≥ 1.2× rclone full (rclone time ÷ mountfs time)",
           quotient((RF, "a.close"), (M, "a.close")), 1.2, True),
    Target("(a) on the server: ≤ 1.2× the backend's multipart PUT time",
           quotient((M, "a.server"), (BL, "a.server")), 1.2, False),
    Target("(b) cold: ≥ 0.9× the backend's GET throughput",
           quotient((M, "b.cold"), (BL, "b.cold")), 0.9, True),
    Target("(b) warm: ≥ 1.5× rclone full's throughput",
           quotient((M, "b.warm"), (RF, "b.warm")), 1.5, True),
    Target("(c) last close: speed ≥ 2× rclone full (rclone time ÷ mountfs time)",
           quotient((RF, "c.close"), (M, "c.close")), 2.0, True),
    Target("(c) all on the server: ≤ 1.2× the backend's time for the PUTs",
           quotient((M, "c.server"), (BL, "c.server")), 1.2, False),
    Target("(d) ls -l: ≤ 1.2× the backend's listing time",
           quotient((M, "d.ls"), (BL, "d.ls")), 1.2, False),
    Target("(e) IOPS: ≥ 0.8× the pyfuse3 ceiling",
           quotient((M, "e.iops"), (BL, "e.iops")), 0.8, True),
    Target("(f) mv: ≤ 1.2× the backend's CopyObject + DeleteObject time",
           quotient((M, "f.mv"), (BL, "f.mv")), 1.2, False),
    Target("(g) peak memory ≤ 150 MiB", peak_memory, 150, False, " MiB"),
]


def targets(results: Results) -> str:
    lines = ["| Target | Measured | Verdict |", "|---|---:|---|"]
    for t in TARGETS:
        value = t.measure(results)
        if value is None:
            shown, verdict = "n/a", "not measured"
        else:
            shown = f"{value:.2f}{t.unit}" if t.unit == "×" else f"{value:.0f}{t.unit}"
            ok = value >= t.bound if t.at_least else value <= t.bound
            verdict = "met" if ok else "**missed**"
        lines.append(f"| {t.text} | {shown} | {verdict} |")
    return "\n".join(lines)


def error_list(results: Results) -> str:
    lines = []
    for (runner, workload), messages in sorted(results.errors.items()):
        for message in messages:
            lines.append(f"- {runner}, workload {workload}: {message}")
    return "\n".join(lines)


def render(results: Results, metrics: list[Metric], runners: list[str], header: list[str],
           notes: list[str]) -> str:
    parts = ["# mountfs benchmark", "", *header, "", table(results, metrics, runners), "",
             *notes, "", "## Targets of issue 4", "", targets(results), "", "## Run by run", "",
             run_by_run(results, metrics, runners)]
    errors = error_list(results)
    if errors:
        parts += ["", "## Errors", "", errors]
    return "\n".join(parts) + "\n"
