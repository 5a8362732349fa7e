"""`evaluate` (one model, one task split → metrics dict), `run_eval` (the CLI's entry: load, evaluate, write JSON)
and `print_results_table`.

    from sparselm.eval import run_eval
    run_eval("out/teacher", "reasoning", split="test", out_json="out/eval/teacher_reasoning.json")
    run_eval("out/teacher", "perplexity", text_file="data/shakespeare.txt", out_json="out/eval/ppl.json")

Metrics by task (`Task.metric`):
  exact_match      greedy generation, `extract_short_answer`, `answers_match`; + teacher-forced log-likelihood
  gsm_exact_match  same with `extract_gsm_answer` (number after the first ####; rows stop at the end of that
                   line); + "chains": answer-less chains
                   and wrong equations (`sparselm.eval.chains`)
  bleu             greedy generation, first line of the output as the hypothesis; BLEU + chrF; + log-likelihood
  wer              (ASR) transcripts from `sparselm.data.asr`; word error rate
  perplexity       not a task: a text file (default: held-out Shakespeare) scored by `sparselm.eval.perplexity`
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sparselm.data.jsonl import write_jsonl
from sparselm.data.registry import Task, get_task
from sparselm.eval.answers import GSM_STOP, answers_match, extract_gsm_answer, extract_short_answer
from sparselm.eval.chains import chain_diagnostics
from sparselm.eval.generate import generate_greedy_ends
from sparselm.eval.loglik import completion_logliks, loglik_summary
from sparselm.eval.metrics import bleu_chrf

EVAL_TASKS = ("reasoning", "gsm", "translation", "asr", "perplexity")  # names the CLI offers


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def _per_source(items: list[dict], correct: list[bool]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for it, ok in zip(items, correct):
        groups[it.get("source", "all")].append(ok)
    return {k: {"n": len(v), "exact_match": sum(v) / len(v)} for k, v in sorted(groups.items())}


def _per_source_bleu(items: list[dict], preds: list[str]) -> dict[str, dict[str, float]]:
    """BLEU / chrF per corpus ("gettext:git" counts as "gettext": one row per corpus, not per catalog)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[str(it.get("source", "all")).split(":")[0]].append(i)
    out = {}
    for k, idx in sorted(groups.items()):
        m = bleu_chrf([preds[i] for i in idx], [items[i]["answer"] for i in idx])
        out[k] = {"n": len(idx), "bleu": m["bleu"], "chrf": m["chrf"]}
    return out


