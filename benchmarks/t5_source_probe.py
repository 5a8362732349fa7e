"""Does a from-scratch tiny T5 use its source on the translation pairs? Trains one (plain AdamW, linear warmup and
decay) and prints, every 250 steps, the training loss (EMA) and the validation CE with the true sources and with
the sources shuffled across items: the gap is what the encoder contributes (0 = a target-language model).

    python benchmarks/t5_source_probe.py --lr 3e-3 --steps 3000 --stop-after 1000 \
        --out benchmarks/results/t5_source_probe.json

Why: the first H200 translation teacher stalled at training CE ~5.3 (BENCHMARKS.md section 3); this separates "the
model ignores its source" (a data or collation bug) from "it learns slowly" (an optimization setting). CPU, one
thread: ~0.5 s per step of 64 pairs at d 128.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from sparselm.data.collate import Seq2SeqCollator
from sparselm.data.tokenizer import item_texts, train_tokenizer
from sparselm.train.tiny import build_tiny_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("out/data/translation"),
                    help="train/validation .jsonl (python -m sparselm.data export translation DIR)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--d", type=int, default=128, help="d_model (d_ff = 4 d, 4 heads)")
    ap.add_argument("--layers", type=int, default=2, help="encoder and decoder blocks each")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.0, help="T5 dropout_rate")
    ap.add_argument("--vocab", type=int, default=8000, help="ids of the BPE trained on the pairs")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (the schedule still "
                    "spans --steps)")
    ap.add_argument("--out", type=Path, default=None, help="write the settings and the rows as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(0)

    def read(split: str) -> list[dict]:
        return [json.loads(line) for line in (args.data / f"{split}.jsonl").read_text().splitlines() if line]

    train, val = read("train"), read("validation")[:256]
    tok = train_tokenizer(item_texts(train, ("prompt", "completion")), args.vocab)
    col = Seq2SeqCollator(tok, 128, 128)
    model = build_tiny_model("t5", hidden_size=args.d, num_layers=args.layers, num_heads=4,
                             intermediate_size=4 * args.d, vocab_size=len(tok), pad_id=tok.pad_token_id,
                             bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, dropout=args.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * max(0.0, 1.0 - s / args.steps))

    @torch.no_grad()
    def val_ce(shuffle: bool, per_char: bool = False) -> float:
        """Mean CE per target token (per target character with per_char: comparable across vocabularies)."""
        model.eval()
        items = [dict(v) for v in val]
        if shuffle:  # each target paired with another item's source
            srcs = [v["prompt"] for v in items]
            random.Random(1).shuffle(srcs)
            for v, s in zip(items, srcs):
                v["prompt"] = s
        total = count = 0
        for i in range(0, len(items), 64):
            b = col(items[i:i + 64])
            k = int((b["labels"] != -100).sum())
            total += model(**b).loss.item() * k
            count += k
        model.train()
        chars = sum(len(v["completion"]) + 1 for v in items)  # + 1: the EOS
        return total / (chars if per_char else count)

    t0, ema, rows = time.time(), None, []
    for step in range(min(args.steps, args.stop_after or args.steps)):
        loss = model(**col(rng.sample(train, args.batch))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % args.eval_every == 0:
            rows.append({"step": step + 1, "train_ce_ema": round(ema, 4), "val_ce": round(val_ce(False), 4),
                         "val_nats_per_char": round(val_ce(False, per_char=True), 4),
                         "val_ce_shuffled_sources": round(val_ce(True), 4), "seconds": round(time.time() - t0)})
            print(json.dumps(rows[-1]), flush=True)
    if args.out is not None:
        import sys

        args.out.write_text(json.dumps({"command": " ".join(["python"] + sys.argv), "settings": vars(args) | {
            "data": str(args.data), "out": str(args.out)}, "device": f"cpu, {args.threads} thread(s)",
            "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
