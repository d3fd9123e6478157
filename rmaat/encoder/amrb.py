"""Training steps with BPTT or AMRB (Astrocytic Memory Replay Backpropagation, SPEC §4).

Two implementations of AMRB compute the same gradients as full backpropagation through time:

* ``amrb_impl="checkpoint"`` (the default): `RMAATModel.forward(..., backprop="amrb")` wraps each
  segment in non-reentrant `torch.utils.checkpoint` with `preserve_rng_state=True`. The
  embedding lookup is inside the checkpointed function, so the forward pass keeps only token
  ids, masks and the memory states mem_1..mem_{T+1}; when the backward pass reaches segment t,
  PyTorch re-runs it from mem_t with the RNG state it had (same dropout masks), back-propagates
  dL/dmem_{t+1} (through the RF scaling) and frees the segment again.
* ``amrb_impl="replay"``: the same algorithm written out (`replay_backward`): a forward pass
  under `no_grad` that stores mem_t and the RNG state of every segment, the loss on the last
  read-out, then an explicit reverse loop that re-runs segment t with autograd and calls
  `torch.autograd.backward` with the incoming memory gradient. It is the cross-check of the
  library mechanism. Measured with `rmaat.benchmarks.memory_bench` (CPU, live-tensor bytes), it
  is not leaner: 13.9 vs 14.0 MiB at 4 to 32 segments, against 48 to 378 MiB for BPTT. Its
  forward pass runs under `no_grad` and has no saved-tensor hooks, which made it 0-15% faster
  per step on a loaded 2-core CPU (within the noise on some runs); but it calls the segments
  directly rather than through `model.forward`, so a DistributedDataParallel wrapper never sees
  the forward pass. The library mechanism therefore stays the default, as SPEC §4 prefers.

Both re-run every segment but the last: the backward pass starts at the last segment, so its
activations are kept from the forward pass (no saving in peak memory would come from dropping
them). The extra cost of AMRB is thus (T - 1) / T forward passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from rmaat.errors import ConfigError, DataError
from rmaat.replay import rng_state, set_rng_state

AMRB_IMPLS = ("checkpoint", "replay")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_INPUT_KEYS = ("input_ids", "attention_mask", "input_ids_2", "attention_mask_2")


def default_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in float32 (logits may come out of bf16 autocast)."""
    return F.cross_entropy(logits.float(), labels)


def replay_backward(model, input_ids: torch.Tensor, labels: torch.Tensor,
                    attention_mask: torch.Tensor | None = None, input_ids_2: torch.Tensor | None = None,
                    attention_mask_2: torch.Tensor | None = None, *,
                    loss_fn: LossFn = default_loss) -> tuple[torch.Tensor, torch.Tensor]:
    """AMRB written out: forward without activations, backward by replaying segments in reverse.

    Accumulates gradients into the parameters (like `loss.backward()`) and returns the detached
    (loss, logits). Needs a recurrent model.
    """
    cfg = model.cfg
    if not cfg.recurrent:
        raise ConfigError("AMRB replays segments and needs a recurrent model (rmt, rlt, rmaat)")
    docs = [(input_ids, attention_mask)]
    if cfg.dual_encoder:
        if input_ids_2 is None:
            raise DataError("this is a dual-encoder model: pass the second document as input_ids_2")
        docs.append((input_ids_2, attention_mask_2))
    device = model.mem_init.device

    # forward: keep mem_t, the read-out carrier and the RNG state before every segment. The
    # last segment of the last document runs with autograd right away: the backward pass
    # starts there, so replaying it would only repeat its forward at no saving in peak memory.
    runs = []
    for d, (ids, mask) in enumerate(docs):
        ids, mask = model.prepare_inputs(ids, mask)
        segments = model.split_segments(ids, mask)
        mem, read = model.initial_state(ids.shape[0])
        mems, reads, rngs = [mem.detach()], [read], []
        keep_last = d == len(docs) - 1
        n_replayed = len(segments) - 1 if keep_last else len(segments)
        with torch.no_grad():
            for t in range(n_replayed):
                rngs.append(rng_state(device))
                mem, read = model.segment_step(t, *segments[t], mem, read)
                mems.append(mem)
                reads.append(read)
        if keep_last:
            mem_in = mems[-1].detach().requires_grad_()
            read_in = reads[-1].detach().requires_grad_()
            mem_out, feature = model.segment_step(n_replayed, *segments[-1], mem_in, read_in)
            mems.append(mem_out.detach())
            start = (mem_in, read_in)
        else:
            feature = reads[-1].detach().requires_grad_()
            start = (None, feature)
        runs.append((segments[:n_replayed], mems, reads, rngs, feature, start))
    model.last_memory_states = [m.detach() for m in runs[0][1]]
    if cfg.dual_encoder:
        model.last_memory_states_2 = [m.detach() for m in runs[1][1]]

    # the loss sits on the last read-out only
    logits = model.classify(*[run[4] for run in runs])
    loss = loss_fn(logits, labels)
    loss.backward()

    # backward: for t = T..1 re-run segment t from mem_t with its RNG state, push the incoming
    # gradients through it, keep dL/dmem_t, drop the segment's activations
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # leaves the RNG where the forward pass left it
        for segments, mems, reads, rngs, _, (mem_start, read_start) in runs:
            grad_mem = None if mem_start is None else mem_start.grad
            grad_read = read_start.grad
            for t in reversed(range(len(segments))):
                set_rng_state(rngs[t], device)
                mem_in = mems[t].detach().requires_grad_()
                read_in = reads[t].detach().requires_grad_()
                with torch.enable_grad():
                    mem_out, read_out = model.segment_step(t, *segments[t], mem_in, read_in)
                pairs = [(o, g) for o, g in ((mem_out, grad_mem), (read_out, grad_read)) if g is not None]
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
                grad_mem, grad_read = mem_in.grad, read_in.grad
                del mem_out, read_out, mem_in, read_in
            if grad_mem is not None:  # mem_1 is mem_init broadcast over the batch
                torch.autograd.backward(model.initial_state(grad_mem.shape[0])[0], grad_mem)
    return loss.detach(), logits.detach()


