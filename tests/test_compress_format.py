"""sparselm-bitmask v1 (src/sparselm/compress/FORMAT.md): bit layout, round trips, int8 rules, validation errors."""

import math

import pytest
import torch

from sparselm.compress import (CompressedFormatError, CompressedTensor, chunk_ptr, compress_tensor, decompress,
                               pack_mask, unpack_mask, validate)
from sparselm.compress.format import check_metadata


def sparse_matrix(n: int, k: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[torch.rand(n, k, generator=g) < sparsity] = 0
    return w


def test_bit_layout_matches_spec():
    # row 0: columns 0, 9, 31, 32 and 40 nonzero; K = 41 pads to 64 columns = 8 bytes
    w = torch.zeros(2, 41)
    for c in (0, 9, 31, 32, 40):
        w[0, c] = float(c + 1)
    ct = compress_tensor(w, "float32")
    assert ct.bitmask.shape == (2, 8) and ct.bitmask.dtype == torch.uint8
    expect = [0x01, 0x02, 0x00, 0x80, 0x01, 0x01, 0x00, 0x00]  # bit b of byte j <-> column 8j+b, LSB first
    assert ct.bitmask[0].tolist() == expect
    assert ct.bitmask[1].tolist() == [0] * 8
    words = ct.bitmask.view(torch.int32)  # little-endian words: bit i of word w <-> column 32w+i
    assert int(words[0, 0]) & (1 << 9) and int(words[0, 1]) == (1 | 1 << 8)
    assert ct.values.tolist() == [1.0, 10.0, 32.0, 33.0, 41.0]  # row-major, increasing column
    assert ct.row_ptr.tolist() == [0, 5, 5]


@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (13, 64), (5, 301)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_mask_pack_roundtrip(shape, sparsity):
    mask = sparse_matrix(*shape, sparsity) != 0
    assert torch.equal(unpack_mask(pack_mask(mask), shape[1]), mask)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_float_roundtrip_exact(dtype, sparsity):
    w = sparse_matrix(9, 77, sparsity)
    w[4] = 0  # an all-zero row
    tdt = getattr(torch, dtype)
    ct = compress_tensor(w.to(tdt), dtype)
    validate(ct)
    assert ct.values.dtype == tdt and ct.nnz == int((w != 0).sum())
    assert torch.equal(decompress(ct), w.to(tdt))
    assert ct.metadata()["sparsity"] == pytest.approx(1 - ct.nnz / w.numel(), abs=1e-6)


@pytest.mark.parametrize("group_size", [None, 16, 50])
def test_int8_quantization_rules(group_size):
    w = sparse_matrix(6, 100, 0.6)
    ct = compress_tensor(w, "int8", group_size=group_size)
    validate(ct)
    gs = group_size or 100
    assert ct.scales.shape == (6, math.ceil(100 / gs)) and ct.scales.dtype == torch.float32
    for n in range(6):  # scale = max|w| / 127 per (row, group)
        for g in range(ct.scales.shape[1]):
            blk = w[n, g * gs:(g + 1) * gs]
            assert float(ct.scales[n, g]) == pytest.approx(float(blk.abs().max()) / 127, rel=1e-6)
    assert int(ct.values.abs().max()) <= 127
    err = (decompress(ct) - w).abs()
    bound = ct.scales.repeat_interleave(gs, 1)[:, :100] / 2 + 1e-7  # round-to-nearest: half a step
    assert bool((err <= bound).all())
    assert torch.equal(unpack_mask(ct.bitmask, 100), w != 0)  # the mask is the float mask


def test_int8_keeps_tiny_weights_in_mask():
    w = torch.tensor([[1.0, 1e-6, 0.0, -0.5]])
    ct = compress_tensor(w, "int8")
    assert ct.nnz == 3 and ct.values.tolist() == [127, 0, -64]


def test_empty_and_full():
    z = compress_tensor(torch.zeros(3, 40), "float16")
    assert z.nnz == 0 and z.sparsity == 1.0 and torch.equal(decompress(z), torch.zeros(3, 40, dtype=torch.float16))
    d = compress_tensor(torch.ones(3, 40), "float16")
    assert d.nnz == 120 and d.sparsity == 0.0


def test_chunk_ptr_points_at_first_nonzero_of_each_chunk():
    w = sparse_matrix(5, 300, 0.7)
    ct = compress_tensor(w, "float32")
    cp = chunk_ptr(ct, 64)
    assert cp.shape == (5, 5) and cp.dtype == torch.int32
    for n in range(5):
        for c in range(5):
            before = int((w[n, :64 * c] != 0).sum())
            assert int(cp[n, c]) == int(ct.row_ptr[n]) + before


def _broken(ct: CompressedTensor, **kw) -> CompressedTensor:
    fields = dict(shape=ct.shape, bitmask=ct.bitmask, values=ct.values, row_ptr=ct.row_ptr, scales=ct.scales,
                  group_size=ct.group_size)
    fields.update(kw)
    return CompressedTensor(**fields)


def test_validate_rejects_malformed():
    ct = compress_tensor(sparse_matrix(4, 40, 0.5), "float16")
    cases = {
        "values": _broken(ct, values=ct.values[:-1]),  # truncated
        "row_ptr": _broken(ct, row_ptr=ct.row_ptr + torch.tensor([0, 1, 1, 1, 1])),  # popcount mismatch
        "bitmask": _broken(ct, bitmask=ct.bitmask[:, :4]),  # wrong shape
    }
    padded = ct.bitmask.clone()
    padded[0, 7] |= 0x80  # column 63 > K = 40: a padding bit
    cases["bitmask "] = _broken(ct, bitmask=padded)
    for field, bad in cases.items():
        with pytest.raises(CompressedFormatError, match=f"layer.{field.strip()}"):
            validate(bad, "layer")
    q = compress_tensor(sparse_matrix(4, 40, 0.5), "int8")
    with pytest.raises(CompressedFormatError, match="scales"):
        validate(_broken(q, scales=None), "layer")
    with pytest.raises(CompressedFormatError, match="scales"):
        validate(_broken(q, scales=q.scales[:, :0]), "layer")


def test_metadata_version_and_name_checked():
    meta = compress_tensor(torch.eye(4), "float16").metadata()
    check_metadata(meta, "x")
    with pytest.raises(CompressedFormatError, match="version"):
        check_metadata({**meta, "version": 2}, "x")
    with pytest.raises(CompressedFormatError, match="format"):
        check_metadata({**meta, "format": "csr"}, "x")


def test_bad_arguments():
    with pytest.raises(CompressedFormatError, match="values_dtype"):
        compress_tensor(torch.eye(3), "float64")
    with pytest.raises(CompressedFormatError, match="group_size"):
        compress_tensor(torch.eye(3), "float16", group_size=8)
    with pytest.raises(CompressedFormatError, match="2-D"):
        compress_tensor(torch.ones(3), "float16")


@pytest.mark.parametrize("dtype,group_size", [("float16", None), ("int8", 16), ("int4", 16)])
def test_concat_rows_is_compress_of_stacked(dtype, group_size):
    from sparselm.compress.format import concat_rows

    ws = [sparse_matrix(n, 50, 0.6, seed=n) for n in (3, 5, 2)]
    cat = concat_rows([compress_tensor(w, dtype, group_size=group_size) for w in ws])
    ref = compress_tensor(torch.cat(ws), dtype, group_size=group_size)
    validate(cat)
    for f in ("bitmask", "values", "row_ptr", "scales"):
        assert (getattr(cat, f) is None and getattr(ref, f) is None) or torch.equal(getattr(cat, f), getattr(ref, f))
    assert cat.values_dtype == ref.values_dtype == dtype
    with pytest.raises(CompressedFormatError, match="concat_rows"):
        concat_rows([compress_tensor(ws[0], "float16"), compress_tensor(ws[1], "float32")])
    with pytest.raises(CompressedFormatError, match="concat_rows"):  # int8 and int4 codes must not mix
        concat_rows([compress_tensor(ws[0], "int8", group_size=16), compress_tensor(ws[1], "int4", group_size=16)])


@pytest.mark.parametrize("group_size", [None, 16, 50])
def test_int4_quantization_rules(group_size):
    """int4: scale = max|w| / 7 per (row, group), codes in [-7, 7], half a step of error, the float mask kept;
    the default group is 128 columns capped at K; canonical bytes count half a byte per value."""
    from sparselm.compress.format import pack_int4, unpack_int4

    w = sparse_matrix(6, 100, 0.6)
    ct = compress_tensor(w, "int4", group_size=group_size)
    validate(ct)
    gs = group_size or 100  # 128 capped at K = 100
    assert ct.values_dtype == "int4" and ct.bits == 4 and ct.group_size == gs
    assert ct.scales.shape == (6, math.ceil(100 / gs))
    assert float(ct.scales[0, 0]) == pytest.approx(float(w[0, :gs].abs().max()) / 7, rel=1e-6)
    assert int(ct.values.abs().max()) <= 7
    err = (decompress(ct) - w).abs()
    assert bool((err <= ct.scales.repeat_interleave(gs, 1)[:, :100] / 2 + 1e-7).all())
    assert torch.equal(unpack_mask(ct.bitmask, 100), w != 0)
    packed = pack_int4(ct.values)
    assert packed.numel() == (ct.nnz + 1) // 2 and torch.equal(unpack_int4(packed, ct.nnz), ct.values)
    i8 = compress_tensor(w, "int8", group_size=gs)
    assert ct.nbytes() == i8.nbytes() - ct.nnz + (ct.nnz + 1) // 2
    assert compress_tensor(sparse_matrix(2, 300, 0.5), "int4").group_size == 128


def test_int4_codes_out_of_range_are_rejected():
    ct = compress_tensor(sparse_matrix(3, 40, 0.5), "int4", group_size=8)
    ct.values[0] = 9
    with pytest.raises(CompressedFormatError, match=r"\[-7, 7\]"):
        validate(ct, "w")
