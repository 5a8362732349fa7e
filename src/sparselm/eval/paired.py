"""Paired significance tests between two models scored on the same items.

Two sparse runs that differ only in their loss are evaluated on the same test items, so their difference should be
tested per item, not by comparing two independent standard errors (which overstates the noise: most items are
right or wrong for both). This module gives the two tests the study needs:

* exact match: the exact McNemar test, a two-sided binomial test on the discordant items (one model right, the
  other wrong) — no normal approximation, valid for the small counts of a 300-item split;
* BLEU / chrF (corpus metrics, not sums over items): sacrebleu's paired approximate randomization test, the
  standard for comparing MT systems (Riezler & Maxwell 2005), with its paired bootstrap 95% interval;
* WER: the same randomization idea on per-utterance edit counts (corpus WER is their sum over the words).

The prediction files are the ones `sparselm run` writes beside each evaluated model,
``predictions_<split>.jsonl`` (one row per item: answer, prediction, correct when the metric is exact match).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Exact two-sided McNemar test of systems a and b on the same items (`a[i]`: a got item i right)."""
    if len(a) != len(b):
        raise ValueError(f"paired test on {len(a)} vs {len(b)} items: the systems must score the same items")
    if not a:
        raise ValueError("paired test on no items")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    return {"test": "mcnemar_exact", "n": len(a), "a_only": a_only, "b_only": b_only,
            "diff": (sum(map(bool, a)) - sum(map(bool, b))) / len(a), "p_value": _sign_test(a_only, b_only)}


def _sign_test(a_only: int, b_only: int) -> float:
    """Two-sided exact binomial test of a_only vs b_only discordant items, each a fair coin under the null."""
    n = a_only + b_only
    # P(X <= min) under Binomial(n, 1/2), doubled for two sides; exact integers, then one division
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2 ** n) if n else 1.0


