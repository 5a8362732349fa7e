"""Paired tests of every distillation loss against CE at the same sparsity, and of every SquareHead variant against
KD (the paper's two baselines), from the prediction files the pipeline writes beside each run
(`runs/<run>/predictions_<split>.jsonl`): exact McNemar for exact match, approximate randomization for BLEU
(sparselm.eval.paired). The runs share their test items, so this is the test that says
whether "SquareHead beats CE by 5 points" is more than noise; two independent standard errors would overstate it.

A pair is skipped (not an error) when either file is missing: runs evaluated before the files existed, or a run
still in progress. WER (asr) is tested the same way on per-utterance edit counts (lower is better).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparselm.eval.paired import compare_predictions, read_predictions
from sparselm.pipeline.schema import run_name

BASELINE = "ce"
#: what each loss is tested against, in order: CE for every loss, and KD for the SquareHead losses (is the
#: hidden-state term worth more than the logit one?); CE is never tested against KD twice (KD vs CE covers it)
BASELINES = ("ce", "kd")
TESTED_METRICS = ("exact_match", "gsm_exact_match", "bleu", "wer")


def prediction_file(runs_dir: Path, sparsity: float, loss: str, split: str) -> Path | None:
    """A run's `predictions_<split>.jsonl` under `runs_dir` (or its `.gz` copy, as records keep it), else None."""
    p = runs_dir / run_name(sparsity, loss) / f"predictions_{split}.jsonl"
    return p if p.is_file() or p.with_name(p.name + ".gz").is_file() else None


def baselines_for(loss: str) -> list[str]:
    """The losses `loss` is tested against (see BASELINES); none for CE and for "SparseGPT only"."""
    if loss == "none":
        return []
    return list(BASELINES[: BASELINES.index(loss)] if loss in BASELINES else BASELINES)


def paired_tests(out_dir: str | Path, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (sparsity, split, loss, baseline) whose two prediction files exist; `diff` = loss - baseline."""
    metric = results.get("metric")
    if metric not in TESTED_METRICS:
        return []
    runs = Path(out_dir) / "runs"
    rows = []
    pairs = sorted({(r["sparsity"], r["loss"], r["split"]) for r in results.get("runs", [])})
    for (sparsity, loss, split), baseline in ((p, b) for p in pairs for b in baselines_for(p[1])):
        base = prediction_file(runs, sparsity, baseline, split)
        system = prediction_file(runs, sparsity, loss, split)
        if base is None or system is None:
            continue
        row = {"sparsity": sparsity, "loss": loss, "baseline": baseline, "split": split}
        try:
            rows.append({**row, **compare_predictions(read_predictions(base), read_predictions(system), metric)})
        except (ValueError, KeyError, json.JSONDecodeError) as e:  # e.g. runs evaluated with different limits:
            rows.append({**row, "error": str(e)[:200]})           # reported, never fatal to the pipeline
    return rows


def paired_table(rows: list[dict[str, Any]], labels: dict[str, str]) -> str:
    """Markdown table of `paired_tests` rows (exact match: points; BLEU: BLEU)."""
    if not rows:
        return ""
    lines = ["| sparsity | split | loss | against | difference | p (two-sided) | test | items where only one is right "
             "(loss / against) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = labels.get(r.get("baseline", BASELINE), r.get("baseline", BASELINE))
        if "error" in r:
            lines.append(f"| {100 * r['sparsity']:.0f}% | {r['split']} | {labels.get(r['loss'], r['loss'])} | {vs} | — | "
                         f"— | not tested: {r['error']} | — |")
            continue
        exact = r["test"] == "mcnemar_exact"
        diff = f"{100 * r['diff']:+.1f} pts" if exact else f"{r['diff']:+.3f}" if r["test"] == "paired_ar_wer" \
            else f"{r['diff']:+.2f}"
        only = f"{r['a_only']} / {r['b_only']}" if exact else "—"
        lines.append(f"| {100 * r['sparsity']:.0f}% | {r['split']} | {labels.get(r['loss'], r['loss'])} | {vs} | {diff} "
                     f"| {r['p_value']:.3g} | {r['test']} | {only} |")
    return "\n".join(lines)
