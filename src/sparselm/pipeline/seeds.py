"""One study run with several seeds: per (sparsity, loss) the value of every seed, their mean and spread, and each
loss tested against CE per seed and pooled over the seeds.

    sparselm seeds runs/gsm-seed0 runs/gsm-seed1 --out runs/gsm-seeds        # -> seeds.json, seeds.md, seeds.png
    sparselm seeds benchmarks/results/replication_gsm_seed1.json runs/gsm-seed2 --out ...   # records work too

Why: a paired test on one seed's runs says the difference is more than item noise, not that another seed gives it.
On gsm the two seeds' CE runs at 75% differed by 6.7 points while SquareHead's agreed (BENCHMARKS.md section 3):
training noise can exceed item noise. The pooled test counts every seed's discordant items
(`sparselm.eval.paired.pooled_test`: independent trainings give independent coins under the null; exact
match and WER, not the corpus BLEU).

A source is a `sparselm run` output dir (results.json, runs/<run>/predictions_<split>.jsonl) or a record written
by benchmarks/record_study.py (replication_<name>.json, generations in replication_<name>_runs/<run>/, gzipped).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparselm.eval.paired import POOLED_METRICS, compare_predictions, pooled_test, read_predictions
from sparselm.pipeline.paired import BASELINE, TESTED_METRICS, prediction_file
from sparselm.pipeline.report import COLORS, LOSS_LABELS, LOSS_ORDER, MARKERS, _plt, dense_value

# settings that may differ between the seeds of one study (the seed itself, where outputs went, what subset ran)
FREE_SETTINGS = {"train.seed", "output.dir", "output.budget_s", "output.keep_models", "teacher.path", "task.data_dir",
                 "sparsities", "losses"}


@dataclass
class Study:
    name: str
    results: dict[str, Any]
    runs_dir: Path


def load_study(src: str | Path) -> Study:
    """A `sparselm run` output dir or a replication_<name>.json record (see the module doc)."""
    src = Path(src)
    if src.is_dir():
        res_file, runs = src / "results.json", src / "runs"
    else:
        res_file, runs = src, src.with_name(f"{src.stem}_runs")
    if not res_file.is_file():
        raise FileNotFoundError(f"{src}: neither a `sparselm run` output dir (results.json) nor a record JSON")
    res = json.loads(res_file.read_text())
    if "runs" not in res or "metric" not in res:
        raise ValueError(f"{res_file}: not a study's results (no 'runs' / 'metric')")
    return Study(str(src), res, runs)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def setting_differences(studies: list[Study]) -> dict[str, list[Any]]:
    """Settings (beyond FREE_SETTINGS) whose values differ between the studies; studies without settings are skipped."""
    flats = [_flat(s.results["settings"]) for s in studies if isinstance(s.results.get("settings"), dict)]
    keys = sorted(set().union(*flats)) if flats else []
    return {k: [f.get(k) for f in flats] for k in keys
            if k not in FREE_SETTINGS and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1}


def _value(study: Study, sparsity: float, loss: str, split: str) -> float | None:
    for r in study.results["runs"]:  # rows relabelled by a re-scoring (e.g. "ce (trained again)") are not the run
        if (r["sparsity"], r["loss"], r["split"]) == (sparsity, loss, split) and r.get("label", loss) == loss:
            return r["value"]
    return None


def summarize(studies: list[Study], split: str = "test") -> dict[str, Any]:
    """The seeds' values, mean and standard deviation per (sparsity, loss), and the tests against CE."""
    if len(studies) < 2:
        raise ValueError("a seeds summary needs at least two studies")
    head = studies[0].results
    for s in studies[1:]:
        for key in ("task", "metric", "model"):
            if s.results.get(key) != head.get(key):
                raise ValueError(f"{s.name}: {key} {s.results.get(key)!r}, but {studies[0].name} has "
                                 f"{head.get(key)!r}: not the same study")
    metric = head["metric"]
    keys = sorted({(r["sparsity"], r["loss"]) for s in studies for r in s.results["runs"] if r["split"] == split})
    rows = []
    for sparsity, loss in keys:
        vals = [_value(s, sparsity, loss, split) for s in studies]
        have = [v for v in vals if v is not None]
        if not have:  # only relabelled rows (a re-scored record's extra trainings): not one of the seeds' runs
            continue
        rows.append({"sparsity": sparsity, "loss": loss, "values": vals, "mean": statistics.fmean(have),
                     "sd": statistics.stdev(have) if len(have) > 1 else None, "seeds": len(have)})
    tests = []
    for sparsity, loss in keys:
        if loss in (BASELINE, "none") or metric not in TESTED_METRICS:
            continue
        per_seed, pairs = [], []
        for s in studies:
            base = prediction_file(s.runs_dir, sparsity, BASELINE, split)
            system = prediction_file(s.runs_dir, sparsity, loss, split)
            if base is None or system is None:
                per_seed.append(None)
                continue
            pairs.append((read_predictions(base), read_predictions(system)))
            per_seed.append(compare_predictions(*pairs[-1], metric))
        if not pairs:
            continue
        pooled = pooled_test(metric, pairs) if len(pairs) > 1 and metric in POOLED_METRICS else None
        tests.append({"sparsity": sparsity, "loss": loss, "per_seed": per_seed, "pooled": pooled})
    return {"task": head.get("task"), "model": head.get("model"), "metric": metric, "split": split,
            "higher_is_better": head.get("higher_is_better", True), "sources": [s.name for s in studies],
            "dense": [dense_value(s.results, split) for s in studies], "rows": rows, "tests": tests,
            "setting_differences": setting_differences(studies),
            "sources_with_settings": sum(isinstance(s.results.get("settings"), dict) for s in studies)}


