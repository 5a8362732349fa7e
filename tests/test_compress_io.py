"""A compressed model directory: save -> load without dense weights gives the same outputs; bad files fail clearly."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sparselm.compress import CompressedFormatError, load_compressed, save_compressed
from sparselm.runtime import SparseLinear, sparsify


def tiny_llama(tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=67, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj" in name:
                p[torch.rand_like(p) < 0.6] = 0
    return model


@pytest.mark.parametrize("values_dtype,tie", [("float32", False), ("int8", True), ("int4", False)])
def test_save_load_same_logits(tmp_path, values_dtype, tie):
    model = tiny_llama(tie)
    sparsify(model, values_dtype=values_dtype)
    ids = torch.randint(0, 67, (2, 7))
    with torch.no_grad():
        ref = model(ids).logits
    out = save_compressed(model, tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["compression.json", "config.json", "model.safetensors"]
    index = json.loads((out / "compression.json").read_text())
    assert index["format"] == "sparselm-bitmask" and index["version"] == 1 and len(index["layers"]) == 14
    assert all("embed" not in n and "lm_head" not in n for n in index["layers"])
    loaded = load_compressed(out)
    assert sum(isinstance(m, SparseLinear) for m in loaded.modules()) == 14
    with torch.no_grad():
        got = loaded(ids).logits
    torch.testing.assert_close(got, ref)


def test_refuses_model_without_sparse_layers(tmp_path):
    with pytest.raises(CompressedFormatError, match="SparseLinear"):
        save_compressed(tiny_llama(), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _saved(tmp_path):
    model = tiny_llama()
    sparsify(model, values_dtype="float16")
    return save_compressed(model, tmp_path / "m")


def test_unknown_version_rejected(tmp_path):
    out = _saved(tmp_path)
    index = json.loads((out / "compression.json").read_text())
    index["version"] = 7
    (out / "compression.json").write_text(json.dumps(index))
    with pytest.raises(CompressedFormatError, match="version"):
        load_compressed(out)


def test_truncated_file_rejected(tmp_path):
    out = _saved(tmp_path)
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CompressedFormatError):
        load_compressed(out)


def test_tampered_tensor_names_layer(tmp_path):
    from safetensors.torch import load_file, save_file

    out = _saved(tmp_path)
    tensors = load_file(str(out / "model.safetensors"))
    key = "model.layers.1.mlp.up_proj.values"
    tensors[key] = tensors[key][:-3].clone()  # fewer values than the mask says
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(CompressedFormatError, match="model.layers.1.mlp.up_proj.values"):
        load_compressed(out)


def test_missing_index_rejected(tmp_path):
    with pytest.raises(CompressedFormatError, match="compression.json"):
        load_compressed(tmp_path)


def test_int4_is_stored_packed_and_refuses_bad_codes(tmp_path):
    """int4 layers go to disk two codes per byte (half the int8 value bytes), come back as the same codes, and a
    truncated or out-of-range (-8) value tensor is a format error naming the layer."""
    from safetensors.torch import load_file, save_file

    model = tiny_llama()
    sparsify(model, values_dtype="int4", group_size=16)
    layer = model.model.layers[0].mlp.up_proj
    assert layer.compressed.values_dtype == "int4" and int(layer.values.abs().max()) <= 7
    out = save_compressed(model, tmp_path / "m")
    index = json.loads((out / "compression.json").read_text())
    meta = index["layers"]["model.layers.0.mlp.up_proj"]
    assert meta["values_dtype"] == "int4" and meta["group_size"] == 16
    tensors = load_file(str(out / "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.values"
    assert tensors[key].dtype == torch.uint8 and tensors[key].numel() == (meta["nnz"] + 1) // 2
    loaded = load_compressed(out)
    assert torch.equal(loaded.model.layers[0].mlp.up_proj.values, layer.values)
    assert loaded.model.layers[0].mlp.up_proj.compressed.values_dtype == "int4"
    bad = dict(tensors)
    bad[key] = tensors[key][:-1].clone()
    save_file(bad, str(out / "model.safetensors"))
    with pytest.raises(CompressedFormatError, match="up_proj.values: int4 values need"):
        load_compressed(out)
    bad[key] = tensors[key].clone()
    bad[key][0] = 0x88  # two -8 codes
    save_file(bad, str(out / "model.safetensors"))
    with pytest.raises(CompressedFormatError, match="code -8"):
        load_compressed(out)
