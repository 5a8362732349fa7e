"""Architecture adapters: where the transformer blocks are, which linears inside them may be pruned, and which tensor
of a block's output is the hidden state that SquareHead distillation compares.

Adding an architecture is one `register_adapter(...)` call naming the HF `model_type` and the dotted paths of its
block lists (peft-style registration). Embeddings, the LM head, norms and conv front-ends live outside the block lists
or are not Linear/Conv1D, so they are never prunable by construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from sparselm.models.weights import is_prunable


class UnsupportedModelError(ValueError):
    """Raised for a model whose architecture has no registered adapter."""


def _resolve(root: nn.Module, dotted: str) -> nn.Module | None:
    obj: object = root
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def _first_tensor(output: object) -> torch.Tensor:
    """HF blocks return a tensor (transformers 5 decoder layers) or a tuple whose first item is the hidden state."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state  # type: ignore[no-any-return]
    raise TypeError(f"cannot find the hidden state in a block output of type {type(output).__name__}")


@dataclass(frozen=True)
class ModelAdapter:
    """Where one architecture keeps its transformer stacks.

    `stacks` lists, in forward order, candidate dotted paths of each nn.ModuleList of blocks (encoder before
    decoder). Each entry is a tuple of alternatives, because the same blocks sit under different prefixes in the
    bare model (`LlamaModel.layers`) and in task heads (`LlamaForCausalLM.model.layers`).
    """

    name: str
    stacks: tuple[tuple[str, ...], ...]
    block_hidden: Callable[[object], torch.Tensor] = field(default=_first_tensor)

    def stack_lists(self, model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
        found: list[tuple[str, nn.ModuleList]] = []
        for alternatives in self.stacks:
            for path in alternatives:
                mod = _resolve(model, path)
                if isinstance(mod, nn.ModuleList):
                    found.append((path, mod))
                    break
            else:
                raise UnsupportedModelError(
                    f"{type(model).__name__}: adapter '{self.name}' found none of {list(alternatives)}")
        return found

    def stacks_of_blocks(self, model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
        """Blocks grouped per stack: [[(name, block), ...] (encoder), [...] (decoder)]."""
        return [[(f"{path}.{i}", blk) for i, blk in enumerate(lst)] for path, lst in self.stack_lists(model)]

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """All transformer blocks in forward order (encoder blocks, then decoder blocks)."""
        return [b for stack in self.stacks_of_blocks(model) for b in stack]

    def prunable_linears(self, model: nn.Module) -> dict[str, nn.Module]:
        """Full module name -> Linear/Conv1D, for every prunable layer inside a block."""
        out: dict[str, nn.Module] = {}
        for block_name, block in self.blocks(model):
            out.update(block_linears(block, prefix=block_name))
        return out


def block_linears(block: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """Prunable layers of one block, keyed by full name when `prefix` is given."""
    return {(f"{prefix}.{n}" if prefix else n): m for n, m in block.named_modules() if n and is_prunable(m)}


_ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(model_types: str | list[str], adapter: ModelAdapter) -> None:
    for mt in [model_types] if isinstance(model_types, str) else model_types:
        _ADAPTERS[mt] = adapter


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for `model` (chosen by `config.model_type`), or a clear error listing what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ADAPTERS:
        raise UnsupportedModelError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}); supported model types: "
            f"{', '.join(supported_model_types())}. Register one with sparselm.models.register_adapter().")
    return _ADAPTERS[model_type]


# Decoder-only models whose blocks live at `model.layers` (Llama family and its many look-alikes).
_LLAMA_LIKE = ModelAdapter("llama-like", ((
    "model.layers", "layers", "model.language_model.layers", "language_model.layers"),))
register_adapter(["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2"],
                 _LLAMA_LIKE)
# Gemma-3 multimodal wrappers keep the text tower under `language_model`.
register_adapter("gemma3", ModelAdapter("gemma3", ((
    "model.language_model.layers", "language_model.layers", "model.layers"),)))
register_adapter("gpt2", ModelAdapter("gpt2", (("transformer.h", "h"),)))
register_adapter("mpt", ModelAdapter("mpt", (("transformer.blocks", "blocks"),)))
register_adapter(["t5", "mt5", "umt5"], ModelAdapter("t5", (("encoder.block",), ("decoder.block",))))
register_adapter("whisper", ModelAdapter("whisper", (
    ("model.encoder.layers", "encoder.layers"), ("model.decoder.layers", "decoder.layers"))))
