"""The paper's loss comparison on a causal LM: dense teacher -> SparseGPT -> sparse fine-tune with CE, CE+KD or
CE+SquareHead, evaluated on held-out splits. One script per device call: everything it needs is rebuilt inside it.

    # GPU (what produced benchmarks/results/replication_reasoning.json):
    python benchmarks/study_reasoning.py --model smollm2-135m --data out/data/reasoning --out $OUT/study
    # CPU dry run on a tiny model (seconds):
    python benchmarks/study_reasoning.py --model tiny --data out/data/reasoning --out /tmp/study --quick

Every sparse run starts from the same SparseGPT-pruned teacher with the same steps, learning rate and data; only the
loss differs. Results are written after every run (a time-out still leaves what finished), in the schema of
`benchmarks/results/replication_<task>.json`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

LOSSES = {"squarehead": {"ce": 1.0, "kd": 0.0, "squarehead": 1.0},
          "ce": {"ce": 1.0, "kd": 0.0, "squarehead": 0.0},
          "kd": {"ce": 1.0, "kd": 1.0, "squarehead": 0.0}}


def base_recipe(args, model: str, out: Path) -> dict:
    r = {"model": {"name": model},
         "data": {"source": "jsonl", "path": str(Path(args.data) / "train.jsonl"), "num_examples": args.n_train,
                  "calib_samples": args.calib},
         "optim": {"lr": args.lr},
         "schedule": {"warmup_ratio": 0.03, "decay": "linear"},
         "train": {"batch_size": args.batch, "seqlen": args.seqlen, "log_every": 50, "seed": 0,
                   "compile": args.compile},
         "output": {"dir": str(out)}}
    if model == "tiny":
        r["model"] = {"name": "tiny-llama", "tiny": {"hidden_size": 64, "num_layers": 2, "vocab_size": None,
                                                     "max_positions": args.seqlen}}
    return r


def evaluate_dir(model_dir: Path, args, tokenizer=None) -> dict:
    from sparselm.eval import evaluate
    from sparselm.models import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_model(model_dir, device=device)
    res = {}
    for split in args.splits:
        r = evaluate(model, tok, str(args.data), split=split, limit=args.eval_limit, batch_size=args.eval_batch,
                     loglik=True, max_new_tokens=16, progress=False)
        res[split] = {k: v for k, v in r.items() if k != "predictions"}
    del model
    return res


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
    p.add_argument("--budget-s", type=float, default=1e9, help="stop starting new runs after this many seconds")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny CPU dry run")
    args = p.parse_args()
    args.splits = args.splits.split(",")
    if args.quick:
        args.teacher_epochs, args.sparse_epochs, args.n_train, args.eval_limit, args.calib = 0.2, 0.1, 256, 16, 8
    from sparselm.recipes.schema import validate_finetune_recipe
    from sparselm.train import finetune as _finetune

    def finetune(rec: dict):
        return _finetune(validate_finetune_recipe(rec))

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"task": "reasoning", "model": args.model, "metric": "exact_match", "higher_is_better": True,
              "dense": None, "runs": [], "settings": vars(args), "command": " ".join(sys.argv),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "timings": {}}

    def save() -> None:
        (out / "replication_reasoning.json").write_text(json.dumps(result, indent=2) + "\n")

    prev = out / "replication_reasoning.json"
    if prev.exists():  # resume: keep finished runs, skip them below
        old = json.loads(prev.read_text())
        result.update({k: old[k] for k in ("dense", "dense_all", "runs", "timings") if k in old})
    done = {(r["sparsity"], r["loss"]) for r in result["runs"]}

    # 1. dense teacher: the dense model fine-tuned on the task (reused when already there)
    teacher_dir = out / "teacher"
    if not (teacher_dir / "config.json").exists():
        rec = base_recipe(args, args.model, teacher_dir)
        rec["train"]["epochs"] = args.teacher_epochs
        t = time.perf_counter()
        finetune(rec)
        result["timings"]["teacher_s"] = round(time.perf_counter() - t, 1)
        shutil.rmtree(teacher_dir / "checkpoints", ignore_errors=True)
    if result.get("dense") is None:
        dense = evaluate_dir(teacher_dir, args)
        result["dense"] = dense[args.splits[0]].get("exact_match")
        result["dense_all"] = dense
    print(f"[{time.perf_counter() - t0:6.0f}s] teacher: {result['dense_all']}", flush=True)
    save()

    for s in [float(x) for x in args.sparsities.split(",")]:
        for loss in args.losses.split(","):
            if (s, loss) in done:
                continue
            if time.perf_counter() - t0 > args.budget_s:
                print(f"budget reached: skipping sparsity {s} {loss}", flush=True)
                continue
            run_dir = out / f"s{int(s * 100)}-{loss}"
            t = time.perf_counter()
            if loss == "none":  # SparseGPT only, no fine-tuning
                from sparselm.models import load_model
                from sparselm.pruning import prune_model
                from sparselm.train.setup import load_examples  # noqa: F401  (same calibration items)
                from sparselm.data import read_jsonl

                device = "cuda" if torch.cuda.is_available() else "cpu"
                model, tok = load_model(teacher_dir, device=device)
                items = read_jsonl(Path(args.data) / "train.jsonl")[: args.calib]
                texts = [it["prompt"] + it["completion"] for it in items]
                prune_model(model, method="sparsegpt", sparsity=s, calib=texts * 4, tokenizer=tok,
                            nsamples=args.calib, seqlen=min(64, args.seqlen), device=device, progress=False)
                model.save_pretrained(run_dir)
                tok.save_pretrained(run_dir)
                del model
            else:
                rec = base_recipe(args, str(teacher_dir), run_dir)
                rec["teacher"] = {"source": "path", "path": str(teacher_dir)}
                rec["pruning"] = {"method": "sparsegpt", "stages": [{"sparsity": s, "epochs": args.sparse_epochs}]}
                rec["loss"] = LOSSES[loss]
                rec["optim"]["lr"] = args.sparse_lr
                finetune(rec)
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            train_s = time.perf_counter() - t
            ev = evaluate_dir(run_dir, args)
            for split, r in ev.items():
                result["runs"].append({"sparsity": s, "loss": loss, "split": split, "value": r.get("exact_match"),
                                       "loglik_per_token": r.get("loglik_per_token"), "metrics": r,
                                       "train_s": round(train_s, 1)})
            print(f"[{time.perf_counter() - t0:6.0f}s] s={s} {loss}: " +
                  ", ".join(f"{k} em={v.get('exact_match')} ll={v.get('loglik_per_token'):.3f}" for k, v in ev.items()), flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)  # weights are not kept: only the numbers come back
            save()
    result["timings"]["total_s"] = round(time.perf_counter() - t0, 1)
    save()


if __name__ == "__main__":
    main()
