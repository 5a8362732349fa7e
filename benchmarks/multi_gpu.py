"""Multi-GPU sparse fine-tuning check: 1-GPU vs 2-GPU DDP vs 2-GPU FSDP2 at the same global batch.

    python benchmarks/multi_gpu.py --data out/data/reasoning --out $OUT/multi_gpu     # a machine with 2 GPUs
    python benchmarks/multi_gpu.py --data out/data/reasoning --out /tmp/mg --model tiny-llama --steps 4  # CPU smoke

Each run is the same `python -m sparselm.train` job under `torchrun` (SmolLM2-135M, SparseGPT 50%, then CE +
SquareHead with the mask fixed, the pretrained dense model as teacher), differing only in the launch:

    1gpu        --nproc-per-node 1, train.batch_size = G
    1gpu-seed1  the same with train.seed=1 (other data order and calibration set): the run-to-run noise
    ddp         --nproc-per-node 2, train.batch_size = G/2 per rank (same global micro-batches as 1gpu)
    fsdp        --nproc-per-node 2, train.fsdp=true (FSDP2 shards of every block)

"Within noise" means: max over logged steps of |loss_ddp - loss_1gpu| <= max |loss_1gpu-seed1 - loss_1gpu|.
Masks intact: the saved model's zeros are re-counted from its safetensors and equal sparsity.json's counts, and
every pruned position of the pruned checkpoint is still zero. Writes multi_gpu.json and multi_gpu.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml


def recipe(args: argparse.Namespace) -> dict:
    model: dict = {"name": args.model}
    if args.model == "tiny-llama":  # CPU smoke test of this script (gloo; FSDP2 falls back to data parallel)
        model["tiny"] = {"hidden_size": 64, "num_layers": 2, "max_positions": max(args.seqlen, 32)}
    return {"model": model,
            "teacher": {"source": "initial"},
            "data": {"source": "task", "task": "reasoning", "data_dir": str(args.data), "num_examples": args.n_train,
                     "calib_samples": args.calib},
            "pruning": {"method": "sparsegpt", "stages": [{"sparsity": args.sparsity, "steps": args.steps}]},
            "loss": {"ce": 1.0, "kd": 0.0, "squarehead": 1.0},
            "optim": {"lr": args.lr},
            "schedule": {"warmup_ratio": 0.05, "decay": "linear"},
            "train": {"batch_size": args.global_batch, "seqlen": args.seqlen, "log_every": args.log_every, "seed": 0},
            "output": {"dir": "unused"}}


def zeros_in(model_dir: Path) -> tuple[int, int]:
    """(zeros, elements) over the linear weights inside the transformer blocks, read from the safetensors."""
    from safetensors import safe_open

    z = n = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                if ".layers." in k and k.endswith("proj.weight"):
                    t = st.get_tensor(k)
                    z += int((t == 0).sum())
                    n += t.numel()
    return z, n


def launch(name: str, nproc: int, overrides: list[str], rec_path: Path, out: Path, timeout: int) -> dict:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (a stale one would ask for --resume)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "sparselm.train", str(rec_path), "--out", str(run_dir), *overrides]
    print(f"# {name}: {' '.join(cmd[2:])}", flush=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    row: dict = {"name": name, "nproc": nproc, "overrides": overrides, "wall_s": round(wall, 1), "rc": r.returncode}
    if r.returncode != 0:
        row["error"] = (r.stderr or r.stdout)[-2000:]
        print(row["error"], flush=True)
        return row
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    lines = [x for x in lines if x.get("phase", "").startswith("stage")]
    row["steps"] = [x["step"] for x in lines]
    row["loss"] = [x["loss/total"] for x in lines]
    row["ce"] = [x["loss/ce"] for x in lines]
    row["squarehead"] = [x["loss/squarehead"] for x in lines]
    tps = [x["tokens_per_s"] for x in lines[1:]] or [x["tokens_per_s"] for x in lines]
    row["tokens_per_s"] = round(sum(tps) / len(tps))
    sp = json.loads((run_dir / "sparsity.json").read_text())
    z, n = zeros_in(run_dir)
    row["sparsity_json"] = sp.get("overall")
    row["zeros_recounted"] = round(z / max(n, 1), 6)
    row["masks_intact"] = abs(z / max(n, 1) - sp.get("overall", -1)) < 1e-6 and sp.get("overall", 0) >= 0.499
    print(f"# {name}: {row['wall_s']} s, {row['tokens_per_s']} tok/s, final loss {row['loss'][-1]:.4f}, "
          f"sparsity {row['zeros_recounted']}", flush=True)
    return row


def compare(a: dict, b: dict) -> float | None:
    if "loss" not in a or "loss" not in b or a["steps"] != b["steps"]:
        return None
    return max(abs(x - y) for x, y in zip(a["loss"], b["loss"]))


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if "loss" in r:
            ax.plot(r["steps"], r["loss"], marker=".", label=f"{r['name']} ({r['tokens_per_s']} tok/s)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss/total (CE + SquareHead)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", type=Path, required=True, help="exported reasoning JSONL dir")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=96)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--n-train", type=int, default=8192)
    p.add_argument("--runs", default="1gpu,1gpu-seed1,ddp,fsdp", help="in run order (the noise reference early)")
    p.add_argument("--timeout", type=int, default=240, help="seconds per launch")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rec_path = args.out / "recipe.yaml"
    rec_path.write_text(yaml.safe_dump(recipe(args), sort_keys=False))
    half = f"train.batch_size={args.global_batch // 2}"
    plans = {"1gpu": (1, []), "1gpu-seed1": (1, ["train.seed=1"]), "ddp": (2, [half]),
             "fsdp": (2, [half, "train.fsdp=true"])}
    import torch

    rows = []
    for name in args.runs.split(","):
        nproc, ov = plans[name]
        rows.append(launch(name, nproc, ov, rec_path, args.out, args.timeout))
        (args.out / "multi_gpu.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    by = {r["name"]: r for r in rows}
    noise = compare(by.get("1gpu", {}), by.get("1gpu-seed1", {}))
    device = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
              else f"cpu ({os.cpu_count()} cores)")
    result = {"device": device,
              "model": args.model, "global_batch": args.global_batch, "seqlen": args.seqlen, "steps": args.steps,
              "sparsity": args.sparsity, "loss": "CE + SquareHead (masked_mean)", "precision": "bf16 autocast",
              "command": " ".join(["benchmarks/multi_gpu.py", *sys.argv[1:]]),
              "noise_max_abs_loss_diff": noise, "rows": rows}
    for name in ("ddp", "fsdp"):
        d = compare(by.get("1gpu", {}), by.get(name, {}))
        result[f"{name}_max_abs_loss_diff_vs_1gpu"] = d
        result[f"{name}_within_noise"] = None if d is None or noise is None else d <= noise
        if name in by and "tokens_per_s" in by[name] and "tokens_per_s" in by.get("1gpu", {}):
            result[f"{name}_throughput_vs_1gpu"] = round(by[name]["tokens_per_s"] / by["1gpu"]["tokens_per_s"], 3)
    (args.out / "multi_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out / "multi_gpu.png",
         f"{args.model}, SparseGPT {args.sparsity:.0%} + CE+SquareHead, global batch {args.global_batch}x"
         f"{args.seqlen}; {result['device']}")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
