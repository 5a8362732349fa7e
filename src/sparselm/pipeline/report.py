"""report.md and plots of a pipeline's results.json (or of any `benchmarks/results/replication_<task>.json`).

    python -m sparselm.pipeline.report benchmarks/results/replication_reasoning.json   # -> replication_reasoning.png
    python -m sparselm.pipeline.report runs/demo                                       # -> report.md + plots there

Plots: the headline metric vs sparsity, one line per loss and a dashed line for the dense teacher, one panel per
split; and the training loss curves read from each run's metrics.jsonl.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from sparselm.pipeline.paired import paired_table

LOSS_LABELS = {"squarehead": "CE + SquareHead", "squarehead_token": "CE + SquareHead (per-token)", "kd": "CE + KD",
               "kd_squarehead_token": "CE + KD + SquareHead (per-token)", "ce": "CE", "none": "SparseGPT only"}
LOSS_ORDER = ("kd_squarehead_token", "squarehead_token", "squarehead", "kd", "ce", "none")
COLORS = {"squarehead": "tab:red", "squarehead_token": "tab:purple", "kd_squarehead_token": "tab:orange",
          "kd": "tab:blue", "ce": "tab:green", "none": "tab:gray"}
MARKERS = {"squarehead": "o", "squarehead_token": "D", "kd_squarehead_token": "P", "kd": "s", "ce": "^",
           "none": "x"}  # distinct, so coinciding points stay visible


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI or the GPU machine
    import matplotlib.pyplot as plt

    return plt


def splits_of(results: dict[str, Any]) -> list[str]:
    seen: list[str] = list((results.get("dense_all") or {}).keys())
    for r in results["runs"]:
        if r["split"] not in seen:
            seen.append(r["split"])
    return seen or ["test"]


def dense_value(results: dict[str, Any], split: str) -> float | None:
    """The teacher's headline metric on `split` (dense_all when present; `dense` is the first split's)."""
    per = (results.get("dense_all") or {}).get(split)
    if per is not None:  # a re-scored record (benchmarks/rescore_gsm.py) keeps it under "value"
        return per.get(results.get("metric") or "exact_match", per.get("value"))
    return results.get("dense") if split == splits_of(results)[0] else None


def _losses(results: dict[str, Any]) -> list[str]:
    have = {r["loss"] for r in results["runs"]}
    return [x for x in LOSS_ORDER if x in have] + sorted(have - set(LOSS_ORDER))


def plot_metric_vs_sparsity(results: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    splits = splits_of(results)
    metric = results.get("metric") or "value"
    fig, axes = plt.subplots(1, len(splits), figsize=(5.2 * len(splits), 4.0), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for loss in _losses(results):
            pts = sorted((r["sparsity"], r["value"]) for r in results["runs"]
                         if r["loss"] == loss and r["split"] == split and r["value"] is not None)
            if pts:
                ax.plot([100 * s for s, _ in pts], [v for _, v in pts], "-", marker=MARKERS.get(loss, "o"),
                        mfc="none", ms=8, color=COLORS.get(loss), label=LOSS_LABELS.get(loss, loss))
        dense = dense_value(results, split)
        if dense is not None:
            ax.axhline(dense, color="black", ls="--", lw=1, label=f"dense teacher ({dense:.3g})")
        xs = [100 * r["sparsity"] for r in results["runs"]] or [50.0]
        ax.set_xlim(0 if len(set(xs)) == 1 else min(xs) - 5, max(xs) + 5)  # one sparsity: show it against 0%
        ax.set_ylim(bottom=0)  # every task metric is >= 0; a cropped axis would exaggerate small gaps
        ax.set_title(f"{results.get('task')} / {split}")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel(metric + ("" if results.get("higher_is_better", True) else " (lower is better)"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{results.get('model')}: {metric} vs sparsity ({results.get('device', '')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_curves(model_dirs: list[Path], names: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """metrics.jsonl rows of each model dir that has them, by name (default: the dir's name, e.g. "s70-ce")."""
    curves = {}
    for d, name in zip(model_dirs, names or [d.name for d in model_dirs]):
        f = d / "metrics.jsonl"
        if f.is_file() and name not in curves:
            rows = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
            if rows:
                curves[name] = rows
    return curves


def plot_loss_curves(out_dir: Path, path: Path) -> Path | None:
    """The loss curves of the teacher and every run under a `sparselm run` output dir (see `plot_curves`)."""
    return plot_curves(read_curves([out_dir / "teacher", *sorted(p for p in (out_dir / "runs").glob("*")
                                                                 if p.is_dir())]), path)


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """One panel per loss (plus the teacher): the task CE (solid) and the distillation term (dashed) per step;
    `curves` maps "teacher" / run names ("s70-ce") to metrics.jsonl rows."""
    if not curves:
        return None
    plt = _plt()
    groups: dict[str, list[str]] = defaultdict(list)
    for name in curves:
        groups["teacher" if name == "teacher" else name.split("-", 1)[1]].append(name)
    order = [g for g in ("teacher", *LOSS_ORDER) if g in groups]
    fig, axes = plt.subplots(1, len(order), figsize=(4.6 * len(order), 3.6), squeeze=False)
    for ax, group in zip(axes[0], order):
        for i, name in enumerate(sorted(groups[group], key=lambda n: int(n[1:].split("-")[0]) if n[1:2].isdigit()
                                        else 0)):
            rows, color = curves[name], f"C{i}"  # one colour per run (sparsity), one line style per loss term
            val = [(r.get("global_step", i), r["val/ce"]) for i, r in enumerate(rows) if "val/ce" in r]
            rows = [r for r in rows if "val/ce" not in r]
            steps = [r.get("global_step", i) for i, r in enumerate(rows)]
            for key, style in (("loss/ce", "-"), ("loss/kd", "--"), ("loss/squarehead", ":")):
                ys = [r.get(key) for r in rows]
                if any(y is not None for y in ys):
                    ax.plot(steps, [math.nan if y is None else y for y in ys], style, color=color,
                            label=f"{name} {key.split('/')[1]}")
            if val:  # train.eval_every: held-out CE, the model-selection signal
                ax.plot(*zip(*val), "o-", color=color, ms=3, alpha=0.6, label=f"{name} validation ce")
        ax.set_title("dense teacher" if group == "teacher" else LOSS_LABELS.get(group, group))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _vs_dense(value: float | None, dense: float | None, higher: bool) -> str:
    """Share of dense (higher is better) or signed change from dense (lower is better)."""
    if value is None or dense is None:
        return "—"
    if not higher:
        return f"{value - dense:+.3f}"
    return f"{100 * value / dense:.0f}%" if dense else "—"


def results_table(results: dict[str, Any]) -> str:
    """Markdown: dense, then each sparsity x loss; per split the metric, its share of dense, and log-lik/token."""
    splits, metric = splits_of(results), results.get("metric") or "value"
    pct = metric == "exact_match"
    higher = results.get("higher_is_better", True)
    # a metric without a teacher-forced log-likelihood (asr: WER of transcripts) gets no empty column
    ll = any(m.get("loglik_per_token") is not None for m in (results.get("dense_all") or {}).values()) or \
        any(r.get("loglik_per_token") is not None for r in results["runs"])
    head = ["sparsity", "loss"]
    for s in splits:  # lower is better (WER): the change from dense reads better than a ratio of error rates
        head += [f"{s} {metric}", f"{s} vs dense" if higher else f"{s} Δ vs dense"]
        head += [f"{s} loglik/tok"] if ll else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    dense_row = ["0% (dense)", "teacher"]
    for s in splits:
        d = (results.get("dense_all") or {}).get(s, {})
        dense_row += [_fmt(dense_value(results, s), pct), "100%" if higher else "0"]
        dense_row += [_fmt(d.get("loglik_per_token"))] if ll else []
    lines.append("| " + " | ".join(dense_row) + " |")
    by_key: dict[tuple[float, str], dict[str, dict]] = defaultdict(dict)
    for r in results["runs"]:
        by_key[(r["sparsity"], r["loss"])][r["split"]] = r
    order = {x: i for i, x in enumerate(LOSS_ORDER)}
    for (sp, loss) in sorted(by_key, key=lambda k: (k[0], order.get(k[1], 9))):
        row = [f"{100 * sp:.0f}%", LOSS_LABELS.get(loss, loss)]
        for s in splits:
            r = by_key[(sp, loss)].get(s, {})
            dense, value = dense_value(results, s), r.get("value")
            share = _vs_dense(value, dense, higher)
            row += [_fmt(value, pct), share] + ([_fmt(r.get("loglik_per_token"))] if ll else [])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def per_source_table(results: dict[str, Any]) -> str:
    """BLEU per corpus of the headline split (translation mixes dictionary sentences and software messages, whose
    difficulty differs); empty when the metric has no per-corpus breakdown."""
    split = splits_of(results)[0] if splits_of(results) else None
    dense = ((results.get("dense_all") or {}).get(split) or {}).get("per_source") or {}
    if results.get("metric") != "bleu" or not dense:
        return ""
    sources = sorted(dense)
    lines = ["| sparsity | loss | " + " | ".join(f"{s} BLEU (n={dense[s]['n']})" for s in sources) + " |",
             "|" + "---|" * (2 + len(sources)),
             "| 0% (dense) | teacher | " + " | ".join(_fmt(dense[s]["bleu"]) for s in sources) + " |"]
    order = {x: i for i, x in enumerate(LOSS_ORDER)}
    runs = sorted((r for r in results["runs"] if r["split"] == split),
                  key=lambda r: (r["sparsity"], order.get(r["loss"], 9)))
    for r in runs:
        ps = (r.get("metrics") or {}).get("per_source") or {}
        lines.append(f"| {100 * r['sparsity']:.0f}% | {LOSS_LABELS.get(r['loss'], r['loss'])} | " +
                     " | ".join(_fmt((ps.get(s) or {}).get("bleu")) for s in sources) + " |")
    return "\n".join(lines)


def chains_table(results: dict[str, Any]) -> str:
    """How the headline split's chains of thought fail, per model (gsm: `sparselm.eval.chains`), and how the
    generations ended (EOS, the stop pattern, the token budget); empty for tasks without chains."""
    split = splits_of(results)[0] if splits_of(results) else None
    dense = (results.get("dense_all") or {}).get(split) or {}
    order = {x: i for i, x in enumerate(LOSS_ORDER)}
    runs = sorted((r for r in results["runs"] if r["split"] == split and (r.get("metrics") or {}).get("chains")),
                  key=lambda r: (r["sparsity"], order.get(r["loss"], 9)))
    if not dense.get("chains") and not runs:
        return ""
    lines = ["| sparsity | loss | no `####` answer | equations per item | equations wrong | items with a wrong "
             "equation | ended at EOS / answer line / budget |", "|---|---|---|---|---|---|---|"]
    rows = ([("0% (dense)", "teacher", dense)] if dense.get("chains") else []) + [
        (f"{100 * r['sparsity']:.0f}%", LOSS_LABELS.get(r["loss"], r["loss"]), r["metrics"]) for r in runs]
    for sp, loss, m in rows:
        c, e = m["chains"], m.get("ends")
        ends = " / ".join(_fmt(e.get(k, 0.0), pct=True) for k in ("eos", "stop", "budget")) if e else "-"
        lines.append(f"| {sp} | {loss} | {_fmt(c['no_answer'], pct=True)} | {c['equations_per_item']:.2f} | "
                     f"{_fmt(c['equation_error_rate'], pct=True)} | {_fmt(c['items_with_wrong_equation'], pct=True)} | "
                     f"{ends} |")
    return "\n".join(lines)


def _auto_notes(results: dict[str, Any]) -> list[str]:
    notes = []
    dense_all = results.get("dense_all") or {}
    for split, m in dense_all.items():
        n, p = m.get("n"), dense_value(results, split)
        if n and p is not None and results.get("metric") == "exact_match":
            se, worst = math.sqrt(p * (1 - p) / n), math.sqrt(0.25 / n)  # binomial standard error
            notes.append(f"`{split}`: {n} items per model; one standard error of an exact match is "
                         f"±{100 * se:.1f} points at the dense value and ±{100 * worst:.1f} at 50%: differences "
                         "of that size are noise.")
    t = results.get("timings") or {}
    if t:
        notes.append("timings (s): " + ", ".join(f"{k} {v}" for k, v in t.items()))
    train_s = sorted({(r['sparsity'], r['loss'], r.get('train_s')) for r in results["runs"]})
    if train_s:
        notes.append("prune + fine-tune seconds per run: " +
                     ", ".join(f"{100 * s:.0f}% {loss} {sec}" for s, loss, sec in train_s))
    return notes


def _runs_note(settings: Any) -> str:
    staged = isinstance(settings, dict) and bool((settings.get("sparse") or {}).get("staged"))
    start = ("the previous sparsity's model of the same loss (the first from the dense teacher), re-pruned with "
             "SparseGPT" if staged else "the same SparseGPT-pruned teacher")
    return (f"Every sparse run starts from {start}, with the same steps, learning rate and data; only the loss "
            "differs. `SparseGPT only` is the pruned model without fine-tuning.")


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """report.md + metric_vs_sparsity.png + loss_curves.png in `out_dir`; returns the report's path."""
    out_dir = Path(out_dir)
    plots = [plot_metric_vs_sparsity(results, out_dir / "metric_vs_sparsity.png"),
             plot_loss_curves(out_dir, out_dir / "loss_curves.png")]
    settings = results.get("settings") or {}
    notes = list(settings.get("notes") or []) if isinstance(settings, dict) else []
    text = [f"# sparselm pipeline report: {results.get('task')} / {results.get('model')}", "",
            f"Metric: **{results.get('metric')}** ({'higher' if results.get('higher_is_better', True) else 'lower'}"
            f" is better), first split is the headline. Device: {results.get('device')}.", "",
            f"Command: `{results.get('command')}`", "", "## Results", "", results_table(results), "",
            _runs_note(settings), "",
            "## Plots", ""]
    text += [f"![{p.stem}]({p.name})" for p in plots if p is not None]
    by_corpus = per_source_table(results)
    if by_corpus:
        text += ["", f"## BLEU per corpus (`{splits_of(results)[0]}`)", "", by_corpus]
    chains = chains_table(results)
    if chains:
        text += ["", f"## How the chains fail (`{splits_of(results)[0]}`)", "",
                 "From the generated text: chains without a `#### N`, and equations `a op b = c` whose right "
                 "side is off by more than max(0.01, 0.5%) (unit words removed; `sparselm.eval.chains`). A model "
                 "fine-tuned on chains that end in EOS should end at EOS; rows that run to the budget mean it did "
                 "not learn where to stop.", "",
                 chains]
    if results.get("paired"):
        text += ["", "## Paired tests vs CE (and SquareHead vs KD)", "",
                 "Each loss against CE, and each SquareHead variant against KD, at the same sparsity on the same "
                 "items (exact match: exact McNemar test on "
                 "the items exactly one of the two gets right; BLEU: approximate randomization, 10,000 shuffles; WER: "
                 "the same on per-utterance edit counts, a negative difference is fewer errors). "
                 "A small p says the difference is not item noise; it says nothing about other seeds.", "",
                 paired_table(results["paired"], LOSS_LABELS)]
    text += ["", "## Notes", ""] + [f"- {n}" for n in notes + _auto_notes(results)]
    text += ["", "## Settings", "", "```yaml", yaml.safe_dump(settings, sort_keys=False).rstrip(), "```", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(text))
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sparselm.pipeline.report", description=__doc__.split("\n")[0])
    p.add_argument("source", type=Path, help="a results JSON (-> <stem>.png beside it) or a pipeline output dir")
    p.add_argument("--out", type=Path, default=None, help="PNG path for a results JSON (default: <stem>.png)")
    args = p.parse_args(argv)
    if args.source.is_dir():
        results = json.loads((args.source / "results.json").read_text())
        print(write_report(results, args.source))
        return
    if not args.source.is_file():
        raise SystemExit(f"error: {args.source}: no such file or directory")
    results = json.loads(args.source.read_text())
    print(plot_metric_vs_sparsity(results, args.out or args.source.with_suffix(".png")))


if __name__ == "__main__":
    main()
