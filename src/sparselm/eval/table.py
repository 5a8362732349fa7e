"""A results table for one or more `evaluate` outputs: rich when installed, plain aligned text otherwise."""
from __future__ import annotations

import sys
from typing import Any, Sequence, TextIO

# column -> format; shown only when some result has the key
COLUMNS: dict[str, str] = {
    "model": "{}", "task": "{}", "split": "{}", "n": "{}",
    "exact_match": "{:.2%}", "bleu": "{:.2f}", "chrf": "{:.2f}", "wer": "{:.2%}", "perplexity": "{:.3f}",
    "loglik_per_token": "{:.4f}", "loglik_per_answer": "{:.3f}",
    "no_answer": "{:.1%}", "equation_error_rate": "{:.1%}",  # gsm chains (sparselm.eval.chains)
    "ended_at_eos": "{:.1%}",  # generations that ended at EOS (the rest: stop pattern or token budget)
    "seconds": "{:.1f}",
}


def results_rows(results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells (missing values as "-"); a result's "chains" diagnostics and the EOS share of its
    "ends" count as its own keys."""
    results = [{**r, **(r.get("chains") or {}),
                **({"ended_at_eos": r["ends"]["eos"]} if isinstance(r.get("ends"), dict) else {})} for r in results]
    cols = [c for c in COLUMNS if any(c in r for r in results)]
    rows = [[COLUMNS[c].format(r[c]) if r.get(c) is not None else "-" for c in cols] for r in results]
    return cols, rows


def print_results_table(results: dict[str, Any] | Sequence[dict[str, Any]], file: TextIO | None = None,
                        plain: bool = False) -> None:
    """Print one row per result; `plain=True` (or rich missing) prints space-aligned text."""
    results = [results] if isinstance(results, dict) else list(results)
    cols, rows = results_rows(results)
    file = file or sys.stdout
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            plain = True
    if plain:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)), file=file)
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)), file=file)
        return
    table = Table()
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "task", "split") else "right")
    for r in rows:
        table.add_row(*r)
    Console(file=file).print(table)
