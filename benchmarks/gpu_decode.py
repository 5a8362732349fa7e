"""End-to-end greedy decode (batch 1, or --batch B sequences), Llama-2-7B-shaped model with random fp16 weights.

    PYTHONPATH=src python benchmarks/gpu_decode.py --out $OUT/gpu_decode.json              # 7B shape (~2 min)
    PYTHONPATH=src python benchmarks/gpu_decode.py --layers 2 --out /tmp/d.json            # smoke
    PYTHONPATH=src python benchmarks/gpu_decode.py --model smollm2-135m --out $OUT/gpu_decode_smollm2.json
    PYTHONPATH=src python benchmarks/gpu_decode.py --sparsities 0 --patterns 2:4,2:8,1:4 --out $OUT/d.json  # N:M
    PYTHONPATH=src python benchmarks/gpu_decode.py --batch 16 --sparsities 0 --patterns 2:4,1:4 --out $OUT/d16.json
                                                # 16 sequences at once: tokens/s summed over them (batched kernels)
    python benchmarks/gpu_decode.py --plot benchmarks/results/gpu_decode.json       # PNG beside a result (any machine)

Rates per row: tokens_per_s, the new tokens over a whole generate call (prefill included; each engine replays its
prefill from a graph unless --eager-prefill), and from the same run decode_tokens_per_s (batch / per-step time of
the single-token steps, CUDA events), step_ms and prefill_ms.
Engines: "sparselm-dense" (runtime.StaticDecoder over nn.Linear, CUDA graph, fused Triton elementwise ops;
"sparselm-dense-eager-ops": the same with PyTorch's eager elementwise ops), "sparselm-sparse" (the same loop
over SparseLinear: per shape, the Triton kernel autotune measured fastest — bitmask, csr8, vc32, grp8 — or
cuBLAS), "hf-generate" (transformers generate, dynamic cache, dense).
Sparsity: per-layer magnitude pruning of every linear inside the blocks (embeddings / lm_head dense), or N:M
magnitude masks (--patterns: the nmcu kernel's case). Check:
the sparse engine's logits vs the dense engine on the same sparse weights (max |diff| relative to max |logit|)
and the fraction of equal greedy tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def llama7b_config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)


@torch.no_grad()
def prune_magnitude(model, sparsity: float) -> None:
    """Zero the smallest |w| of each block linear (per layer), in place; nested across rising sparsities."""
    from sparselm.runtime.sparsify import block_linear_names

    for name in block_linear_names(model):
        w = model.get_submodule(name).weight
        kth = max(1, int(sparsity * w.numel()))
        # a sort: kthvalue took ~0.2 s per 7B-sized layer on the H200 (45 s per sparsity level)
        thresh = w.abs().flatten().sort().values[kth - 1].float() if sparsity > 0 else -1.0
        w.mul_(w.abs().float() > thresh)


@torch.no_grad()
def prefix_logit_diff(tokens: torch.Tensor, ref_tokens: torch.Tensor, logits: torch.Tensor,
                      ref_logits: torch.Tensor, prompt_len: int) -> tuple[list[int], float]:
    """(equal generated tokens per sequence, the largest |logit difference| over the decode steps each sequence
    took on the same inputs as the reference). tokens (B, prompt + steps); logits (steps, B, vocab), step 0 = the
    prefill. Why per sequence: a sequence that took another token on a near-tie sees other inputs from then on,
    and comparing it further measures that, not the kernels (a batch-16 check once reported a 1.1 difference so)."""
    same_rows, diff = [], 0.0
    for r in range(tokens.shape[0]):
        gen, ref_gen = tokens[r, prompt_len:], ref_tokens[r, prompt_len:]
        same = int((gen != ref_gen).nonzero()[0, 0]) if bool((gen != ref_gen).any()) else gen.numel()
        steps = slice(1, max(2, min(same + 1, logits.shape[0])))  # the decode steps fed the equal tokens
        diff = max(diff, (logits[steps, r] - ref_logits[steps, r]).abs().max().item())
        same_rows.append(same)
    return same_rows, diff


def rates(dec, new_tokens: int) -> dict:
    """One timed generate: tokens_per_s over the whole call (the 16-token prefill included, as in every record
    before session 29), and from the same run decode_tokens_per_s (steady-state: batch / per-step time),
    step_ms and prefill_ms."""
    r = dec.throughput(16, new_tokens)
    out = {"tokens_per_s": round(r["tokens_per_s"], 1)}
    if "step_ms" in r:
        out.update(decode_tokens_per_s=round(r["decode_tokens_per_s"], 1), step_ms=round(r["step_ms"], 4),
                   prefill_ms=round(r["prefill_ms"], 2))
    return out


def without_pdl(model, max_len: int, new_tokens: int, row: dict, check, batch: int = 1) -> dict:
    """The same engine with programmatic dependent launch off: row's fields, engine + "-no-pdl", its tokens/s; with
    check = (prompt, tokens) also how many of the 32 greedy tokens match those of the PDL run."""
    from sparselm.runtime import StaticDecoder

    dec = StaticDecoder(model, max_len=max_len, pdl=False, batch_size=batch)
    out = dict(row, engine=row["engine"] + "-no-pdl", pdl=False, **rates(dec, new_tokens))
    if check is not None:
        prompt, tokens = check
        out["same_tokens_as_pdl"] = int((dec.generate(prompt, 32) == tokens).all(0).sum()) - prompt.shape[1]
    return out


@torch.no_grad()
def zero_fraction(model) -> float:
    """The fraction of zero weights over the block linears: the sparsity a row really ran at."""
    from sparselm.runtime.sparsify import block_linear_names

    zeros = total = 0
    for name in block_linear_names(model):
        w = model.get_submodule(name).weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(1, total)


@torch.no_grad()
def prune_nm(model, pattern: str) -> None:
    """Keep the largest |w| of every N in M consecutive inputs of each block linear (N:M), in place."""
    from sparselm.runtime.sparsify import block_linear_names
    from sparselm.sparsity.masks import parse_pattern, select_nm

    n, m = parse_pattern(pattern)
    for name in block_linear_names(model):
        w = model.get_submodule(name).weight
        w.mul_(~select_nm(w.abs().float(), n, m))


def plot(path: Path) -> Path:
    """Bars: each sparse-engine variant's tokens/s over the same engine dense at its sparsity level (same run), its
    tokens/s written on it; the PNG beside the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    rows = data["rows"]
    dense = {(r["sparsity"], r.get("mask")): r["tokens_per_s"] for r in rows if r["engine"] == "sparselm-dense"}
    sparse = [r for r in rows if r["engine"] == "sparselm-sparse"]
    names = [(f"{r['sparsity']:.0%}" if r.get("mask") in (None, "magnitude") else r["mask"]) + f"\n{r['values']}"
             for r in sparse]
    ratios = [r["tokens_per_s"] / dense[(r["sparsity"], r.get("mask"))] for r in sparse]
    colors = {"float16": "tab:blue", "bfloat16": "tab:cyan", "int8": "tab:orange", "int4": "tab:green"}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(sparse) + 2), 4.2))
    # decode steps alone (records from session 29 on): a hatched bar beside each whole-call bar
    steps = all("decode_tokens_per_s" in r for r in rows if r["engine"] in ("sparselm-dense", "sparselm-sparse"))
    w = 0.4 if steps else 0.8
    ax.bar([i - (w / 2 if steps else 0) for i in range(len(sparse))], ratios, width=w,
           color=[colors.get(r["values"], "gray") for r in sparse], label="whole generate call (prefill included)")
    for i, r in enumerate(sparse):
        ax.text(i - (w / 2 if steps else 0), ratios[i] + 0.03, f"{r['tokens_per_s']:.0f}", ha="center", fontsize=7)
    if steps:
        dsteps = {(r["sparsity"], r.get("mask")): r["decode_tokens_per_s"] for r in rows
                  if r["engine"] == "sparselm-dense"}
        dr = [r["decode_tokens_per_s"] / dsteps[(r["sparsity"], r.get("mask"))] for r in sparse]
        ax.bar([i + w / 2 for i in range(len(sparse))], dr, width=w, hatch="//", edgecolor="k",
               color=[colors.get(r["values"], "gray") for r in sparse], label="decode steps")
        for i, r in enumerate(sparse):
            ax.text(i + w / 2, dr[i] + 0.03, f"{r['decode_tokens_per_s']:.0f}", ha="center", fontsize=7)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(2.5, color="r", ls="--", lw=0.8, label="goal at 75%: 2.5x")
    ax.set_xticks(range(len(sparse)), names, fontsize=7)
    lo, hi = min(dense.values()), max(dense.values())
    ax.set(ylabel="tokens/s over the same engine dense (x)",
           title=f"{sparse[0]['model'] if sparse else ''}: batch {data.get('batch', 1)}, {data.get('device', '')} "
                 "(numbers: sparse tokens/s;"
                 f" dense {lo:.0f}-{hi:.0f})")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


