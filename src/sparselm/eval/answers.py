"""Answer extraction and normalisation for exact-match accuracy.

Numbers: a number matches when it is *numerically* equal after normalisation: thousands separators (``1,000``),
a leading currency sign (``$``, ``€``, ``£``) and a trailing period are dropped, then the text is read as an
exact decimal, so ``36``, ``36.0`` and ``$36.00`` are equal and ``0.1 + 0.2``-style float error cannot occur.

Strings (anything that is not a single number): surrounding whitespace and one trailing period are removed,
inner whitespace is collapsed, and the comparison ignores case (``Yes`` = ``yes``).

Predictions:
  * gsm: the first number after the *first* ``####`` of the generation, as GSM8K is scored (lm-eval-harness'
    strict match takes the first ``#### N``); no ``####`` → no answer (wrong). The reference completion ends in
    ``#### N``, so a fine-tuned model must produce it to score, and what it writes after that line is not its
    answer: a chain that answers and then runs on (a model that misses EOS) is scored by the answer it gave.
    Evaluation stops each row at the end of that line (`GSM_STOP`), so the two agree.
  * reasoning and other short-answer tasks: the text after the last ``####`` if present (a completion may give a
    brief reasoning first), else the first non-empty line of the generation.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"[-+]?[$€£]?\d[\d,]*(?:\.\d+)?|[-+]?[$€£]?\.\d+")
_FULL_NUMBER = re.compile(r"^[-+]?[$€£]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?$")


def parse_number(text: str) -> Decimal | None:
    """`text` as an exact decimal if it is one number (see the module docstring), else None."""
    s = text.strip().rstrip(".").replace(" ", "")
    if not s or not _FULL_NUMBER.match(s) or not any(ch.isdigit() for ch in s):
        return None
    s = re.sub(r"[$€£,]", "", s)
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def normalize_answer(text: str) -> str:
    """Canonical form of an answer: a number as its normalised decimal string, else trimmed casefolded text."""
    num = parse_number(text)
    if num is not None:
        return format(num.normalize(), "f") if num != 0 else "0"
    s = re.sub(r"\s+", " ", text.strip())
    if s.endswith("."):
        s = s[:-1].rstrip()
    return s.casefold()


def answers_match(prediction: str | None, reference: str) -> bool:
    """Exact match after `normalize_answer` (numbers compared by value)."""
    if prediction is None:
        return False
    return normalize_answer(prediction) == normalize_answer(reference)


GSM_STOP = r"####[^\n]*\d[^\n]*\n"  # generation may stop here: the answer line is complete


def extract_gsm_answer(generation: str) -> str | None:
    """The first number after the first ``####``, separators removed; None when there is none."""
    if "####" not in generation:
        return None
    m = _NUMBER.search(generation.split("####", 1)[1])
    if m is None:
        return None
    return m.group(0).replace(",", "").lstrip("+").replace("$", "").replace("€", "").replace("£", "")


def extract_short_answer(generation: str) -> str:
    """The text after the last ``####`` if any, else the first non-empty line (stripped)."""
    if "####" in generation:
        tail = generation.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else ""
    for line in generation.splitlines():
        if line.strip():
            return line.strip()
    return ""
