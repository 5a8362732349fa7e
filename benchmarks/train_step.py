"""Training-step time of sparse fine-tuning: CE-only vs CE+KD vs CE+SquareHead, same model, same batch, same run.

    # GPU (SmolLM2-135M-shaped Llama, batch 32 x 256, bf16 autocast + fp32 master weights, fused AdamW):
    python benchmarks/train_step.py --out benchmarks/results/train_step_h200.json
    # a real model directory instead of the random-init shape:
    python benchmarks/train_step.py --model path/to/hf_dir --out benchmarks/results/train_step_smollm2.json
    # CPU smoke test (tiny shapes, a few steps):
    python benchmarks/train_step.py --tiny --out /tmp/train_step_cpu.json

Each mode runs the training loop's own pieces (`ObjectiveStep`, AdamW, the FixedMask post-step hook) on a model
whose block linears are 50% magnitude-pruned; the teacher is the dense model (bf16 on GPU, frozen; in CE+SquareHead
mode its forward stops after the last block). KD runs at T=2. Times are CUDA
events around `--steps` full optimizer steps after `--warmup` steps; peak memory is torch's max allocated per mode.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

MODES = {"ce": {"ce": 1.0}, "ce+kd": {"ce": 1.0, "kd": 1.0}, "ce+squarehead": {"ce": 1.0, "squarehead": 1.0}}


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.tiny:
        cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=128, vocab_size=256, tie_word_embeddings=True)
    else:  # SmolLM2-135M's shape
        cfg = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                          max_position_embeddings=2048, rope_theta=100000.0)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).float()


@torch.no_grad()
def magnitude_prune_(model: torch.nn.Module, sparsity: float) -> None:
    """Zero the smallest-|w| fraction of each block linear (a stand-in for SparseGPT: timing only needs zeros)."""
    from sparselm.models import get_adapter

    for mod in get_adapter(model).prunable_linears(model).values():
        w = mod.weight
        k = int(w.numel() * sparsity)
        if k:
            thr = w.abs().flatten().kthvalue(k).values
            w.mul_(w.abs() > thr)


def time_mode(name: str, weights: dict[str, float], student, teacher, batch, args, device) -> dict:
    from sparselm.distill import DistillationLoss
    from sparselm.models import get_adapter
    from sparselm.train.mask import FixedMask
    from sparselm.train.optim import build_adamw
    from sparselm.train.step import ObjectiveStep, compile_blocks

    cuda = device.type == "cuda"
    adapter = get_adapter(student)
    mask = FixedMask.from_zeros(student, adapter.prunable_linears(student))
    opt = build_adamw(student.parameters(), 1e-5, device_type=device.type)
    loss = DistillationLoss(weights, {"kd": {"temperature": 2.0}})
    if args.compile:  # regional: blocks compiled, hooks eager (see sparselm.train.step.compile_blocks)
        compile_blocks(student, adapter)
    obj = ObjectiveStep(student, student, adapter, loss, teacher if loss.needs_teacher else None,
                        teacher_bf16=cuda and not args.teacher_fp32)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    def step() -> torch.Tensor:
        with autocast:
            total, _ = obj(batch)
        total.backward()
        opt.step()
        mask.apply_(opt)
        opt.zero_grad(set_to_none=True)
        return total.detach()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            last = step()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            last = step()
            times.append((time.perf_counter() - t0) * 1e3)
    top = profile_steps(step, device, args.profile) if args.profile else None
    mask.verify()
    obj.close()
    ms = statistics.median(times)
    tokens = batch["input_ids"].numel()
    return {"mode": name, "weights": weights, "step_ms_median": ms, "step_ms_mean": statistics.fmean(times),
            "tokens_per_s": tokens / (ms / 1e3), "loss_last": float(last),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            **({"profile_top": top} if top is not None else {})}


def profile_steps(step, device: torch.device, n: int) -> list[dict]:
    """torch.profiler over `n` more steps: the 15 ops with the most self device time (CPU time on CPU), to show
    whether a step is bound by kernels or by Python/launch overhead."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:15]
    return [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key, 0) / 1e3 / n,
             "cpu_total_ms": e.cpu_time_total / 1e3 / n} for e in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON result path")
    ap.add_argument("--model", default=None, help="local HF causal-LM directory (default: SmolLM2-135M shape)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes for a CPU smoke test")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 32; tiny 4)")
    ap.add_argument("--seqlen", type=int, default=None, help="tokens per sequence (default 256; tiny 32)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20; tiny 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; tiny 1)")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {list(MODES)}")
    ap.add_argument("--compile", action="store_true", help="torch.compile the student's (and teacher's) blocks")
    ap.add_argument("--teacher-fp32", action="store_true", help="keep the GPU teacher in fp32 (default bf16)")
    ap.add_argument("--profile", type=int, default=0, help="profile this many extra steps per mode (0: off)")
    args = ap.parse_args(argv)
    args.batch = args.batch or (4 if args.tiny else 32)
    args.seqlen = args.seqlen or (32 if args.tiny else 256)
    args.steps = args.steps or (3 if args.tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    student = build_model(args)
    teacher = copy.deepcopy(student).to(device)  # the dense model, frozen (bf16 on GPU inside ObjectiveStep)
    magnitude_prune_(student, args.sparsity)
    if args.compile:
        from sparselm.models import get_adapter
        from sparselm.train.step import compile_blocks

        compile_blocks(teacher, get_adapter(teacher))
    student.to(device).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, student.config.vocab_size, (args.batch, args.seqlen), generator=g)
    labels = ids.clone()
    labels[:, : args.seqlen // 4] = -100  # a prompt quarter carries no loss, as in task fine-tuning
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
             "labels": labels.to(device)}
    rows = []
    for name in args.modes.split(","):
        if name not in MODES:
            raise SystemExit(f"--modes: unknown mode {name!r}; choose from {list(MODES)}")
        # every mode starts from the same weights, so the steps compared are the same work
        fresh = copy.deepcopy(student)
        rows.append(time_mode(name, MODES[name], fresh, teacher, batch, args, device))
        del fresh
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1]))
    base = next((r["step_ms_median"] for r in rows if r["mode"] == "ce"), None)
    for r in rows:
        r["ratio_vs_ce"] = r["step_ms_median"] / base if base else None
    result = {
        "benchmark": "train_step", "command": " ".join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model": args.model or ("tiny-llama" if args.tiny else "llama-smollm2-135m-shape (random init)"),
        "batch": args.batch, "seqlen": args.seqlen, "sparsity": args.sparsity, "compile": args.compile,
        "precision": "bf16 autocast, fp32 master weights" if device.type == "cuda" else "fp32",
        "teacher_dtype": "bf16" if device.type == "cuda" and not args.teacher_fp32 else "fp32",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
