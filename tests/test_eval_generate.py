"""Batched greedy generation equals one-at-a-time generation (decoder-only with left padding, and T5), and
`evaluate` / `run_eval` score, dispatch and write results correctly."""
from __future__ import annotations

import io
import json

import pytest
import torch

import sparselm.eval.runner as ev
from sparselm.data import get_task
from sparselm.eval import generate_greedy, print_results_table, run_eval
from test_eval_fixtures import char_tokenizer, tiny_llama, tiny_t5

PROMPTS = ["Question: 12+7=\nAnswer:", "Q: a\nA:", "Translate: the house\nGerman:", "x"]


def _one_by_one(model, tok, prompts, n):
    return [generate_greedy(model, tok, [p], n, batch_size=1)[0] for p in prompts]


@pytest.mark.parametrize("bos", [False, True])
def test_decoder_only_batched_equals_single(bos):
    tok, model = char_tokenizer(bos=bos), tiny_llama()
    batched = generate_greedy(model, tok, PROMPTS, max_new_tokens=6, batch_size=4)
    assert batched == _one_by_one(model, tok, PROMPTS, 6)
    assert all(len(tok(g, add_special_tokens=False)["input_ids"]) <= 6 for g in batched)
    assert not any(g.startswith(p) for g, p in zip(batched, PROMPTS) if p)  # prompt not echoed


def test_stop_pattern_ends_each_row_at_its_own_match():
    """A row stops once its new text matches; the others go on, and batching still changes nothing."""
    from sparselm.eval.generate import StopOnPattern

    tok, model = char_tokenizer(), tiny_llama()
    free = generate_greedy(model, tok, PROMPTS, max_new_tokens=8, batch_size=4)
    pattern = r"9"  # these weights write a 9 early in three rows, none in the fourth
    stopped = generate_greedy(model, tok, PROMPTS, max_new_tokens=8, batch_size=4, stop_pattern=pattern)
    assert stopped == [generate_greedy(model, tok, [p], 8, batch_size=1, stop_pattern=pattern)[0] for p in PROMPTS]
    import re
    for f, s in zip(free, stopped):
        m = re.search(pattern, f)
        assert s == (f[:m.end()] if m else f)
    assert sum(s != f for s, f in zip(stopped, free)) >= 2 and stopped[3] == free[3]
    # the criterion itself: only the new tokens count, per row
    ids = torch.tensor([[5, 6] + tok("#### 4\n", add_special_tokens=False)["input_ids"],
                        [5, 6] + tok("#### 42", add_special_tokens=False)["input_ids"]])
    assert StopOnPattern(tok, r"####[^\n]*\d[^\n]*\n", prompt_width=2)(ids).tolist() == [True, False]


def test_rows_report_why_they_ended():
    """"eos" where the tokenizer's EOS came (even when the model's generation config names another end token:
    training appends the tokenizer's), "stop" at the stop pattern, "budget" otherwise."""
    from sparselm.eval import generate_greedy_ends
    from sparselm.eval.generate import greedy_config

    tok, model = char_tokenizer(), tiny_llama()
    free, ends = generate_greedy_ends(model, tok, PROMPTS, 8, batch_size=4)
    assert ends == ["budget"] * 4
    _, ends = generate_greedy_ends(model, tok, PROMPTS, 8, batch_size=4, stop_pattern=r"9")
    assert ends == ["stop", "stop", "stop", "budget"]
    tok.eos_token = free[3][2]             # a character the model writes third in row 3, and in no other row
    assert tok.eos_token_id != model.generation_config.eos_token_id
    assert greedy_config(model, tok, 8).eos_token_id == [model.generation_config.eos_token_id, tok.eos_token_id]
    texts, ends = generate_greedy_ends(model, tok, PROMPTS, 8, batch_size=4)
    # the row stops at the EOS (this fixture's EOS is an ordinary character, so decode keeps it)
    assert ends == ["budget", "budget", "budget", "eos"] and texts[3] == free[3][:3] and texts[:3] == free[:3]


