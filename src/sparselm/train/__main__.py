"""`python -m sparselm.train RECIPE [--out DIR] [--resume] [key=value ...]` — the fine-tuning entry point that
`torchrun` / `accelerate launch` can start (the `sparselm finetune` CLI verb calls the same `finetune`)."""
from __future__ import annotations

import argparse
import sys

from sparselm.train.runner import finetune


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparselm.train", description=__doc__)
    ap.add_argument("recipe")
    ap.add_argument("--out", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=40")
    args = ap.parse_intermixed_args(argv)  # overrides may follow --out
    print(finetune(args.recipe, args.overrides, out=args.out, resume=args.resume))
    return 0


if __name__ == "__main__":
    sys.exit(main())
