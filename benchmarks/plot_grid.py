"""The causal-LM loss grid in one figure per task: exact match vs sparsity for every loss, one-shot (dashed) and
staged (solid), each run's value as a fraction of its own teacher (records against different teachers share one
axis that way), from the records in benchmarks/results:

    python benchmarks/plot_grid.py --out benchmarks/results/grid_causal_lm.png    # + .json beside it

Why a script and not the pipeline's report: the grid grew over several device sessions and teachers (gsm: one
teacher per seed plus a re-trained one); each record's own plot shows one of those pieces.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sparselm.pipeline.report import COLORS, LOSS_LABELS, MARKERS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# task -> [(record stem, schedule)]: schedule "staged" (each sparsity grown from the previous stage) or "one-shot"
GRID = {
    "reasoning": [("replication_reasoning", "one-shot"), ("replication_reasoning_staged", "staged")],
    "gsm": [("replication_gsm_oneshot", "one-shot"), ("replication_gsm_oneshot50", "one-shot"),
            ("replication_gsm", "staged"),
            ("replication_gsm_seed1", "staged"), ("replication_gsm_kd", "staged")],
}


def collect(results: Path = RESULTS, split: str = "test") -> list[dict]:
    """One row per (task, record, sparsity, loss): value, the record's teacher, and value / teacher."""
    rows = []
    for task, records in GRID.items():
        for stem, schedule in records:
            path = results / f"{stem}.json"
            if not path.is_file():
                continue
            rec = json.loads(path.read_text())
            dense = (rec.get("dense_all") or {}).get(split, {}).get(rec.get("metric")) or rec.get("dense")
            for r in rec["runs"]:
                if r["split"] != split or r["value"] is None:
                    continue
                rows.append({"task": task, "record": stem, "schedule": schedule, "sparsity": r["sparsity"],
                             "loss": r["loss"], "value": r["value"], "teacher": dense,
                             "of_teacher": r["value"] / dense if dense else None})
    return rows


def plot(rows: list[dict], path: Path) -> Path:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.0 * len(tasks), 5.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for schedule, style in (("one-shot", "--"), ("staged", "-")):
            for loss in dict.fromkeys(r["loss"] for r in rows if r["task"] == task):
                mine = [r for r in rows if r["task"] == task and r["schedule"] == schedule and r["loss"] == loss]
                by_s: dict[float, list[float]] = {}
                for r in mine:
                    by_s.setdefault(r["sparsity"], []).append(r["of_teacher"])
                if not by_s:
                    continue
                xs = sorted(by_s)
                ys = [sum(by_s[s]) / len(by_s[s]) for s in xs]  # several seeds: their mean; each seed as a dot
                ax.plot([100 * s for s in xs], ys, style, marker=MARKERS.get(loss, "o"), mfc="none", ms=7,
                        color=COLORS.get(loss), label=f"{LOSS_LABELS.get(loss, loss)}, {schedule}")
                for r in mine:
                    ax.plot(100 * r["sparsity"], r["of_teacher"], ".", color=COLORS.get(loss), alpha=0.5)
        ax.axhline(1.0, color="black", lw=1, ls=":", label="dense teacher")
        for goal in (0.95, 0.90):
            ax.axhline(goal, color="gray", lw=0.8, ls="-.")
        ax.set_ylim(0, 1.08)
        ax.set_title(f"{task}: exact match / teacher's (test)")
        ax.set_xlabel("sparsity (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: no point hidden
    fig.suptitle("SmolLM2-135M, H200: every loss, one-shot vs staged (gray: the 95% / 90% goals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS / "grid_causal_lm.png")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    rows = collect(split=args.split)
    if not rows:
        raise SystemExit(f"no records found under {RESULTS}")
    args.out.with_suffix(".json").write_text(json.dumps({"split": args.split, "records": GRID, "rows": rows},
                                                        indent=1) + "\n")
    print(plot(rows, args.out))


if __name__ == "__main__":
    main()