def evaluate_task(model, tokenizer, task: Task, split: str = "test", limit: int | None = None,
                  batch_size: int = 16, loglik: bool = True, max_new_tokens: int | None = None,
                  progress: bool = False, generate: bool = True) -> dict[str, Any]:
    """Metrics of `model` on `task`/`split` (see the module docstring); ``predictions`` holds one row per item.

    `generate=False` skips generation (log-likelihood only: one forward per batch, cheap enough to run on
    the validation split during training)."""
    items = task.items(split, limit=limit)
    if not items:
        raise ValueError(f"task {task.name!r} split {split!r} has no items")
    metric = task.metric
    res: dict[str, Any] = {"task": task.name, "split": split, "n": len(items), "metric": metric}
    if not generate:
        if not loglik:
            raise ValueError("generate=False and loglik=False: nothing to evaluate")
        res["predictions"] = [{"prompt": it["prompt"], "answer": it["answer"]} for it in items]
    elif metric in ("exact_match", "gsm_exact_match", "bleu"):
        budget = max_new_tokens or task.max_new_tokens
        gens, ends = generate_greedy_ends(model, tokenizer, [it["prompt"] for it in items], budget, batch_size,
                                          progress=progress,
                                          stop_pattern=GSM_STOP if metric == "gsm_exact_match" else None)
        res["max_new_tokens"] = budget
        # how generations ended: a fine-tuned model should end at EOS (or the answer line), not run to the budget
        res["ends"] = {k: ends.count(k) / len(ends) for k in ("eos", "stop", "budget")}
        if metric == "bleu":
            preds = [_first_line(g) for g in gens]
            res.update(bleu_chrf(preds, [it["answer"] for it in items]))
            res["per_source"] = _per_source_bleu(items, preds)
            correct = [None] * len(items)
        else:
            extract = extract_gsm_answer if metric == "gsm_exact_match" else extract_short_answer
            preds = [extract(g) for g in gens]
            correct = [answers_match(p, it["answer"]) for p, it in zip(preds, items)]
            res["exact_match"] = sum(correct) / len(correct)
            res["per_source"] = _per_source(items, correct)
            if metric == "gsm_exact_match":  # how the chains fail, not only that they do (sparselm.eval.chains)
                res["chains"] = chain_diagnostics(gens)
        res["predictions"] = [{"prompt": it["prompt"], "answer": it["answer"], "generation": g, "end": e,
                               "prediction": p, "correct": c}
                              for it, g, e, p, c in zip(items, gens, ends, preds, correct)]
    else:
        raise ValueError(f"task {task.name!r}: unknown metric {metric!r}")
    if loglik:
        # teacher forcing is ~1 forward per batch; half the generation batch since it keeps full-vocab logits
        scores = completion_logliks(model, tokenizer, items, batch_size=max(1, batch_size // 2))
        res.update(loglik_summary(scores))
        for row, (ll, n) in zip(res["predictions"], scores):
            row["loglik"], row["target_tokens"] = ll, n
    return res


def evaluate(model, tokenizer, task: str | Task, split: str = "test", limit: int | None = None,
             batch_size: int = 16, text_file: str | Path | None = None, task_kwargs: dict | None = None,
             **kwargs: Any) -> dict[str, Any]:
    """Dispatch by task: "perplexity" (on `text_file`, default the held-out Shakespeare plays of
    `sparselm.data.corpora`; kwargs context_length, stride, max_tokens), "asr" (`sparselm.data.asr`; split
    "real" or its synthetic splits), or any registered task / dataset path (see `evaluate_task`; `kwargs` go
    there: loglik, max_new_tokens, progress)."""
    if task == "perplexity":
        from sparselm.eval.perplexity import perplexity

        ppl_kw = {k: kwargs[k] for k in ("context_length", "stride", "max_tokens") if k in kwargs}
        if text_file is not None:
            return {"task": "perplexity", "split": str(text_file), **perplexity(model, tokenizer, path=text_file,
                                                                                 **ppl_kw)}
        from sparselm.data.corpora import HELDOUT_PLAYS, heldout_text  # raises, saying how to fetch it

        return {"task": "perplexity", "split": "shakespeare:" + "+".join(HELDOUT_PLAYS),
                **perplexity(model, tokenizer, text=heldout_text(), **ppl_kw)}
    if task == "asr":
        return _evaluate_asr(model, tokenizer, split, limit, batch_size, **(task_kwargs or {}))
    task_obj = task if isinstance(task, Task) else get_task(task, **(task_kwargs or {}))
    return evaluate_task(model, tokenizer, task_obj, split, limit, batch_size, **kwargs)


def _evaluate_asr(model, processor, split: str, limit: int | None, batch_size: int,
                  cache_dir: str | Path | None = None, language: str = "en") -> dict[str, Any]:
    """Speech recognition WER with `sparselm.data.asr`: split "real" = the 10 real pocketsphinx clips,
    "train" / "validation" / "test" = its synthetic espeak-ng splits (generated into `cache_dir`)."""
    try:
        from sparselm.data import asr
    except ImportError as e:
        raise NotImplementedError(f"task 'asr' needs sparselm/data/asr.py (transcribe, wer): {e}") from None
    if split == "real":
        data = asr.real_clips()
    else:
        from sparselm.data.registry import DEFAULT_CACHE_DIR

        splits = asr.synthetic_asr(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR / "asr")
        if split not in splits:
            raise ValueError(f"task 'asr' has no split {split!r}; splits: real, {', '.join(splits)}")
        data = splits[split]
    if limit is not None:
        data = asr.SpeechDataset(data.items[:limit])
    refs = data.texts()
    hyps = asr.transcribe(model, processor, data.audios(), batch_size=batch_size, language=language)
    return {"task": "asr", "split": split, "n": len(refs), "metric": "wer", "wer": asr.wer(refs, hyps),
            "predictions": [{"answer": r, "prediction": h} for r, h in zip(refs, hyps)]}


def load_model(name_or_path: str | Path, device: str | None = None):
    """(model, tokenizer or processor) via `sparselm.models.load_model` (a local HF directory or a bundled name
    such as "smollm2-135m"), on `device` (default: cuda when available, else cpu), in eval mode."""
    import torch

    from sparselm.models import load_model as _load

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _load(name_or_path, device=device)


def write_results(results: dict[str, Any], out_json: str | Path) -> Path:
    """Write the metrics (without per-item rows) to `out_json` and the rows to `<stem>.predictions.jsonl`."""
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    rows = results.get("predictions")
    summary = {k: v for k, v in results.items() if k != "predictions"}
    if rows is not None:
        pred_path = out_json.with_name(out_json.stem + ".predictions.jsonl")
        write_jsonl(pred_path, rows)
        summary["predictions_file"] = pred_path.name
    tmp = out_json.with_name(f".{out_json.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(out_json)
    return out_json


def run_eval(model_path_or_model, task: str, split: str = "test", out_json: str | Path | None = None, *,
             tokenizer=None, limit: int | None = None, batch_size: int = 16, text_file: str | Path | None = None,
             task_kwargs: dict | None = None, device: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Evaluate a model (a local HF directory, a (model, tokenizer) pair, or a model with `tokenizer=`) and write
    the results JSON when `out_json` is given. Returns the metrics (per-item rows under "predictions")."""
    import sparselm

    if isinstance(model_path_or_model, (str, Path)):
        model, tokenizer = load_model(model_path_or_model, device)
        name = str(model_path_or_model)
    elif isinstance(model_path_or_model, tuple):
        model, tokenizer = model_path_or_model
        name = type(model).__name__
    else:
        model, name = model_path_or_model, type(model_path_or_model).__name__
    if tokenizer is None:
        raise ValueError("run_eval: pass tokenizer= with a model object (or a model directory)")
    model.eval()
    t0 = time.time()
    res = evaluate(model, tokenizer, task, split, limit=limit, batch_size=batch_size, text_file=text_file,
                   task_kwargs=task_kwargs, **kwargs)
    res.update(model=name, batch_size=batch_size, limit=limit, seconds=round(time.time() - t0, 2),
               sparselm_version=sparselm.__version__, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if out_json is not None:
        write_results(res, out_json)
    return res
