"""Model selection by validation loss (train.eval_every / early_stop_patience) for dense phases."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from sparselm.recipes.schema import RecipeError, validate_finetune_recipe
from sparselm.train import finetune
from sparselm.train.loop import BestSelection


def _jsonl(path, n, offset=0):
    rows = [{"prompt": f"{a}+{a + 1}=", "completion": str(2 * a + 1)} for a in range(offset, offset + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _recipe(tmp_path, **train):
    return {"model": {"name": "tiny-llama", "tiny": {"arch": "llama", "hidden_size": 32, "num_layers": 1,
                                                      "num_heads": 2, "intermediate_size": 64}},
            "data": {"source": "jsonl", "path": str(_jsonl(tmp_path / "train.jsonl", 64)),
                     "eval_path": str(_jsonl(tmp_path / "val.jsonl", 16, offset=500)), "num_examples": None},
            "optim": {"lr": 3e-3},
            "train": {"steps": 12, "batch_size": 8, "seqlen": 16, "log_every": 2, "threads": 1, **train},
            "output": {"dir": str(tmp_path / "run")}}


def test_best_selection_tracks_best_and_patience():
    losses = iter([3.0, 2.0, 2.5, 2.1, 1.5])
    kept, restored = [], []
    sel = BestSelection(every=1, evaluate=lambda: next(losses), keep=lambda s, v: kept.append((s, v)),
                        restore=lambda: restored.append(True), patience=2)
    assert [sel.check(s) for s in (1, 2, 3, 4)] == [False, False, False, True]
    assert kept == [(1, 3.0), (2, 2.0)] and sel.best == 2.0 and sel.best_step == 2 and sel.stale == 2
    assert not restored  # the loop restores, not check()


def test_eval_every_keeps_the_best_weights_and_stops_early(tmp_path, monkeypatch):
    import sparselm.train.runner as runner

    from sparselm.train.select import BestWeights

    scripted = iter([3.0, 2.0, 2.5, 2.6, 9.9, 9.9])  # best at the 2nd evaluation (step 4), then 2 worse ones
    monkeypatch.setattr(runner, "validation_loss", lambda *a, **k: next(scripted))
    save = BestWeights.save

    def save_and_copy(self, module, step, loss):  # the best copy is deleted when the run is written: keep one
        save(self, module, step, loss)
        shutil.copyfile(self.path / "model.safetensors", tmp_path / f"best-{step}.safetensors")

    monkeypatch.setattr(BestWeights, "save", save_and_copy)
    rec = validate_finetune_recipe(_recipe(tmp_path, eval_every=2, early_stop_patience=2))
    out = finetune(rec)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/ce" in r]
    assert [(r["step"], r["val/ce"]) for r in val] == [(2, 3.0), (4, 2.0), (6, 2.5), (8, 2.6)]
    assert max(r["step"] for r in rows) == 8  # stopped after 8 of 12 steps
    best = json.loads((out / "selection.json").read_text())["p0"]
    assert best["step"] == 4 and best["val"] == 2.0 and not (out / "best").exists()
    assert sorted(p.name for p in tmp_path.glob("best-*")) == ["best-2.safetensors", "best-4.safetensors"]
    final, kept = load_file(out / "model.safetensors"), load_file(tmp_path / "best-4.safetensors")
    common = final.keys() & kept.keys()  # tied embedding / head: each file names one of the two
    assert len(common) >= len(final) - 1 and all(torch.equal(final[k], kept[k]) for k in common)
    state = json.loads((out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip() /
                        "state.json").read_text())
    assert state["step"] == 12  # the phase is marked complete: a resume does not train on


def test_eval_every_real_validation_loss_runs_to_the_end(tmp_path):
    out = finetune(validate_finetune_recipe(_recipe(tmp_path, eval_every=4)))
    val = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "val/ce" in x]
    assert [r["step"] for r in val] == [4, 8, 12]
    assert all(r["val/ce"] > 0 for r in val) and val[-1]["val/best"] == min(r["val/ce"] for r in val)
    best = json.loads((out / "selection.json").read_text())["p0"]
    assert best["val"] == pytest.approx(val[-1]["val/best"])


def test_two_dense_phases_each_keep_their_selection_and_checkpoints_record_it(tmp_path):
    rec = _recipe(tmp_path, eval_every=2, ckpt_every=2)
    rec["teacher"] = {"source": "dense-finetune", "dense_steps": 4}  # phase 0: the in-run teacher; phase 1: dense
    out = finetune(validate_finetune_recipe(rec))
    chosen = json.loads((out / "selection.json").read_text())
    assert set(chosen) == {"p0", "p1"} and chosen["p0"]["step"] in (2, 4)
    state = json.loads((out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip() /
                        "state.json").read_text())
    assert state["phase"] == 1 and set(state["selection"]) == {"best", "best_step", "stale"}
    assert state["selection"]["best"] == chosen["p1"]["val"]


def test_selection_state_round_trips():
    sel = BestSelection(every=1, evaluate=lambda: 1.0, keep=lambda s, v: None, restore=lambda: None)
    sel.load_state({"best": 2.5, "best_step": 40, "stale": 3})
    assert sel.state() == {"best": 2.5, "best_step": 40, "stale": 3}


@pytest.mark.parametrize("train, data, msg", [
    ({"early_stop_patience": 2}, {}, "needs train.eval_every"),
    ({"eval_every": 2}, {"eval_path": None}, "needs held-out data"),
    ({"eval_every": 2}, {"eval_path": None, "eval_split": "validation"}, "set data.eval_path"),
])
def test_selection_settings_are_checked(tmp_path, train, data, msg):
    rec = _recipe(tmp_path, **train)
    rec["data"].update(data)
    with pytest.raises((RecipeError, ValueError), match=msg):
        validate_finetune_recipe(rec)


def test_tiny_dropout_reaches_the_config():
    from sparselm.train.tiny import tiny_config

    assert tiny_config("t5", dropout=0.1).dropout_rate == 0.1
    assert tiny_config("t5").dropout_rate == 0.0
    assert tiny_config("gpt2", dropout=0.2).resid_pdrop == 0.2
