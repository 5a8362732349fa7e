"""decode_attention (kernels/gpu/fused.py) against SDPA over the masked static cache, one new token, 7B heads.

    PYTHONPATH=src python benchmarks/decode_attention.py --out $OUT/decode_attention.json

Per (keys visited, kernel config): the max |diff| to SDPA in float32 on the valid keys, then the time per call in
a CUDA graph of 64 calls, each on its own layer's cache (32 x 2.5 MB: past the L2, as in a decode step), beside
SDPA (bool mask, as the decode loop called it) timed the same way. Then, at the same positions and default split,
rope_qkv + decode_attention (two launches, the decode loop before the fusion) against decode_attention_qkv (one
launch, rotary and cache write inside), from the same raw q/k/v projection; "equal" says whether the two gave the
same bits (output and caches).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F


def rope_fusion_rows(pos: int, p: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor) -> list[dict]:
    """The rotary + cache write as its own launch (rope_qkv) before decode_attention, and fused into it; kc / vc
    (layers, B, H, max_len, hd), one layer's cache per call as above."""
    from sparselm.kernels.gpu.fused import decode_attention, decode_attention_qkv, rope_qkv
    from sparselm.kernels.gpu.timing import time_graph

    layers, b, h, _, hd = kc.shape
    qkv = torch.randn(b, 1, 3 * h * hd, device=kc.device, dtype=kc.dtype)  # MHA: H = HKV
    ang = pos * (1.0 / 10000 ** (torch.arange(0, hd, 2, device=kc.device).float() / hd))
    emb = torch.cat([ang, ang])[None]
    cos, sin = emb.cos().to(kc.dtype), emb.sin().to(kc.dtype)

    def two(i):
        q = rope_qkv(qkv, cos, sin, p, h, h, hd, kc[i], vc[i])
        return decode_attention(q, kc[i], vc[i], p)

    def one(i):
        return decode_attention_qkv(qkv, cos, sin, p, h, h, hd, kc[i], vc[i])

    k1, v1 = kc[0].clone(), vc[0].clone()
    ref = decode_attention(rope_qkv(qkv, cos, sin, p, h, h, hd, k1, v1), k1, v1, p)
    k2, v2 = kc[0].clone(), vc[0].clone()
    equal = bool(torch.equal(decode_attention_qkv(qkv, cos, sin, p, h, h, hd, k2, v2), ref)
                 and torch.equal(k1, k2) and torch.equal(v1, v2))
    out = []
    for name, fn in (("rope_qkv + decode_attention", two), ("decode_attention_qkv (fused)", one)):
        us = time_graph([lambda i=i, fn=fn: fn(i % layers) for i in range(64)]) * 1e3
        out.append({"pos": pos, "kernel": name, "us": round(us, 2), "equal": equal})
        print(f"pos {pos:4d} {name:30s} {us:6.2f} us  equal {equal}", flush=True)
    return out


def qkv_split_rows(positions: list[int], kc: torch.Tensor, vc: torch.Tensor) -> list[dict]:
    """decode_attention_qkv per key split at each position: the data behind decode.attention_buckets."""
    from sparselm.kernels.gpu.fused import decode_attention_qkv
    from sparselm.kernels.gpu.timing import time_graph

    layers, b, h, ml, hd = kc.shape
    qkv = torch.randn(b, 1, 3 * h * hd, device=kc.device, dtype=kc.dtype)
    ang = torch.arange(ml, device=kc.device).float()[:, None] * (
        1.0 / 10000 ** (torch.arange(0, hd, 2, device=kc.device).float() / hd))[None]
    cos, sin = torch.cat([ang, ang], -1).cos().to(kc.dtype), torch.cat([ang, ang], -1).sin().to(kc.dtype)
    out = []
    for pos in positions:
        p = torch.tensor([pos], device="cuda")
        ref = decode_attention_qkv(qkv, cos, sin, p, h, h, hd, kc[0].clone(), vc[0].clone())
        for bn, nw in ((None, None), (32, 4), (64, 8), (16, 2), (16, 4), (128, 8)):
            got = decode_attention_qkv(qkv, cos, sin, p, h, h, hd, kc[0].clone(), vc[0].clone(), bn, nw)
            err = (got.float() - ref.float()).abs().max().item()
            us = time_graph([lambda i=i: decode_attention_qkv(qkv, cos, sin, p, h, h, hd, kc[i % layers],
                                                              vc[i % layers], bn, nw) for i in range(64)]) * 1e3
            out.append({"pos": pos, "kernel": f"decode_attention_qkv n{bn or 'auto'} w{nw or 'auto'}",
                        "us": round(us, 2), "maxdiff_vs_default": err})
            print(f"pos {pos:4d} qkv n{bn or 'auto'} w{nw or 'auto'} {us:6.2f} us  diff {err:.1e}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-len", type=int, default=152)
    ap.add_argument("--positions", default="24,100", help="positions timed (the last cache position is added)")
    ap.add_argument("--qkv-splits", action="store_true", help="only decode_attention_qkv (the decode step's kernel) "
                    "per key split (block_n, num_warps) of runtime/decode.py's attention buckets, at each position")
    args = ap.parse_args()
    from sparselm.kernels.gpu.fused import decode_attention
    from sparselm.kernels.gpu.timing import time_graph

    b, h, hd, layers, ml = 1, 32, 128, 32, args.max_len
    kc = torch.randn(layers, b, h, ml, hd, device="cuda", dtype=torch.float16)
    vc = torch.randn_like(kc)
    q = torch.randn(b, h, 1, hd, device="cuda", dtype=torch.float16)
    rows = []
    positions = sorted({int(x) for x in args.positions.split(",") if x} | {ml - 1})
    if args.qkv_splits:
        rows = qkv_split_rows(positions, kc, vc)
        positions = []
    for pos in positions:
        p = torch.tensor([pos], device="cuda")
        ref = F.scaled_dot_product_attention(q.float(), kc[0, :, :, :pos + 1].float(), vc[0, :, :, :pos + 1].float())
        ref = ref.transpose(1, 2).reshape(b, 1, h * hd)
        mask = torch.arange(ml, device="cuda")[None, :] <= p[:, None]
        sdpa_us = time_graph([lambda i=i: F.scaled_dot_product_attention(q, kc[i % layers], vc[i % layers],
                                                                        attn_mask=mask) for i in range(64)]) * 1e3
        rows.append({"pos": pos, "kernel": "sdpa (bool mask, whole cache)", "us": round(sdpa_us, 2)})
        print(f"pos {pos:4d} sdpa {sdpa_us:6.2f} us", flush=True)
        for bn, nw in ((None, 4), (16, 2), (32, 2), (64, 4), (64, 8), (128, 8), (256, 8), (256, 16)):  # None: default
            err = (decode_attention(q, kc[0], vc[0], p, bn, nw).float() - ref).abs().max().item()
            us = time_graph([lambda i=i: decode_attention(q, kc[i % layers], vc[i % layers], p, bn, nw)
                             for i in range(64)]) * 1e3
            rows.append({"pos": pos, "kernel": f"decode_attention n{bn or 'auto'} w{nw}", "us": round(us, 2),
                         "maxdiff": err})
            print(f"pos {pos:4d} n{bn or 'auto'} w{nw} {us:6.2f} us  maxdiff {err:.1e}", flush=True)
        rows += rope_fusion_rows(pos, p, kc, vc)
    res = {"device": torch.cuda.get_device_name(), "batch": b, "heads": h, "head_dim": hd, "max_len": ml,
           "dtype": "float16", "rows": rows, "command": " ".join(["python"] + sys.argv),
           "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
