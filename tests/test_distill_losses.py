"""Parity of each distillation loss with a hand-written reference on random tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sparselm.distill import (DistillationLoss, LossInputs, cross_entropy, kd_kl, select_blocks, shift_targets,
                              squarehead_masked_mean, squarehead_sum_ratio, squarehead_token_ratio)


def _targets(B: int, T: int, V: int, g: torch.Generator) -> torch.Tensor:
    t = torch.randint(0, V, (B, T), generator=g)
    t[0, :3] = -100   # a "prompt"
    t[1, -2:] = -100  # "padding"
    return t


def test_cross_entropy_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    tg = _targets(3, 7, 11, g)
    ref, n = 0.0, 0
    for b in range(3):
        for t in range(7):
            if tg[b, t] != -100:
                z = logits[b, t].double()
                ref += -(z[tg[b, t]] - torch.logsumexp(z, 0)).item()
                n += 1
    assert cross_entropy(logits, tg).item() == pytest.approx(ref / n, rel=1e-5)


def test_cross_entropy_all_masked_is_zero_not_nan():
    assert cross_entropy(torch.randn(2, 3, 5), torch.full((2, 3), -100)).item() == 0.0


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kd_matches_f_kl_div(temperature):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 7, 13, generator=g), torch.randn(3, 7, 13, generator=g)
    tg = _targets(3, 7, 13, g)
    keep = tg != -100
    ref = F.kl_div(F.log_softmax(s[keep] / temperature, -1), F.softmax(t[keep] / temperature, -1),
                   reduction="batchmean") * temperature ** 2
    assert kd_kl(s, t, tg, temperature).item() == pytest.approx(ref.item(), rel=1e-5)
    assert kd_kl(t, t, tg, temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_vocab_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="vocabularies must match"):
        kd_kl(torch.randn(1, 2, 5), torch.randn(1, 2, 6), torch.zeros(1, 2, dtype=torch.long))


def _layers(g, shapes=((2, 5, 8), (2, 5, 8), (2, 3, 8))):
    s = [torch.randn(*sh, generator=g) for sh in shapes]
    t = [torch.randn(*sh, generator=g) * 2 for sh in shapes]
    return s, t


def test_squarehead_masked_mean_matches_token_loop():
    g = torch.Generator().manual_seed(2)
    s, t = _layers(g)
    m0 = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    masks = [m0, m0, None]
    eps = 1e-6
    ref = 0.0
    for sl, tl, ml in zip(s, t, masks):
        num = den = 0.0
        count = 0
        for b in range(sl.shape[0]):
            for i in range(sl.shape[1]):
                if ml is None or ml[b, i]:
                    num += ((sl[b, i] - tl[b, i]) ** 2).sum().item()
                    den += (tl[b, i] ** 2).sum().item()
                    count += sl.shape[-1]
        ref += (num / count) / (den / count + eps)
    assert squarehead_masked_mean(s, t, masks, eps).item() == pytest.approx(ref, rel=1e-5)


def test_squarehead_masked_mean_ignores_padding_values():
    g = torch.Generator().manual_seed(3)
    s, t = _layers(g, shapes=((2, 5, 8),))
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    s2 = [s[0].clone()]
    s2[0][m == 0] = 1e3  # garbage at padded positions must not change the loss
    assert squarehead_masked_mean(s2, t, [m]).item() == pytest.approx(squarehead_masked_mean(s, t, [m]).item())
    assert math.isfinite(squarehead_masked_mean(s, t, [torch.zeros(2, 5)]).item())


def test_squarehead_token_ratio_matches_token_loop():
    g = torch.Generator().manual_seed(5)
    s, t = _layers(g)
    m0 = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    masks, eps = [m0, m0, None], 1e-6
    ref = 0.0
    for sl, tl, ml in zip(s, t, masks):
        ratios = [(((sl[b, i] - tl[b, i]) ** 2).mean() / ((tl[b, i] ** 2).mean() + eps)).item()
                  for b in range(sl.shape[0]) for i in range(sl.shape[1]) if ml is None or ml[b, i]]
        ref += sum(ratios) / len(ratios)
    assert squarehead_token_ratio(s, t, masks, eps).item() == pytest.approx(ref, rel=1e-5)


def test_squarehead_token_ratio_is_not_dominated_by_a_massive_token():
    """One token 1000x larger (an attention sink's massive activation) swamps masked_mean's denominator: the same
    relative error on every other token then barely registers. token_ratio weighs every token alike."""
    g = torch.Generator().manual_seed(6)
    t = torch.randn(2, 6, 16, generator=g)
    t[:, 0] *= 1000.0
    s = t * 1.1  # 10% relative error everywhere: 0.01 per token
    s[:, 0] = t[:, 0]  # ... except the massive token, matched exactly
    assert squarehead_masked_mean([s], [t], [None]).item() < 1e-4
    assert squarehead_token_ratio([s], [t], [None]).item() == pytest.approx(0.01 * 5 / 6, rel=1e-4)


def test_squarehead_sum_ratio_matches_reference():
    g = torch.Generator().manual_seed(4)
    s, t = _layers(g)
    ref = sum((((tl - sl) ** 2).sum() / (tl ** 2).sum()).item() for sl, tl in zip(s, t))
    assert squarehead_sum_ratio(s, t).item() == pytest.approx(ref, rel=1e-5)
    assert squarehead_sum_ratio(s, t, scale_by_layers=True).item() == pytest.approx(ref / 3, rel=1e-5)


def test_combined_loss_is_weighted_sum_and_logs_each_term():
    g = torch.Generator().manual_seed(5)
    logits_s, logits_t = torch.randn(2, 5, 9, generator=g), torch.randn(2, 5, 9, generator=g)
    tg = torch.randint(0, 9, (2, 5), generator=g)
    s, t = _layers(g, shapes=((2, 5, 4), (2, 5, 4)))
    loss = DistillationLoss({"ce": 0.5, "kd": 2.0, "squarehead": 3.0},
                            {"kd": {"temperature": 2.0}, "squarehead": {"variant": "sum_ratio"}})
    total, logged = loss(LossInputs(logits_s, tg, logits_t, s, t, [None, None]))
    expect = 0.5 * cross_entropy(logits_s, tg) + 2.0 * kd_kl(logits_s, logits_t, tg, 2.0) + \
        3.0 * squarehead_sum_ratio(s, t)
    assert total.item() == pytest.approx(expect.item(), rel=1e-6)
    assert set(logged) == {"loss/ce", "loss/kd", "loss/squarehead", "loss/total"}
    assert not DistillationLoss({"ce": 1.0, "kd": 0.0}).needs_teacher


def test_shift_targets_causal_and_seq2seq():
    lab = torch.tensor([[5, 6, 7]])
    assert shift_targets(lab, causal=True).tolist() == [[6, 7, -100]]
    assert shift_targets(lab, causal=False).tolist() == [[5, 6, 7]]


def test_select_blocks_by_index_and_regex():
    blocks = [(f"model.layers.{i}", torch.nn.Identity()) for i in range(4)]
    assert [n for n, _ in select_blocks(blocks, [0, -1])] == ["model.layers.0", "model.layers.3"]
    assert [n for n, _ in select_blocks(blocks, r"layers\.[12]$")] == ["model.layers.1", "model.layers.2"]
    with pytest.raises(ValueError, match="out of range"):
        select_blocks(blocks, [4])
    with pytest.raises(ValueError, match="matches no block"):
        select_blocks(blocks, "decoder")
