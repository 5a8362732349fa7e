"""A minimal greedy decode loop for Llama-type HF models: static KV cache, one CUDA graph per decode step.

It walks the HF modules' own weights (q/k/v/o and MLP linears — nn.Linear or SparseLinear — norms, embeddings,
lm_head), so the same model object runs dense or sparse. Per layer l, for new tokens at positions p:
    q, k, v = W_q h, W_k h, W_v h;  q, k = rope(q, p), rope(k, p);  K_l[:, :, p] = k;  V_l[:, :, p] = v
    a = softmax(q K_l^T / sqrt(d) + mask(key_pos <= p)) V_l  (GQA: each KV head serves n_heads / n_kv heads)
    h = h + W_o a;  h = h + MLP(norm(h))
The attention always spans the whole static cache with a position mask: shapes never change, so one graph
replays every step (positions live in a device tensor). On CPU it runs eagerly (no graphs).
On CUDA (fused_ops), residual add + RMSNorm, rotary + cache write, and silu * up run as one Triton kernel each
(kernels/gpu/fused.py), the eager ops' rounding kept, and a decode step's attention is one Triton kernel over keys
0..pos that also does the rotary + cache write: 8 launches per layer instead of ~40 (a prefill: rotary + cache
write, then SDPA); 7 where the gate/up product's N:M kernel applies silu * up itself (batch 1).
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F

from sparselm.compress.format import concat_rows
from sparselm.runtime.sparse_linear import SparseLinear


# decode_attention gives each program one block of keys and merges up to 64 blocks in one program: past this many
# positions its tiles outgrow the registers, so longer caches keep SDPA
DECODE_ATTENTION_MAX_LEN = 8192
PREFILL_GRAPHS = 4  # prompt lengths whose prefill graph a decoder keeps (prefill_graph=True)


def attention_buckets(max_len: int) -> list[tuple[int, int | None, int | None]]:
    """decode_attention's key split by position: (first position, block_n, num_warps) per bucket, ascending; a
    decode step at position p runs the last bucket whose first position is <= p (one step graph per bucket; None:
    the kernel's default split). Why by position: a head's key blocks merge their partial softmaxes through an
    arrival counter and an L2 round trip (~1.3 us) that a single block avoids, while past ~128 keys more, smaller
    blocks win. decode_attention_qkv on the H200 at the 7B shape, max_len 152 (decode_attention_qkv_splits.json,
    us): positions 16-31: 32-key blocks 3.2-3.3 (one block; 64-key 4.0-4.2); 40-63: 64-key blocks (8 warps) 4.2-4.3
    against 4.6-4.9; 64-100: 32-key blocks 4.7-5.3, 16-key (2 warps) 4.8-5.4; 130-151: 16-key blocks 5.7-5.8
    against 6.1-6.3. Past position 256 (not measured) the default split."""
    buckets = [(0, 32, 4), (32, 64, 8), (64, 32, 4), (128, 16, 2), (256, None, None)]
    return [b for b in buckets if b[0] < max_len]


def fuse_linears(mods: list[nn.Module]) -> nn.Module | None:
    """One module computing cat([m(x) for m in mods], -1): stacked rows for nn.Linear, concatenated compressed
    rows for SparseLinear (same values dtype / group size). None when the modules cannot be fused."""
    if all(type(m) is nn.Linear for m in mods):
        if len({(m.weight.dtype, m.weight.device, m.bias is None) for m in mods}) != 1:
            return None
        w = torch.cat([m.weight.detach() for m in mods])
        fused = nn.Linear(w.shape[1], w.shape[0], bias=mods[0].bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            fused.weight.copy_(w)
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([m.bias.detach() for m in mods]))
        return fused.requires_grad_(False)
    if all(isinstance(m, SparseLinear) for m in mods):
        try:
            ct = concat_rows([m.compressed for m in mods])
        except ValueError:
            return None
        has_bias = [m.bias is not None for m in mods]
        if any(has_bias) and not all(has_bias):
            return None
        bias = torch.cat([m.bias.detach() for m in mods]) if all(has_bias) else None
        return SparseLinear(ct, bias=bias, cache_dense=mods[0].cache_dense)
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class StaticDecoder:
    """Greedy generation with a static KV cache (max_len positions) for `batch_size` sequences."""

    def __init__(self, model: nn.Module, batch_size: int = 1, max_len: int = 512, use_graph: bool | None = None,
                 fuse: bool = True, fused_ops: bool | None = None, pdl: bool | None = None, glu: bool | None = None,
                 norm_epilogue: bool = False, prefill_graph: bool = False, attn_buckets: bool = True):
        """fuse: run q/k/v and gate/up as one matmul each (fewer, larger launches). Costs a second copy of
        those weights (dense or compressed) held by the decoder; the model itself is not modified.
        fused_ops: the Triton elementwise kernels (default: on CUDA, when the model is a plain Llama block:
        RMSNorm, SiLU MLP, fused q/k/v and gate/up); False: the eager PyTorch ops.
        pdl: launch the project's kernels with programmatic dependent launch (kernels/gpu/pdl.py; default: where
        the GPU and Triton support it). glu: let the fused gate/up product apply silu * up itself where its kernel
        can (fused_ops, batch 1, the N:M kernel; False: always the product, then silu_mul; None: for 16-bit values,
        with gpu_backend.autotune_glu's config where tuned: on the H200 the glu launch ran 7B int8 1:4 decode
        2-3.5% slower, fp16 1-3% faster, in four same-run A/Bs, benchmarks/results/gpu_decode_*ab*.json).
        norm_epilogue: likewise let o_proj and down_proj add their output to the residual and apply the next
        RMSNorm in their last block (off by default: 4-6% slower than the add_rmsnorm launch in the same A/Bs).
        prefill_graph: with graphs, also capture the prompt's forward, one graph per prompt length (the
        PREFILL_GRAPHS most recently used lengths kept): an eager prefill launches ~10 kernels per layer from
        Python, which at batch 1 takes longer than the GPU work; capturing costs about three eager prefills, once
        per length, so it pays when prompt lengths repeat (serving buckets, benchmarks). attn_buckets: the decode
        attention's key split chosen by position (attention_buckets; with graphs, one step graph per bucket);
        False: the default split."""
        self.glu, self.norm_epilogue = glu, norm_epilogue
        self.prefill_graph = prefill_graph
        self._prefill: dict[int, tuple] = {}  # prompt length -> (graph, ids, start, logits), LRU first
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
        # the rotary of every cache position, once: a decode step indexes it by its device-side position (the
        # attention kernel reads the row itself) instead of running ~9 small cos/sin kernels per step
        self.cos_tab, self.sin_tab = self._rope(torch.arange(max_len, device=self.device))
        self.last_timing: dict | None = None  # generate's prefill / decode split (CUDA), see throughput()
        shape = (len(self.layers), batch_size, self.n_kv, max_len, self.head_dim)
        self.k_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.v_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.key_pos = torch.arange(max_len, device=self.device)
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self._graphs: list[tuple[int, torch.cuda.CUDAGraph, torch.Tensor]] = []  # (first position, graph, logits)
        self._attn: tuple[int | None, int | None] = (None, None)  # the split the next forward's attention uses
        self.qkv, self.gate_up = [], []
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            self.qkv.append(fuse_linears([a.q_proj, a.k_proj, a.v_proj]) if fuse else None)
            gu_ok = fuse and hasattr(m, "gate_proj") and hasattr(m, "act_fn")
            self.gate_up.append(fuse_linears([m.gate_proj, m.up_proj]) if gu_ok else None)
        plain = (fuse and getattr(cfg, "hidden_act", None) == "silu" and self.head_dim % 2 == 0
                 and all(q is not None for q in self.qkv) and all(g is not None for g in self.gate_up)
                 and all(hasattr(n, "variance_epsilon") for layer in self.layers
                         for n in (layer.input_layernorm, layer.post_attention_layernorm))
                 and hasattr(self.norm, "variance_epsilon"))
        if fused_ops and not plain:
            raise ValueError("fused_ops: needs a Llama-type block (RMSNorm, SiLU MLP) with fuse=True")
        self.fused_ops = plain and (self.device.type == "cuda" if fused_ops is None else fused_ops)
        # the buckets only matter where decode steps run decode_attention_qkv (else one graph, not one per bucket)
        split = attn_buckets and self.fused_ops and max_len <= DECODE_ATTENTION_MAX_LEN
        self.buckets = attention_buckets(max_len) if split else [(0, None, None)]
        ok = False
        if self.device.type == "cuda":  # the GPU package (Triton) is imported only for a CUDA model
            from sparselm.kernels.gpu.pdl import supported

            ok = supported(self.device)
        if pdl and not ok:
            raise ValueError(f"pdl: needs a CUDA GPU of compute capability 9.0+ and Triton with launch_pdl "
                             f"(device {self.device})")
        self.pdl = ok if pdl is None else pdl

    def autotune(self, batches: tuple[int, ...] = (1,)) -> dict:
        """GPU: measure the kernels for the model's sparse layers and this decoder's fused q/k/v and gate/up shapes
        (gpu_backend.autotune, at `batches` sequences), then the gate/up glu launch (autotune_glu). Returns the new
        dispatch rows."""
        from sparselm.runtime.gpu_backend import autotune, autotune_glu

        mods = [m for m in self.qkv + self.gate_up if m is not None] + [self.model]
        table = autotune(nn.ModuleList(mods), batches=batches, act_dtype=self.dtype)
        table.update(autotune_glu(self.gate_up, act_dtype=self.dtype))
        return table

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # (T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return ((emb.cos() * self.rope_scale).to(self.dtype), (emb.sin() * self.rope_scale).to(self.dtype))

    def _attention(self, i: int, layer: nn.Module, h: torch.Tensor, positions: torch.Tensor,
                   cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        b, t, _ = h.shape
        nq, nkv = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        if self.qkv[i] is not None:
            q, k, v = self.qkv[i](h).split([nq, nkv, nkv], dim=-1)
        else:
            q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = k.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        self.k_cache[i].index_copy_(2, positions, k)
        self.v_cache[i].index_copy_(2, positions, v)
        a = F.scaled_dot_product_attention(q, self.k_cache[i], self.v_cache[i], attn_mask=mask,
                                           enable_gqa=self.n_kv != self.n_heads)
        return attn.o_proj(a.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def _mlp(self, i: int, mlp: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """down(act(gate h) * up h), with gate/up as one matmul when fused; any other MLP runs as is."""
        if self.gate_up[i] is None:
            return mlp(h)
        g, u = self.gate_up[i](h).chunk(2, dim=-1)
        return mlp.down_proj(mlp.act_fn(g) * u)

    def _silu_up(self, i: int, x: torch.Tensor, silu_mul) -> torch.Tensor:
        """silu(gate x) * up x. One launch where layer i's fused gate/up product runs on the N:M kernel at batch 1
        (gpu_backend.silu_mul_product: the kernel applies silu * up to its two rows' sums), else the product, then
        silu_mul."""
        gu = self.gate_up[i]
        if self.glu is not False and isinstance(gu, SparseLinear) and x.is_cuda:
            from sparselm.runtime import gpu_backend
            from sparselm.runtime.backends import get_backend

            if get_backend("cuda") is gpu_backend.cuda_backend:
                y = gpu_backend.silu_mul_product(x.reshape(-1, x.shape[-1]), gu, auto=self.glu is None)
                if y is not None:
                    return y.view(*x.shape[:-1], -1)
        return silu_mul(gu(x))

    def _add_norm(self, linear: nn.Module, x: torch.Tensor, res: torch.Tensor, norm: nn.Module, add_rmsnorm
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(res + linear(x), norm(res + linear(x))). One launch where the linear runs on the N:M kernel at batch 1
        (gpu_backend.add_rmsnorm_product: its last block adds and normalizes), else the product, then add_rmsnorm."""
        if self.norm_epilogue and isinstance(linear, SparseLinear) and x.is_cuda:
            from sparselm.runtime import gpu_backend
            from sparselm.runtime.backends import get_backend

            if get_backend("cuda") is gpu_backend.cuda_backend:
                r = gpu_backend.add_rmsnorm_product(x.reshape(-1, x.shape[-1]), linear, res, norm.weight,
                                                    norm.variance_epsilon)
                if r is not None:
                    return r[0].view(res.shape), r[1].view(res.shape)
        return add_rmsnorm(res, linear(x), norm.weight, norm.variance_epsilon)

    def _forward_fused(self, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The same math as forward's loop with the Triton kernels; returns norm(h) of the last position. Each
        add_rmsnorm adds the previous sub-block's output to the residual and normalizes it for the next sub-block
        (the last one with the final norm)."""
        from sparselm.kernels.gpu.fused import add_rmsnorm, decode_attention_qkv, rope_qkv, silu_mul

        b, t, _ = h.shape
        nq = self.n_heads * self.head_dim
        heads = (self.n_heads, self.n_kv, self.head_dim)
        # a decode step: keys 0..pos only, no mask; the rotary (from the table, at the device-side position) and
        # the cache write inside the attention kernel (one launch less)
        step = t == 1 and self.max_len <= DECODE_ATTENTION_MAX_LEN
        if not step:
            cos, sin, mask = self.cos_tab[positions], self.sin_tab[positions], self._mask(positions)
        norm0 = self.layers[0].input_layernorm
        res, x = add_rmsnorm(h, None, norm0.weight, norm0.variance_epsilon)
        for i, layer in enumerate(self.layers):
            if step:
                a = decode_attention_qkv(self.qkv[i](x), self.cos_tab, self.sin_tab, positions, *heads,
                                         self.k_cache[i], self.v_cache[i], *self._attn)
            else:
                q = rope_qkv(self.qkv[i](x), cos, sin, positions, *heads, self.k_cache[i], self.v_cache[i])
                a = F.scaled_dot_product_attention(q, self.k_cache[i], self.v_cache[i], attn_mask=mask,
                                                   enable_gqa=self.n_kv != self.n_heads).transpose(1, 2)
            res, x = self._add_norm(layer.self_attn.o_proj, a.reshape(b, t, nq), res,
                                    layer.post_attention_layernorm, add_rmsnorm)
            nn_ = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.norm
            res, x = self._add_norm(layer.mlp.down_proj, self._silu_up(i, x, silu_mul), res, nn_, add_rmsnorm)
        return x[:, -1]

    def _mask(self, positions: torch.Tensor) -> torch.Tensor:
        return self.key_pos[None, :] <= positions[:, None]  # (T, max_len): causal over the static cache

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) of the last of `ids` (B, T), whose first token sits at position `start` (0-d)."""
        if self.device.type != "cuda":
            return self._forward(ids, start)
        from sparselm.kernels.gpu.pdl import programmatic_launch

        with programmatic_launch(self.pdl):  # recorded into the graph when captured
            return self._forward(ids, start)

    def _forward(self, ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        # one token: its position is `start` itself (a view, no kernel in the step's graph)
        positions = start.reshape(1) if t == 1 else start + torch.arange(t, device=self.device)
        h = self.embed(ids)
        if self.fused_ops:
            return self.lm_head(self._forward_fused(h, positions)).float()
        cos, sin, mask = self.cos_tab[positions], self.sin_tab[positions], self._mask(positions)
        for i, layer in enumerate(self.layers):
            h = h + self._attention(i, layer, layer.input_layernorm(h), positions, cos, sin, mask)
            h = h + self._mlp(i, layer.mlp, layer.post_attention_layernorm(h))
        return self.lm_head(self.norm(h[:, -1])).float()

    def _prefill_graphed(self, ids: torch.Tensor) -> torch.Tensor:
        """forward(ids, 0) through the graph captured for this prompt length (captured on first use)."""
        t = ids.shape[1]
        if t not in self._prefill:
            if len(self._prefill) >= PREFILL_GRAPHS:
                self._prefill.pop(next(iter(self._prefill)))
            buf = ids.clone()
            start = torch.zeros((), dtype=torch.long, device=self.device)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):  # warm-up: this length's kernels compile / autotune outside the capture
                for _ in range(2):
                    self.forward(buf, start)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = self.forward(buf, start)
            # the graph reads buf and start where they were at capture: both must outlive it
            self._prefill[t] = (graph, buf, start, logits)
        graph, buf, _, logits = self._prefill[t] = self._prefill.pop(t)  # most recently used last
        buf.copy_(ids)
        graph.replay()
        return logits.clone()  # the graph's buffer is rewritten by the next prefill of this length

    def _capture(self) -> None:
        """One decode step as a graph per attention bucket: each reads self._ids / self._pos, writes its logits and
        the next token into self._ids."""
        self._ids = torch.zeros(self.batch_size, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros((), dtype=torch.long, device=self.device)
        for first, block_n, warps in self.buckets:
            self._attn = (block_n, warps)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):  # warm-up: Triton compiles, packed views, cuBLAS handles
                for _ in range(2):
                    self.forward(self._ids, self._pos)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = self.forward(self._ids, self._pos)
                torch.argmax(logits, -1, keepdim=True, out=self._ids)
                self._pos.add_(1)
            self._graphs.append((first, graph, logits))
        self._attn = (None, None)

    def _bucket(self, pos: int) -> int:
        """The index of the attention bucket holding position `pos` (bucket 0 starts at 0)."""
        return max(i for i, b in enumerate(self.buckets) if b[0] <= pos)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, return_logits: bool = False):
        """Greedy tokens (B, T + max_new_tokens); with return_logits also the (steps, B, vocab) logits. On CUDA,
        self.last_timing gets the run's split, from events on the stream: prefill_ms (the prompt's forward and
        its first token) and decode_ms over `steps` single-token steps."""
        b, t = input_ids.shape
        if b != self.batch_size or t + max_new_tokens > self.max_len:
            raise ValueError(f"input_ids: batch {b} / length {t}+{max_new_tokens} do not fit this decoder "
                             f"(batch_size={self.batch_size}, max_len={self.max_len})")
        input_ids = input_ids.to(self.device)
        if self.use_graph and not self._graphs:
            self._capture()  # before the prefill: its warm-up writes cache position 0, which the prefill rewrites
        cuda = self.device.type == "cuda"
        graphed = self.use_graph and self.prefill_graph
        if graphed and t not in self._prefill:
            self._prefill_graphed(input_ids)  # capture before the clock starts; the replay below does the work
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)] if cuda else []
        if cuda:
            events[0].record()
        if graphed:
            logits = self._prefill_graphed(input_ids)
        else:
            logits = self.forward(input_ids, torch.zeros((), dtype=torch.long, device=self.device))
        out, all_logits = [input_ids], [logits] if return_logits else []
        nxt = logits.argmax(-1, keepdim=True)
        if cuda:
            events[1].record()
        if self.use_graph:
            self._ids.copy_(nxt)
            self._pos.fill_(t)
        for step in range(max_new_tokens - 1):
            out.append(nxt)
            if self.use_graph:
                _, graph, step_logits = self._graphs[self._bucket(t + step)]  # the token fed: position t + step
                graph.replay()
                nxt = self._ids.clone()
                if return_logits:
                    all_logits.append(step_logits.clone())
            else:  # the graphs' split, so that eager and replayed steps give the same bits
                self._attn = self.buckets[self._bucket(t + step)][1:]
                lg = self.forward(nxt, torch.tensor(t + step, device=self.device))
                nxt = lg.argmax(-1, keepdim=True)
                if return_logits:
                    all_logits.append(lg)
        self._attn = (None, None)
        out.append(nxt)
        tokens = torch.cat(out, dim=1)
        if cuda:
            events[2].record()
            events[2].synchronize()
            self.last_timing = {"prefill_ms": events[0].elapsed_time(events[1]),
                                "decode_ms": events[1].elapsed_time(events[2]), "steps": max_new_tokens - 1}
        return (tokens, torch.stack(all_logits)) if return_logits else tokens

    def throughput(self, prompt_len: int = 16, new_tokens: int = 128, vocab: int | None = None) -> dict:
        """One timed generate of `new_tokens` after a `prompt_len`-token prompt of random ids (after a warm-up
        that also captures the graph). tokens_per_s: batch_size * new_tokens over the whole call, prefill
        included. On CUDA, from the same run: prefill_ms, step_ms (per single-token step) and decode_tokens_per_s
        = batch_size / step time, the steady-state rate that the weights' bytes per step bound."""
        vocab = vocab or self.embed.weight.shape[0]
        ids = torch.randint(0, vocab, (self.batch_size, prompt_len), device=self.device)
        self.generate(ids, 4)  # warm-up (and graph capture)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        self.generate(ids, new_tokens)
        sync()
        return {"tokens_per_s": self.batch_size * new_tokens / (time.perf_counter() - t0), **self.step_rates()}

    def step_rates(self) -> dict:
        """The last generate's split (CUDA): prefill_ms, step_ms and decode_tokens_per_s (batch_size / step
        time); {} without one (CPU) or without decode steps."""
        lt = self.last_timing
        if not lt or not lt["steps"]:
            return {}
        step_ms = lt["decode_ms"] / lt["steps"]
        return {"prefill_ms": lt["prefill_ms"], "step_ms": step_ms,
                "decode_tokens_per_s": self.batch_size * 1e3 / step_ms}

    def tokens_per_second(self, prompt_len: int = 16, new_tokens: int = 128, vocab: int | None = None) -> float:
        """Throughput (batch_size * new tokens / s) over a whole generate call, the prefill of `prompt_len`
        random tokens included (throughput() also splits off the steady-state decode rate)."""
        return self.throughput(prompt_len, new_tokens, vocab)["tokens_per_s"]
