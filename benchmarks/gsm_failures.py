"""How gsm predictions fail, per run, from the per-item prediction files the pipeline writes beside each model:

    python benchmarks/gsm_failures.py benchmarks/results/replication_gsm_8ep_predictions \
        --out benchmarks/results/gsm_8ep_failure_modes.json          # + a PNG beside it

Per file (`<run>_test.jsonl` or `predictions_test.jsonl`): exact match; `no_answer` (no `#### N`); how far the
wrong numbers are from the reference (median |log10(prediction / answer)| over items with positive numbers, the
share off by more than 10x, the share within 5%); and, when the file keeps the generated text (since session 16),
the chain diagnostics of `sparselm.eval.chains` (equations whose arithmetic is wrong).

Why: exact match alone cannot tell a model that stops writing chains from one that writes complete chains with
wrong numbers; the 75% SquareHead collapse on gsm (BENCHMARKS.md section 3) is the second kind.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def failure_modes(rows: list[dict]) -> dict:
    """The summary of one prediction file (see the module docstring)."""
    if not rows:
        raise ValueError("no prediction rows")
    n = len(rows)
    dist = []
    for r in rows:
        try:
            p, a = float(r["prediction"]), float(r["answer"])
        except (KeyError, TypeError, ValueError):
            continue
        if p > 0 and a > 0:
            dist.append(abs(math.log10(p / a)))
    out = {"n": n, "exact_match": sum(bool(r.get("correct")) for r in rows) / n,
           "no_answer": sum(r.get("prediction") is None for r in rows) / n,
           "median_abs_log10_ratio": statistics.median(dist) if dist else None,
           "off_by_10x": sum(d > 1 for d in dist) / n, "within_5pct": sum(d < math.log10(1.05) for d in dist) / n}
    gens = [r["generation"] for r in rows if isinstance(r.get("generation"), str)]
    if len(gens) == n:
        from sparselm.eval.chains import chain_diagnostics

        out["chains"] = chain_diagnostics(gens)
    return out


def _name(path: Path) -> str:
    stem = path.stem
    return stem[:-5] if stem.endswith("_test") else stem


def plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["runs"])
    keys = [("exact_match", "exact match"), ("no_answer", "no #### answer"), ("within_5pct", "within 5%"),
            ("off_by_10x", "off by > 10x")]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)), 3.6))
    w = 0.8 / len(keys)
    for i, (k, label) in enumerate(keys):
        ax.bar([j + i * w for j in range(len(names))], [res["runs"][n][k] for n in names], w, label=label)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(names))], names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share of test items")
    ax.set_title("gsm: how the predictions fail")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="prediction files, or folders of *_test.jsonl files")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    files = []
    for p in args.paths:
        files += sorted(p.glob("*test.jsonl")) if p.is_dir() else [p]
    if not files:
        raise SystemExit(f"no prediction files under {[str(p) for p in args.paths]}")
    runs = {_name(f): failure_modes([json.loads(x) for x in f.read_text().splitlines() if x.strip()])
            for f in files}
    res = {"command": "python benchmarks/gsm_failures.py " + " ".join(map(str, args.paths)), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"{'run':34s} {'EM':>6s} {'no ans':>7s} {'med|log|':>8s} {'>10x':>6s} {'<5%':>6s}")
    for name, r in runs.items():
        med = r["median_abs_log10_ratio"]
        print(f"{name:34s} {r['exact_match']:6.3f} {r['no_answer']:7.3f} {med if med is not None else float('nan'):8.2f}"
              f" {r['off_by_10x']:6.2f} {r['within_5pct']:6.2f}")
    print("wrote", args.out, plot(res, args.out.with_suffix(".png")))


if __name__ == "__main__":
    main()
