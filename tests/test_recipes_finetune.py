"""Fine-tuning recipes: every shipped YAML validates; bad input is one clear error naming the field."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sparselm.recipes.schema import (FinetuneRecipe, RecipeError, apply_overrides, dump_recipe,
                                     load_finetune_recipe, validate_finetune_recipe)

RECIPES = Path(__file__).resolve().parents[1] / "src" / "sparselm" / "recipes"
FINETUNE_KEYS = {"loss", "optim", "schedule", "data"}  # a fine-tuning recipe has at least one of these
PIPELINE_KEYS = {"sparsities", "losses", "sparse", "task"}  # `sparselm run` recipes: validated by their own schema


def _finetune_yamls() -> list[Path]:
    out = []
    for p in sorted(RECIPES.glob("*.yaml")):
        keys = set(yaml.safe_load(p.read_text()) or {})
        if keys & FINETUNE_KEYS and not keys & PIPELINE_KEYS:
            out.append(p)
    return out


def test_there_is_a_shipped_finetune_recipe():
    assert "tiny-cpu.yaml" in [p.name for p in _finetune_yamls()]


@pytest.mark.parametrize("path", _finetune_yamls(), ids=lambda p: p.name)
def test_every_shipped_finetune_yaml_validates(path):
    recipe = load_finetune_recipe(path)
    again = validate_finetune_recipe(yaml.safe_load(dump_recipe(recipe)))  # resolved YAML round-trips
    assert again == recipe


BASE = {"model": "tiny-llama", "train": {"steps": 3, "seqlen": 32}}


@pytest.mark.parametrize("patch, field", [
    ({"train": {"steps": 3, "seqlen": 32, "stepz": 1}}, "train.stepz"),            # unknown key
    ({"train": {"steps": "many", "seqlen": 32}}, "train.steps"),                    # wrong type
    ({"optim": {"lr": -1.0}}, "optim.lr"),                                           # impossible value
    ({"loss": {"kd": 0.5}}, "loss.kd"),                                              # KD without teacher
    ({"loss": {"squarehead": 1.0}}, "loss.squarehead"),                              # SquareHead without teacher
    ({"pruning": {"stages": [{"sparsity": 1.5}]}}, "pruning.stages.0.sparsity"),
    ({"pruning": {"stages": [{"pattern": "4:2"}]}}, "pruning.stages.0.pattern"),
    ({"teacher": {"source": "path"}}, "teacher"),
    ({"model": {"name": "tiny-llama", "tiny": {"hidden_size": 30, "num_heads": 4}}}, "model.tiny"),
])
def test_bad_recipes_name_the_field(patch, field):
    with pytest.raises(RecipeError) as err:
        validate_finetune_recipe({**BASE, **patch})
    msg = str(err.value)
    assert field in msg and "\n" not in msg


def test_dotted_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE, "pruning": {"stages": [{"sparsity": 0.5}, {"sparsity": 0.7}]}}))
    r = load_finetune_recipe(path, ["train.steps=7", "pruning.stages.1.sparsity=0.75", "loss.layers=[0, -1]",
                                    "model.tiny.hidden_size=32"])
    assert r.train.steps == 7 and r.pruning.stages[1].sparsity == 0.75 and r.loss.layers == [0, -1]
    assert r.model.tiny.hidden_size == 32 and r.model.tiny.arch == "llama"
    with pytest.raises(RecipeError, match="train.nope"):
        load_finetune_recipe(path, ["train.nope=1"])
    with pytest.raises(RecipeError, match="not key=value"):
        apply_overrides({}, ["train.steps"])


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_finetune_recipe(tmp_path / "nope.yaml")


def test_defaults_are_a_dense_ce_finetune():
    r = FinetuneRecipe.model_validate(BASE)
    assert r.pruning is None and r.teacher is None and r.loss.ce == 1.0 and r.optim.weight_decay == 0.0
