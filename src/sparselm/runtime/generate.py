"""`sparselm generate`: greedy decoding of a pruned (or compressed) model through the sparse kernels, timed against
the same decode loop run dense on the same weights.

    sparselm generate out/smol-50 --prompt "Question: ..." --max-new-tokens 64 --compare-dense
    sparselm generate out/smol-50-int8 --device cuda        # a `sparselm compress` directory: no dense weights

Why a command: step 3 of the system (run faster because sparse) was only reachable from Python. This is the
README's Inference snippet with the choices made for the user: the model's block linears become SparseLinear
(`sparsify`, or as stored by `sparselm compress`); on a GPU each shape's kernel is measured (`autotune`, the
decoder's fused q/k/v and gate/up shapes included) and the step runs as a CUDA graph (`StaticDecoder`); on the CPU
the SIMD kernels run eagerly. With compare_dense the same weights are then densified and decoded by the same loop:
the speedup is a same-run ratio, and the greedy tokens of the two runs are compared.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch


def _load(model: str, device: torch.device, dtype: torch.dtype, values: str | None, min_sparsity: float):
    """(model with SparseLinear layers, tokenizer, values description, layers made sparse)."""
    from sparselm.compress.io import INDEX_FILE
    from sparselm.runtime.sparse_linear import SparseLinear

    path = Path(model).expanduser()
    if path.is_dir() and (path / INDEX_FILE).is_file():  # a `sparselm compress` directory
        if values is not None:
            raise ValueError(f"--values: {model} is already compressed (its values are stored); leave --values out")
        from transformers import AutoTokenizer

        from sparselm.compress import load_compressed

        net = load_compressed(path, device)
        for p in net.parameters():  # the dense tensors (embeddings, norms) in the activations' dtype
            p.data = p.data.to(dtype)
        tok = AutoTokenizer.from_pretrained(str(path))
        layers = [m for m in net.modules() if isinstance(m, SparseLinear)]
        return net.eval(), tok, str(layers[0].compressed.values_dtype) if layers else "none", len(layers)
    from sparselm.models.loaders import load_model
    from sparselm.runtime import sparsify

    net, tok = load_model(model, dtype=dtype, device=device, kind="causal-lm")
    done = sparsify(net, values_dtype=values, min_sparsity=min_sparsity)
    return net, tok, values or str(dtype).replace("torch.", ""), len(done)


def _decoder(net, max_len: int):
    from sparselm.runtime import StaticDecoder

    try:
        return StaticDecoder(net, max_len=max_len)
    except AttributeError as err:  # no embed_tokens / layers / rotary_emb: not a Llama-type model
        raise ValueError(f"generate: the static decode loop serves Llama-type models (embed_tokens, layers, rotary "
                         f"embedding); {type(net).__name__} is not one ({err})") from None


def _timed(dec, ids: torch.Tensor, new: int) -> tuple[torch.Tensor, float, dict]:
    """(tokens, tokens/s over the whole call, the GPU's split) after a warm-up (graph capture, kernel builds) on
    the same prompt. The split (CUDA): decode_tokens_per_s over the single-token steps and prefill_ms."""
    dec.generate(ids, min(new, 4))
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    tokens = dec.generate(ids, new)
    sync()
    rates = dec.step_rates()
    return tokens, new / (time.perf_counter() - t0), {k: round(rates[k], 2) for k in
                                                      ("decode_tokens_per_s", "prefill_ms") if k in rates}


def run_generate(model: str, prompt: str, max_new_tokens: int = 64, values: str | None = None, device: str = "auto",
                 compare_dense: bool = False, min_sparsity: float = 0.3) -> dict:
    """Decode `prompt` greedily with the sparse model; returns the summary `sparselm generate` prints / writes."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"--device: auto, cpu or cuda (with a CUDA GPU present), got {device!r}")
    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    t0 = time.time()
    net, tok, vdesc, n_sparse = _load(model, dev, dtype, values, min_sparsity)
    if n_sparse == 0:
        raise ValueError(f"{model}: no linear inside the blocks is at least {min_sparsity:.0%} sparse; prune it first "
                         "(sparselm prune) or lower --min-sparsity")
    ids = tok(prompt, return_tensors="pt")["input_ids"].to(dev)
    if ids.shape[1] == 0:
        raise ValueError("--prompt: the tokenizer made no tokens of it")
    max_len = ids.shape[1] + max_new_tokens + 8
    dec = _decoder(net, max_len)
    dispatch = {}
    if dev.type == "cuda":  # measure each shape's kernel (the decoder's fused shapes and glu included) first
        from sparselm.runtime.gpu_backend import GLU

        table = dec.autotune()
        dispatch = {f"{k[0]}x{k[1]}{GLU if k[3].endswith(GLU) else ''}":
                    v["cfg"].key() if v["path"] == "sparse" and v["cfg"] else v["path"] for k, v in table.items()}
    tokens, tps, split = _timed(dec, ids, max_new_tokens)
    if dev.type == "cpu":  # the CPU backend's measured choices (kernels/cpu/backend.py: kernel vs dense per shape)
        from sparselm.kernels.cpu.backend import decisions

        dispatch = {k: v["path"] for k, v in decisions().items()}
    new = tokens[0, ids.shape[1]:]
    eos = getattr(tok, "eos_token_id", None)
    cut = int((new == eos).nonzero()[0, 0]) if eos is not None and bool((new == eos).any()) else new.numel()
    res = {"model": model, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
           "values": vdesc, "sparse_layers": n_sparse, "prompt_tokens": int(ids.shape[1]),
           "new_tokens": max_new_tokens, "text": tok.decode(new[:cut], skip_special_tokens=True),
           "tokens_per_s": round(tps, 2), **split, "dispatch": dispatch}
    if compare_dense:
        from sparselm.runtime import densify

        del dec
        densify(net, dtype)  # the same weights (quantized values as rounded), dense, in the same loop
        dense_tokens, dense_tps, dense_split = _timed(_decoder(net, max_len), ids, max_new_tokens)
        res.update({f"dense_{k}": v for k, v in dense_split.items()})
        res.update({"dense_tokens_per_s": round(dense_tps, 2), "speedup": round(tps / dense_tps, 3),
                    "same_tokens_as_dense": int((dense_tokens[0, ids.shape[1]:] == new).sum()),
                    "note": "same-run ratio: the dense engine is the same decode loop over the densified weights"})
    res["wall_s"] = round(time.time() - t0, 1)
    return res
