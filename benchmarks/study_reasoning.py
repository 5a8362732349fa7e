"""The paper's loss comparison on a causal LM: dense teacher -> SparseGPT -> sparse fine-tune with CE, CE+KD or
CE+SquareHead, evaluated on held-out splits. A thin wrapper of `sparselm.pipeline` (the same job as
`sparselm run src/sparselm/recipes/reasoning-smollm2.yaml`), kept for its command line.

    # GPU (what produced benchmarks/results/replication_reasoning_fulldata.json, before the end-token fix):
    python benchmarks/study_reasoning.py --model smollm2-135m --data out/data/reasoning --out $OUT/study
    # CPU dry run on a tiny model (seconds):
    python benchmarks/study_reasoning.py --model tiny --data out/data/reasoning --out /tmp/study --quick

Every sparse run starts from the same SparseGPT-pruned teacher with the same steps, learning rate and data; only the
loss differs. Results are written after every run (a time-out still leaves what finished) to <out>/results.json and
<out>/replication_reasoning.json, in the schema of `benchmarks/results/replication_<task>.json`, with report.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def pipeline_recipe(args: argparse.Namespace) -> dict:
    """The pipeline recipe these flags mean (see src/sparselm/recipes/reasoning-smollm2.yaml for the defaults)."""
    model: dict = {"name": args.model}
    if args.model == "tiny":
        model = {"name": "tiny-llama", "tiny": {"hidden_size": 64, "num_layers": 2, "max_positions": args.seqlen}}
    return {"model": model,
            "task": {"name": str(args.data), "num_examples": args.n_train},
            "eval": {"splits": args.splits.split(","), "limit": args.eval_limit, "batch_size": args.eval_batch,
                     "max_new_tokens": 16},
            "teacher": {"epochs": args.teacher_epochs, "lr": args.lr},
            "sparsities": [float(x) for x in args.sparsities.split(",")],
            "losses": args.losses.split(","),
            "sparse": {"epochs": args.sparse_epochs, "lr": args.sparse_lr},
            "pruning": {"method": "sparsegpt", "calib_samples": args.calib},
            "train": {"batch_size": args.batch, "seqlen": args.seqlen, "log_every": 50, "seed": 0,
                      "compile": args.compile, "warmup_ratio": 0.03},
            "output": {"dir": str(args.out), "budget_s": args.budget_s}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", required=True, help="dir with train/validation/test/test-unseen .jsonl")
    p.add_argument("--out", required=True)
    p.add_argument("--sparsities", default="0.75,0.5,0.7,0.6,0.8", help="in priority order")
    p.add_argument("--losses", default="squarehead,ce,kd,none", help="none = SparseGPT only, no fine-tune")
    p.add_argument("--splits", default="test,test-unseen")
    p.add_argument("--teacher-epochs", type=float, default=3.0)
    p.add_argument("--sparse-epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--sparse-lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=96)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--eval-limit", type=int, default=300)
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--budget-s", type=float, default=None, help="stop starting new runs after this many seconds")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny CPU dry run")
    args = p.parse_args()
    if args.quick:
        args.teacher_epochs, args.sparse_epochs, args.n_train, args.eval_limit, args.calib = 0.2, 0.1, 256, 16, 8
    from sparselm.pipeline import validate_pipeline_recipe
    from sparselm.pipeline.run import run_pipeline

    out = Path(args.out)
    legacy, results = out / "replication_reasoning.json", out / "results.json"
    if legacy.is_file() and not results.is_file():  # resume a run of the pre-pipeline script
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(legacy, results)
    run_pipeline(validate_pipeline_recipe(pipeline_recipe(args), "study_reasoning flags"),
                 command=" ".join(["benchmarks/study_reasoning.py", *sys.argv[1:]]))
    data = json.loads(results.read_text())
    data["task"] = "reasoning"
    legacy.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
