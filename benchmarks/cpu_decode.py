"""End-to-end greedy decode on the CPU: dense nn.Linear vs SparseLinear on the bitmask SIMD kernels.

    python benchmarks/cpu_decode.py --quick                     # 2 small layers, ~1 min
    python benchmarks/cpu_decode.py                             # TinyLlama-1.1B shape, 4 layers, 75 %
    python benchmarks/cpu_decode.py --model smollm2-135m        # real SmolLM2-135M weights (offline package)
    python benchmarks/cpu_decode.py --plot benchmarks/results/cpu_decode_smollm2_t2_s*.json   # tokens/s vs sparsity

The model is a Llama built from a config with random weights (or a bundled real model); every linear inside the
blocks is magnitude-pruned per layer to --sparsity (embeddings and lm_head stay dense, as in the seed paper),
then decoded by sparselm.runtime.StaticDecoder (eager on CPU) four ways, all on the same pruned weights:
  dense        nn.Linear fp32 (torch / MKL)
  hf_generate_dense  the same dense model through transformers' `generate` (greedy), for reference
  sparse_fp32  SparseLinear, fp32 values, sparselm CPU kernels
  sparse_int8  SparseLinear, int8 values (per-row scales), W dequantized in registers
  sparse_int8_aq  the same with dynamically int8-quantized activations (AVX-512 VNNI)
Check: each engine's greedy tokens vs the dense engine's on a fixed prompt (fraction equal) and the first
step's logits (max |diff| / max |logit|).  Tokens/s = batch * new tokens / wall time after a warm-up.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from sparselm.kernels.cpu import backend as cpu_backend
from sparselm.kernels.cpu import describe
from sparselm.runtime import StaticDecoder, get_backend, register_backend, sparsify
from sparselm.runtime.sparsify import block_linear_names

RESULTS = Path(__file__).resolve().parent / "results"


def build_model(args) -> torch.nn.Module:
    if args.model:
        from sparselm.models.loaders import load_model

        return load_model(args.model)[0]
    from transformers import LlamaConfig, LlamaForCausalLM

    # TinyLlama-1.1B's block shapes (d 2048, MLP 5632, GQA 32/4); --layers of its 22.
    cfg = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=32, num_key_value_heads=4,
                      max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@torch.no_grad()
def prune_magnitude(model: torch.nn.Module, sparsity: float) -> None:
    """Zero the smallest |w| of each block linear (per layer), in place."""
    for name in block_linear_names(model):
        w = model.get_submodule(name).weight
        k = int(sparsity * w.numel())
        if k > 0:
            thresh = w.abs().flatten().kthvalue(k).values
            w.mul_(w.abs() > thresh)


@torch.no_grad()
def run_engine(model, prompt: torch.Tensor, new_tokens: int, repeats: int) -> dict:
    dec = StaticDecoder(model, batch_size=prompt.shape[0], max_len=prompt.shape[1] + new_tokens + 8)
    tokens, logits = dec.generate(prompt, new_tokens, return_logits=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dec.generate(prompt, new_tokens)
        times.append(time.perf_counter() - t0)
    best = sorted(times)[len(times) // 2]
    return {"tokens": tokens, "logits0": logits[0], "tok_s": prompt.shape[0] * new_tokens / best,
            "ms_per_token": best * 1e3 / new_tokens}


@torch.no_grad()
def run_hf_generate(model, prompt: torch.Tensor, new_tokens: int, repeats: int) -> dict:
    """transformers' own greedy `generate` on the dense model (dynamic cache, eager): the baseline a user has."""
    kw = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
          "attention_mask": torch.ones_like(prompt), "pad_token_id": 0}
    out = model.generate(prompt, **kw)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.generate(prompt, **kw)
        times.append(time.perf_counter() - t0)
    best = sorted(times)[len(times) // 2]
    return {"tokens": out, "logits0": None, "tok_s": prompt.shape[0] * new_tokens / best,
            "ms_per_token": best * 1e3 / new_tokens}


def plot_sweep(paths: list[Path], out: Path) -> None:
    """Tokens/s vs sparsity, one line per engine, from several result JSONs of one model (one per sparsity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted((json.loads(p.read_text()) for p in paths), key=lambda r: r["sparsity"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for eng in [r["engine"] for r in runs[0]["rows"]]:
        pts = [(r["sparsity"] * 100, row["tok_s"]) for r in runs for row in r["rows"] if row["engine"] == eng]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=eng)
    ax.set_xlabel("sparsity of the block linears (%)")
    ax.set_ylabel("tokens/s (batch 1, greedy)")
    ax.set_title(f"{runs[0]['model']} on CPU, {runs[0]['threads']} threads, {runs[0]['new_tokens']} new tokens",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plot", type=Path, nargs="+", default=None,
                    help="only draw tokens/s vs sparsity from these result JSONs (PNG beside the first)")
    ap.add_argument("--quick", action="store_true", help="2 layers, 16 new tokens")
    ap.add_argument("--model", default=None, help="bundled model name or local HF dir (default: random Llama)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed generations per engine (median reported)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.plot:
        out = args.plot[0].with_name(args.plot[0].stem.rsplit("_s", 1)[0] + ".png")
        plot_sweep(args.plot, out)
        print(out)
        return
    if args.quick:
        args.layers, args.new_tokens, args.repeats = 2, 16, 3
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    model = build_model(args)
    prune_magnitude(model, args.sparsity)
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt = torch.randint(0, vocab, (args.batch, 8), generator=torch.Generator().manual_seed(0))
    previous = get_backend("cpu")
    engines = {}
    try:
        register_backend("cpu", None)
        engines["dense"] = run_engine(model, prompt, args.new_tokens, args.repeats)
        engines["hf_generate_dense"] = run_hf_generate(model, prompt, args.new_tokens, args.repeats)
        for name, vt, aq in (("sparse_fp32", "float32", False), ("sparse_int8", "int8", False),
                             ("sparse_int8_aq", "int8", True)):
            m = copy.deepcopy(model)
            sparsify(m, values_dtype=vt, cache_dense=False)
            cpu_backend.register(act_quant=aq, threads=threads)
            engines[name] = run_engine(m, prompt, args.new_tokens, args.repeats)
            register_backend("cpu", None)
            del m
    finally:
        register_backend("cpu", previous)

    ref = engines["dense"]
    rows = []
    for name, e in engines.items():
        rows.append({"engine": name, "tok_s": round(e["tok_s"], 3), "ms_per_token": round(e["ms_per_token"], 3),
                     "speedup": round(e["tok_s"] / ref["tok_s"], 3),
                     "tokens_equal": float((e["tokens"] == ref["tokens"]).float().mean()),
                     "logits_rel_diff": None if e["logits0"] is None else
                     float((e["logits0"] - ref["logits0"]).abs().max() / ref["logits0"].abs().max())})
        print(f"# {name}: {rows[-1]['tok_s']:.2f} tok/s ({rows[-1]['speedup']:.2f}x), tokens equal "
              f"{rows[-1]['tokens_equal']:.3f}", file=sys.stderr)
    n_block = sum(model.get_submodule(n).weight.numel() for n in block_linear_names(model))
    result = {"threads": threads, "model": args.model or "random llama", "layers": args.layers,
              "hidden": args.hidden, "intermediate": args.intermediate, "sparsity": args.sparsity,
              "batch": args.batch, "new_tokens": args.new_tokens, "block_linear_params": n_block,
              "lm_head_params": model.get_output_embeddings().weight.numel(), "kernels": describe(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python"] + sys.argv), "rows": rows}
    if args.out or not args.quick:
        out = args.out or RESULTS / "cpu_decode.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
