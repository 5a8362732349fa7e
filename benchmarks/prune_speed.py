"""Time SparseGPT on a Llama-2-7B-shaped model (random weights from a config, fp16) on one GPU.

    python benchmarks/prune_speed.py --layers 4 --out benchmarks/results/prune_speed.json

128 calibration sequences x 2048 tokens, 50% unstructured. With --layers L < 32 the model keeps the 7B width
(hidden 4096, MLP 11008) but only L blocks; the per-block time is measured and the 32-block time is reported both
as measured-per-block x 32 + the measured fixed cost, and labelled as such.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sparselm.pruning import prune_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--method", default="sparsegpt")
    p.add_argument("--out", default="prune_speed.json")
    args = p.parse_args()
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.layers,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.float16).eval()
    ids = torch.randint(0, cfg.vocab_size, (args.nsamples, args.seqlen))
    calib = [{"input_ids": ids[i:i + args.batch]} for i in range(0, args.nsamples, args.batch)]
    torch.cuda.synchronize()
    t = time.perf_counter()
    rep = prune_model(model, method=args.method, sparsity=0.5, calib=calib, device="cuda", progress=True)
    torch.cuda.synchronize()
    total = time.perf_counter() - t
    # a second, 1-block run isolates the fixed cost (calibration capture forward) from the per-block cost
    cfg1 = LlamaConfig(**{**cfg.to_dict(), "num_hidden_layers": 1})
    with torch.device("cuda"):
        m1 = LlamaForCausalLM(cfg1).to(torch.float16).eval()
    t = time.perf_counter()
    prune_model(m1, method=args.method, sparsity=0.5, calib=calib, device="cuda", progress=False)
    torch.cuda.synchronize()
    one = time.perf_counter() - t
    per_block = (total - one) / max(args.layers - 1, 1)
    est32 = one + 31 * per_block
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "method": args.method,
           "shape": "Llama-2-7B blocks (hidden 4096, MLP 11008, 32 heads), fp16 weights, fp32 solver",
           "nsamples": args.nsamples, "seqlen": args.seqlen, "layers_measured": args.layers,
           "seconds_measured": round(total, 2), "seconds_1_block": round(one, 2),
           "seconds_per_block": round(per_block, 2), "seconds_32_blocks_estimated": round(est32, 1),
           "overall_sparsity": rep["overall"], "goal_seconds": 300,
           "note": "32-block time = 1-block run + 31 x measured per-block time (blocks are identical in cost)"}
    print(json.dumps(res, indent=2))
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
