"""Corpus metrics: exact match, BLEU and chrF (sacrebleu), word error rate (jiwer).

BLEU / chrF: ``sacrebleu.corpus_bleu`` / ``corpus_chrf`` with sacrebleu's defaults (BLEU: 13a tokenisation,
exponential smoothing, case-sensitive; chrF: character 6-grams, β = 2), one reference per segment; scores in
0..100. The signature string is returned so that a number can be reproduced.

WER: ``jiwer.wer`` after `normalize_for_wer` on both sides: lower-case, every character that is not a letter,
digit, apostrophe or whitespace becomes a space, whitespace collapsed. Numbers are *not* spelled out, so "3"
and "three" differ. Reported as a fraction (0.25 = one word in four wrong), over all words of the corpus.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

from sparselm.eval.answers import answers_match


def exact_match(predictions: Sequence[str | None], references: Sequence[str],
                match: Callable[[str | None, str], bool] = answers_match) -> float:
    """Fraction of predictions equal to their reference under `match` (default: `answers_match`)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return 0.0
    return sum(match(p, r) for p, r in zip(predictions, references)) / len(references)


def bleu_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float | str]:
    """Corpus BLEU and chrF (0..100) with their sacrebleu signatures."""
    try:
        import sacrebleu
    except ImportError:
        raise ImportError("BLEU/chrF need sacrebleu: `pip install sacrebleu`") from None
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    hyps, refs = list(hypotheses), [list(references)]
    b, c = bleu.corpus_score(hyps, refs), chrf.corpus_score(hyps, refs)
    return {"bleu": b.score, "chrf": c.score, "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


_NOT_WORD = re.compile(r"[^\w\s']|_")


def normalize_for_wer(text: str) -> str:
    """Lower-case, punctuation → space (apostrophes kept: "don't" is one word), whitespace collapsed."""
    return " ".join(_NOT_WORD.sub(" ", text.lower()).split())


def word_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus WER = (substitutions + deletions + insertions) / reference words, after `normalize_for_wer`."""
    try:
        import jiwer
    except ImportError:
        raise ImportError("WER needs jiwer: `pip install jiwer`") from None
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    refs = [normalize_for_wer(r) for r in references]
    hyps = [normalize_for_wer(h) for h in hypotheses]
    if any(not r for r in refs):
        raise ValueError("a reference transcript is empty after normalisation; WER is undefined for it")
    out = jiwer.process_words(refs, hyps)
    errors = out.substitutions + out.deletions + out.insertions
    return errors / sum(len(r.split()) for r in refs)
