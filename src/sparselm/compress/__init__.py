"""The on-disk compressed format sparselm-bitmask v1 (spec: FORMAT.md in this folder).

    from sparselm.compress import compress_tensor, decompress, save_compressed, load_compressed
    ct = compress_tensor(W, values_dtype="int8", group_size=128)   # W (N, K), zeros = the mask
    W2 = decompress(ct)
"""

from sparselm.compress.format import (FORMAT_NAME, FORMAT_VERSION, CompressedFormatError, CompressedTensor,
                                      chunk_ptr, compress_tensor, decompress, pack_mask, unpack_mask, validate)
from sparselm.compress.io import load_compressed, load_compressed_tensors, read_index, save_compressed

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CompressedFormatError", "CompressedTensor", "chunk_ptr",
           "compress_tensor", "decompress", "load_compressed", "load_compressed_tensors", "pack_mask", "read_index",
           "save_compressed", "unpack_mask", "validate"]