def forward_backward(model, batch: Mapping[str, torch.Tensor], backprop: str | None = None, *,
                     amrb_impl: str = "checkpoint", loss_fn: LossFn = default_loss
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + backward of one batch (Contract 5 keys: input_ids, attention_mask, label, and for
    Retrieval input_ids_2, attention_mask_2); accumulates parameter gradients.

    backprop: "bptt" or "amrb" (None: the model's default). amrb_impl: "checkpoint" (PyTorch's
    non-reentrant checkpointing per segment) or "replay" (the hand-written reverse loop).
    Returns the detached (loss, logits).
    """
    mode = model.resolve_backprop(backprop)
    if amrb_impl not in AMRB_IMPLS:
        raise ConfigError(f"amrb_impl={amrb_impl!r} is not one of {', '.join(AMRB_IMPLS)}")
    if "label" not in batch:
        raise DataError("the batch has no 'label' entry; training needs labels")
    inputs = {k: batch[k] for k in _INPUT_KEYS if batch.get(k) is not None}
    if mode == "amrb" and amrb_impl == "replay":
        return replay_backward(model, labels=batch["label"], loss_fn=loss_fn, **inputs)
    logits = model(**inputs, backprop=mode)
    loss = loss_fn(logits, batch["label"])
    loss.backward()
    return loss.detach(), logits.detach()


def train_step(model, batch: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               backprop: str | None = None, *, amrb_impl: str = "checkpoint", loss_fn: LossFn = default_loss,
               max_grad_norm: float | None = None, autocast_dtype: torch.dtype | None = None
               ) -> dict[str, float]:
    """One optimisation step: zero grads, forward + backward (`forward_backward`), optional
    gradient clipping, `optimizer.step()`. The batch is moved to the model's device.

    autocast_dtype: e.g. torch.bfloat16 to run the forward passes (replays included) under
    `torch.autocast`. Returns {"loss", "accuracy", "grad_norm" (nan when not clipped)}.
    """
    device = next(model.parameters()).device
    batch = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    model.train()
    optimizer.zero_grad(set_to_none=True)
    ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with ctx:
        loss, logits = forward_backward(model, batch, backprop, amrb_impl=amrb_impl, loss_fn=loss_fn)
    grad_norm = float("nan")
    if max_grad_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm))
    optimizer.step()
    accuracy = (logits.argmax(-1) == batch["label"]).float().mean()
    return {"loss": float(loss), "accuracy": float(accuracy), "grad_norm": grad_norm}
