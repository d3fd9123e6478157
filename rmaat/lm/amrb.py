"""AMRB for the causal LM: a loss on every segment (SPEC §4 and §8).

The loss of an input is L = sum_t L_t, L_t = the cross-entropy sum of segment t's predicted bytes
divided by the number of predicted bytes of the whole input (rmaat.lm.model.CausalLM.segment_step).
Segment t's parameters and its input memory mem_t influence L through L_t and through mem_{t+1}, so
going backwards

    dL/dmem_t = d(L_t)/dmem_t + (dmem_{t+1}/dmem_t)^T dL/dmem_{t+1}

and the replay of segment t back-propagates the SUM of its own loss gradient and the incoming
memory gradient in one `torch.autograd.backward([L_t, mem_{t+1}], [1, dL/dmem_{t+1}])` call (the
RF scaling is inside the replayed segment). The forward pass keeps only mem_1..mem_{T+1}, the RNG
state before each segment (the same dropout masks on replay, so the gradients equal BPTT's) and
the per-segment loss values; no activations. The last segment runs with autograd in the forward
pass already (the backward pass starts there, replaying it would only repeat its forward).

Two implementations, as for the classifier (rmaat.encoder.amrb):
* ``impl="replay"`` (default): the hand-written loop above.
* ``impl="checkpoint"``: every segment but the last under non-reentrant `torch.utils.checkpoint`
  (preserve_rng_state=True) returning only (L_t, mem_{t+1}); the autograd engine sums the two
  gradient paths itself. Cross-check of the replay.
Both leave the RNG where BPTT leaves it (the replay runs inside `torch.random.fork_rng`).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from rmaat.errors import ConfigError
from rmaat.replay import rng_state, set_rng_state

LM_BACKPROP_MODES = ("bptt", "amrb")
LM_AMRB_IMPLS = ("replay", "checkpoint")


def _segments(model, idx, targets):
    """Checked inputs -> (idx, per-segment [(idx_t, targets_t)], RF or None, n_predicted)."""
    if not model.cfg.recurrent:
        raise ConfigError("AMRB replays segments and needs a recurrent LM preset (rmaat, rmt, rlt)")
    if targets is None:
        raise ConfigError("AMRB back-propagates a loss: pass targets")
    idx = model.check_inputs(idx, targets)
    bounds = model.segment_bounds(idx.shape[1])
    pieces = [(idx[:, s:e], targets[:, s:e]) for s, e in bounds]
    return idx, pieces, model.retention_factors(len(bounds)), model.count_predicted(targets)


def replay_backward(model, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AMRB written out; accumulates parameter gradients like `loss.backward()`.
    idx, targets (B, L) -> the detached loss (mean cross-entropy over predicted bytes)."""
    idx, pieces, rf, n_pred = _segments(model, idx, targets)
    device = model.mem_init.device
    last = len(pieces) - 1
    mems, rngs, losses = [model.initial_memory(idx.shape[0]).detach()], [], []
    with torch.no_grad():                       # forward: mem_t and RNG state only
        for t in range(last):
            rngs.append(rng_state(device))
            _, loss_t, mem = model.segment_step(t, *pieces[t], mems[t], rf, n_pred)
            losses.append(loss_t)
            mems.append(mem)
    mem_in = mems[last].detach().requires_grad_()
    _, loss_t, mem_out = model.segment_step(last, *pieces[last], mem_in, rf, n_pred)
    losses.append(loss_t.detach())
    mems.append(mem_out.detach())
    model.last_memory_states = mems
    loss_t.backward()                           # the last segment: its own loss only
    grad_mem = mem_in.grad                      # dL/dmem_T
    del mem_in, mem_out, loss_t
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # leaves the RNG where the forward pass left it
        for t in reversed(range(last)):
            set_rng_state(rngs[t], device)
            mem_in = mems[t].detach().requires_grad_()
            with torch.enable_grad():
                _, loss_t, mem_out = model.segment_step(t, *pieces[t], mem_in, rf, n_pred)
            # own loss gradient + incoming memory gradient, in one pass through the segment
            torch.autograd.backward([loss_t, mem_out], [torch.ones_like(loss_t), grad_mem])
            grad_mem = mem_in.grad              # dL/dmem_t
            del mem_in, mem_out, loss_t
    torch.autograd.backward(model.initial_memory(idx.shape[0]), grad_mem)  # into mem_init
    return torch.stack(losses).sum()


def checkpoint_backward(model, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AMRB by per-segment `torch.utils.checkpoint`; same contract as `replay_backward`."""
    idx, pieces, rf, n_pred = _segments(model, idx, targets)
    last = len(pieces) - 1

    def step(t, idx_t, targets_t, mem):
        _, loss_t, mem_next = model.segment_step(t, idx_t, targets_t, mem, rf, n_pred)
        return loss_t, mem_next                 # no logits: nothing segment-sized survives

    mem = model.initial_memory(idx.shape[0])
    states, losses = [mem.detach()], []
    for t, (idx_t, targets_t) in enumerate(pieces):
        if t < last:
            loss_t, mem = checkpoint(step, t, idx_t, targets_t, mem, use_reentrant=False,
                                     preserve_rng_state=True)
        else:
            loss_t, mem = step(t, idx_t, targets_t, mem)
        losses.append(loss_t)
        states.append(mem.detach())
    model.last_memory_states = states
    loss = torch.stack(losses).sum()
    loss.backward()
    return loss.detach()


def lm_forward_backward(model, idx: torch.Tensor, targets: torch.Tensor, backprop: str = "bptt",
                        amrb_impl: str = "replay") -> torch.Tensor:
    """Forward + backward of one batch; accumulates gradients; returns the detached loss.
    backprop: "bptt" (full graph) or "amrb"; amrb_impl: "replay" or "checkpoint"."""
    if backprop not in LM_BACKPROP_MODES:
        raise ConfigError(f"backprop={backprop!r} is not one of {', '.join(LM_BACKPROP_MODES)}")
    if amrb_impl not in LM_AMRB_IMPLS:
        raise ConfigError(f"amrb_impl={amrb_impl!r} is not one of {', '.join(LM_AMRB_IMPLS)}")
    if backprop == "amrb":
        run = replay_backward if amrb_impl == "replay" else checkpoint_backward
        return run(model, idx, targets)
    _, loss = model(idx, targets)
    loss.backward()
    return loss.detach()
