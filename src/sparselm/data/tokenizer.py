"""A byte-level BPE tokenizer trained on a task's own text, for seq2seq models trained from scratch.

No T5 tokenizer ships offline (see ASSETS.md), so a T5-shaped model built from a config learns its vocabulary from
the training pairs themselves. Byte-level BPE (Sennrich et al. 2016, over the 256 byte symbols of GPT-2) is used
rather than Unigram because it is lossless: every string, umlauts and newlines included, decodes back to itself,
so no reference word can become `<unk>` and lower BLEU for a reason unrelated to the model.

Special tokens follow T5: `<pad>` = 0 (also the decoder start token), `</s>` = 1 (appended by the post-processor
when `add_special_tokens=True`, as the seq2seq collator and `generate` expect), `<unk>` = 2 (never produced by a
byte-level model; present because T5 code paths look it up).

    tok = train_tokenizer(texts, vocab_size=8000)          # cached under <data cache>/tokenizers/<hash>/
    tok = tokenizer_for_task("translation", vocab_size=8000)  # the train split, both languages

Training is deterministic (same texts and size -> same `tokenizer.json`) and cached by a SHA-256 of the texts and
settings, so the teacher and every sparse run of a pipeline share one vocabulary.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
#: in id order: pad 0, eos 1, unk 2 (T5's layout; `decoder_start_token_id` = pad)
SPECIALS = (PAD, EOS, UNK)
#: bump when the training recipe below changes, so stale cached vocabularies are not reused
VERSION = 1
#: 2: a pair seen once is noise, not a merge worth a vocabulary slot (keeps tiny corpora from memorising)
MIN_FREQUENCY = 2


def _texts_hash(texts: Sequence[str], vocab_size: int) -> str:
    h = hashlib.sha256(json.dumps({"version": VERSION, "vocab_size": vocab_size,
                                   "min_frequency": MIN_FREQUENCY}).encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")  # separator: ["ab", "c"] and ["a", "bc"] must not collide
    return h.hexdigest()[:16]


def _default_cache_dir() -> Path:
    from sparselm.data import registry  # read at call time so SPARSELM_DATA_CACHE / tests can redirect it

    return Path(registry.DEFAULT_CACHE_DIR) / "tokenizers"


def _train_core(texts: Sequence[str], vocab_size: int):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    core = Tokenizer(models.BPE(unk_token=UNK))
    # add_prefix_space=False: decode(encode(s)) == s exactly, leading space or not
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=MIN_FREQUENCY, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer=trainer, length=len(texts))
    eos_id = core.token_to_id(EOS)
    core.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}",
                                                        special_tokens=[(EOS, eos_id)])
    return core


def _wrap(core):  # -> PreTrainedTokenizerFast
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   clean_up_tokenization_spaces=False)


def _check_ids(tok) -> None:
    got = (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id)
    if got != (0, 1, 2):
        raise RuntimeError(f"trained tokenizer has (pad, eos, unk) ids {got}, expected (0, 1, 2)")


def load_tokenizer(folder: str | Path):  # -> PreTrainedTokenizerFast
    """A tokenizer written by `train_tokenizer` (tokenizer.json), loaded without any hub lookup."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (not a tokenizer written by train_tokenizer)")
    tok = _wrap(Tokenizer.from_file(str(path)))
    _check_ids(tok)
    return tok


def _save_atomic(tok, folder: Path) -> None:
    """save_pretrained into a temp dir, then rename: a killed run never leaves half a tokenizer behind."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process wrote the same content-addressed folder first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "tokenizer.json").is_file():
            raise


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000, out_dir: str | Path | None = None,
                    cache_dir: str | Path | None = None):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer of at most `vocab_size` ids trained on `texts` (T5 specials, see module doc).

    `vocab_size`: 8000 by default, enough for ~16k short EN/DE sentence pairs (a T5-small-shaped model trained from
    scratch on them has no use for T5's 32k). A small corpus can stop below it: `len(tok)` is the real size.
    Cached at `cache_dir/<hash>/` (default: `<sparselm data cache>/tokenizers/`); `out_dir`: also saved there.
    """
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_tokenizer: no non-empty texts to train on")
    if vocab_size < len(SPECIALS) + 256:
        raise ValueError(f"train_tokenizer: vocab_size {vocab_size} is below {len(SPECIALS) + 256} "
                         "(3 special tokens + the 256 byte symbols)")
    folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    folder = folder / _texts_hash(texts, vocab_size)
    if (folder / "tokenizer.json").is_file():
        tok = load_tokenizer(folder)
    else:
        tok = _wrap(_train_core(texts, vocab_size))
        _check_ids(tok)
        _save_atomic(tok, folder)
    if out_dir is not None:
        _save_atomic(tok, Path(out_dir))
    return tok


def item_texts(items: Sequence[dict[str, Any]], fields: Sequence[str] = ("prompt", "completion")) -> list[str]:
    """The strings a seq2seq model reads and writes: each item's source prompt and target completion (for the
    translation task: the English sentence in its prompt template, and the German sentence)."""
    return [str(it[f]) for it in items for f in fields if f in it and it[f]]


def tokenizer_for_task(task: str, vocab_size: int = 8000, split: str = "train", limit: int | None = None,
                       task_kwargs: dict[str, Any] | None = None, cache_dir: str | Path | None = None):
    """`train_tokenizer` on `split` of the registered `task` (its first `limit` items), never on test data."""
    from sparselm.data.registry import get_task

    items = get_task(task, **(task_kwargs or {})).items(split, limit=limit)
    return train_tokenizer(item_texts(items), vocab_size, cache_dir=cache_dir)


__all__ = ["EOS", "PAD", "SPECIALS", "UNK", "item_texts", "load_tokenizer", "tokenizer_for_task", "train_tokenizer"]
