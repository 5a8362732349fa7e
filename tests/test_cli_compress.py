"""`sparselm compress`: a pruned model directory -> a sparselm-bitmask directory that load_compressed rebuilds with
the same outputs as the in-memory SparseLinear model, the settings beside it, and clear errors."""
import json

import pytest
import torch
from typer.testing import CliRunner

from sparselm.cli import app
from sparselm.compress import load_compressed
from sparselm.runtime import SparseLinear, sparsify
from test_eval_fixtures import save_pruned_llama

runner = CliRunner()


@pytest.fixture()
def pruned_dir(tmp_path):
    return save_pruned_llama(tmp_path / "pruned")


@pytest.mark.parametrize("values", ["float16", "int4"])
def test_compress_writes_a_loadable_dir(pruned_dir, tmp_path, values):
    out = tmp_path / f"c-{values}"
    res = runner.invoke(app, ["compress", str(pruned_dir), "--values", values, "--dense-dtype", "float32",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "layers compressed" in res.output
    settings = json.loads((out / "compress.json").read_text())
    assert settings["values"] == values and settings["layers"] > 0 and 0.5 < settings["mean_layer_sparsity"] < 0.7
    assert (out / "tokenizer_config.json").is_file() or (out / "tokenizer.json").is_file()
    loaded = load_compressed(out)
    assert sum(isinstance(m, SparseLinear) for m in loaded.modules()) == settings["layers"]
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(pruned_dir).eval()
    sparsify(ref, values_dtype=values)
    ids = torch.randint(0, ref.config.vocab_size, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)


def test_compress_errors_are_one_line(pruned_dir, tmp_path):
    res = runner.invoke(app, ["compress", str(pruned_dir), "--values", "int3", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--values" in res.output
    res = runner.invoke(app, ["compress", str(pruned_dir), "--group-size", "64", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--group-size" in res.output
    res = runner.invoke(app, ["compress", str(pruned_dir), "--min-sparsity", "0.9", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "prune it first" in res.output
    assert not (tmp_path / "x").exists()  # nothing half-written
    ok = runner.invoke(app, ["compress", str(pruned_dir), "--out", str(tmp_path / "y")])
    assert ok.exit_code == 0, ok.output
    again = runner.invoke(app, ["compress", str(pruned_dir), "--out", str(tmp_path / "y")])
    assert again.exit_code == 2 and "--overwrite" in again.output
