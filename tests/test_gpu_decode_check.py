"""benchmarks/gpu_decode.py's per-sequence logit check (prefix_logit_diff), on synthetic tokens and logits: each
sequence is compared only over the decode steps whose inputs were the reference's."""
import importlib.util
from pathlib import Path

import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_decode.py"
spec = importlib.util.spec_from_file_location("gpu_decode", PATH)
gd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gd)


def test_each_sequence_is_compared_up_to_its_own_divergence():
    prompt, steps, vocab = 3, 5, 7
    ref_tokens = torch.arange(2 * (prompt + steps)).view(2, -1) % vocab
    tokens = ref_tokens.clone()
    tokens[1, prompt + 2] += 1  # sequence 1 takes another token at its third generated step
    ref_logits = torch.zeros(steps, 2, vocab)
    logits = ref_logits.clone()
    logits[1:, 0] += 1e-3  # sequence 0: a small difference on every decode step
    logits[3:, 1] += 5.0  # sequence 1: large only after it diverged (other inputs): not the kernels' error
    logits[0] += 9.0  # the prefill (step 0) is not a decode step
    same, diff = gd.prefix_logit_diff(tokens, ref_tokens, logits, ref_logits, prompt)
    assert same == [steps, 2]
    assert abs(diff - 1e-3) < 1e-6
    logits[2, 1] += 0.5  # sequence 1's last step on equal inputs (fed its second equal token): counted
    assert abs(gd.prefix_logit_diff(tokens, ref_tokens, logits, ref_logits, prompt)[1] - 0.5) < 1e-6
