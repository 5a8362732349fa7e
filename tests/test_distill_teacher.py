"""Teacher wrapper: frozen, hook capture equals HF hidden states, early stop, vocabulary check."""
from __future__ import annotations

import pytest
import torch

from sparselm.distill import Teacher, VocabMismatchError, check_vocab
from sparselm.models import get_adapter
from sparselm.train.tiny import build_tiny_model


def test_teacher_captures_block_outputs_and_is_frozen():
    model = build_tiny_model("llama", num_layers=3, vocab_size=40)
    ids = torch.randint(3, 40, (2, 6))
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True)
    ad = get_adapter(model)
    teacher = Teacher(model, ad.blocks(model), ad.block_hidden, need_logits=True)
    logits, hidden = teacher({"input_ids": ids})
    assert all(not p.requires_grad for p in model.parameters()) and not model.training
    assert torch.equal(logits, ref.logits)
    # HF lists the embeddings first and norms the last entry, so blocks 0..L-2 equal hidden_states[1..L-1]
    for l in range(2):
        assert torch.equal(hidden[l], ref.hidden_states[l + 1])
    assert len(hidden) == 3


def test_teacher_without_logits_stops_after_last_block():
    model = build_tiny_model("gpt2", vocab_size=40)
    ad = get_adapter(model)
    calls = []
    model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    logits, hidden = Teacher(model, ad.blocks(model), ad.block_hidden, need_logits=False)(
        {"input_ids": torch.randint(0, 40, (1, 4))})
    assert logits is None and len(hidden) == 2 and not calls


def test_vocab_mismatch_is_a_clear_error():
    a, b = build_tiny_model("llama", vocab_size=40), build_tiny_model("llama", vocab_size=41)
    with pytest.raises(VocabMismatchError, match="vocab_size"):
        check_vocab(a, b)
    check_vocab(a, build_tiny_model("llama", vocab_size=40, seed=1))


def test_hidden_token_masks_per_stack():
    from sparselm.distill import hidden_token_masks

    att = torch.tensor([[1, 1, 0]])
    labels = torch.tensor([[5, -100]])
    h_enc, h_dec, h_audio = torch.zeros(1, 3, 4), torch.zeros(1, 2, 4), torch.zeros(1, 7, 4)
    batch = {"attention_mask": att, "labels": labels}
    enc, dec = hidden_token_masks(batch, [0, 1], [h_enc, h_dec], encoder_decoder=True)
    assert torch.equal(enc, att) and dec.tolist() == [[True, False]]
    # a hidden state whose length does not match any mask (Whisper's downsampled audio frames) -> all real
    assert hidden_token_masks({"labels": labels}, [0], [h_audio], encoder_decoder=True) == [None]
    assert torch.equal(hidden_token_masks(batch, [0], [h_enc], encoder_decoder=False)[0], att)