def pooled_mcnemar(tests: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Exact McNemar over several independent pairs of runs (e.g. the same two losses trained with two seeds).

    Each pair's discordant items are pooled: under "the loss does not matter" every discordant item of every pair
    is a fair coin, and independently trained pairs give independent coins, also on the same test items. One seed's
    p says the items were not noise; the pooled test also averages over the training noise that seeds expose.
    `diff` is the mean of the pairs' differences."""
    if not tests:
        raise ValueError("pooled test of no pairs")
    if any(t.get("test") != "mcnemar_exact" for t in tests):
        raise ValueError("pooling across pairs is defined for exact match (McNemar) only; BLEU / chrF / WER are "
                         "corpus metrics: test each pair on its own")
    a_only, b_only = sum(t["a_only"] for t in tests), sum(t["b_only"] for t in tests)
    return {"test": "mcnemar_exact_pooled", "pairs": len(tests), "n": sum(t["n"] for t in tests),
            "a_only": a_only, "b_only": b_only, "diff": sum(t["diff"] for t in tests) / len(tests),
            "p_value": _sign_test(a_only, b_only)}


#: metrics whose tests pool over several pairs of runs (`pooled_test`)
POOLED_METRICS = ("exact_match", "gsm_exact_match", "wer")


def pooled_test(metric: str, pairs: Sequence[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
                n_samples: int = 10000, seed: int = 12345) -> dict[str, Any]:
    """One test of a system against a baseline over several independent pairs of runs (e.g. seeds), each pair a
    (baseline rows, system rows) of prediction files on the same items. Exact match: `pooled_mcnemar`. WER: every
    pair's per-utterance deltas, each pair's scaled by 1 / pairs, in one sign-flip test, so `diff` is the mean of the
    pairs' corpus WER differences. BLEU / chrF are corpus scores of n-gram counts, not sums over items: not pooled."""
    if not pairs:
        raise ValueError("pooled test of no pairs")
    if metric in ("exact_match", "gsm_exact_match"):
        return pooled_mcnemar([compare_predictions(b, s, metric) for b, s in pairs])
    if metric == "wer":
        import numpy as np

        parts = []
        for base, system in pairs:
            _check_same_items(base, system)
            parts.append(_wer_deltas([r["prediction"] for r in base], [r["prediction"] for r in system],
                                     [r["answer"] for r in base])[0] / len(pairs))
        observed, p = _sign_flip_test(np.concatenate(parts), n_samples, seed)
        return {"test": "paired_ar_wer_pooled", "pairs": len(pairs), "n": sum(len(b) for b, _ in pairs),
                "diff": observed, "p_value": p}
    raise ValueError(f"no pooled test for {metric!r}: BLEU / chrF are corpus scores; test each pair on its own")


def describe_pooled(p: dict[str, Any]) -> str:
    """One line for a `pooled_test` result: exact match in points with the discordant items, WER as a fraction."""
    diff = (f"{100 * p['diff']:+.2f} pts, items only the system gets right {p['a_only']}, only the baseline "
            f"{p['b_only']}" if "a_only" in p else f"{p['diff']:+.4f}")
    return f"pooled over {p['pairs']} pairs: mean diff {diff}, p = {p['p_value']:.3g} ({p['test']})"


def paired_corpus_metric(base_hyps: Sequence[str], sys_hyps: Sequence[str], refs: Sequence[str],
                         metric: str = "bleu", n_samples: int = 10000) -> dict[str, Any]:
    """Approximate randomization test of corpus BLEU or chrF, system vs baseline, on the same references.

    `diff` = system - baseline; `p_value` two-sided (sacrebleu's AR test, `n_samples` shuffles; identical outputs
    give 1.0); `system_ci95`: the system's bootstrap 95% interval (1,000 resamples)."""
    import os

    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    if not (len(base_hyps) == len(sys_hyps) == len(refs)):
        raise ValueError(f"paired test on {len(base_hyps)} / {len(sys_hyps)} hypotheses for {len(refs)} references")
    if not refs:
        raise ValueError("paired test on no items")
    if metric not in ("bleu", "chrf"):
        raise ValueError(f"paired_corpus_metric: metric must be bleu or chrf, got {metric!r}")
    if list(base_hyps) == list(sys_hyps):  # sacrebleu counts a zero difference as significant (by design): not here
        score = (BLEU() if metric == "bleu" else CHRF()).corpus_score(list(sys_hyps), [list(refs)]).score
        return {"test": f"paired_ar_{metric}", "n": len(refs), "baseline": score, "system": score, "diff": 0.0,
                "p_value": 1.0, "system_ci95": None}
    os.environ.setdefault("SACREBLEU_SEED", "12345")  # sacrebleu reads its RNG seed from here: reproducible
    m = BLEU() if metric == "bleu" else CHRF()
    test = PairedTest([("baseline", list(base_hyps)), ("system", list(sys_hyps))], {metric: m}, [list(refs)],
                      test_type="ar", n_samples=n_samples, n_ar_confidence=1000)
    _, scores = test()
    base, system = next(v for k, v in scores.items() if k != "System")  # keyed by the score's name ("BLEU")
    half = float(system.ci)
    return {"test": f"paired_ar_{metric}", "n": len(refs), "baseline": base.score, "system": system.score,
            "diff": system.score - base.score, "p_value": float(system.p_value),
            "system_ci95": [system.score - half, system.score + half]}


def paired_corpus_wer(base_hyps: Sequence[str], sys_hyps: Sequence[str], refs: Sequence[str],
                      n_samples: int = 10000, seed: int = 12345) -> dict[str, Any]:
    """Approximate randomization test of corpus WER (lower is better), system vs baseline, on the same utterances.

    Corpus WER is sum(edits) / sum(reference words) over normalized transcripts (`sparselm.data.asr.wer`), so the
    difference is a sum of per-utterance edit differences; under the null each utterance's two hypotheses are
    exchangeable, i.e. each difference flips sign with probability 1/2. `diff` = system - baseline (negative: the
    system is better); `p_value` two-sided, (1 + #{|shuffled| >= |observed|}) / (1 + n_samples)."""
    delta, base, system = _wer_deltas(base_hyps, sys_hyps, refs)
    observed, p = _sign_flip_test(delta, n_samples, seed)
    return {"test": "paired_ar_wer", "n": len(refs), "baseline": base, "system": system, "diff": observed,
            "p_value": p}


def _sign_flip_test(delta, n_samples: int, seed: int) -> tuple[float, float]:
    """(sum of `delta`, two-sided p of it) when every term's sign is a fair coin under the null."""
    import numpy as np

    observed = float(delta.sum())
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(n_samples, len(delta)))
    extreme = int((np.abs(signs @ delta) >= abs(observed) - 1e-12).sum())
    return observed, 1.0 if observed == 0 else min(1.0, (1 + extreme) / (1 + n_samples))


def _wer_deltas(base_hyps: Sequence[str], sys_hyps: Sequence[str], refs: Sequence[str]):
    """(per-utterance (system - baseline) edits / reference words, baseline WER, system WER): corpus WER is the
    sum of an utterance's edits over all reference words, so the corpus difference is the sum of the deltas."""
    import jiwer
    import numpy as np

    from sparselm.data.asr import normalize_transcript

    if not (len(base_hyps) == len(sys_hyps) == len(refs)):
        raise ValueError(f"paired test on {len(base_hyps)} / {len(sys_hyps)} hypotheses for {len(refs)} references")
    if not refs:
        raise ValueError("paired test on no items")
    refs_n = [normalize_transcript(r) for r in refs]
    if any(not r for r in refs_n):
        raise ValueError("paired WER test: a reference is empty after normalization")

    def edits(hyps: Sequence[str]) -> np.ndarray:
        out = []
        for r, h in zip(refs_n, hyps):
            o = jiwer.process_words(r, normalize_transcript(h))
            out.append(o.substitutions + o.deletions + o.insertions)
        return np.asarray(out, dtype=np.float64)

    words = float(sum(len(r.split()) for r in refs_n))
    e_base, e_sys = edits(base_hyps), edits(sys_hyps)
    return (e_sys - e_base) / words, float(e_base.sum() / words), float(e_sys.sum() / words)


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """A prediction file's rows; a missing `X.jsonl` is read from `X.jsonl.gz` (the copies benchmarks/results keep)."""
    path = Path(path)
    gz = path if path.suffix == ".gz" else path.with_name(path.name + ".gz")
    if not (path.exists() or gz.exists()):
        raise FileNotFoundError(f"{path}: no such file")
    if gz == path or not path.exists():
        import gzip

        with gzip.open(gz, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _check_same_items(base: list[dict[str, Any]], system: list[dict[str, Any]]) -> None:
    if len(base) != len(system):
        raise ValueError(f"prediction files of {len(base)} and {len(system)} items: not the same split")
    if any(x.get("answer") != y.get("answer") for x, y in zip(base, system)):
        raise ValueError("prediction files list different reference answers: not the same items")


def compare_predictions(base: list[dict[str, Any]], system: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The paired test of two prediction files of the same split (rows in item order; answers must match)."""
    _check_same_items(base, system)
    if metric in ("exact_match", "gsm_exact_match"):
        # mcnemar(a=system, b=baseline): diff > 0 when the system is better
        return mcnemar_exact([bool(r["correct"]) for r in system], [bool(r["correct"]) for r in base])
    if metric in ("bleu", "chrf"):
        return paired_corpus_metric([r["prediction"] for r in base], [r["prediction"] for r in system],
                                    [r["answer"] for r in base], metric)
    if metric == "wer":
        return paired_corpus_wer([r["prediction"] for r in base], [r["prediction"] for r in system],
                                 [r["answer"] for r in base])
    raise ValueError(f"no paired test for metric {metric!r}")


def load_scored(path: str | Path, split: str = "test") -> tuple[str | None, list[dict[str, Any]], str]:
    """(metric or None, prediction rows, what was read) for one side of a comparison. `path` is any of:
    a `sparselm eval` results JSON (its metric and `predictions_file`), a `predictions_*.jsonl[.gz]` file, or a
    model dir holding `predictions_<split>.jsonl` (what `sparselm run` keeps beside each run, metric in eval.json)."""
    path = Path(path)
    if path.is_dir():
        pred = path / f"predictions_{split}.jsonl"
        ev = path / "eval.json"
        metric = json.loads(ev.read_text()).get(split, {}).get("metric") if ev.is_file() else None
        return metric, read_predictions(pred), str(pred)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        res = json.loads(path.read_text())
        if "predictions_file" not in res:
            raise ValueError(f"{path}: a results JSON without per-item predictions (`predictions_file`)")
        pred = path.with_name(res["predictions_file"])
        return res.get("metric"), read_predictions(pred), str(pred)
    return None, read_predictions(path), str(path)


def load_pair(baseline: str | Path, system: str | Path, split: str = "test",
              metric: str | None = None) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], str, str]:
    """(metric, baseline rows, system rows, baseline file, system file) of two evaluated models (`load_scored`);
    the metric comes from their results when not given."""
    m_base, base, base_src = load_scored(baseline, split)
    m_sys, sys_rows, sys_src = load_scored(system, split)
    if metric is None:
        found = {m for m in (m_base, m_sys) if m}
        if len(found) > 1:
            raise ValueError(f"the two sides were scored with different metrics: {sorted(found)}")
        metric = found.pop() if found else ("exact_match" if all("correct" in r for r in base + sys_rows) else None)
    if metric is None:
        raise ValueError("cannot tell the metric from prediction files alone: pass --metric")
    return metric, base, sys_rows, base_src, sys_src


def compare_scored(baseline: str | Path, system: str | Path, split: str = "test",
                   metric: str | None = None) -> dict[str, Any]:
    """The paired test of `system` against `baseline` on the same items; `diff` > 0 when the system is better
    (exact match, BLEU / chrF; for WER `diff` < 0 is the better system)."""
    return paired_result(*load_pair(baseline, system, split, metric))


def paired_result(metric: str, base: list[dict[str, Any]], sys_rows: list[dict[str, Any]], base_src: str = "",
                  sys_src: str = "") -> dict[str, Any]:
    """`compare_predictions` plus both sides' values and files (what `sparselm compare` prints and writes)."""
    res = compare_predictions(base, sys_rows, metric)
    if metric in ("exact_match", "gsm_exact_match"):
        b = sum(bool(r["correct"]) for r in base) / len(base)
        values = (b, b + res["diff"])
    else:  # the corpus test reports both scores itself
        values = (res.pop("baseline"), res.pop("system"))
    return {"metric": metric, "baseline_file": base_src, "system_file": sys_src, "baseline_value": values[0],
            "system_value": values[1], **res}
