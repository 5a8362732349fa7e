"""Collation: prompt/padding labels masked with -100, right padding for training, left padding for generation,
seq2seq source/target batches."""
from __future__ import annotations

import pytest
import torch

from sparselm.data import (IGNORE_INDEX, CausalLMCollator, Seq2SeqCollator, encode_causal, generation_batch,
                           pad_token_id)
from test_eval_fixtures import char_tokenizer


def ids(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


def test_encode_causal_masks_prompt_and_appends_eos():
    tok = char_tokenizer(bos=True)
    f = encode_causal(tok, "Q:1+1", " 2")
    p = [tok.bos_token_id] + ids(tok, "Q:1+1")
    c = ids(tok, " 2") + [tok.eos_token_id]
    assert f["input_ids"] == p + c
    assert f["labels"] == [IGNORE_INDEX] * len(p) + c


def test_truncation_cuts_prompt_from_the_left_then_completion():
    tok = char_tokenizer()
    f = encode_causal(tok, "abcdef", "xy", max_length=5)          # completion x, y, eos = 3 tokens
    assert f["input_ids"] == ids(tok, "ef") + ids(tok, "xy") + [tok.eos_token_id]
    assert f["labels"][:2] == [IGNORE_INDEX] * 2
    g = encode_causal(tok, "abc", "vwxyz", max_length=4)
    assert g["input_ids"] == ids(tok, "vwxy") and IGNORE_INDEX not in g["labels"]


def test_causal_collator_right_pads_with_masked_labels():
    tok = char_tokenizer()  # defines <s> but does not add it by itself (like SmolLM2): prompts still get it
    batch = CausalLMCollator(tok)([{"prompt": "ab", "completion": "c"}, {"prompt": "a", "completion": "bcd"}])
    a, b, c, d = ids(tok, "abcd")
    s, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    assert batch["input_ids"].tolist() == [[s, a, b, c, eos, pad], [s, a, b, c, d, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1] * 6]
    m = IGNORE_INDEX
    assert batch["labels"].tolist() == [[m, m, m, c, eos, m], [m, m, b, c, d, eos]]


@pytest.mark.parametrize("bos", [False, True])
def test_causal_eval_sees_the_prompts_training_saw(bos):
    """Generation prompts and log-likelihood batches start exactly like the training examples: with BOS whether or
    not the tokenizer adds it by itself. A model fine-tuned with BOS and asked without it kept writing past its
    answer (it never met EOS in that context)."""
    from sparselm.train.data import tokenize_items

    tok = char_tokenizer(bos=bos)
    items = [{"prompt": "Q: 2+2?", "completion": " 4"}, {"prompt": "Q: 10-3?", "completion": " 7"}]
    train = tokenize_items(items, tok, 64, causal=True)
    gen = generation_batch(tok, [it["prompt"] for it in items])
    scored = CausalLMCollator(tok)(items)
    for i, (it, ex) in enumerate(zip(items, train)):
        n_prompt = ex.labels.count(IGNORE_INDEX)
        assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids.count(tok.bos_token_id) == 1
        row = gen["input_ids"][i][gen["attention_mask"][i] == 1].tolist()
        assert row == ex.input_ids[:n_prompt]
        assert scored["input_ids"][i][scored["attention_mask"][i] == 1].tolist() == ex.input_ids
        assert scored["labels"][i].tolist()[:len(ex.labels)] == ex.labels


def test_generation_batch_left_pads():
    tok = char_tokenizer(bos=True)
    batch = generation_batch(tok, ["abc", "a"])
    a, b, c = ids(tok, "abc")
    bos, pad = tok.bos_token_id, tok.pad_token_id
    assert batch["input_ids"].tolist() == [[bos, a, b, c], [pad, pad, bos, a]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert generation_batch(tok, ["abc"], max_length=2)["input_ids"].tolist() == [[b, c]]


def test_seq2seq_collator_source_and_target():
    tok = char_tokenizer()
    batch = Seq2SeqCollator(tok)([{"prompt": "ab", "completion": " xyz"}, {"prompt": "abcd", "completion": " x"}])
    a, b, c, d = ids(tok, "abcd")
    sp, x, y, z = ids(tok, " xyz")
    eos, pad, m = tok.eos_token_id, tok.pad_token_id, IGNORE_INDEX
    # both sides as training tokenizes them (sparselm.train.data.tokenize_items): ids + EOS, the completion as given
    assert batch["input_ids"].tolist() == [[a, b, eos, pad, pad], [a, b, c, d, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[sp, x, y, z, eos], [sp, x, eos, m, m]]


def test_seq2seq_eval_targets_match_training_targets():
    """The log-likelihood metric scores exactly the token ids the model was trained on (a byte-level BPE
    tokenizes " Sie" and "Sie" differently)."""
    from sparselm.data.tokenizer import train_tokenizer
    from sparselm.train.data import tokenize_items

    items = [{"prompt": "Translate: The house is big.", "completion": " Das Haus ist groß."},
             {"prompt": "Translate: The dog is old.", "completion": " Der Hund ist alt."}] * 20
    tok = train_tokenizer([t for it in items for t in (it["prompt"], it["completion"])], 300)
    train = tokenize_items(items[:2], tok, 64, causal=False)
    batch = Seq2SeqCollator(tok)(items[:2])
    for ex, row, src in zip(train, batch["labels"].tolist(), batch["input_ids"].tolist()):
        assert [t for t in row if t != IGNORE_INDEX] == ex.labels
        assert [t for t in src if t != tok.pad_token_id] == ex.input_ids


def test_pad_falls_back_to_eos():
    tok = char_tokenizer()
    tok.pad_token = None
    assert pad_token_id(tok) == tok.eos_token_id
    batch = CausalLMCollator(tok)([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "bc"}])
    assert batch["input_ids"][0, -1] == tok.eos_token_id and batch["labels"][0, -1] == IGNORE_INDEX
    assert isinstance(batch["labels"], torch.Tensor)
