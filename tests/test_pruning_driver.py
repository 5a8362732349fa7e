"""The sequential driver feeds every pruner exactly the inputs its layer sees in a real forward of the model
(per-block arguments: rotary tables, T5 position biases, Gemma-3's per-layer sliding/global masks, the encoder
output for a decoder), and with `offload` it gives the same result."""
import pytest
import torch

from sparselm.models import get_adapter
from sparselm.pruning import prune_model, register_pruner
from sparselm.pruning.base import Pruner
from tiny_models import ALL_FAMILIES, calib_batches, tiny

SEEN: dict[int, list[torch.Tensor]] = {}


class RecordingPruner(Pruner):
    """Keeps every input it is fed and prunes nothing: the model stays dense, so inputs must match a dense forward."""

    def add_batch(self, inp):
        SEEN.setdefault(id(self.layer), []).append(inp.detach().clone())

    def prune(self, sparsity=None, n=None, m=None, keep_zeros=True, scope=None):
        return torch.zeros(self.rows, self.cols, dtype=torch.bool)


register_pruner("_recording", RecordingPruner)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_driver_inputs_match_dense_forward(family):
    SEEN.clear()
    model = tiny(family).eval()
    batches = calib_batches(family)
    prune_model(model, method="_recording", sparsity=0.5, calib=batches, progress=False)
    linears = get_adapter(model).prunable_linears(model)
    expected: dict[int, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: expected.setdefault(id(mod), []).append(inp[0].clone()))
             for m in linears.values()]
    with torch.no_grad():
        for b in batches:
            model(**b, use_cache=False)
    for h in hooks:
        h.remove()
    for name, layer in linears.items():
        got, want = SEEN[id(layer)], expected[id(layer)]
        assert len(got) == len(want), name
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-5, rtol=1e-4), name


def test_offload_matches_in_place():
    a, b = tiny("llama"), tiny("llama")
    batches = calib_batches("llama")
    prune_model(a, method="sparsegpt", sparsity=0.5, calib=batches, progress=False)
    prune_model(b, method="sparsegpt", sparsity=0.5, calib=batches, progress=False, offload=True, device="cpu")
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(v, w, atol=1e-6), k
