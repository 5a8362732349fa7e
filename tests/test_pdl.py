"""Programmatic dependent launch (kernels/gpu/pdl.py): the launch-mode switch, its library flag, the decoder's
option; on a Hopper GPU, a decode with it gives the tokens of one without (the kernels wait for their inputs)."""

import pytest
import torch

from sparselm.kernels.gpu import pdl
from sparselm.runtime import StaticDecoder, sparsify
from test_runtime_decode import tiny_llama


def test_programmatic_launch_nests_and_restores():
    assert not pdl.enabled()
    with pdl.programmatic_launch():
        assert pdl.enabled() and pdl.triton_options() == {"PDL": True, "launch_pdl": True}
        with pdl.programmatic_launch(False):
            assert not pdl.enabled() and pdl.triton_options() == {"PDL": False}
        assert pdl.enabled()
    assert not pdl.enabled()
    with pytest.raises(RuntimeError), pdl.programmatic_launch():
        raise RuntimeError("a failed capture")
    assert not pdl.enabled()  # restored on the way out of an exception too


class _Setter:
    def __init__(self):
        self.calls = []

    def __call__(self, on):
        self.calls.append(on)


class _Lib:  # a loaded CUDA library's stand-in: sl_set_pdl records its calls
    def __init__(self):
        self.sl_set_pdl = _Setter()


def test_sync_sets_a_library_flag_only_when_it_changes():
    lib, other = _Lib(), object()  # `other`: a library without the flag (bmma, tmma) is left alone
    pdl.sync(lib)
    pdl.sync(lib)
    with pdl.programmatic_launch():
        pdl.sync(lib)
        pdl.sync(lib)
        pdl.sync(other)
    pdl.sync(lib)
    assert lib.sl_set_pdl.calls == [0, 1, 0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_not_supported_off_the_gpu_and_the_decoder_says_so():
    assert not pdl.supported("cpu") and not pdl.supported()
    model = tiny_llama(2)
    assert StaticDecoder(model, max_len=16).pdl is False
    with pytest.raises(ValueError, match="pdl"):
        StaticDecoder(model, max_len=16, pdl=True)


_CFGS = {  # each CUDA C++ batch-1 kernel launched through sl_launch, forced into the decode step
    "grp8cu": dict(kernel="grp8cu", vec=4, num_warps=4, persist=1, smem=True),
    "d4cu": dict(kernel="d4cu", num_warps=4, persist=1, smem=True),
    "nmcu": dict(kernel="nmcu", num_warps=4, persist=1, x16=True),
    # the pair table (2 steps per round: its first round loaded during x's staging)
    "nmcu-pairs": dict(kernel="nmcu", num_warps=4, persist=1, pairs=True, unroll=2),
}


@pytest.mark.skipif(not (torch.cuda.is_available() and pdl.supported()), reason="needs a Hopper GPU")
@pytest.mark.parametrize("kernel", [None, *_CFGS])
def test_decode_with_pdl_gives_the_tokens_without(kernel):
    from sparselm.kernels.gpu.ops import SpmmConfig
    from sparselm.runtime import gpu_backend
    from sparselm.runtime.sparse_linear import SparseLinear
    from sparselm.sparsity.masks import select_nm

    model = tiny_llama(2).to("cuda", torch.float16)
    if kernel is not None:
        if kernel.startswith("nmcu"):  # the N:M kernel needs an N:M mask
            with torch.no_grad():
                for name, w in model.named_parameters():
                    if "proj" in name:
                        w.mul_(~select_nm(w.abs().float(), 1, 4))
        sparsify(model)
    on = StaticDecoder(model, max_len=32, pdl=True)
    off = StaticDecoder(model, max_len=32, pdl=False)
    forced = []
    if kernel is not None:  # every batch-1 product of both decoders through this kernel (its own table rows)
        cfg = SpmmConfig(**_CFGS[kernel])
        for m in [*on.qkv, *on.gate_up, *model.modules()]:
            if isinstance(m, SparseLinear):
                key = gpu_backend.key_of(m.out_features, m.in_features, 1, gpu_backend.values_name(m), torch.float16)
                forced.append(key)
                gpu_backend.record(key, "sparse", cfg)
    try:
        ids = torch.randint(0, 71, (1, 4), device="cuda")
        t1, l1 = on.generate(ids, 16, return_logits=True)
        t2, l2 = off.generate(ids, 16, return_logits=True)
    finally:
        for key in forced:
            gpu_backend._TABLE.pop(key, None)
    assert on.pdl and not off.pdl
    assert torch.equal(t1, t2)
    torch.testing.assert_close(l1, l2, rtol=0, atol=0)  # same kernels, same inputs: bit for bit
