"""Turning runs into figures: medians, spreads, ratios, targets, a table."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]

# The figures of the summary, each from one run (and its baseline).
FIGURES: dict[str, Callable[[Row, Row | None], float | None]] = {
    "events_per_s": lambda r, b: r["events"] / r["wall_s"] if r.get("wall_s") else None,
    "ratio": lambda r, b: (_eps(r) / _eps(b)) if b and _eps(r) and _eps(b) else None,
    "cpu_s_per_million": lambda r, b: (
        r["cpu_s"] / r["events"] * 1e6 if r.get("events") else None
    ),
    "peak_rss_mb": lambda r, b: r["peak_rss_kb"] / 1024,
    "rss_at_first_event_mb": lambda r, b: (
        r["rss_at_first_event_kb"] / 1024 if r.get("rss_at_first_event_kb") else None
    ),
    "rss_ratio": lambda r, b: r["peak_rss_kb"] / b["peak_rss_kb"] if b else None,
    "commit_p50_ms": lambda r, b: r.get("commit_p50_ms"),
    "commit_p99_ms": lambda r, b: r.get("commit_p99_ms"),
    "commits": lambda r, b: r.get("commits"),
    "evalsha_per_commit": lambda r, b: r.get("evalsha_per_commit"),
    "partitions_per_commit_max": lambda r, b: r.get("partitions_per_commit_max"),
}


def _eps(row: Row | None) -> float | None:
    if not row or "error" in row or not row.get("wall_s"):
        return None
    return float(row["events"]) / float(row["wall_s"])


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _index(runs: list[Row]) -> dict[tuple[int, str, str], Row]:
    return {(r["round"], r["scenario"], r["contender"]): r for r in runs}


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per scenario and contender: each figure's median, min and max."""
    runs = results["runs"]
    by_key = _index(runs)
    summary = []
    for scenario in results["scenarios"]:
        base_scenario, base_contender = scenario["baseline"]
        for name in scenario["contenders"]:
            mine = [
                r
                for r in runs
                if r["scenario"] == scenario["name"] and r["contender"] == name
            ]
            entry: dict[str, Any] = {"scenario": scenario["name"], "contender": name}
            not_run = [r["not_run"] for r in mine if "not_run" in r]
            errors = [r["error"] for r in mine if "error" in r]
            good = [r for r in mine if "not_run" not in r and "error" not in r]
            if not_run:
                entry["not_run"] = not_run[0]
            if errors:
                entry["errors"] = errors
            for figure, compute in FIGURES.items():
                values = []
                for row in good:
                    base = by_key.get((row["round"], base_scenario, base_contender))
                    value = compute(row, base if base and "error" not in base else None)
                    if value is not None:
                        values.append(float(value))
                entry[figure] = _stats(values)
            summary.append(entry)
    return summary


def _paired(
    runs: list[Row],
    a: tuple[str, str],
    b: tuple[str, str],
    figure: Callable[[Row], float | None],
) -> dict[str, float] | None:
    """Per round, figure(a) / figure(b); their median and spread."""
    by_key = _index(runs)
    rounds = sorted({r["round"] for r in runs})
    values = []
    for n in rounds:
        left, right = by_key.get((n, *a)), by_key.get((n, *b))
        if not left or not right or "error" in left or "error" in right:
            continue
        x, y = figure(left), figure(right)
        if x and y:
            values.append(x / y)
    return _stats(values)


