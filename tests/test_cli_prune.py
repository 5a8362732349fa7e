"""`sparselm prune` end to end on tiny models: outputs, round trip through from_pretrained, and clear errors."""
import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, WhisperForConditionalGeneration
from typer.testing import CliRunner

from sparselm.cli import app
from sparselm.models import get_adapter, weight_2d
from sparselm.pruning import prune_model
from test_eval_fixtures import char_tokenizer
from tiny_models import calib_batches, tiny

runner = CliRunner()
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 40


@pytest.fixture()
def llama_dir(tmp_path):
    tok = char_tokenizer()
    model = tiny("llama")
    model.resize_token_embeddings(len(tok))
    d = tmp_path / "tiny-llama"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    (tmp_path / "calib.txt").write_text(TEXT)
    return d


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
def test_prune_writes_loadable_dir(llama_dir, tmp_path, method):
    out = tmp_path / f"out-{method}"
    res = runner.invoke(app, ["prune", str(llama_dir), "--method", method, "--sparsity", "0.5", "--calib",
                              str(tmp_path / "calib.txt"), "--nsamples", "4", "--seqlen", "32", "--out", str(out),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "sparsity.json").read_text())
    assert rep["method"] == method and rep["target"] == 0.5 and abs(rep["overall"] - 0.5) < 0.01
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["settings"]["method"] == method and "git_sha" in recipe["provenance"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for name, layer in get_adapter(reloaded).prunable_linears(reloaded).items():
        assert abs(float((weight_2d(layer) == 0).float().mean()) - rep["layers"][name]) < 1e-9


def test_prune_pattern_cli(llama_dir, tmp_path):
    out = tmp_path / "o24"
    res = runner.invoke(app, ["prune", str(llama_dir), "--method", "wanda", "--pattern", "2:4", "--calib",
                              str(tmp_path / "calib.txt"), "--nsamples", "2", "--seqlen", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "sparsity.json").read_text())["target"] == "2:4"


@pytest.mark.parametrize("args,needle", [
    (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
    (["--pattern", "2-4"], "malformed N:M"),
    (["--pattern", "4:2"], "0 < N < M"),
    (["--sparsity", "0.5", "--pattern", "2:4"], "exactly one"),
    (["--sparsity", "0.5", "--seqlen", "100000"], "exceeds the model's context"),
    (["--sparsity", "0.5", "--method", "obs"], "unknown pruning method"),
])
def test_bad_input_one_line_nothing_written(llama_dir, tmp_path, args, needle):
    out = tmp_path / "bad"
    res = runner.invoke(app, ["prune", str(llama_dir), "--calib", str(tmp_path / "calib.txt"), "--nsamples", "2",
                              "--out", str(out)] + args)
    assert res.exit_code != 0
    assert needle in res.output, res.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]  # no staging dir left behind


def test_empty_calibration_and_missing_model(llama_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    res = runner.invoke(app, ["prune", str(llama_dir), "--sparsity", "0.5", "--calib", str(empty),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "empty" in res.output
    res = runner.invoke(app, ["prune", str(tmp_path / "nope"), "--sparsity", "0.5", "--calib", str(empty),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "not found" in res.output


def test_jsonl_calibration(llama_dir, tmp_path):
    js = tmp_path / "c.jsonl"
    js.write_text("\n".join(json.dumps({"text": TEXT[i:i + 300]}) for i in range(0, 3000, 300)))
    out = tmp_path / "oj"
    res = runner.invoke(app, ["prune", str(llama_dir), "--sparsity", "0.3", "--calib", str(js), "--nsamples", "2",
                              "--seqlen", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("family,cls", [("gpt2", AutoModelForCausalLM), ("t5", AutoModelForSeq2SeqLM),
                                        ("whisper", WhisperForConditionalGeneration), ("llama", AutoModelForCausalLM)])
def test_roundtrip_identical_weights_and_masks(tmp_path, family, cls):
    model = tiny(family)
    prune_model(model, method="sparsegpt", sparsity=0.5, calib=calib_batches(family), progress=False)
    model.save_pretrained(tmp_path / family)
    back = cls.from_pretrained(tmp_path / family)
    sd, sd2 = model.state_dict(), back.state_dict()
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k


def test_eval_cli_task_args_reach_the_task(llama_dir, tmp_path):
    data = tmp_path / "tr"
    data.mkdir()
    rows = [{"prompt": "Translate English to German:\nthe cat\nGerman:", "completion": " die Katze",
             "answer": "die Katze", "source": "gettext:tool"}] * 2
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ev.json"
    res = runner.invoke(app, ["eval", str(llama_dir), "--task", "translation", "--task-arg", f"data_dir={data}",
                              "--limit", "2", "--batch-size", "2", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["metric"] == "bleu" and got["n"] == 2 and list(got["per_source"]) == ["gettext"]
    bad = runner.invoke(app, ["eval", str(llama_dir), "--task", "translation", "--task-arg", "corpus"])
    assert bad.exit_code != 0 and "KEY=VALUE" in bad.output


def test_eval_of_a_dir_without_weights_says_why(llama_dir):
    """A pipeline run dir keeps config and numbers but drops weights unless asked: `sparselm eval` on it names the
    missing weights and the setting that keeps them, instead of a transformers traceback."""
    for f in llama_dir.glob("*.safetensors"):
        f.unlink()
    res = runner.invoke(app, ["eval", str(llama_dir), "--task", "perplexity", "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "no weights" in res.output and "output.keep_models=true" in res.output