def _pct(metric: str) -> bool:
    return metric in ("exact_match", "gsm_exact_match")


def _num(v: float | None, pct: bool) -> str:
    return "—" if v is None else f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    pct = _pct(summary["metric"])
    n = len(summary["sources"])
    lines = [f"# {summary['task']} / {summary['model']}: {n} seeds", "",
             f"Metric **{summary['metric']}** on `{summary['split']}`. Sources, in seed-column order:", ""]
    lines += [f"{i}. `{src}`" for i, src in enumerate(summary["sources"])]
    lines += ["", "| sparsity | loss | " + " | ".join(f"seed col {i}" for i in range(n)) + " | mean | sd |",
              "|---|---|" + "---|" * n + "---|---|",
              "| 0% | dense teacher | " + " | ".join(_num(v, pct) for v in summary["dense"]) + " | | |"]
    for r in summary["rows"]:
        sd = "—" if r["sd"] is None else (f"{100 * r['sd']:.1f}" if pct else f"{r['sd']:.3f}")
        lines.append(f"| {100 * r['sparsity']:.0f}% | {LOSS_LABELS.get(r['loss'], r['loss'])} | "
                     + " | ".join(_num(v, pct) for v in r["values"]) + f" | {_num(r['mean'], pct)} | {sd} |")
    if summary["tests"]:
        lines += ["", "## Each loss against CE, per seed and pooled", "",
                  "Per seed: the paired test of the two runs on the same items (exact McNemar for exact match). Pooled: "
                  "every seed's discordant items in one exact test (exact match), or every seed's per-utterance "
                  "differences in one sign-flip test (WER); the seeds train independently.",
                  "", "| sparsity | loss | per seed: diff (p; items loss / CE) | pooled: mean diff (p; items) |",
                  "|---|---|---|---|"]
        for t in summary["tests"]:
            cells = []
            for x in t["per_seed"]:
                if x is None:
                    cells.append("—")
                elif x["test"] == "mcnemar_exact":
                    cells.append(f"{100 * x['diff']:+.1f} ({x['p_value']:.2g}; {x['a_only']} / {x['b_only']})")
                else:
                    cells.append(f"{x['diff']:+.3f} ({x['p_value']:.2g})")
            p = t["pooled"]
            pooled = ("—" if p is None else f"{p['diff']:+.3f} ({p['p_value']:.2g})" if "a_only" not in p else
                      f"{100 * p['diff']:+.1f} ({p['p_value']:.2g}; {p['a_only']} / {p['b_only']})")
            lines.append(f"| {100 * t['sparsity']:.0f}% | {LOSS_LABELS.get(t['loss'], t['loss'])} | "
                         f"{', '.join(cells)} | {pooled} |")
    diffs, checked = summary["setting_differences"], summary["sources_with_settings"]
    lines += ["", "## Settings", ""]
    if checked < 2:
        lines.append(f"- not compared: {checked} of {n} sources record their settings (re-scored records do not).")
    elif diffs:
        lines += [f"- differ beyond the seed: `{k}`: {v}" for k, v in diffs.items()]
    else:
        lines.append(f"- the {checked} sources that record settings agree beyond the seed, outputs and run subsets.")
    return "\n".join(lines) + "\n"


def plot_seeds(summary: dict[str, Any], path: Path) -> Path:
    """Metric vs sparsity: each loss's mean (line) and every seed (small markers); the teachers dashed."""
    plt = _plt()
    pct = 100 if _pct(summary["metric"]) else 1
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    losses = [x for x in LOSS_ORDER if any(r["loss"] == x for r in summary["rows"])]
    for loss in losses + sorted({r["loss"] for r in summary["rows"]} - set(losses)):
        rows = sorted((r for r in summary["rows"] if r["loss"] == loss), key=lambda r: r["sparsity"])
        xs = [100 * r["sparsity"] for r in rows]
        ax.plot(xs, [pct * r["mean"] for r in rows], marker=MARKERS.get(loss, "o"), color=COLORS.get(loss),
                label=f"{LOSS_LABELS.get(loss, loss)} (mean)")
        for r in rows:
            seen = [pct * v for v in r["values"] if v is not None]
            ax.scatter([100 * r["sparsity"]] * len(seen), seen, s=12, color=COLORS.get(loss), alpha=0.5)
            if r["seeds"] < len(summary["sources"]):  # a mean of fewer seeds than the others: say so
                ax.annotate(f"{r['seeds']} seed{'s' if r['seeds'] > 1 else ''}", (100 * r["sparsity"], pct * r["mean"]),
                            textcoords="offset points", xytext=(4, -10), fontsize=7, color=COLORS.get(loss))
    for v in summary["dense"]:
        if v is not None:
            ax.axhline(pct * v, color="black", ls="--", lw=0.8, alpha=0.6)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel(f"{summary['metric']} on {summary['split']}" + (" (%)" if pct == 100 else ""))
    ax.set_title(f"{summary['task']}: {len(summary['sources'])} seeds (dashed: the dense teachers)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_seeds(sources: list[str | Path], out: Path, split: str = "test") -> dict[str, Any]:
    summary = summarize([load_study(s) for s in sources], split)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "seeds.md").write_text(summary_markdown(summary))
    plot_seeds(summary, out / "seeds.png")
    return summary