def _rss(row: Row) -> float | None:
    return float(row["peak_rss_kb"]) if "peak_rss_kb" in row else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the suite, its measured figure, and whether it is met."""
    runs = results["runs"]
    found = []

    def add(
        name: str,
        stats: dict[str, float] | None,
        limit: float,
        at_least: bool,
        unit: str = "x",
    ) -> None:
        if stats is None:
            found.append({"target": name, "met": None, "figure": None})
            return
        value = stats["median"]
        met = value >= limit if at_least else value <= limit
        found.append(
            {
                "target": name,
                "figure": stats,
                "limit": limit,
                "at_least": at_least,
                "unit": unit,
                "met": met,
            }
        )

    add(
        "streamcp handle() / raw loop (events/s)",
        _paired(runs, ("headline", "streamcp-event"), ("headline", "raw"), _eps),
        0.5,
        True,
    )
    add(
        "streamcp handle_batch() / raw loop (events/s)",
        _paired(runs, ("headline", "streamcp-batch"), ("headline", "raw"), _eps),
        0.85,
        True,
    )
    add(
        "streamcp json handler / raw loop with json.loads (events/s)",
        _paired(runs, ("json", "streamcp-json"), ("json", "raw-json"), _eps),
        0.8,
        True,
    )
    add(
        "streamcp replay / live service (events/s)",
        _paired(
            runs, ("replay", "streamcp-replay"), ("headline", "streamcp-event"), _eps
        ),
        0.9,
        True,
    )
    for contender in ("streamcp-event", "streamcp-batch"):
        add(
            f"{contender} peak RSS / raw loop's",
            _paired(runs, ("headline", contender), ("headline", "raw"), _rss),
            1.5,
            False,
        )
        add(
            f"{contender} peak RSS growth, memory-large / memory-small",
            _paired(
                runs, ("memory-large", contender), ("memory-small", contender), _rss
            ),
            1.10,
            False,
        )
    per_commit = [
        float(r["evalsha_per_commit"])
        for r in runs
        if r.get("evalsha_per_commit") is not None
    ]
    stats = _stats(per_commit)
    found.append(
        {
            "target": "EVALSHA calls per commit, every run and partition count",
            "figure": stats,
            "limit": 1.0,
            "at_least": None,
            "unit": "calls",
            "met": None if stats is None else stats["min"] == stats["max"] == 1.0,
        }
    )
    return found


def _fmt(stats: dict[str, float] | None, pattern: str, spread: bool = True) -> str:
    if not stats:
        return "-"
    text = pattern.format(stats["median"])
    if spread and stats["n"] > 1:
        text += (
            " ("
            + pattern.format(stats["min"])
            + "-"
            + pattern.format(stats["max"])
            + ")"
        )
    return text


def table(results: dict[str, Any]) -> str:
    lines = [_header(results), ""]
    columns = (
        "scenario",
        "contender",
        "events/s",
        "ratio",
        "CPU s/M ev",
        "peak RSS MB",
        "commit p50/p99 ms",
        "EVALSHA/commit",
    )
    widths = (16, 28, 30, 20, 11, 12, 18, 14)
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for entry in results["summary"]:
        if "not_run" in entry and not entry["events_per_s"]:
            cells = [
                entry["scenario"],
                entry["contender"],
                f"not run: {entry['not_run']}",
            ]
            lines.append(
                "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False))
            )
            continue
        commit = "-"
        if entry["commit_p50_ms"]:
            commit = (
                _fmt(entry["commit_p50_ms"], "{:.2f}", False)
                + " / "
                + _fmt(entry["commit_p99_ms"], "{:.2f}", False)
            )
        cells = [
            entry["scenario"],
            entry["contender"],
            _fmt(entry["events_per_s"], "{:,.0f}"),
            _fmt(entry["ratio"], "{:.2f}"),
            _fmt(entry["cpu_s_per_million"], "{:.2f}", False),
            _fmt(entry["peak_rss_mb"], "{:.0f}", False),
            commit,
            _fmt(entry["evalsha_per_commit"], "{:.2f}", False),
        ]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
        for error in entry.get("errors", []):
            lines.append(f"    failed run: {error}")
    lines += ["", "Targets (medians of per-round ratios):"]
    for target in results["targets"]:
        lines.append("  " + _target_line(target))
    return "\n".join(lines)


def _target_line(target: dict[str, Any]) -> str:
    if target["met"] is None:
        return f"[ n/a ] {target['target']}: not measured"
    mark = "met" if target["met"] else "MISSED"
    sign = {True: ">=", False: "<=", None: "=="}[target["at_least"]]
    return (
        f"[{mark:^6}] {target['target']}: {_fmt(target['figure'], '{:.2f}')} "
        f"(target {sign} {target['limit']})"
    )


def _header(results: dict[str, Any]) -> str:
    m = results["machine"]
    s = results["settings"]
    v = results["versions"]
    return "\n".join(
        [
            f"streamcp benchmarks: {results['command']}",
            f"machine: {m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB, "
            f"{m['os']}, "
            f"Python {m['python']}, load average at end {m['load_average_at_end']}",
            f"services: kafka {results['services']['kafka']}; redis "
            f"{results['services']['redis']} {m['redis_server']}",
            f"data: {s['events']:,} events of {s['size']} bytes per data set "
            f"(memory scenario: {s['memory_events']:,}), {s['rounds']} round(s), "
            f"librdkafka settings {s['librdkafka']}",
            "versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)),
            "events/s and ratio: median (min-max) over rounds; ratio is to the "
            "scenario's baseline in the same round",
        ]
    )


def markdown(results: dict[str, Any], plot_name: str | None = None) -> str:
    """The results as a Markdown page (what benchmarks/RESULTS.md keeps)."""
    m, s, v = results["machine"], results["settings"], results["versions"]
    lines = [
        "# Benchmark results",
        "",
        "Written by the benchmark runner; see docs/benchmarks.md for what each "
        "figure means.",
        "",
        f"- command: `{results['command']}`",
        f"- started: {results['started_at']}, took {results['duration_s']:.0f} s",
        f"- machine: {m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB memory, "
        f"{m['os']}, Python {m['python']}; load average at the end "
        f"{m['load_average_at_end']}",
        f"- broker: {results['services']['kafka']}; Redis: "
        f"{results['services']['redis']}, version {m['redis_server']}",
        f"- data: {s['events']:,} events of {s['size']} bytes per data set "
        f"(memory-large: {s['memory_events']:,}), {s['rounds']} interleaved "
        f"round(s); librdkafka settings `{s['librdkafka']}`",
        "- versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)),
        "",
        "Medians over rounds, with (min-max); the ratio is to the scenario's "
        "baseline measured in the same round.",
        "",
        "| scenario | contender | events/s | ratio | CPU s per M events | "
        "peak RSS MB | commit p50 / p99 ms | EVALSHA per commit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in results["summary"]:
        if "not_run" in entry and not entry["events_per_s"]:
            lines.append(
                f"| {entry['scenario']} | {entry['contender']} | not run: "
                f"{entry['not_run']} | | | | | |"
            )
            continue
        commit = "-"
        if entry["commit_p50_ms"]:
            commit = (
                _fmt(entry["commit_p50_ms"], "{:.2f}", False)
                + " / "
                + _fmt(entry["commit_p99_ms"], "{:.2f}", False)
            )
        cells = [
            entry["scenario"],
            entry["contender"],
            _fmt(entry["events_per_s"], "{:,.0f}"),
            _fmt(entry["ratio"], "{:.2f}"),
            _fmt(entry["cpu_s_per_million"], "{:.2f}", False),
            _fmt(entry["peak_rss_mb"], "{:.0f}", False),
            commit,
            _fmt(entry["evalsha_per_commit"], "{:.2f}", False),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        for error in entry.get("errors", []):
            lines.append(f"| | failed run: {error} | | | | | | |")
    lines += ["", "## Targets", ""]
    lines += [f"- {_target_line(t)}" for t in results["targets"]]
    if plot_name:
        lines += ["", f"![ratios to the baseline]({plot_name})"]
    return "\n".join(lines) + "\n"
