"""Contract matrix: every pruner x pattern x family keeps the mask invariants; nothing outside the mask changes."""
import pytest
import torch

from sparselm.models import get_adapter, weight_2d
from sparselm.pruning import pruner_names, prune_model
from sparselm.sparsity import is_nm, masks_of
from tiny_models import ALL_FAMILIES, calib_batches, tiny


def test_registry_has_three_pruners():
    assert set(pruner_names()) >= {"magnitude", "wanda", "sparsegpt"}


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_exact_sparsity(family, method):
    model = tiny(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rep = prune_model(model, method=method, sparsity=0.5, calib=calib_batches(family), progress=False)
    linears = get_adapter(model).prunable_linears(model)
    assert set(rep["layers"]) == set(linears)
    for name, layer in linears.items():
        w = weight_2d(layer)
        k_row = int(w.shape[1] * 0.5)
        zeros_row = (w == 0).sum(1)
        if method == "wanda":  # per-row selection: every row exactly at target
            assert torch.all(zeros_row == k_row), name
        else:  # per-layer / per-block selection: the layer at target (blocks round down independently)
            assert abs(rep["layers"][name] - 0.5) < 0.02, (name, rep["layers"][name])
    # parameters outside the prunable layers are untouched
    prunable = {f"{n}.weight" for n in linears}
    for key, value in model.state_dict().items():
        if key not in prunable and not any(key.startswith(n + ".") for n in linears):
            assert torch.equal(value, before[key]), key
    if method in ("magnitude", "wanda"):  # score pruners only zero weights, never move the survivors
        for n in linears:
            w0, w1 = before[f"{n}.weight"], model.state_dict()[f"{n}.weight"]
            kept = w1 != 0
            assert torch.equal(w0[kept], w1[kept])


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "16:32", "16:64"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nm_patterns(pattern, method):
    n, m = map(int, pattern.split(":"))
    model = tiny("llama")
    prune_model(model, method=method, sparsity=None, pattern=pattern, calib=calib_batches("llama"), progress=False)
    for name, layer in get_adapter(model).prunable_linears(model).items():
        w = weight_2d(layer)
        assert is_nm(w, n, m), name
        assert abs(float((w == 0).float().mean()) - (1 - n / m)) < 1e-6, name


def test_keep_zeros_staged():
    model = tiny("llama")
    calib = calib_batches("llama")
    prune_model(model, method="sparsegpt", sparsity=0.5, calib=calib, progress=False)
    first = masks_of(model)
    prune_model(model, method="sparsegpt", sparsity=0.75, calib=calib, progress=False)
    second = masks_of(model)
    for name in first:
        assert torch.all(second[name][first[name]]), f"{name}: an old zero came back"
        assert abs(float(second[name].float().mean()) - 0.75) < 0.02


def test_bad_inputs_raise():
    model = tiny("llama")
    with pytest.raises(ValueError, match="sparsity"):
        prune_model(model, method="magnitude", sparsity=1.0, progress=False)
    with pytest.raises(ValueError, match="N:M"):
        prune_model(model, method="magnitude", sparsity=None, pattern="4:2", progress=False)
    with pytest.raises(ValueError, match="unknown pruning method"):
        prune_model(model, method="obs", sparsity=0.5, progress=False)


def test_unsupported_architecture_names_supported():
    from transformers import BertConfig, BertModel

    from sparselm.models import UnsupportedModelError

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                vocab_size=64))
    with pytest.raises(UnsupportedModelError, match="llama"):
        get_adapter(bert)
