"""Generic tasks from local files: JSONL and HF ``datasets`` directories (``save_to_disk``).

Rows are either ``{"prompt", "completion"[, "answer"]}`` (loss on the completion; answer defaults to the stripped
completion) or ``{"text"}`` (language modelling: empty prompt, the whole text is the completion). Other field
names can be mapped with ``prompt_field`` / ``completion_field`` / ``answer_field`` / ``text_field``.

    get_task("data/my.jsonl")              # one file: it has no splits, every split name returns the whole file
    get_task("data/mytask/")               # a directory of <split>.jsonl files, or a HF save_to_disk directory
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from sparselm.data.jsonl import read_jsonl
from sparselm.data.registry import Item, Task, register_task


def rows_to_items(rows: list[dict[str, Any]], where: str, prompt_field: str = "prompt",
                  completion_field: str = "completion", answer_field: str = "answer",
                  text_field: str = "text") -> list[Item]:
    """Normalise rows into items; a row with neither a prompt/completion pair nor a text fails naming `where`."""
    items = []
    for i, row in enumerate(rows):
        if completion_field in row:
            prompt, completion = str(row.get(prompt_field, "")), str(row[completion_field])
            answer = str(row.get(answer_field, completion.strip()))
        elif text_field in row:
            prompt, completion = "", str(row[text_field])
            answer = completion
        else:
            raise ValueError(f"{where}: row {i} has neither {completion_field!r} (with {prompt_field!r}) "
                             f"nor {text_field!r}; fields: {', '.join(map(str, row))}")
        item = {"prompt": prompt, "completion": completion, "answer": answer}
        if "source" in row:
            item["source"] = str(row["source"])
        items.append(item)
    return items


class LocalTask(Task):
    """Items read from local JSONL files or a HF dataset directory; nothing is generated or cached."""

    name: ClassVar[str] = "local"

    def __init__(self, path: str | Path, metric: str = "exact_match", max_new_tokens: int = 64,
                 fields: dict[str, str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("use_cache", False)
        super().__init__(**kwargs)
        self.path = Path(path)
        self.metric = metric                    # type: ignore[misc]  (per-instance override of the class default)
        self.max_new_tokens = max_new_tokens    # type: ignore[misc]
        self.fields = dict(fields or {})
        self._files: dict[str, Path] = {}
        self._hf = None
        if self.path.is_file():
            self.splits = ("all",)              # type: ignore[misc]
        elif self.path.is_dir() and sorted(self.path.glob("*.jsonl")):
            self._files = {p.stem: p for p in sorted(self.path.glob("*.jsonl"))}
            self.splits = tuple(self._files)    # type: ignore[misc]
        elif self.path.is_dir():
            self._hf = _load_from_disk(self.path)
            self.splits = tuple(self._hf) if hasattr(self._hf, "keys") else ("all",)  # type: ignore[misc]
        else:
            raise FileNotFoundError(f"{self.path}: no such file or directory")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "path": str(self.path), "fields": self.fields}

    def check_split(self, split: str) -> None:
        if self.splits != ("all",):
            super().check_split(split)

    def generate(self, split: str) -> list[Item]:
        self.check_split(split)
        if self.path.is_file():
            where, rows = str(self.path), read_jsonl(self.path)
        elif self._files:
            where, rows = str(self._files[split]), read_jsonl(self._files[split])
        else:
            where, rows = f"{self.path} [{split}]", list(self._hf[split] if self.splits != ("all",) else self._hf)
        fields = {f"{k}_field": v for k, v in self.fields.items()}
        return rows_to_items(rows, where, **fields)

    def items(self, split: str, limit: int | None = None) -> list[Item]:
        data = self.generate(split)
        return data[:limit] if limit is not None else data


def _load_from_disk(path: Path):
    try:
        from datasets import load_from_disk
    except ImportError:
        raise ImportError(f"{path}: reading a HF dataset directory needs the `datasets` package: "
                          f"`pip install datasets` (or export it as <split>.jsonl files)") from None
    return load_from_disk(str(path))


def from_path(path: str | Path, **kwargs: Any) -> LocalTask:
    """A `LocalTask` for a .jsonl file, a directory of <split>.jsonl files, or a HF save_to_disk directory."""
    return LocalTask(path, **kwargs)


register_task("jsonl", from_path)
