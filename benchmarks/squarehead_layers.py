"""Per-block SquareHead of a pruned model against its dense self, for each normalization variant, next to how much
of the teacher's Σt² sits in the first token (the attention sink's "massive activations").

    python benchmarks/squarehead_layers.py --model smollm2-135m --data out/data/reasoning/validation.jsonl
    python benchmarks/squarehead_layers.py --model whisper-tiny.en --asr-data out/asr-data-varied \
        --out benchmarks/results/squarehead_layers_whisper.json     # encoder + decoder blocks, test clips

Why: with massive activations, `masked_mean` divides every block's error by a mean square set by one token, so the
blocks that carry them barely contribute to the loss; `token_ratio` normalizes each token by itself. The student
is the dense model with every block linear magnitude-pruned per layer to --sparsity (no calibration needed: the
point is the loss's normalization, not the pruner). Writes squarehead_layers.json and .png (CPU, ~1 min).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from sparselm.distill import squarehead_masked_mean, squarehead_token_ratio

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def magnitude_prune_blocks(model: torch.nn.Module, sparsity: float) -> None:
    from sparselm.runtime.sparsify import block_linear_names

    for name in block_linear_names(model):
        w = model.get_submodule(name).weight
        k = int(sparsity * w.numel())
        if k:
            w.mul_(w.abs() > w.abs().flatten().kthvalue(k).values)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", type=Path, help="JSONL with prompt/completion (held-out split); text models")
    ap.add_argument("--asr-data", type=Path, help="a Whisper model: the exported clip dir (its recipe's task.args "
                    "pick the cache entry: recipes/asr-whisper.yaml); the `test` split is used")
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=RESULTS / "squarehead_layers.json")
    args = ap.parse_args()
    from sparselm.models import load_model

    if (args.data is None) == (args.asr_data is None):
        raise SystemExit("give --data (a text model) or --asr-data (a Whisper model)")
    teacher, tok = load_model(args.model)
    student = copy.deepcopy(teacher)
    magnitude_prune_blocks(student, args.sparsity)
    if args.asr_data is not None:
        pairs, n = whisper_hidden(teacher, student, tok, args.asr_data, args.items)
    else:
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        rows = [json.loads(x) for x in args.data.read_text().splitlines() if x.strip()][: args.items]
        enc = tok([r["prompt"] + r["completion"] for r in rows], return_tensors="pt", padding=True)
        ht = teacher(**enc, output_hidden_states=True).hidden_states[1:]  # block outputs
        hs = student(**enc, output_hidden_states=True).hidden_states[1:]
        pairs, n = [(t, s, enc["attention_mask"], f"block {i}") for i, (t, s) in enumerate(zip(ht, hs))], len(rows)
    layers = []
    for i, (t, s, mask, name) in enumerate(pairs):
        sq = t.float().pow(2) * mask[..., None]
        layers.append({"block": i, "name": name, "masked_mean": squarehead_masked_mean([s], [t], [mask]).item(),
                       "token_ratio": squarehead_token_ratio([s], [t], [mask]).item(),
                       "first_token_share_of_sum_t2": (sq[:, 0].sum() / sq.sum()).item(),
                       "max_abs_t": t.float().abs().max().item()})
    result = {"model": args.model, "sparsity": args.sparsity, "pruner": "magnitude per layer", "items": n,
              "data": str(args.data or args.asr_data), "command": " ".join(["python"] + sys.argv),
              "sum_masked_mean": sum(r["masked_mean"] for r in layers),
              "sum_token_ratio": sum(r["token_ratio"] for r in layers), "layers": layers}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k != "layers"}))


def whisper_hidden(teacher, student, processor, data_dir: Path, items: int) -> tuple[list, int]:
    """(teacher, student, mask, name) per encoder and decoder block of Whisper on the first `items` test clips,
    teacher-forced on their transcripts (the hidden states the SquareHead loss of the ASR study compares)."""
    from sparselm.data.asr import WhisperASRCollator
    from sparselm.pipeline import load_pipeline_recipe
    from sparselm.pipeline.asr import speech_split

    recipe = load_pipeline_recipe(Path(__file__).resolve().parents[1] / "src/sparselm/recipes/asr-whisper.yaml",
                                  [f"task.data_dir={data_dir}"])
    data = speech_split(recipe.task, "test")
    batch = WhisperASRCollator(processor, max_label_tokens=128)([data[i] for i in range(min(items, len(data)))])
    out_t = teacher(**batch, output_hidden_states=True)
    out_s = student(**batch, output_hidden_states=True)
    enc_mask = torch.ones(out_t.encoder_hidden_states[0].shape[:2], dtype=torch.long)
    dec_mask = (batch["labels"] != -100).long()  # the decoder positions that predict a transcript token
    pairs = [(t, s, enc_mask, f"encoder {i}") for i, (t, s) in
             enumerate(zip(out_t.encoder_hidden_states[1:], out_s.encoder_hidden_states[1:]))]
    pairs += [(t, s, dec_mask, f"decoder {i}") for i, (t, s) in
              enumerate(zip(out_t.decoder_hidden_states[1:], out_s.decoder_hidden_states[1:]))]
    return pairs, int(batch["labels"].shape[0])


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = result["layers"]
    x = [r["block"] for r in L]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.plot(x, [r["masked_mean"] for r in L], marker="o", label="SquareHead masked_mean (paper)")
    ax.plot(x, [r["token_ratio"] for r in L], marker="D", label="SquareHead token_ratio (per token)")
    ax.set_xlabel("transformer block" + (" (encoder, then decoder)" if "encoder" in L[0].get("name", "") else ""))
    ax.set_ylabel("per-block loss, pruned vs dense")
    ax2 = ax.twinx()
    ax2.bar(x, [r["first_token_share_of_sum_t2"] for r in L], alpha=0.2, color="k", label="first token's share of Σt²")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("first token's share of Σt²")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    ax.set_title(f"{result['model']}, {result['sparsity']:.0%} magnitude-pruned vs dense, {result['items']} held-out "
                 "items", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
