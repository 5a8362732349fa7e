"""Does a fine-tuned causal LM answer differently when its prompts lack the BOS that training put in front of them?

Until 7f39ccc, training built every causal example as BOS + prompt + completion + EOS, while generation and the
log-likelihood batches encoded prompts with `add_special_tokens=True`, which SmolLM2's tokenizer answers without
BOS. This script scores one model both ways on the same items, with generation run to the full budget (no stop
pattern), so that it shows what the mismatch did:

    run_on       chains that go on after their first ``#### N`` line (the model missed EOS)
    ended_at_eos rows that ended at an EOS id (the tokenizer's or the generation config's)
    em_first     exact match of the first ``####`` answer (how the scorer reads chains now)
    em_last      exact match of the last ``####`` answer (how the scorer read them before)
    loglik       mean answer log-likelihood per token under teacher forcing

    python benchmarks/bos_check.py MODEL_DIR --task gsm --data-dir out/data/gsm --limit 40 --out out/bos_check.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import sparselm.data.collate as collate
from sparselm.data import get_task
from sparselm.eval.answers import _NUMBER, answers_match, extract_gsm_answer
from sparselm.eval.chains import runs_on_after_answer
from sparselm.eval.generate import generate_greedy_ends
from sparselm.eval.loglik import completion_logliks, loglik_summary
from sparselm.models.loaders import load_model


def _prompt_ids_without_bos(tokenizer, prompt: str) -> list[int]:
    """The encoding evaluation used before 7f39ccc: the tokenizer's own special tokens (none for SmolLM2)."""
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    while ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids.pop()
    return ids


def _last_answer(generation: str) -> str | None:
    if "####" not in generation:
        return None
    m = _NUMBER.search(generation.rsplit("####", 1)[1])
    return None if m is None else m.group(0).replace(",", "").lstrip("+").replace("$", "")


def score(model, tok, items, max_new_tokens: int, batch_size: int) -> dict:
    t0 = time.time()
    gens, ends = generate_greedy_ends(model, tok, [it["prompt"] for it in items], max_new_tokens, batch_size,
                                      progress=True)
    first = [answers_match(extract_gsm_answer(g), it["answer"]) for g, it in zip(gens, items)]
    last = [answers_match(_last_answer(g), it["answer"]) for g, it in zip(gens, items)]
    ll = loglik_summary(completion_logliks(model, tok, items, batch_size=max(1, batch_size // 2)))
    n = len(items)
    return {"n": n, "em_first": sum(first) / n, "em_last": sum(last) / n,
            "run_on": sum(map(runs_on_after_answer, gens)) / n, "ended_at_eos": ends.count("eos") / n,
            "no_answer": sum("####" not in g for g in gens) / n,
            "loglik_per_token": ll["loglik_per_token"], "seconds": round(time.time() - t0, 1),
            "examples": gens[:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--task", default="gsm")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    model, tok = load_model(a.model)
    model.eval()
    task = get_task(a.task, **({"data_dir": a.data_dir} if a.data_dir else {}))
    items = task.items(a.split, limit=a.limit)
    res = {"model": a.model, "task": a.task, "split": a.split, "max_new_tokens": a.max_new_tokens,
           "bos_token": tok.bos_token, "arms": {}}
    with_bos = collate.prompt_ids
    for arm, fn in (("with_bos", with_bos), ("without_bos", _prompt_ids_without_bos)):
        collate.prompt_ids = fn  # generation_batch and encode_causal look it up at call time
        try:
            res["arms"][arm] = score(model, tok, items, a.max_new_tokens, a.batch_size)
        finally:
            collate.prompt_ids = with_bos
        print(arm, {k: v for k, v in res["arms"][arm].items() if k != "examples"}, flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
