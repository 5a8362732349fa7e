"""Export task splits as JSONL, to carry to a machine that cannot generate them (the GPU machine has no
reasoning-gym and no trans-de-en):

    python -m sparselm.data export reasoning out/data/reasoning --n-train 20000
    python -m sparselm.data export gsm out/data/gsm
    python -m sparselm.data export translation out/data/translation
    python -m sparselm.data export translation out/data/translation-lex --n-phrases 60000   # + lexicon pairs
    python -m sparselm.data export translation out/data/translation-both --corpus both    # + software messages
    # there: get_task("reasoning", data_dir="out/data/reasoning")
"""
from __future__ import annotations

import argparse
import sys

from sparselm.data.registry import export_task, get_task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparselm.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write every split of a task as OUT/<split>.jsonl")
    ex.add_argument("task")
    ex.add_argument("out")
    ex.add_argument("--n-train", type=int)
    ex.add_argument("--n-validation", type=int)
    ex.add_argument("--n-test", type=int)
    ex.add_argument("--n-test-unseen", type=int)
    ex.add_argument("--n-phrases", type=int, help="translation: dictionary word/phrase pairs added to train")
    ex.add_argument("--corpus", choices=("dictionary", "messages", "both"),
                    help="translation: the dictionary's sentences, software messages (gettext catalogs), or both")
    ex.add_argument("--unseen-catalogs", help="translation: comma-separated gettext catalogs (e.g. tar,dpkg) "
                    "held out of every split into test-unseen")
    ex.add_argument("--seed", type=int)
    ex.add_argument("--cache-dir", help="generation cache (default ~/.cache/sparselm/data or $SPARSELM_DATA_CACHE)")
    args = ap.parse_args(argv)
    kwargs = {k: v for k, v in vars(args).items() if k.startswith(("n_", "seed", "cache_dir", "corpus", "unseen")) and v is not None}
    task = get_task(args.task, **kwargs)
    for path in export_task(task, args.out):
        with open(path, encoding="utf-8") as f:
            print(f"{path}: {sum(1 for _ in f)} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
