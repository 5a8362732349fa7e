"""A minimal greedy decode loop for Llama-type HF models: static KV cache, one CUDA graph per decode step.

It walks the HF modules' own weights (q/k/v/o and MLP linears — nn.Linear or SparseLinear — norms, embeddings,
lm_head), so the same model object runs dense or sparse. Per layer l, for new tokens at positions p:
    q, k, v = W_q h, W_k h, W_v h;  q, k = rope(q, p), rope(k, p);  K_l[:, :, p] = k;  V_l[:, :, p] = v
    a = softmax(q K_l^T / sqrt(d) + mask(key_pos <= p)) V_l  (GQA: each KV head serves n_heads / n_kv heads)
    h = h + W_o a;  h = h + MLP(norm(h))
The attention always spans the whole static cache with a position mask: shapes never change, so one graph
replays every step (positions live in a device tensor). On CPU it runs eagerly (no graphs).
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class StaticDecoder:
    """Greedy generation with a static KV cache (max_len positions) for `batch_size` sequences."""

    def __init__(self, model: nn.Module, batch_size: int = 1, max_len: int = 512, use_graph: bool | None = None):
        self.model = model
        inner = getattr(model, "model", model)
        self.embed, self.layers, self.norm = inner.embed_tokens, inner.layers, inner.norm
        self.lm_head = model.get_output_embeddings()
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.device = self.embed.weight.device
        self.dtype = self.embed.weight.dtype
        rot = inner.rotary_emb
        self.inv_freq = rot.inv_freq.to(self.device, torch.float32)
        self.rope_scale = float(getattr(rot, "attention_scaling", 1.0))
        self.batch_size, self.max_len = batch_size, max_len
        shape = (len(self.layers), batch_size, self.n_kv, max_len, self.head_dim)
        self.k_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.v_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.key_pos = torch.arange(max_len, device=self.device)
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self._graph = None

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # (T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return ((emb.cos() * self.rope_scale).to(self.dtype), (emb.sin() * self.rope_scale).to(self.dtype))

    def _attention(self, i: int, layer: nn.Module, h: torch.Tensor, positions: torch.Tensor,
                   cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        b, t, _ = h.shape
        q = attn.q_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = attn.k_proj(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        self.k_cache[i].index_copy_(2, positions, k)
        self.v_cache[i].index_copy_(2, positions, v)
        a = F.scaled_dot_product_attention(q, self.k_cache[i], self.v_cache[i], attn_mask=mask,
                                           enable_gqa=self.n_kv != self.n_heads)
        return attn.o_proj(a.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) of the last of `ids` (B, T), whose first token sits at position `start` (0-d)."""
        t = ids.shape[1]
        positions = start + torch.arange(t, device=self.device)
        cos, sin = self._rope(positions)
        mask = self.key_pos[None, :] <= positions[:, None]  # (T, max_len): causal over the static cache
        h = self.embed(ids)
        for i, layer in enumerate(self.layers):
            h = h + self._attention(i, layer, layer.input_layernorm(h), positions, cos, sin, mask)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.lm_head(self.norm(h[:, -1])).float()

    def _capture(self) -> None:
        """One decode step as a graph: reads self._ids / self._pos, writes self._logits and the next token."""
        self._ids = torch.zeros(self.batch_size, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros((), dtype=torch.long, device=self.device)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm-up: Triton compiles, packed views, cuBLAS handles
            for _ in range(2):
                self.forward(self._ids, self._pos)
        torch.cuda.current_stream().wait_stream(s)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._logits = self.forward(self._ids, self._pos)
            self._ids.copy_(self._logits.argmax(-1, keepdim=True))
            self._pos.add_(1)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, return_logits: bool = False):
        """Greedy tokens (B, T + max_new_tokens); with return_logits also the (steps, B, vocab) logits."""
        b, t = input_ids.shape
        if b != self.batch_size or t + max_new_tokens > self.max_len:
            raise ValueError(f"input_ids: batch {b} / length {t}+{max_new_tokens} do not fit this decoder "
                             f"(batch_size={self.batch_size}, max_len={self.max_len})")
        input_ids = input_ids.to(self.device)
        if self.use_graph and self._graph is None:
            self._capture()  # before the prefill: its warm-up writes cache position 0, which the prefill rewrites
        logits = self.forward(input_ids, torch.zeros((), dtype=torch.long, device=self.device))
        out, all_logits = [input_ids], [logits] if return_logits else []
        nxt = logits.argmax(-1, keepdim=True)
        if self.use_graph:
            self._ids.copy_(nxt)
            self._pos.fill_(t)
        for step in range(max_new_tokens - 1):
            out.append(nxt)
            if self.use_graph:
                self._graph.replay()
                nxt = self._ids.clone()
                if return_logits:
                    all_logits.append(self._logits.clone())
            else:
                lg = self.forward(nxt, torch.tensor(t + step, device=self.device))
                nxt = lg.argmax(-1, keepdim=True)
                if return_logits:
                    all_logits.append(lg)
        out.append(nxt)
        tokens = torch.cat(out, dim=1)
        return (tokens, torch.stack(all_logits)) if return_logits else tokens

    def tokens_per_second(self, prompt_len: int = 16, new_tokens: int = 128, vocab: int | None = None) -> float:
        """Decode throughput (batch_size * new tokens / s) after a prefill of `prompt_len` random tokens."""
        vocab = vocab or self.embed.weight.shape[0]
        ids = torch.randint(0, vocab, (self.batch_size, prompt_len), device=self.device)
        self.generate(ids, 4)  # warm-up (and graph capture)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        self.generate(ids, new_tokens)
        sync()
        return self.batch_size * new_tokens / (time.perf_counter() - t0)
