"""`finetune(items=..., collate=...)`: any training items and their collator replace the recipe's data source —
here a tiny Whisper on random audio features, through SparseGPT and a CE + KD + SquareHead stage."""
from __future__ import annotations

import json

import pytest
import torch

from sparselm.train import finetune

RECIPE = {
    "model": {"name": "tiny-whisper", "tiny": {"hidden_size": 32, "num_heads": 4, "intermediate_size": 64,
                                               "max_positions": 16}},
    "teacher": {"source": "initial"},
    "data": {"calib_samples": 4},
    "pruning": {"method": "sparsegpt", "stages": [{"sparsity": 0.5, "steps": 3}]},
    "loss": {"ce": 1.0, "kd": 1.0, "squarehead": 1.0},
    "train": {"batch_size": 4, "seqlen": 16, "log_every": 1, "threads": 1},
}


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _collate(items: list[dict]) -> dict[str, torch.Tensor]:
    n = max(len(it["labels"]) for it in items)
    labels = torch.full((len(items), n), -100, dtype=torch.long)
    for r, it in enumerate(items):
        labels[r, :len(it["labels"])] = torch.tensor(it["labels"])
    return {"input_features": torch.stack([it["input_features"] for it in items]), "labels": labels}


def test_whisper_items_through_prune_and_distill(tmp_path):
    from sparselm.recipes.schema import validate_finetune_recipe

    g = torch.Generator().manual_seed(0)
    items = [{"input_features": torch.randn(80, 32, generator=g),
              "labels": torch.randint(4, 20, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist()}
             for _ in range(16)]
    out = finetune(validate_finetune_recipe(RECIPE), out=str(tmp_path / "w"), items=items, collate=_collate)
    report = json.loads((out / "sparsity.json").read_text())
    assert report["overall"] == pytest.approx(0.5, abs=0.01)
    assert any(k.startswith("model.encoder.") for k in report["layers"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["loss/squarehead"] > 0 and r["loss/kd"] >= 0 for r in rows)
    with pytest.raises(ValueError, match="collate"):
        finetune(validate_finetune_recipe(RECIPE), out=str(tmp_path / "x"), items=items)
