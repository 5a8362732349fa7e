"""Held-out perplexity of SmolLM2-135M pruned one-shot by each pruner, CPU.

    python benchmarks/ppl_smollm2.py --out benchmarks/results/ppl_smollm2.json

Calibration: 64 windows x 256 tokens of Shakespeare comedies; evaluation: the first 16,384 tokens of three tragedies
(disjoint plays), context 512, stride 512. Targets: 50%, 2:4, 70%. Same calibration windows for every pruner.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--targets", default="0.5,2:4,0.7")
    p.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    args = p.parse_args()
    from sparselm.data.corpora import calibration_text, heldout_text
    from sparselm.eval.perplexity import perplexity
    from sparselm.models import load_model
    from sparselm.pruning import prune_model

    model, tok = load_model("smollm2-135m")
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    held, calib = heldout_text(), calibration_text()

    def ppl() -> float:
        return perplexity(model, tok, text=held, context_length=512, stride=512,
                          max_tokens=args.eval_tokens)["perplexity"]

    res = {"model": "smollm2-135m (GGUF Q4_1 dequantized to fp32)", "device": "cpu", "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
           "calibration": f"{args.nsamples} x {args.seqlen} tokens, Shakespeare comedies/histories",
           "heldout": f"first {args.eval_tokens} tokens of Lear, Romeo and Juliet, Coriolanus; context 512, stride 512",
           "dense_ppl": ppl(), "rows": []}
    print(f"dense ppl {res['dense_ppl']:.2f}", flush=True)
    for target in args.targets.split(","):
        for method in args.methods.split(","):
            model.load_state_dict(dense)
            kw = {"pattern": target, "sparsity": None} if ":" in target else {"sparsity": float(target)}
            t = time.perf_counter()
            rep = prune_model(model, method=method, calib=calib, tokenizer=tok, nsamples=args.nsamples,
                              seqlen=args.seqlen, device="cpu", progress=False, **kw)
            row = {"method": method, "target": target, "overall_sparsity": rep["overall"], "ppl": ppl(),
                   "prune_s": round(time.perf_counter() - t, 1)}
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
            with open(args.out, "w") as f:
                json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
