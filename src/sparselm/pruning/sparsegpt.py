"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning as layer-wise sparse regression.

For a layer with weights W (N, K) and calibration inputs X (K, T), minimise ‖WX − ŴX‖²_F subject to the mask.
With H = 2XXᵀ (the Hessian of that objective) and its inverse's upper Cholesky factor U (Hinv = UᵀU), columns are
processed left to right. Pruning weight w_iq and compensating the not-yet-processed columns is the OBS step
    δ_i = −(w_iq / [Hinv]_qq) · Hinv_{q,:}          (Eq. 3 of the paper, restricted to columns ≥ q)
and the saliency of removing w_iq is w_iq² / [Hinv]_qq², used to choose the mask. Columns go in blocks of B
(default 128): inside a block the updates are applied column by column; to the right of the block they are
applied lazily as one matmul (Err1 @ Hinv[block, rest]), which is what makes the method fast on GPUs.
Masks are chosen adaptively per block (the default "block" scope), or up front per row / per layer, or N:M.
"""
from __future__ import annotations

import contextlib

import torch

from sparselm.models.weights import set_weight_2d, weight_2d
from sparselm.pruning.base import Pruner, register_pruner
from sparselm.sparsity.masks import select_unstructured


@contextlib.contextmanager
def _serial_on_cpu(device: torch.device):
    """The column loop issues thousands of tiny ops; on a CPU, OpenMP hand-offs cost more than the ops themselves
    (measured: a 576x1536 layer took 4.2 s with 2 threads on a busy 2-core machine, 0.38 s with 1)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SparseGPTPruner(Pruner):
    #: dampening λ = percdamp · mean(diag H): 1% keeps H positive definite without biasing the solution much.
    percdamp: float = 0.01
    #: columns per lazy-update block; 128 balances matmul efficiency and the in-block Python loop.
    blocksize: int = 128

    def __init__(self, layer):
        super().__init__(layer)
        self.H = torch.zeros(self.cols, self.cols, dtype=torch.float32, device=weight_2d(layer).device)

    def add_batch(self, inp: torch.Tensor) -> None:
        x = self._tokens(inp)  # (T, K)
        t = x.shape[0]
        # running mean of 2·x xᵀ over tokens, so H does not grow with the number of calibration samples
        self.H *= self.nsamples / (self.nsamples + t)
        self.nsamples += t
        x = x * (2.0 / self.nsamples) ** 0.5
        self.H += x.t() @ x

    def _upper_inverse_factor(self) -> torch.Tensor:
        """Upper Cholesky factor of H⁻¹ after dampening, raising the damping if H is numerically singular."""
        H = self.H
        dead = torch.diag(H) == 0  # inputs that never fire: any weight value is optimal, pin the diagonal
        H[dead, dead] = 1.0
        damp = self.percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.cols, device=H.device)
        for _ in range(6):
            Hd = H.clone()
            Hd[diag, diag] += damp
            L, info = torch.linalg.cholesky_ex(Hd)
            if int(info) == 0:
                Hinv = torch.cholesky_inverse(L)
                U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
                if int(info) == 0:
                    return U
            damp = damp * 10 if damp > 0 else torch.tensor(1e-6, device=H.device)
        raise RuntimeError("SparseGPT: Hessian is not positive definite even after heavy dampening")

    @torch.no_grad()
    def prune(self, sparsity=None, n=None, m=None, keep_zeros=True, scope=None):
        with _serial_on_cpu(self.H.device):
            return self._prune(sparsity, n, m, keep_zeros, scope)

    def _prune(self, sparsity, n, m, keep_zeros, scope):
        scope = scope or "block"
        W = weight_2d(self.layer).detach().float().clone()  # (N, K) fp32 math even for bf16/fp16 models
        was_zero = W == 0 if keep_zeros else torch.zeros_like(W, dtype=torch.bool)
        Hinv = self._upper_inverse_factor()  # (K, K) upper triangular
        rows, cols = W.shape
        B = self.blocksize
        if m is not None and B % m:
            B = max(m, (B // m) * m)
        fixed = None
        if n is None and scope in ("row", "layer"):  # mask chosen once from the global saliency
            score = W ** 2 / torch.diag(Hinv).reshape(1, -1) ** 2
            fixed = select_unstructured(score.masked_fill(was_zero, -1.0), sparsity or 0.0, scope) | was_zero
        mask = torch.zeros_like(W, dtype=torch.bool)

        for i1 in range(0, cols, B):
            i2 = min(i1 + B, cols)
            W1 = W[:, i1:i2].clone()  # (N, B)
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            d1 = torch.diag(Hinv1)
            if fixed is not None:
                mask1 = fixed[:, i1:i2].clone()
            elif n is None:  # adaptive: exactly floor(s·N·B) lowest saliencies of this block
                score = (W1 ** 2 / d1.reshape(1, -1) ** 2).masked_fill(was_zero[:, i1:i2], -1.0)
                mask1 = select_unstructured(score, sparsity or 0.0, "layer") | was_zero[:, i1:i2]
            else:
                mask1 = torch.zeros_like(W1, dtype=torch.bool)

            for i in range(i2 - i1):
                w = W1[:, i]
                d = d1[i]
                if n is not None and i % m == 0:  # N:M: pick the group's mask from the current (updated) weights
                    g = W1[:, i:i + m] ** 2 / d1[i:i + m].reshape(1, -1) ** 2
                    g = g.masked_fill(was_zero[:, i1 + i:i1 + i + m], -1.0)
                    drop = torch.topk(g, m - n, dim=1, largest=False).indices
                    mask1[:, i:i + m].scatter_(1, drop, True)
                q = w.masked_fill(mask1[:, i], 0.0)
                Q1[:, i] = q
                err = (w - q) / d  # (N,)
                W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
                Err1[:, i] = err

            W[:, i1:i2] = Q1
            mask[:, i1:i2] = mask1
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # lazy batched OBS update of everything right of the block

        W[mask] = 0.0  # exact zeros even where rounding left a -0.0 or tiny residue
        set_weight_2d(self.layer, W)
        return mask

    def free(self) -> None:
        self.H = None  # type: ignore[assignment]


register_pruner("sparsegpt", SparseGPTPruner)
