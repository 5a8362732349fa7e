"""Task registry and the `Task` base: named datasets with fixed, disjoint splits.

An item is a dict ``{"prompt": str, "completion": str, "answer": str}`` plus an optional ``"source"`` (the
generator / template that produced it, used for per-source accuracy and for the held-out-generator split).
A causal LM is trained on ``prompt + completion`` with the loss on the completion only; the metric compares
what the model generates after ``prompt`` with ``answer``.

Where the items come from, in order of preference (see `Task.items`):
  1. ``data_dir/<split>.jsonl`` when the task was built with ``data_dir`` (JSONL carried to a machine that
     cannot generate the data, e.g. the GPU machine has no reasoning-gym);
  2. the JSONL cache ``cache_dir/<task>/<fingerprint>/<split>.jsonl`` written by an earlier generation;
  3. `Task.generate(split)` (then written to the cache, atomically).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, ClassVar

from sparselm.data.jsonl import read_jsonl, write_jsonl

Item = dict[str, str]

# Default cache root. A user-level directory so that several checkouts share one generation; override with
# SPARSELM_DATA_CACHE or the `cache_dir` argument.
DEFAULT_CACHE_DIR = Path(os.environ.get("SPARSELM_DATA_CACHE", Path.home() / ".cache" / "sparselm" / "data"))

_TASKS: dict[str, Callable[..., "Task"]] = {}


class Task:
    """A named dataset with fixed splits, a metric and a generation budget.

    Subclasses set `name`, `splits`, `metric`, `max_new_tokens` and implement `generate(split)`.
    `config()` returns every parameter that changes the items (sizes, seeds, version): it names the cache entry.
    """

    name: ClassVar[str] = "task"
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")
    # Metric used by `sparselm.eval.evaluate_task`: "exact_match" | "gsm_exact_match" | "bleu" (BLEU+chrF).
    metric: ClassVar[str] = "exact_match"
    # Generation budget in new tokens; per task because a chain of thought needs far more than a word.
    max_new_tokens: ClassVar[int] = 32
    # Bump when the item format changes, so that old caches are not reused.
    version: ClassVar[int] = 1

    def __init__(self, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                 use_cache: bool = True) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        self.use_cache = use_cache

    # -- to implement -------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Everything that determines the items (JSON-serialisable)."""
        return {"version": self.version}

    def generate(self, split: str) -> list[Item]:
        raise NotImplementedError(f"task {self.name!r} cannot generate split {split!r}")

    # -- shared ---------------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        blob = json.dumps({"task": self.name, **self.config()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def cache_path(self, split: str) -> Path:
        return self.cache_dir / self.name / self.fingerprint() / f"{split}.jsonl"

    def check_split(self, split: str) -> None:
        # an exported directory may hold extra splits that only some settings generate (translation's test-unseen)
        if split in self.splits or (self.data_dir is not None and (self.data_dir / f"{split}.jsonl").is_file()):
            return
        raise ValueError(f"task {self.name!r} has no split {split!r}; splits: {', '.join(self.splits)}")

    def items(self, split: str, limit: int | None = None) -> list[Item]:
        """The items of `split` (the first `limit` of them when given); see the module docstring for the source."""
        self.check_split(split)
        if self.data_dir is not None:
            path = self.data_dir / f"{split}.jsonl"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file; export it with "
                                        f"sparselm.data.export_task(get_task({self.name!r}), '{self.data_dir}')")
            data = read_jsonl(path)
        elif self.use_cache and self.cache_path(split).is_file():
            data = read_jsonl(self.cache_path(split))
        else:
            data = self.generate(split)
            if self.use_cache:
                write_jsonl(self.cache_path(split), data)
        return data[:limit] if limit is not None else data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()})"


def register_task(name: str, factory: Callable[..., Task] | None = None):
    """Register a task factory under `name`; usable as ``register_task("x", Cls)`` or ``@register_task("x")``."""
    def _add(f: Callable[..., Task]) -> Callable[..., Task]:
        if name in _TASKS and _TASKS[name] is not f:
            raise ValueError(f"task {name!r} is already registered")
        _TASKS[name] = f
        return f

    return _add(factory) if factory is not None else _add


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task registered as `name`; keyword arguments go to its constructor (sizes, seed, data_dir…).

    ``name`` may also be a path: a ``.jsonl`` file or a directory of ``<split>.jsonl`` files / a HF
    ``save_to_disk`` directory, which builds a generic task (`sparselm.data.generic`).
    """
    import sparselm.data  # noqa: F401  (registers the built-in tasks)

    if name in _TASKS:
        return _TASKS[name](**kwargs)
    if Path(name).exists():
        from sparselm.data.generic import from_path

        return from_path(name, **kwargs)
    raise KeyError(f"unknown task {name!r}; registered: {', '.join(sorted(_TASKS))} (or a .jsonl / dataset path)")


def list_tasks() -> list[str]:
    import sparselm.data  # noqa: F401

    return sorted(_TASKS)


def export_jsonl(task: Task, split: str, path: str | Path, limit: int | None = None) -> Path:
    """Write `task`'s `split` as JSONL to `path` (atomically) so it can be carried to another machine."""
    return write_jsonl(Path(path), task.items(split, limit=limit))


def export_task(task: Task, out_dir: str | Path, splits: tuple[str, ...] | None = None) -> list[Path]:
    """Export every split of `task` as ``out_dir/<split>.jsonl``; reload with ``get_task(name, data_dir=out_dir)``."""
    return [export_jsonl(task, s, Path(out_dir) / f"{s}.jsonl") for s in (splits or task.splits)]
