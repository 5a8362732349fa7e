"""Procedural tasks drawn from reasoning-gym generators, with disjoint splits and held-out generators.

Split rules (shared by `gsm` and `reasoning`):
  * source ``k`` of a split draws from seed ``seed + SPLIT_OFFSET[split] + 1000 k``; offsets are 10^6 apart and
    a split never draws more than 10^6 indices, so two splits never share a reasoning-gym item seed of the same
    source (reasoning-gym seeds item ``i`` of a dataset with seed ``s`` by ``Random(s + i)``);
  * prompts are unique inside a split, and a split never repeats a prompt of a split generated before it, in
    the order test → validation → test-unseen → train; so train shares no prompt with any evaluation split
    even when two seeds produce the same question (frequent for small generators);
  * ``test-unseen`` comes only from held-out *sources* (generators or templates) that train/validation/test
    never use: it measures transfer to unseen problem types.
"""
from __future__ import annotations

import random
from typing import Any, Callable, ClassVar

from sparselm.data.registry import Item, Task

SPLIT_OFFSET = {"train": 1_000_000, "validation": 2_000_000, "test": 3_000_000, "test-unseen": 4_000_000}
# Order in which splits are generated; each split excludes the prompts of the splits before it.
GENERATION_ORDER = ("test", "validation", "test-unseen", "train")
MAX_DRAWS = 999_999  # indices one split may draw from one generator (< the 10^6 offset gap, see above)


def require_reasoning_gym():
    """Import reasoning_gym or fail with how to get it (or how to avoid needing it)."""
    try:
        import reasoning_gym
    except ImportError:
        raise ImportError("reasoning-gym is not installed: `pip install reasoning-gym==0.1.25` "
                          "(or `pip install sparselm[data]`); on a machine without it, export the splits "
                          "elsewhere with sparselm.data.export_task and load them with get_task(name, data_dir=DIR)"
                          ) from None
    return reasoning_gym


class Source:
    """One stream of problems: a reasoning-gym dataset + config, optionally filtered by item index."""

    def __init__(self, name: str, dataset: str, config: dict[str, Any] | None = None,
                 keep: Callable[[Any, int], bool] | None = None, tag: Callable[[Any, int], str] | None = None):
        self.name, self.dataset, self.config = name, dataset, dict(config or {})
        self.keep = keep    # (dataset, index) -> bool: filter before generating the item (cheap)
        self.tag = tag      # (dataset, index) -> source label stored in the item; default: self.name

    def draw(self, n: int, seed: int, exclude: set[str], to_item: Callable[[dict], Item]) -> list[Item]:
        """The first `n` items of this source (seed `seed`) whose prompt is not in `exclude`; adds theirs to it.

        The dataset is built with a small size first (some generators precompute per-index state, e.g. the
        template of every index) and rebuilt larger, from scratch, only if filtering left too few items.
        """
        rg = require_reasoning_gym()
        for size in (min(4 * n + 64, MAX_DRAWS), min(64 * n + 1024, MAX_DRAWS), MAX_DRAWS):
            ds = rg.create_dataset(self.dataset, size=size, seed=seed, **self.config)
            seen, out = set(exclude), []
            for idx in range(size):
                if len(out) == n:
                    break
                if self.keep is not None and not self.keep(ds, idx):
                    continue
                item = {**to_item(ds[idx]), "source": self.tag(ds, idx) if self.tag else self.name}
                if item["prompt"] not in seen:
                    seen.add(item["prompt"])
                    out.append(item)
            if len(out) == n:
                exclude.update(seen)
                return out
        raise RuntimeError(f"source {self.name!r} has fewer than {n} distinct prompts left after excluding the "
                           f"other splits; ask for fewer items")


class GymTask(Task):
    """A task made of reasoning-gym `Source`s: `seen_sources()` feed train/validation/test, `unseen_sources()`
    feed test-unseen. Sizes are numbers of items per split; sources share a split equally."""

    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test", "test-unseen")

    def __init__(self, n_train: int, n_validation: int, n_test: int, n_test_unseen: int, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sizes = {"train": n_train, "validation": n_validation, "test": n_test, "test-unseen": n_test_unseen}
        for split, n in self.sizes.items():
            if not 0 <= n <= MAX_DRAWS:
                raise ValueError(f"n_{split.replace('-', '_')}={n}: must be between 0 and {MAX_DRAWS}")
        self.seed = seed

    def seen_sources(self) -> list[Source]:
        raise NotImplementedError

    def unseen_sources(self) -> list[Source]:
        raise NotImplementedError

    def to_item(self, raw: dict[str, Any]) -> Item:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {**super().config(), **self.sizes, "seed": self.seed}

    def generate(self, split: str) -> list[Item]:
        self.check_split(split)
        exclude: set[str] = set()
        for earlier in GENERATION_ORDER[:GENERATION_ORDER.index(split)]:
            exclude.update(it["prompt"] for it in self.items(earlier))
        sources = self.unseen_sources() if split == "test-unseen" else self.seen_sources()
        seed = self.seed + SPLIT_OFFSET[split]
        n = self.sizes[split]
        out: list[Item] = []
        for i, src in enumerate(sources):
            share = n // len(sources) + (1 if i < n % len(sources) else 0)  # equal mixture weights
            # each source gets its own seed stream within the split so adding a source does not shift others
            out += src.draw(share, seed + 1000 * i, exclude, self.to_item)
        random.Random(seed).shuffle(out)  # interleave sources; fixed by the split seed
        return out
