"""How close is each translation test source to its nearest training source? A leakage check for the BLEU of a
corpus made of software messages, which repeat phrases across packages ("cannot open file %s" / "cannot open
directory %s").

    python benchmarks/translation_overlap.py out/data/translation-both --out benchmarks/results/translation_overlap.json

For every test item: the highest word-set Jaccard similarity of its English source to any training source (exact
duplicates are impossible: the splits are deduplicated by English), via an inverted index over words. Reported
per source corpus: the share of test items whose nearest training source has Jaccard >= 0.5 / 0.8, and the
median. CPU, seconds.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

WORD = re.compile(r"\w+|[^\w\s]")


def source_text(prompt: str) -> str:
    """The English sentence inside "Translate English to German:\\n{en}\\nGerman:"."""
    lines = prompt.split("\n")
    return lines[1] if len(lines) >= 3 else prompt


def words(s: str) -> frozenset[str]:
    return frozenset(w.lower() for w in WORD.findall(s))


def nearest(test: list[frozenset], train: list[frozenset]) -> list[float]:
    index: dict[str, list[int]] = defaultdict(list)
    for i, ws in enumerate(train):
        for w in ws:
            index[w].append(i)
    out = []
    for ws in test:
        shared: dict[int, int] = defaultdict(int)
        for w in ws:
            for i in index.get(w, ()):
                shared[i] += 1
        out.append(max((c / len(ws | train[i]) for i, c in shared.items()), default=0.0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="an exported translation dir (train.jsonl, test.jsonl)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    read = lambda split: [json.loads(x) for x in (args.data / f"{split}.jsonl").read_text().splitlines() if x]
    train, test = read("train"), read("test")
    sims = nearest([words(source_text(t["prompt"])) for t in test], [words(source_text(t["prompt"])) for t in train])
    groups: dict[str, list[float]] = defaultdict(list)
    for t, s in zip(test, sims):
        groups[str(t.get("source", "all")).split(":")[0]].append(s)
    groups["all"] = sims
    summary = {k: {"n": len(v), "median_jaccard": round(statistics.median(v), 3),
                   "share_ge_0.5": round(sum(x >= 0.5 for x in v) / len(v), 3),
                   "share_ge_0.8": round(sum(x >= 0.8 for x in v) / len(v), 3)} for k, v in sorted(groups.items())}
    for k, v in summary.items():
        print(k, v)
    if args.out:
        args.out.write_text(json.dumps({"data": str(args.data), "n_train": len(train), "what": "nearest training "
                                        "source (word-set Jaccard) of each test source", "by_source": summary,
                                        "command": f"python benchmarks/translation_overlap.py {args.data}"},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
