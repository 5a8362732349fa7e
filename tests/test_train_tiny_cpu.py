"""The shipped tiny-cpu recipe runs end to end (dense teacher -> SparseGPT 50% -> 20 SquareHead steps) and writes
every output the finetune contract promises."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from sparselm.recipes.schema import load_finetune_recipe
from sparselm.train import finetune

RECIPE = Path(__file__).resolve().parents[1] / "src" / "sparselm" / "recipes" / "tiny-cpu.yaml"


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_tiny_cpu_recipe_finishes_and_writes_outputs(tmp_path):
    t0 = time.perf_counter()
    out = finetune(RECIPE, out=str(tmp_path / "run"))
    elapsed = time.perf_counter() - t0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "sparsity.json", "metrics.jsonl",
                 "recipe.yaml", "run.json", "teacher/model.safetensors", "checkpoints/latest"):
        assert (out / name).is_file(), name
    report = json.loads((out / "sparsity.json").read_text())
    assert set(report) == {"method", "target", "overall", "layers"} and report["method"] == "sparsegpt"
    assert report["target"] == 0.5 and report["overall"] == pytest.approx(0.5, abs=0.01)
    assert len(report["layers"]) == 2 * 7 and all(v == pytest.approx(0.5, abs=0.02)
                                                  for v in report["layers"].values())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    stage = [r for r in rows if r["phase"] == "stage-0"]
    dense = [r for r in rows if r["phase"] == "dense-teacher"]
    assert len(stage) == 20 // 5 and len(dense) == 150 // 5
    assert {"loss/ce", "loss/squarehead", "loss/total", "lr", "global_step"} <= set(stage[0])
    assert dense[-1]["loss/ce"] < 0.75 * dense[0]["loss/ce"]  # the dense teacher learned
    assert stage[-1]["loss/squarehead"] < stage[0]["loss/squarehead"] * 1.5  # no blow-up after pruning
    resolved = load_finetune_recipe(out / "recipe.yaml")
    assert resolved.output.dir == str(tmp_path / "run")
    model = LlamaForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("12+3=").input_ids and model.config.vocab_size == len(tok)
    print(f"tiny-cpu finished in {elapsed:.1f} s")