def test_encoder_decoder_batched_equals_single():
    tok, model = char_tokenizer(), tiny_t5()
    batched = generate_greedy(model, tok, PROMPTS, max_new_tokens=5, batch_size=3)
    assert batched == _one_by_one(model, tok, PROMPTS, 5)


def _gsm_file(tmp_path):
    rows = [{"prompt": "Question: 2+2?\nAnswer:", "completion": " 2+2=4\n#### 4", "answer": "4"},
            {"prompt": "Question: 3+3?\nAnswer:", "completion": " 3+3=6\n#### 6", "answer": "6"}]
    d = tmp_path / "gsm"
    d.mkdir()
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_evaluate_scores_extracted_answers(tmp_path, monkeypatch):
    """With the generations forced, exact match counts the number after #### only."""
    tok, model = char_tokenizer(), tiny_llama()
    task = get_task("gsm", data_dir=_gsm_file(tmp_path))
    monkeypatch.setattr(ev, "generate_greedy_ends",
                        lambda m, t, prompts, *a, **k: ([" 2 + 2 = 4\n#### 4.0", " 3 + 3 = 7"], ["eos", "budget"]))
    res = ev.evaluate(model, tok, task, "test", batch_size=2)
    assert res["exact_match"] == 0.5 and res["n"] == 2 and res["metric"] == "gsm_exact_match"
    assert [r["prediction"] for r in res["predictions"]] == ["4.0", None]
    assert res["ends"] == {"eos": 0.5, "stop": 0.0, "budget": 0.5} and res["predictions"][1]["end"] == "budget"
    assert res["chains"] == {"no_answer": 0.5, "equations_per_item": 1.0, "equation_error_rate": 0.5,
                             "items_with_wrong_equation": 0.5}
    assert res["loglik_per_token"] < 0 and res["target_tokens"] == 2 * (len(" 2+2=4\n#### 4") + 1)
    assert res["per_source"] == {"all": {"n": 2, "exact_match": 0.5}}
    only = ev.evaluate(model, tok, task, "test", generate=False)
    assert "exact_match" not in only and only["loglik_per_token"] == pytest.approx(res["loglik_per_token"])


