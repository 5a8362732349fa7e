"""Re-score gsm runs from their kept generations with the current scorer, and write one record for several runs that
share a teacher (even when they ran as separate `sparselm run` pipelines).

Why: until 7f39ccc the scorer read the number after the *last* ``####``; GSM8K is scored by the first (the
lm-eval-harness strict match), and the study's models, asked without the BOS that training gave them, mostly ran
on after their answer (`benchmarks/bos_check.py`). Generations kept since session 16 can be re-scored without
re-running anything; the log-likelihoods cannot (they were computed with the BOS-less prompts) and are copied as
measured, flagged.

    python benchmarks/rescore_gsm.py --teacher /tmp/x/gsmst/teacher \
        --run "ce (w 0.2 runs' baseline)":0.7:ce:/tmp/x/gsm2/runs/s70-ce ... \
        --baseline ce --name gsm_s17 --command "..." --note "..."

Each --run is LABEL:SPARSITY:LOSS:DIR (DIR holds predictions_<split>.jsonl, or .jsonl.gz, with "generation"). Paired exact McNemar
tests compare every label with the --baseline label at the same sparsity. Writes
benchmarks/results/replication_<name>.json / .md / .png.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from sparselm.eval.answers import GSM_STOP, answers_match, extract_gsm_answer
from sparselm.eval.chains import chain_diagnostics, runs_on_after_answer
from sparselm.eval.paired import mcnemar_exact, read_predictions

RESULTS = Path(__file__).resolve().parent / "results"


def _as_stopped(generation: str) -> str:
    m = re.search(GSM_STOP, generation)
    return generation[:m.end()] if m else generation


def rescore(rows: list[dict]) -> dict:
    """Exact match with the current `extract_gsm_answer`, and the same rows' score as they were recorded."""
    if not rows or any(not isinstance(r.get("generation"), str) for r in rows):
        raise ValueError("these predictions do not keep the generated text: they cannot be re-scored")
    correct = [answers_match(extract_gsm_answer(r["generation"]), str(r["answer"])) for r in rows]
    ll = [r["loglik"] for r in rows if isinstance(r.get("loglik"), (int, float))]
    return {"n": len(rows), "value": sum(correct) / len(rows), "correct": correct,
            "value_as_recorded": sum(bool(r.get("correct")) for r in rows) / len(rows),
            "run_on": sum(runs_on_after_answer(r["generation"]) for r in rows) / len(rows),
            # the chain as evaluation now sees it: cut where generation now stops (the end of the answer line)
            "chains": chain_diagnostics([_as_stopped(r["generation"]) for r in rows]),
            "loglik_per_item_mean": sum(ll) / len(ll) if ll else None}


def _plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    by_label: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in record["runs"]:
        if r["split"] == "test":
            by_label[r["label"]].append((r["sparsity"], r["value"]))
    for label, pts in by_label.items():
        pts.sort()
        ax.plot([100 * s for s, _ in pts], [100 * v for _, v in pts], "o-", label=label)
    ax.axhline(100 * record["dense"], color="k", ls="--", lw=1, label="dense teacher")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("exact match, test (%), first #### answer")
    ax.set_title(f"{record['task']}, {record['model']}: generations scored by the first ####")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_loss_curves(teacher: Path, specs: list[str], path: Path) -> Path | None:
    """The pipeline's loss-curve panels for runs gathered from several dirs (the first dir per sparsity x loss)."""
    from sparselm.pipeline.report import plot_curves, read_curves
    from sparselm.pipeline.schema import run_name

    runs = [spec.split(":", 3) for spec in specs]
    return plot_curves(read_curves([teacher, *(Path(d) for _, _, _, d in runs)],
                                   ["teacher", *(run_name(float(sp), loss) for _, sp, loss, _ in runs)]), path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="the teacher's dir (predictions_<split>.jsonl)")
    ap.add_argument("--run", action="append", required=True, help="LABEL:SPARSITY:LOSS:DIR")
    ap.add_argument("--baseline", default="ce", help="the label the paired tests compare against")
    ap.add_argument("--splits", default="test,test-unseen")
    ap.add_argument("--name", required=True)
    ap.add_argument("--command", default="")
    ap.add_argument("--device", default="NVIDIA H200")
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--bos-less", action="store_true",
                    help="the runs predate 7f39ccc: their log-likelihoods were computed with BOS-less prompts")
    a = ap.parse_args(argv)
    splits = a.splits.split(",")
    teacher = {s: rescore(read_predictions(Path(a.teacher) / f"predictions_{s}.jsonl")) for s in splits}
    runs, correct = [], {}
    for spec in a.run:
        label, sparsity, loss, d = spec.split(":", 3)
        for s in splits:
            r = rescore(read_predictions(Path(d) / f"predictions_{s}.jsonl"))
            correct[(label, float(sparsity), s)] = r.pop("correct")
            runs.append({"sparsity": float(sparsity), "loss": loss, "label": label, "split": s, **r})
    paired = []
    for (label, sp, s), c in correct.items():
        base = correct.get((a.baseline, sp, s))
        if label != a.baseline and base is not None:
            paired.append({"sparsity": sp, "label": label, "baseline": a.baseline, "split": s,
                           **mcnemar_exact(c, base)})
    for t in teacher.values():
        t.pop("correct")
    record = {"task": "gsm", "model": "smollm2-135m", "metric": "exact_match", "higher_is_better": True,
              "scorer": "first #### answer (sparselm.eval.answers.extract_gsm_answer, 7f39ccc)",
              "dense": teacher["test"]["value"], "dense_all": teacher, "runs": runs, "paired": paired,
              "loglik_prompts": "without BOS (as measured before 7f39ccc)" if a.bos_less else "with BOS",
              "command": a.command, "device": a.device, "notes": a.note}
    out = a.results_dir / f"replication_{a.name}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    _plot(record, out.with_suffix(".png"))
    curves = _plot_loss_curves(Path(a.teacher), a.run, a.results_dir / f"replication_{a.name}_loss_curves.png")
    lines = [f"# gsm, generations scored by the first `####` answer: {a.name}", "",
             f"Dense teacher: {100 * record['dense']:.1f}% on test (as recorded: "
             f"{100 * teacher['test']['value_as_recorded']:.1f}%).", "",
             "| sparsity | run | test EM | as recorded | no answer | runs on after answer | equations wrong "
             "| vs baseline (McNemar) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r["split"] != "test":
            continue
        pr = next((p for p in paired if p["label"] == r["label"] and p["sparsity"] == r["sparsity"]
                   and p["split"] == "test"), None)
        vs = f"{100 * pr['diff']:+.1f}, p = {pr['p_value']:.2g}" if pr else "baseline"
        lines.append(f"| {100 * r['sparsity']:.0f}% | {r['label']} | {100 * r['value']:.1f}% | "
                     f"{100 * r['value_as_recorded']:.1f}% | {100 * r['chains']['no_answer']:.0f}% | "
                     f"{100 * r['run_on']:.0f}% | {100 * r['chains']['equation_error_rate']:.0f}% | {vs} |")
    lines += ["", *[f"- {n}" for n in a.note], "", f"![metric vs sparsity](replication_{a.name}.png)",
              *([f"![loss curves]({curves.name})"] if curves else []), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
