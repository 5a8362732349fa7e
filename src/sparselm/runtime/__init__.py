"""Sparse inference runtime: SparseLinear, sparsify(), per-device backends, GPU dispatch, a static decode loop.

    from sparselm.runtime import sparsify, StaticDecoder
    sparsify(model, values_dtype="float16", min_sparsity=0.3)   # pruned nn.Linear -> SparseLinear
    tokens = StaticDecoder(model.cuda(), max_len=512).generate(input_ids, max_new_tokens=128)
"""

from sparselm.runtime.backends import get_backend, register_backend, registered_backends
from sparselm.runtime.decode import StaticDecoder
from sparselm.runtime.sparse_linear import SparseLinear
from sparselm.runtime.sparsify import block_linear_names, densify, sparsify

__all__ = ["SparseLinear", "StaticDecoder", "block_linear_names", "densify", "get_backend", "register_backend",
           "registered_backends", "sparsify"]
