"""Draw the ratio plot: ``python benchmarks/plot.py RESULTS.json OUT.png``.

Runs in any interpreter with matplotlib (the runner picks one); reads only
the results file.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend


def colour(contender: str) -> str:
    if contender.startswith("raw"):
        return "#7f7f7f"
    if contender.startswith("streamcp"):
        return "#1f77b4"
    return "#ff7f0e"


def main(source: str, target: str) -> None:
    with open(source) as handle:
        results = json.load(handle)
    rows = [e for e in results["summary"] if e.get("ratio")]
    labels = [f"{e['scenario']}: {e['contender']}" for e in rows]
    medians = [e["ratio"]["median"] for e in rows]
    low = [e["ratio"]["median"] - e["ratio"]["min"] for e in rows]
    high = [e["ratio"]["max"] - e["ratio"]["median"] for e in rows]
    figure, axes = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.6))
    positions = list(range(len(rows)))[::-1]
    axes.barh(
        positions,
        medians,
        xerr=[low, high],
        color=[colour(e["contender"]) for e in rows],
        capsize=2,
    )
    axes.set_yticks(positions, labels, fontsize=8)
    axes.axvline(1.0, color="black", linewidth=0.8)
    for limit in (0.5, 0.85):
        axes.axvline(limit, color="#2ca02c", linewidth=0.6, linestyle="--")
    for position, entry in zip(positions, rows, strict=True):
        axes.text(
            entry["ratio"]["max"] + 0.01,
            position,
            f"{entry['ratio']['median']:.2f}",
            va="center",
            fontsize=7,
        )
    axes.set_xlabel(
        "events/s relative to the scenario's baseline in the same round "
        "(median, min-max)"
    )
    m = results["machine"]
    axes.set_title(
        f"streamcp benchmarks ({results['settings']['events']:,} events, "
        f"{m['cores']} cores, {m['cpu']})",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(target, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
