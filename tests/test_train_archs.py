"""One CE + KD + SquareHead training step runs for every supported architecture family (tiny configs)."""
from __future__ import annotations

import pytest
import torch

from sparselm.distill import DistillationLoss
from sparselm.models import get_adapter
from sparselm.train.mask import FixedMask
from sparselm.train.optim import build_adamw
from sparselm.train.step import ObjectiveStep
from sparselm.train.tiny import build_tiny_model

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops run fastest on one thread on a shared 2-core machine; restore the default afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def _batch(arch: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    B, T = 2, 6
    labels = torch.randint(3, 40, (B, T), generator=g)
    labels[1, -2:] = -100
    if arch == "whisper":
        return {"input_features": torch.randn(B, 80, 32, generator=g), "labels": labels}
    ids = torch.randint(3, 40, (B, T), generator=g)
    att = torch.ones(B, T, dtype=torch.long)
    att[1, -2:] = 0
    if arch in ("llama", "gpt2"):
        labels = ids.masked_fill(att == 0, -100)
        labels[:, :2] = -100  # prompt
    return {"input_ids": ids, "attention_mask": att, "labels": labels}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5", "whisper"])
def test_one_squarehead_step(arch):
    g = torch.Generator().manual_seed(0)
    teacher = build_tiny_model(arch, vocab_size=40, seed=0)
    student = build_tiny_model(arch, vocab_size=40, seed=1)  # different weights: every term is non-zero
    ad = get_adapter(student)
    linears = ad.prunable_linears(student)
    with torch.no_grad():
        for mod in linears.values():
            mod.weight.mul_(torch.rand(mod.weight.shape, generator=g) > 0.5)
    mask = FixedMask.from_zeros(student, linears)
    loss = DistillationLoss({"ce": 1.0, "kd": 1.0, "squarehead": 1.0}, {"kd": {"temperature": 2.0}})
    step = ObjectiveStep(student, student, ad, loss, teacher)
    n_blocks = len(ad.blocks(student))
    assert len(step.capture.names) == n_blocks and n_blocks == (4 if arch in ("t5", "whisper") else 2)
    opt = build_adamw(student.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    total, logged = step(_batch(arch, g))
    assert torch.isfinite(total) and all(logged[k] > 0 for k in ("loss/ce", "loss/kd", "loss/squarehead"))
    total.backward()
    opt.step()
    mask.apply_(opt)
    mask.verify()
    assert any(not torch.equal(before[n], p) for n, p in student.named_parameters())
    assert all(p.grad is None for p in teacher.parameters())
    step.close()