def test_run_eval_writes_json_and_predictions(tmp_path):
    tok, model = char_tokenizer(), tiny_llama()
    out = tmp_path / "res" / "gsm.json"
    res = run_eval((model, tok), "gsm", "test", out, limit=1, batch_size=2,
                   task_kwargs={"data_dir": _gsm_file(tmp_path)}, max_new_tokens=4)
    saved = json.loads(out.read_text())
    assert saved["n"] == 1 and saved["exact_match"] == res["exact_match"] == 0.0  # random weights
    assert saved["max_new_tokens"] == 4 and "predictions" not in saved
    rows = (tmp_path / "res" / "gsm.predictions.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["answer"] == "4"
    buf = io.StringIO()
    print_results_table([saved, {"task": "translation", "bleu": 12.345}], file=buf, plain=True)
    lines = buf.getvalue().splitlines()
    assert lines[0].split()[:3] == ["model", "task", "split"] and "12.35" in lines[2]


def test_translation_metric_and_model_dir_roundtrip(tmp_path, monkeypatch):
    tok, model = char_tokenizer(), tiny_llama()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    f = tmp_path / "tr.jsonl"
    f.write_text(json.dumps({"prompt": "EN: the cat\nDE:", "completion": " die Katze sitzt auf der Matte"}) + "\n")
    task = get_task(str(f), metric="bleu", max_new_tokens=3)
    monkeypatch.setattr(ev, "generate_greedy_ends", lambda *a, **k: (["die Katze sitzt auf der Matte\nmore text"],
                                                                     ["eos"]))
    res = run_eval(str(tmp_path / "m"), task, "all", device="cpu", loglik=False)
    assert res["bleu"] == pytest.approx(100.0) and res["chrf"] == pytest.approx(100.0)
    assert res["predictions"][0]["prediction"] == "die Katze sitzt auf der Matte"  # first line only


def test_dispatch_errors(tmp_path, monkeypatch):
    tok, model = char_tokenizer(), tiny_llama()
    import sparselm.data.corpora as corpora

    monkeypatch.setattr(corpora, "heldout_text", lambda: "held-out text")  # the default text
    res = run_eval((model, tok), "perplexity", context_length=8, stride=4)
    assert res["tokens"] == len("held-out text") - 1 and res["split"].startswith("shakespeare:")
    with pytest.raises(ValueError, match="decoder-only"):
        run_eval((tiny_t5(), tok), "perplexity", text_file=__file__)
    (tmp_path / "t.txt").write_text("some text for perplexity")
    res = run_eval((model, tok), "perplexity", text_file=tmp_path / "t.txt", context_length=8, stride=4)
    assert res["perplexity"] > 1 and res["tokens"] == len("some text for perplexity") - 1
    with pytest.raises(ValueError, match="tokenizer="):
        run_eval(model, "gsm")
    with pytest.raises(FileNotFoundError, match="config.json"):
        run_eval(str(tmp_path), "gsm")
    assert torch.is_grad_enabled()


def test_asr_dispatch_uses_the_speech_module(monkeypatch):
    """run_eval(task="asr") takes clips and transcripts from sparselm.data.asr and reports its corpus WER."""
    asr = pytest.importorskip("sparselm.data.asr", reason="sparselm/data/asr.py not in this checkout")
    clips = asr.SpeechDataset([asr.SpeechItem(str(i), t, None) for i, t in enumerate(["the cat sat", "a dog"])])
    monkeypatch.setattr(asr, "real_clips", lambda: clips)
    monkeypatch.setattr(asr, "SpeechDataset", lambda items: clips.__class__(items))
    monkeypatch.setattr(clips.__class__, "audios", lambda self: [None] * len(self.items))
    monkeypatch.setattr(asr, "transcribe", lambda m, p, audios, **k: ["the cat sat down", "a dog"][:len(audios)])
    res = run_eval((torch.nn.Linear(1, 1), object()), "asr", "real")
    assert res["wer"] == pytest.approx(1 / 5) and res["n"] == 2  # one insertion over 5 reference words
    assert run_eval((torch.nn.Linear(1, 1), object()), "asr", "real", limit=1)["wer"] == pytest.approx(1 / 3)


def test_bleu_per_source_groups_by_corpus():
    from sparselm.eval.runner import _per_source_bleu

    items = [{"answer": "die Katze sitzt auf der Matte", "source": "gettext:git"},
             {"answer": "der Hund bellt laut im Garten", "source": "gettext:tar"},
             {"answer": "das Haus ist alt und sehr groß", "source": "trans-de-en"}]
    got = _per_source_bleu(items, ["die Katze sitzt auf der Matte", "der Hund bellt laut im Garten",
                                   "ganz etwas anderes hier"])
    assert list(got) == ["gettext", "trans-de-en"]
    assert got["gettext"]["n"] == 2 and got["gettext"]["bleu"] == pytest.approx(100.0)
    assert got["trans-de-en"]["n"] == 1 and got["trans-de-en"]["bleu"] < 10


def test_gguf_loader_gives_the_tokenizer_the_models_end_token():
    """A tokenizer whose conversion named another EOS than the model's is given the model's (training appends the
    tokenizer's EOS, generation stops at the model's: they must be one token)."""
    from sparselm.models.loaders import _agree_on_special_tokens

    tok, model = char_tokenizer(), tiny_llama()
    tok.eos_token = "x"
    assert tok.eos_token_id != model.config.eos_token_id
    _agree_on_special_tokens(model, tok)
    assert tok.eos_token_id == model.config.eos_token_id == 2 and tok.bos_token_id == model.config.bos_token_id


def test_loading_a_model_whose_tokenizer_ends_differently_warns(tmp_path):
    from sparselm.models.loaders import load_model

    tok, model = char_tokenizer(), tiny_llama()
    tok.eos_token = "x"
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="not among the model's generation EOS ids"):
        load_model(tmp_path)
