"""How a chain of thought fails: the arithmetic of its equations, and whether it reaches an answer.

Exact match says only that the final number is wrong. Two sparse models with the same answer log-likelihood can
fail in different ways: one writes well-formed chains with wrong products, another never writes ``#### N``. The
per-item diagnostics here tell those apart, from the generated text alone:

    check_equations("42 orders/day * 3 = 126 orders")  ->  (1, 0)    # one equation checked, none wrong
    chain_diagnostics(generations, budget_hit)           ->  {"no_answer": ..., "equation_error_rate": ..., ...}

An equation is ``<arithmetic> = <number>``, with unit words removed first (``168 orders/day * 7 days/week`` reads
as ``168 * 7``). Only left sides with at least one operator are checked; they are parsed by `ast` and evaluated
over a closed set of nodes (numbers, + - * /, unary minus, parentheses), never by `eval`. A right side within
max(0.01, 0.5%) of the left counts as right: GSM chains round money and fractions.
"""
from __future__ import annotations

import ast
import operator
import re
from typing import Sequence

# unit words and word/word rates ("orders/day"), removed before equations are read; the "/" inside a rate must go
# with its words or "42 orders/day * 3" would read as "42 / * 3"
_WORDS = re.compile(r"[A-Za-z_]+(?:/[A-Za-z_]+)*")
_EQUATION = re.compile(r"([0-9.\s+\-*/()]*[0-9)])\s*=\s*(-?\d+(?:\.\d+)?)")
_TIMES = re.compile(r"(?<=[\d)])\s*[x×]\s*(?=[\d(])")  # "3 x 4", "3×4": a product, not a word
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _value(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _value(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left), _value(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    raise ValueError(f"not plain arithmetic: {ast.dump(node)[:60]}")


def arithmetic(expr: str) -> float | None:
    """The value of `expr` (numbers, + - * /, parentheses), or None when it is not plain arithmetic."""
    text = expr.strip()
    if not text or len(text) > 200:
        return None
    try:
        return _value(ast.parse(text, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def _close(left: float, right: float) -> bool:
    return abs(left - right) <= max(0.01, 0.005 * abs(right))


def check_equations(text: str) -> tuple[int, int]:
    """(equations checked, equations wrong) in one generation (see the module docstring)."""
    checked = wrong = 0
    for line in text.splitlines():
        plain = _THOUSANDS.sub("", _TIMES.sub(" * ", line)).replace("$", "")
        plain = _WORDS.sub(" ", plain)
        for m in _EQUATION.finditer(plain):
            lhs = m.group(1).strip()
            # the expression starts after the last delimiter the word removal left ("In a day, 126 + 42 = 168")
            lhs = re.split(r"[,;:]", lhs)[-1].strip()
            if not re.search(r"[\d)]\s*[+\-*/]\s*[\d(]", lhs):
                continue  # a bare number or a label ("x = 5"): nothing to check
            left = arithmetic(lhs)
            if left is None:
                continue
            checked += 1
            wrong += not _close(left, float(m.group(2)))
    return checked, wrong


def chain_diagnostics(generations: Sequence[str], answer_marker: str = "####") -> dict[str, float]:
    """Per-split rates over the generations: `no_answer` (no marker), `equations_per_item`, `equation_error_rate`
    (wrong / checked, over all equations of the split), `items_with_wrong_equation`."""
    if not generations:
        raise ValueError("chain_diagnostics: no generations")
    checked = wrong = items_wrong = no_answer = 0
    for g in generations:
        c, w = check_equations(g)
        checked, wrong = checked + c, wrong + w
        items_wrong += w > 0
        no_answer += answer_marker not in g
    n = len(generations)
    return {"no_answer": no_answer / n, "equations_per_item": checked / n,
            "equation_error_rate": wrong / checked if checked else 0.0, "items_with_wrong_equation": items_wrong / n}


_ANSWER_LINE = re.compile(r"####[^\n]*\n")


def runs_on_after_answer(generation: str) -> bool:
    """Text after the first ``#### N`` line: the model did not stop (at EOS) where its training chains ended."""
    m = _ANSWER_LINE.search(generation)
    return bool(m and generation[m.end():].strip())
