"""Task data: named tasks with fixed, disjoint splits (`get_task`), JSONL export, and collators for causal and
seq2seq models.

    from sparselm.data import get_task, export_task, CausalLMCollator
    task = get_task("reasoning", n_train=20000)        # also "gsm", "translation", or a .jsonl / dataset path
    train = task.items("train")                         # [{"prompt", "completion", "answer", "source"}, ...]
    batch = CausalLMCollator(tokenizer)(train[:8])      # input_ids, attention_mask, labels (-100 off target)
    export_task(task, "out/data/reasoning")            # carry to a machine without reasoning-gym, then:
    task = get_task("reasoning", data_dir="out/data/reasoning")
"""
from sparselm.data.registry import (DEFAULT_CACHE_DIR, Item, Task, export_jsonl, export_task, get_task,
                                    list_tasks, register_task)
from sparselm.data.collate import (IGNORE_INDEX, CausalLMCollator, Seq2SeqCollator, encode_causal,
                                   generation_batch, pad_left, pad_right, pad_token_id)
from sparselm.data.jsonl import read_jsonl, write_jsonl
from sparselm.data import generic, gsm, reasoning, translation  # noqa: F401,E402  (register the built-in tasks)

__all__ = ["DEFAULT_CACHE_DIR", "IGNORE_INDEX", "CausalLMCollator", "Item", "Seq2SeqCollator", "Task",
           "encode_causal", "export_jsonl", "export_task", "generation_batch", "get_task", "list_tasks",
           "pad_left", "pad_right", "pad_token_id", "read_jsonl", "register_task", "write_jsonl"]
