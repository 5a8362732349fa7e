"""`sparselm generate`: a pruned model directory (or a `sparselm compress` one) decodes through the sparse kernels on
the CPU, with the same tokens as the same loop run dense, the timing and settings in the summary, and clear errors."""
import json

import pytest
from typer.testing import CliRunner

from sparselm.cli import app
from test_eval_fixtures import save_pruned_llama

runner = CliRunner()


@pytest.fixture()
def pruned_dir(tmp_path):
    return save_pruned_llama(tmp_path / "pruned")


def test_generate_matches_the_dense_loop_and_writes_the_summary(pruned_dir, tmp_path):
    out = tmp_path / "gen.json"
    res = runner.invoke(app, ["generate", str(pruned_dir), "--prompt", "abc abc", "--max-new-tokens", "6",
                              "--device", "cpu", "--compare-dense", "--out", str(out)])
    assert res.exit_code == 0, res.output
    s = json.loads(out.read_text())
    assert s["sparse_layers"] == 14 and s["values"] == "float32" and s["new_tokens"] == 6  # 2 layers x 7 linears
    assert s["tokens_per_s"] > 0 and s["dense_tokens_per_s"] > 0 and s["speedup"] > 0
    assert s["same_tokens_as_dense"] == 6  # fp32 values: the sparse kernels give the dense loop's greedy tokens
    assert "tokens/s" in res.output


def test_generate_reads_a_compressed_directory(pruned_dir, tmp_path):
    comp = tmp_path / "c"
    assert runner.invoke(app, ["compress", str(pruned_dir), "--values", "float32", "--dense-dtype", "float32",
                               "--out", str(comp)]).exit_code == 0
    res = runner.invoke(app, ["generate", str(comp), "--prompt", "ab", "--max-new-tokens", "3", "--device", "cpu",
                              "--compare-dense", "--out", str(tmp_path / "g.json")])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "g.json").read_text())
    assert s["sparse_layers"] == 14 and s["values"] == "float32" and s["same_tokens_as_dense"] == 3


def test_generate_errors_are_one_line(pruned_dir, tmp_path):
    comp = tmp_path / "c"
    runner.invoke(app, ["compress", str(pruned_dir), "--out", str(comp)])
    cases = [([str(comp), "--values", "int8"], "already compressed"),
             ([str(pruned_dir), "--min-sparsity", "0.9"], "prune it first"),
             ([str(pruned_dir), "--max-new-tokens", "0"], "max-new-tokens"),
             ([str(pruned_dir), "--device", "tpu"], "--device"),
             ([str(tmp_path / "missing")], "not found")]
    for args, why in cases:
        res = runner.invoke(app, ["generate", *args, "--prompt", "ab", "--device", "cpu"] if "--device" not in args
                            else ["generate", *args, "--prompt", "ab"])
        assert res.exit_code == 2 and why in res.output, (args, res.output)
