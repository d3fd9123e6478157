"""The astrocyte's distance-dependent coupling: P_ij = exp(-|i - j| * scale), and P @ W in O(N).

P is data-independent, symmetric and Toeplitz, so ``P @ W`` splits into a causal and an
anti-causal exponential scan:

    fwd_i = sum_{j <= i} r^(i-j) w_j,   bwd_i = sum_{j >= i} r^(j-i) w_j,   r = exp(-scale)
    P @ W = fwd + bwd - W          (the diagonal j = i is counted by both scans)

Both are chunked (no Python loop over N): inside a chunk of c tokens a dense c×c decay block
does the work; the states carried between chunks are themselves exponential scans over the
chunk totals with decay r^c, computed by the same chunked scan, so the recursion is
log_c(N) levels deep and costs O(N · c) per channel in all. Every exponent is non-positive
(r^k with k >= 0), so nothing overflows for any scale >= 0 and any N; large scales merely
underflow to exact zeros.

The scans run along the last, contiguous dimension, where every chunk step is one plain
2-D matrix product over all channels at once; ``dim`` selects the sequence dimension of the
public functions (a copy is made when it is not the last one).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

DEFAULT_CHUNK = 32


def decay_matrix(n: int, scale: float, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """The dense N×N decay matrix P_ij = exp(-|i - j| * scale) (the O(N²) reference)."""
    pos = torch.arange(n, device=device, dtype=dtype)
    return torch.exp(-scale * (pos[:, None] - pos[None, :]).abs())


def dense_decay_apply(w: torch.Tensor, scale: float) -> torch.Tensor:
    """P @ w along dim -2 with the dense matrix: O(N²) time and memory; for tests only."""
    return decay_matrix(w.shape[-2], scale, dtype=w.dtype, device=w.device) @ w


@functools.lru_cache(maxsize=64)
def _causal_blocks(chunk: int, scale: float, dtype: torch.dtype,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Constants of one causal chunk step (cached: they depend on no data).

    U (c, c): U_ba = r^(a-b) for a >= b else 0, so that (row vector w) @ U is the causal scan;
    lead (1, c): r^(a+1), the decay from the previous chunk's end to position a.
    """
    pos = torch.arange(chunk, device=device, dtype=dtype)
    lag = pos[None, :] - pos[:, None]                                # (c, c), a - b at [b, a]
    # clamp before exp: the other triangle would otherwise hold positive exponents
    upper = torch.exp(-scale * lag.clamp_min(0)) * (lag >= 0).to(dtype)
    lead = torch.exp(-scale * (pos + 1))[None, :]
    return upper, lead


