"""The RNG state AMRB's replay needs to re-run a segment exactly (both model families).

A replayed segment must draw the same dropout masks as its first forward pass, or its gradients
would differ from BPTT's: the forward pass records the state before each segment with
:func:`rng_state`, and the replay restores it with :func:`set_rng_state` (inside
`torch.random.fork_rng`, so the RNG ends where the forward pass left it).
"""

from __future__ import annotations

import torch

RngState = tuple[torch.Tensor, "torch.Tensor | None"]


def rng_state(device: torch.device) -> RngState:
    """(CPU state, the CUDA state of ``device`` or None)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: RngState, device: torch.device) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
