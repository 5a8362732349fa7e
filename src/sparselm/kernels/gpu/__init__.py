"""Triton kernels for y = x @ W.T with W in sparselm-bitmask v1 (see bitmask_spmm.py for the decode math).

    from sparselm.kernels.gpu import PackedBitmask, SpmmConfig, spmm
    y = spmm(x, PackedBitmask.from_compressed(ct), SpmmConfig(block_n=16))
"""

from sparselm.kernels.gpu.ops import PackedBitmask, SpmmConfig, decompress_gpu, spmm

__all__ = ["PackedBitmask", "SpmmConfig", "decompress_gpu", "spmm"]
