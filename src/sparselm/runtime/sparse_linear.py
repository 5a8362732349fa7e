"""SparseLinear: an nn.Linear whose weight is stored in sparselm-bitmask v1 (compress/FORMAT.md).

forward(x) = x @ W.T + b. The device's registered backend (runtime.backends) computes it from the compressed
tensors; when it declines (None) or none is registered, a dense fallback multiplies by decompress(W), cached
per dtype when `cache_dense` is set (the default on CPU, where the dense fallback is the stop-gap path).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sparselm.compress.format import CompressedTensor, compress_tensor, decompress
from sparselm.runtime.backends import get_backend


class SparseLinear(nn.Module):
    """y = x @ W.T + b with W (out_features, in_features) compressed; buffers move with .to(device)."""

    def __init__(self, compressed: CompressedTensor, bias: torch.Tensor | None = None,
                 cache_dense: bool | None = None):
        super().__init__()
        self.out_features, self.in_features = compressed.shape
        self.group_size = compressed.group_size
        self.bits = compressed.bits  # 4: the int8 values are int4 codes (saved packed)
        self.register_buffer("bitmask", compressed.bitmask)
        self.register_buffer("values", compressed.values)
        self.register_buffer("row_ptr", compressed.row_ptr)
        self.register_buffer("scales", compressed.scales)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self.cache_dense = cache_dense  # None = cache on CPU only
        self._dense: dict[torch.dtype, torch.Tensor] = {}
        self.kernel_state: dict = {}  # backend-private, derived data (e.g. the GPU packed view)

    @classmethod
    def from_linear(cls, linear: nn.Linear, values_dtype: str | torch.dtype | None = None,
                    group_size: int | None = None, cache_dense: bool | None = None) -> "SparseLinear":
        """Compress an nn.Linear (its zeros are the mask)."""
        ct = compress_tensor(linear.weight.detach(), values_dtype=values_dtype, group_size=group_size)
        return cls(ct, linear.bias, cache_dense=cache_dense)

    @property
    def compressed(self) -> CompressedTensor:
        return CompressedTensor((self.out_features, self.in_features), self.bitmask, self.values, self.row_ptr,
                                self.scales, self.group_size, self.bits)

    @property
    def sparsity(self) -> float:
        return self.compressed.sparsity

    def _apply(self, fn, recurse=True):
        """Moves follow `fn`'s device but keep the format's dtypes (model.half() must not recast fp32 scales
        or turn fp16 values into bf16); the bias follows fn fully. Derived data is dropped."""
        self._dense.clear()
        self.kernel_state.clear()
        bufs = dict(self._buffers)
        self._buffers.clear()
        try:
            super()._apply(fn, recurse)
        finally:
            for name, b in bufs.items():
                dev = None if b is None else fn(torch.empty(0, dtype=b.dtype, device=b.device)).device
                self._buffers[name] = None if b is None else b.to(dev)
        return self

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """W (N, K) in `dtype` (int8 dequantized), cached when caching is on for this device."""
        if dtype in self._dense:
            return self._dense[dtype]
        w = None
        if self.values.is_cuda:
            from sparselm.runtime.gpu_backend import dense_from_kernel

            w = dense_from_kernel(self, dtype)
        if w is None:
            w = decompress(self.compressed, dtype)
        cache = self.cache_dense if self.cache_dense is not None else not self.values.is_cuda
        if cache:
            self._dense[dtype] = w
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        y = None
        backend = get_backend(x.device.type)
        if backend is not None and x2d.shape[0] > 0:
            y = backend(x2d, self)
        if y is None:
            y = F.linear(x2d, self.dense_weight(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"values={self.compressed.values_dtype}, sparsity={self.sparsity:.3f}, bias={self.bias is not None}")
