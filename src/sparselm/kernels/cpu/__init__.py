"""CPU sparse inference kernels: y = x @ W.T for bitmask-compressed W (AVX-512 / AVX2 / scalar C, JIT-built).

    from sparselm.kernels.cpu import sparse_matmul, available_isa
    y = sparse_matmul(x, bitmask, values, row_ptr, N, K, scales=None, group_size=None, threads=None)
"""

from sparselm.kernels.cpu.spmm import (ISAS, available_isa, best_isa, check_format, describe, get_num_threads,
                                       has_vnni, set_num_threads, sparse_matmul)

__all__ = ["ISAS", "available_isa", "best_isa", "check_format", "describe", "get_num_threads", "has_vnni",
           "set_num_threads", "sparse_matmul"]
