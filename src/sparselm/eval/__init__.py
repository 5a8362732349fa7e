"""Evaluation: exact match with batched greedy generation, teacher-forced log-likelihood, BLEU/chrF, WER and
perplexity, dispatched by task.

    from sparselm.eval import run_eval, print_results_table
    res = run_eval("out/teacher", "gsm", split="test", out_json="out/eval/gsm.json", limit=200)
    print_results_table(res)
"""
from sparselm.eval.answers import (answers_match, extract_gsm_answer, extract_short_answer, normalize_answer,
                                   parse_number)
from sparselm.eval.runner import (EVAL_TASKS, evaluate, evaluate_task, load_model, run_eval, write_results)
from sparselm.eval.generate import generate_greedy, generate_greedy_ends
from sparselm.eval.loglik import completion_logliks, loglik_summary
from sparselm.eval.metrics import bleu_chrf, exact_match, normalize_for_wer, word_error_rate
from sparselm.eval.perplexity import perplexity, perplexity_of_ids
from sparselm.eval.table import print_results_table

__all__ = ["EVAL_TASKS", "answers_match", "bleu_chrf", "completion_logliks", "evaluate", "evaluate_task",
           "exact_match", "extract_gsm_answer", "extract_short_answer", "generate_greedy", "generate_greedy_ends",
           "load_model",
           "loglik_summary", "normalize_answer", "normalize_for_wer", "parse_number", "perplexity",
           "perplexity_of_ids", "print_results_table", "run_eval", "word_error_rate", "write_results"]
