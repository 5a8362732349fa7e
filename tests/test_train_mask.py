"""The fixed mask survives AdamW momentum: pruned weights stay exactly 0, their moments too; the rest trains."""
from __future__ import annotations

import pytest
import torch

from sparselm.models import get_adapter
from sparselm.train.mask import FixedMask, SparsityViolation
from sparselm.train.optim import LinearWarmupDecay, build_adamw
from sparselm.train.tiny import build_tiny_model

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops run fastest on one thread on a shared 2-core machine; restore the default afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def _pruned_model(seed: int = 0):
    model = build_tiny_model("llama", vocab_size=40, seed=seed)
    linears = get_adapter(model).prunable_linears(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in linears.values():
            mod.weight.mul_(torch.rand(mod.weight.shape, generator=g) > 0.5)  # random 50% mask
    return model, linears


def _train(model, mask: FixedMask | None, steps: int = 50):
    opt = build_adamw(model.parameters(), lr=1e-2, betas=(0.9, 0.999))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(3, 40, (4, 8), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        if mask is not None:
            mask.apply_(opt)
        opt.zero_grad()
    return opt


def test_pruned_weights_and_moments_stay_zero_after_50_adamw_steps():
    model, linears = _pruned_model()
    before = {n: m.weight.detach().clone() for n, m in linears.items()}
    mask = FixedMask.from_zeros(model, linears)
    assert mask.overall() == pytest.approx(0.5, abs=0.02)
    opt = _train(model, mask)
    moved = kept = 0
    for name, mod in linears.items():
        w, w0 = mod.weight.detach(), before[name]
        pruned = w0 == 0
        assert torch.all(w[pruned] == 0), name
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.all(opt.state[mod.weight][key][pruned] == 0), (name, key)
        moved += int((w[~pruned] != w0[~pruned]).sum())
        kept += int((~pruned).sum())
    assert moved > 0.99 * kept  # unpruned weights did train
    mask.verify()


def test_without_the_hook_momentum_revives_pruned_weights():
    """The negative control: the same run with no post-step hook leaves pruned weights non-zero."""
    model, linears = _pruned_model()
    mask = FixedMask.from_zeros(model, linears)
    _train(model, None, steps=3)
    with pytest.raises(SparsityViolation):
        mask.verify()


def test_mask_round_trips_through_state_tensors():
    model, linears = _pruned_model()
    mask = FixedMask.from_zeros(model, linears)
    again = FixedMask.from_state(model, mask.state_tensors())
    assert again.names == mask.names
    assert all(torch.equal(a, b) for a, b in zip(again.masks, mask.masks))


def test_linear_warmup_decay_schedule():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sch = LinearWarmupDecay(opt, peak_lr=1.0, total_steps=10, warmup_steps=2, final_lr_ratio=0.0)
    lrs = []
    for _ in range(10):
        lrs.append(sch.lr())
        sch.step()
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[-1] == pytest.approx(1 / 8)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
