"""Metrics against hand-computed values: answer normalisation, exact match, BLEU/chrF, WER, log-likelihood,
perplexity."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sparselm.data import CausalLMCollator
from sparselm.eval import (answers_match, bleu_chrf, completion_logliks, exact_match, extract_gsm_answer,
                           extract_short_answer, loglik_summary, normalize_answer, normalize_for_wer,
                           perplexity, perplexity_of_ids, word_error_rate)
from test_eval_fixtures import char_tokenizer, tiny_llama


@pytest.mark.parametrize("a,b", [("36", "36.0"), ("1,000", "1000"), ("$5", "5.00"), ("-3", "-3."),
                                 ("0.50", ".5"), ("Yes", "yes."), ("  03:22:03 ", "03:22:03"), ("-0", "0")])
def test_answers_that_match(a, b):
    assert answers_match(a, b)


@pytest.mark.parametrize("a,b", [("36", "37"), ("3.5", "35"), ("1,00", "100"), ("Tuesday", "Monday"),
                                 ("12 apples", "12"), (None, "1")])
def test_answers_that_differ(a, b):
    assert not answers_match(a, b)


def test_extraction():
    assert extract_gsm_answer("so 3+4=7\n#### 7\n") == "7"
    assert extract_gsm_answer("#### $1,234.50 total\n") == "1234.50"
    # the first answer counts, as GSM8K is scored: a chain that answers and runs on keeps the answer it gave
    assert extract_gsm_answer("6 x 4 = 24\n#### 24\n#### 24\n24 - 2 = 22\n#### 22") == "24"
    assert extract_gsm_answer("the answer is 7") is None
    assert extract_short_answer("\n  law, me \nmore") == "law, me"
    assert extract_short_answer("2+3=5 #### 5") == "5"
    assert normalize_answer("1E+2") == "1e+2" and normalize_answer("100.000") == "100"


def test_gsm_stop_pattern_marks_a_complete_answer_line():
    import re

    from sparselm.eval.answers import GSM_STOP

    assert re.search(GSM_STOP, "2 + 2 = 4\n#### 4\n")
    assert not re.search(GSM_STOP, "2 + 2 = 4\n#### 4")      # the number may go on: 4 -> 42
    assert not re.search(GSM_STOP, "2 + 2 = 4\n####\n")     # no number yet
    assert not re.search(GSM_STOP, "x = 4\n")


def test_exact_match_fraction():
    assert exact_match(["7", "8", None, "Yes"], ["7", "9", "1", "yes"]) == 0.5
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["1", "2"], ["1"])


def test_bleu_hand_computed():
    # hyp vs ref "the cat sat on a mat": n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so BP = 1
    res = bleu_chrf(["the cat sat on the mat"], ["the cat sat on a mat"])
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert res["bleu"] == pytest.approx(expected, abs=1e-6)
    assert "13a" in res["bleu_signature"]
    assert bleu_chrf(["Das Haus ist alt."], ["Das Haus ist alt."])["chrf"] == pytest.approx(100.0)
    assert bleu_chrf(["xyz"], ["abc"])["chrf"] == pytest.approx(0.0)


def test_wer_hand_computed():
    assert normalize_for_wer("The CAT, sat -- down!") == "the cat sat down"
    assert normalize_for_wer("don't stop") == "don't stop"
    # one insertion over 3 reference words; then 1 substitution + 1 deletion over 2 + 3 words
    assert word_error_rate(["The cat, sat down"], ["the cat sat"]) == pytest.approx(1 / 3)
    assert word_error_rate(["a b", "c"], ["a x", "c d e"]) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="empty"):
        word_error_rate(["a"], ["!!"])


def test_loglik_matches_direct_computation():
    tok, model = char_tokenizer(bos=True), tiny_llama()
    items = [{"prompt": "Q:12", "completion": " 3"}, {"prompt": "Q:1", "completion": " 456"}]
    scores = completion_logliks(model, tok, items, batch_size=2)
    for it, (ll, n) in zip(items, scores):  # one unpadded sequence at a time, written out by hand
        feat = CausalLMCollator(tok).encode(it)
        x = torch.tensor([feat["input_ids"]])
        logp = F.log_softmax(model(input_ids=x).logits[0].float(), -1)
        n_prompt = sum(1 for y in feat["labels"] if y == -100)
        expected = sum(logp[t - 1, x[0, t]].item() for t in range(n_prompt, x.shape[1]))
        assert n == x.shape[1] - n_prompt
        assert ll == pytest.approx(expected, abs=1e-4)
    s = loglik_summary(scores)
    assert s["loglik_per_token"] == pytest.approx(sum(a for a, _ in scores) / sum(b for _, b in scores))
    assert s["loglik_per_answer"] == pytest.approx((scores[0][0] + scores[1][0]) / 2)
    assert s["target_tokens"] == 3 + 5  # " 3"+eos, " 456"+eos


class UniformLM(torch.nn.Module):
    """Equal logits over `vocab` tokens: every token has probability 1/vocab, so PPL = vocab exactly."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.w = vocab, torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, input_ids):
        self.calls.append(input_ids.shape[1])
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.w)


def test_perplexity_protocol_counts_and_uniform_value():
    lm = UniformLM(7)
    res = perplexity_of_ids(lm, torch.arange(20) % 7, context_length=8, stride=4)
    assert res["perplexity"] == pytest.approx(7.0) and res["nll_per_token"] == pytest.approx(math.log(7))
    assert res["tokens"] == 19                   # every token but the first, once
    assert lm.calls == [8, 8, 8, 8]              # windows [0,8) [4,12) [8,16) [12,20)
    res = perplexity_of_ids(UniformLM(7), torch.arange(20) % 7, context_length=8, stride=8)
    assert res["tokens"] == 17                   # non-overlapping: first token of each window unscored


def test_perplexity_single_window_equals_plain_cross_entropy(tmp_path):
    tok, model = char_tokenizer(), tiny_llama()
    text = "the quick brown fox jumps over the lazy dog"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    res = perplexity(model, tok, path=tmp_path / "t.txt", context_length=64, stride=32)
    x = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        ce = F.cross_entropy(model(input_ids=x).logits[0, :-1].float(), x[0, 1:])
    assert res["perplexity"] == pytest.approx(math.exp(ce.item()), rel=1e-5)
    # sliding windows of 16 with stride 8 give a different, but finite, perplexity over the same tokens
    res2 = perplexity(model, tok, text=text, context_length=16, stride=8)
    assert res2["tokens"] == res["tokens"] == len(text) - 1
    with pytest.raises(FileNotFoundError, match="no such text file"):
        perplexity(model, tok, path=tmp_path / "missing.txt")