def engine_ab(decoder, args, prompt, tokens, row) -> list[dict]:
    """The sparse engine with and without its options (glu: silu * up in the gate/up product; no-buckets: one
    attention split for every position; with --norm-ab, glu+norm: add + RMSNorm in o_proj / down_proj; default:
    StaticDecoder's choices; --ab-engines: a subset), timed round-robin
    `args.engine_ab` times: one engine timed after another drifts by a few percent (session 26's glu A/B
    disagreed between runs), alternation and medians do not."""
    combos = {"default": {}, "no-buckets": {"attn_buckets": False}, "glu": {"glu": True}, "no-glu": {"glu": False}}
    if args.norm_ab:
        combos["glu+norm"] = {"glu": True, "norm_epilogue": True}
    if args.ab_engines:
        pick = ["default", *(k for k in args.ab_engines.split(",") if k and k != "default")]
        unknown = [k for k in pick if k not in combos]
        if unknown:
            raise SystemExit(f"--ab-engines: unknown {unknown}; known: {sorted(combos)}")
        combos = {k: combos[k] for k in pick}
    engines = {k: decoder(**kw) for k, kw in combos.items()}
    times = {k: [] for k in combos}
    steps = {k: [] for k in combos}
    for _ in range(args.engine_ab):
        for k, dec in engines.items():
            r = rates(dec, args.new_tokens)
            times[k].append(r["tokens_per_s"])
            steps[k].append(r.get("decode_tokens_per_s", 0.0))
    out = []
    for k, dec in engines.items():
        same = int((dec.generate(prompt, 32) == tokens).all(1).sum())
        med, dmed = statistics.median(times[k]), statistics.median(steps[k])
        out.append({**row, "engine": f"sparselm-sparse-ab-{k}", "tokens_per_s": round(med, 1),
                    "tokens_per_s_rounds": times[k], "decode_tokens_per_s": round(dmed, 1),
                    "decode_tokens_per_s_rounds": steps[k], "same_tokens_as_default": same})
        print(f"  A/B {k:12s} median {med:7.1f} tok/s ({dmed:7.1f} decode steps) over {len(times[k])} rounds "
              f"({min(times[k]):.1f}-{max(times[k]):.1f}); {same}/{args.batch} sequences as the default engine",
              flush=True)
    del engines
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_decode.json"))
    ap.add_argument("--layers", type=int, default=32, help="decoder layers (32 = Llama-2-7B)")
    ap.add_argument("--model", default="", help="a bundled real model instead (e.g. smollm2-135m: its package "
                    "must be installed)")
    ap.add_argument("--sparsities", default="0,0.5,0.7,0.75,0.8")
    ap.add_argument("--patterns", default="", help="then N:M masks, least sparse first, e.g. 2:4,2:8,1:4 (each "
                    "prunes the previous weights further; rows carry mask = the pattern)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1, help="sequences decoded together (tokens/s: summed over them; "
                    "HF generate stays at batch 1)")
    ap.add_argument("--int8", action="store_true", help="also int8 values (per-row scales) at 75%%")
    ap.add_argument("--engine-ab", "--epilogue-ab", dest="engine_ab", type=int, default=0, metavar="ROUNDS",
                    help="also each sparse engine with and without its glu epilogue and attention buckets (4 "
                    "engines), timed in ROUNDS alternating rounds in the same run (rows '...-ab-', medians)")
    ap.add_argument("--norm-ab", action="store_true", help="the A/B also runs the norm epilogue (glu+norm)")
    ap.add_argument("--ab-engines", default="", help="only these A/B engines besides default, e.g. no-glu "
                    "(no-buckets, glu, no-glu, glu+norm with --norm-ab)")
    ap.add_argument("--int4", action="store_true", help="also int4 values (128-column scale groups) at 75%%")
    ap.add_argument("--pdl-compare", action="store_true", help="also each engine without programmatic dependent "
                    "launch (rows '...-no-pdl'), timed in the same run")
    ap.add_argument("--eager-prefill", action="store_true", help="run the prompt's forward eagerly (records before "
                    "session 29 did): by default each engine replays it from a graph (StaticDecoder prefill_graph)")
    ap.add_argument("--plot", type=Path, help="only draw the PNG for an existing result JSON")
    args = ap.parse_args()
    if args.plot is not None:
        print(plot(args.plot))
        return
    if not torch.cuda.is_available():
        sys.exit("gpu_decode.py: needs a CUDA GPU")
    import transformers
    import triton
    from transformers import LlamaForCausalLM

    from sparselm.runtime import StaticDecoder, densify, sparsify
    from sparselm.runtime.gpu_backend import GLU

    torch.manual_seed(0)
    t0 = time.time()
    if args.model:  # a real model from the offline packages (e.g. smollm2-135m), fp16 on the GPU
        from sparselm.models.loaders import load_model

        model, tok = load_model(args.model)
        model = model.to("cuda", torch.float16).eval()
        name = f"{args.model} (real weights, fp16)"
        ids = tok("Question: A farmer has 3 cows and 5 hens. How many legs are there?", return_tensors="pt")
        prompt = ids["input_ids"][:, :16].to("cuda").repeat(args.batch, 1)  # > 16 tokens in any BPE here
    else:
        with torch.device("cuda"):
            torch.set_default_dtype(torch.float16)
            model = LlamaForCausalLM(llama7b_config(args.layers)).eval()
            torch.set_default_dtype(torch.float32)
        name = f"llama-2-7b-shape ({args.layers} layers, random fp16)"
        prompt = torch.randint(0, 32000, (args.batch, 16), device="cuda")
    def decoder(**kw):  # the engine at this run's batch
        return StaticDecoder(model, max_len=max_len, batch_size=args.batch, prefill_graph=not args.eager_prefill,
                             **kw)

    for p in model.parameters():  # HF init: N(0, 0.02) weights, unit norms; inference only
        p.requires_grad_(False)
    print(f"built in {time.time() - t0:.0f} s", flush=True)
    rows, checks = [], []
    max_len = 16 + args.new_tokens + 8
    hf_done = False
    plan = [(float(x), "magnitude") for x in args.sparsities.split(",") if x] + [
        (1 - int(p.split(":")[0]) / int(p.split(":")[1]), p.strip()) for p in args.patterns.split(",") if p]
    from sparselm.runtime.sparsify import block_linear_names
    # every level prunes the model's original weights: an N:M mask applied on top of an earlier level's zeros
    # compounds (1:4 after 80% magnitude leaves ~85% zeros), which is how records before this fix measured their
    # N:M rows when --patterns followed --sparsities (BENCHMARKS.md says which)
    original = {n_: model.get_submodule(n_).weight.detach().clone() for n_ in block_linear_names(model)}
    for s, mask in plan:
        print(f"[{time.time() - t0:.0f}s] sparsity {s} ({mask})", flush=True)
        with torch.no_grad():
            for n_, w in original.items():
                model.get_submodule(n_).weight.copy_(w)
        if mask == "magnitude":
            prune_magnitude(model, s)
        else:
            prune_nm(model, mask)
        measured = zero_fraction(model)
        if abs(measured - s) > 0.01:
            raise RuntimeError(f"gpu_decode: sparsity {s} ({mask}) left {measured:.4f} of the block weights zero")
        dec = decoder()
        r = rates(dec, args.new_tokens)
        tps = r["tokens_per_s"]
        rows.append({"model": name, "sparsity": s, "mask": mask, "engine": "sparselm-dense", "values": "float16",
                     "measured_sparsity": round(measured, 4), "pdl": dec.pdl, **r})
        if args.pdl_compare and dec.pdl:
            rows.append(without_pdl(model, max_len, args.new_tokens, rows[-1], None, args.batch))
            print(f"s={s:.2f} dense engine without PDL {rows[-1]['tokens_per_s']:7.1f} tok/s", flush=True)
        if s == 0:  # the same loop with eager elementwise ops: what the fused Triton kernels save
            eager = decoder(fused_ops=False)
            rows.append({"model": name, "sparsity": s, "engine": "sparselm-dense-eager-ops", "values": "float16",
                         **rates(eager, args.new_tokens)})
            print(f"s=0.00 dense engine, eager ops {rows[-1]['tokens_per_s']:7.1f} tok/s", flush=True)
            del eager
        ref_tokens, ref_logits = dec.generate(prompt, 32, return_logits=True)
        del dec
        print(f"s={s:.2f} dense engine {tps:7.1f} tok/s ({r.get('decode_tokens_per_s')} decode steps, prefill "
              f"{r.get('prefill_ms')} ms)", flush=True)
        if not hf_done:
            ids = prompt[:1]
            model.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)  # warm-up
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            model.generate(ids, max_new_tokens=64, do_sample=False, min_new_tokens=64)
            torch.cuda.synchronize()
            rows.append({"model": name, "sparsity": s, "engine": "hf-generate", "values": "float16", "batch": 1,
                         "tokens_per_s": round(64 / (time.perf_counter() - t1), 1)})
            print(f"hf generate {rows[-1]['tokens_per_s']} tok/s", flush=True)
            hf_done = True
        if s == 0:
            continue
        variants = [("float16", None)] + ([("int8", None)] if args.int8 and s == 0.75 else []) + (
            [("int4", 128)] if args.int4 and s == 0.75 else [])  # quantized: logits differ by quantization error
        # the pruned fp16 weights, restored after each variant: densify() returns a quantized variant's rounded
        # values, which would make the next variant's reference (and its logit check) the rounded model
        kept = {n_: model.get_submodule(n_).weight.detach().clone() for n_ in block_linear_names(model)}
        for vdt, gs in variants:
            sparsify(model, values_dtype=vdt, group_size=gs)
            print(f"[{time.time() - t0:.0f}s] sparsified ({vdt})", flush=True)
            dec = decoder()  # its fused q/k/v and gate/up are new shapes: tune them too
            # the model's and the decoder's fused shapes, then the gate/up's glu launch against product + silu_mul
            table = dec.autotune(batches=tuple(sorted({1, 16, args.batch})))
            paths = {f"{k[0]}x{k[1]} b{k[2]}{GLU if k[3].endswith(GLU) else ''}":
                     v["cfg"].key() if v["path"] == "sparse" and v["cfg"] else v["path"]
                     for k, v in table.items()}  # the kernel config each shape runs
            print(f"[{time.time() - t0:.0f}s] autotuned: {paths}", flush=True)
            r = rates(dec, args.new_tokens)
            tps = r["tokens_per_s"]
            tokens, logits = dec.generate(prompt, 32, return_logits=True)
            pdl_on = dec.pdl
            del dec
            if args.engine_ab:
                rows.extend(engine_ab(decoder, args, prompt, tokens, {"model": name, "sparsity": s, "mask": mask,
                                                                         "values": vdt}))
            if args.pdl_compare and pdl_on:
                rows.append(without_pdl(model, max_len, args.new_tokens,
                                        {"model": name, "sparsity": s, "mask": mask, "engine": "sparselm-sparse",
                                         "values": vdt, "measured_sparsity": round(measured, 4)}, (prompt, tokens),
                                        args.batch))
                print(f"s={s:.2f} sparse engine ({vdt}) without PDL {rows[-1]['tokens_per_s']:7.1f} tok/s, "
                      f"{rows[-1]['same_tokens_as_pdl']}/32 tokens as with PDL", flush=True)
            densify(model, torch.float16)  # a quantized variant's rounded values: the kernels' own reference
            vref_tokens, vref_logits = ref_tokens, ref_logits
            if vdt not in ("float16", "bfloat16"):
                vref = decoder()
                vref_tokens, vref_logits = vref.generate(prompt, 32, return_logits=True)
                del vref
                q_diff = (ref_logits[0] - vref_logits[0]).abs().max().item() / ref_logits.abs().max().item()
                print(f"  {vdt} rounding alone moves the first-step logits by {q_diff:.1e} (fp16 weights' engine)")
            scale = vref_logits.abs().max().item()
            diff = (logits[0] - vref_logits[0]).abs().max().item() / scale
            agree = (tokens == vref_tokens).float().mean().item()
            same_rows, ddiff = prefix_logit_diff(tokens, vref_tokens, logits, vref_logits, prompt.shape[1])
            ddiff /= scale
            same = same_rows[0]
            rows.append({"model": name, "sparsity": s, "mask": mask, "engine": "sparselm-sparse", "values": vdt,
                         "measured_sparsity": round(measured, 4), "pdl": pdl_on, **r, "dispatch": paths})
            checks.append({"sparsity": s, "mask": mask, "values": vdt, "reference": "dense engine, same weights"
                           + (" (rounded to the values dtype)" if vref_tokens is not ref_tokens else ""),
                           "first_step_logit_maxdiff_rel": diff,
                           "decode_logit_maxdiff_rel": ddiff, "identical_prefix_tokens": same,
                           "identical_prefix_tokens_by_sequence": same_rows,
                           "token_agreement_32": agree})
            dense_r = [x for x in rows if x["sparsity"] == s and x.get("mask") == mask
                       and x["engine"] == "sparselm-dense"][0]
            dense_tps = dense_r["tokens_per_s"]
            if "decode_tokens_per_s" in r:
                print(f"  decode steps: {r['decode_tokens_per_s']:7.1f} tok/s = "
                      f"{r['decode_tokens_per_s'] / dense_r['decode_tokens_per_s']:.2f}x dense engine's; prefill "
                      f"{r['prefill_ms']} ms (dense {dense_r['prefill_ms']} ms)", flush=True)
            print(f"s={s:.2f} sparse engine ({vdt}) {tps:7.1f} tok/s = {tps / dense_tps:.2f}x dense engine; "
                  f"decode logit diff {ddiff:.1e} (equal prefix: {min(same_rows)}-{max(same_rows)} tokens), "
                  f"token agreement {agree:.2f}",
                  flush=True)
            with torch.no_grad():
                for n_, w in kept.items():
                    model.get_submodule(n_).weight.copy_(w)
        del kept
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"partial": True, "rows": rows, "checks": checks}, indent=1))
    res = {"device": torch.cuda.get_device_name(), "rows": rows, "checks": checks, "batch": args.batch,
           "prompt_tokens": 16, "new_tokens": args.new_tokens, "prefill_graph": not args.eager_prefill,
           "rates": "tokens_per_s: new tokens over the whole generate call, prefill included; decode_tokens_per_s: "
                    "batch / per-step time of the single-token steps, same run (CUDA events)",
           "command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "versions": {"torch": torch.__version__, "triton": triton.__version__,
                        "transformers": transformers.__version__, "python": platform.python_version()},
           "wall_s": round(time.time() - t0, 1)}
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out} and {plot(args.out)}")


if __name__ == "__main__":
    main()