@functools.lru_cache(maxsize=64)
def _symmetric_blocks(chunk: int, scale: float, dtype: torch.dtype,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Constants of one symmetric chunk step (cached).

    P_c (c, c): the dense block; edge (c, 2): weights of the chunk totals, r^(c-1-b) for the
    causal state at the chunk's end and r^b for the anti-causal state at its start;
    spread (2, c): r^(a+1) and r^(c-a), the decay of the carried states to position a.
    """
    pos = torch.arange(chunk, device=device, dtype=dtype)
    block = decay_matrix(chunk, scale, dtype=dtype, device=device)
    edge = torch.exp(-scale * torch.stack((chunk - 1 - pos, pos), dim=1))
    spread = torch.exp(-scale * torch.stack((pos + 1, chunk - pos)))
    return block, edge, spread


def _chunks(w: torch.Tensor, chunk: int) -> tuple[torch.Tensor, int]:
    """Zero-pad the last dim to a multiple of ``chunk``; return rows (M, chunk) and n_chunks."""
    n = w.shape[-1]
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    if pad:  # zeros contribute nothing to any output
        w = F.pad(w, (0, pad))
    return w.reshape(-1, chunk), n_chunks


def _causal_last(w: torch.Tensor, scale: float, chunk: int) -> torch.Tensor:
    """Causal scan along the last dim: out_i = sum_{j <= i} r^(i-j) w_j."""
    n = w.shape[-1]
    if n <= chunk:
        return w @ _causal_blocks(n, scale, w.dtype, w.device)[0]
    upper, lead = _causal_blocks(chunk, scale, w.dtype, w.device)
    rows, n_chunks = _chunks(w, chunk)                               # (M, c), M = prod(lead dims) * nc
    intra = rows @ upper                                             # (M, c) scan inside each chunk
    # state at every chunk end = causal scan of the chunk totals with decay r^c
    ends = _causal_last(intra[:, -1].reshape(*w.shape[:-1], n_chunks), scale * chunk, chunk)  # (..., nc)
    carry = F.pad(ends[..., :-1], (1, 0)).reshape(-1, 1)            # (M, 1) state entering each chunk
    out = torch.addmm(intra, carry, lead)                            # (M, c)
    return out.reshape(*w.shape[:-1], n_chunks * chunk)[..., :n]


def _decay_last(w: torch.Tensor, scale: float, chunk: int) -> torch.Tensor:
    """P @ w along the last dim (w contiguous), O(N · chunk) per channel.

    Inside each chunk the dense symmetric c×c block of P acts directly. What enters a chunk
    from the left is the causal state at the previous chunk's end (decayed by r^(a+1) to
    position a) and from the right the anti-causal state at the next chunk's start (decayed
    by r^(c-a)); both states are scans over per-chunk totals with decay r^c.
    """
    n = w.shape[-1]
    if n <= chunk:
        return w @ _symmetric_blocks(n, scale, w.dtype, w.device)[0]
    block, edge, spread = _symmetric_blocks(chunk, scale, w.dtype, w.device)
    rows, n_chunks = _chunks(w, chunk)                               # (M, c)
    intra = rows @ block                                             # (M, c)
    totals = (rows @ edge).reshape(*w.shape[:-1], n_chunks, 2)       # (..., nc, 2) end / start states
    ends = _causal_last(totals[..., 0].contiguous(), scale * chunk, chunk)                 # (..., nc)
    starts = _causal_last(totals[..., 1].flip(-1).contiguous(), scale * chunk, chunk).flip(-1)
    carries = torch.stack((F.pad(ends[..., :-1], (1, 0)),           # state entering from the left
                           F.pad(starts[..., 1:], (0, 1))), dim=-1)  # ... and from the right
    out = torch.addmm(intra, carries.reshape(-1, 2), spread)         # (M, c)
    return out.reshape(*w.shape[:-1], n_chunks * chunk)[..., :n]


class _SymmetricDecay(torch.autograd.Function):
    """y = P @ w along the last dim, with dL/dw = P^T dL/dy = P @ dL/dy (P is symmetric).

    The backward is one more scan and nothing is saved for it, since P depends on no data;
    autograd through the scan's ops would save intermediates and run several times as many
    kernels backwards.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, scale: float, chunk: int) -> torch.Tensor:  # type: ignore[override]
        ctx.scale, ctx.chunk = scale, chunk
        return _decay_last(w.contiguous(), scale, chunk)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _decay_last(grad.contiguous(), ctx.scale, ctx.chunk), None, None


def _check(scale: float, chunk: int) -> None:
    if not scale >= 0:
        raise ValueError(f"decay scale must be >= 0, got {scale}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")


def decay_apply(w: torch.Tensor, scale: float, chunk: int = DEFAULT_CHUNK, dim: int = -2) -> torch.Tensor:
    """P @ w along ``dim`` (the sequence dimension, default -2 as in ``(..., N, d)``), in O(N·chunk).

    P_ij = exp(-|i - j| * scale). Differentiable: its backward is the same O(N) scan applied
    to the incoming gradient. ``dim=-1`` avoids a transposing copy.
    """
    _check(scale, chunk)
    moved = w.movedim(dim, -1)
    return _SymmetricDecay.apply(moved, float(scale), int(chunk)).movedim(-1, dim)


def causal_decay_scan(w: torch.Tensor, scale: float, chunk: int = DEFAULT_CHUNK, dim: int = -2) -> torch.Tensor:
    """fwd_i = sum_{j <= i} exp(-scale (i - j)) w_j along ``dim``, in O(N·chunk) (plain autograd)."""
    _check(scale, chunk)
    return _causal_last(w.movedim(dim, -1).contiguous(), float(scale), int(chunk)).movedim(-1, dim)
