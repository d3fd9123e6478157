"""``torch.compile`` for RMAAT models (``pipeline train --compile``, ``pipeline bench throughput --compile``).

What is compiled: every encoder block (attention + FFN + LayerNorms + residuals + dropout),
each in place with ``nn.Module.compile`` so that parameter names and checkpoints do not change.
Everything around the blocks -- embedding lookup, memory concatenation, retention scaling,
read-out, the per-segment loop and AMRB's ``torch.utils.checkpoint`` -- stays eager: it is a few
cheap ops per segment, and it is where the per-segment Python state lives.

Why not ``segment_step`` as a whole (measured; docs/benchmarks.md "torch.compile" has the
figures):

* its segment index ``t`` is a Python int, guarded as a constant (``retention_factors[t]``):
  segment 1 recompiles, after which Dynamo marks ``t`` dynamic -- two compiles of the whole
  segment, forward and backward (first BPTT step 130 s on the loaded 2-core machine);
* the blocks are identical modules, so one compiled block graph serves every layer and every
  segment, and its compile takes seconds, not minutes.

Why ``fallback_random``: Inductor's own CPU dropout draws every element with a scalar Philox
call (``normalized_rand_cpu``), which made a compiled block's dropout about ten times slower
than eager ``bernoulli_`` and the compiled step slower than the eager one. With
``fallback_random=True`` dropout masks come from ATen's generator, exactly as in eager mode:
compiled and eager steps draw the same masks from the same seed, and AMRB's replays (which
restore the RNG state) stay bit-compatible with the first forward pass.

Why ``realize_opcount_threshold`` / ``realize_reads_threshold`` = 1: by default Inductor inlines
cheap pointwise producers into every consumer. In the attention backward that recomputed
``clamp_min(sum phi(k)) ** alpha`` (a (B, H, d_head) tensor) once per token and per q/k/v branch
of the fused projection's gradient (a three-way ``select_backward`` blend): one fused kernel took
~5 ms of a ~17 ms block step. Materialising every intermediate that is read more than once
removes the recomputation: block forward + backward 1.17x faster than eager instead of 0.97x
(CPU time, interleaved; docs/benchmarks.md).

The positional scan's custom ``autograd.Function`` (``_SymmetricDecay``) and ``_Phi`` cause no
graph breaks with torch >= 2.13 (``torch._dynamo.explain`` reports one graph, zero breaks): Dynamo
traces them, ``functools.lru_cache``-wrapped constant builders included (it warns and traces the
wrapped function; the constants are recomputed inside the graph, a few c x c exponentials).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

#: Inductor options applied to every compiled block (see the module docstring).
INDUCTOR_OPTIONS: dict[str, Any] = {"fallback_random": True, "realize_opcount_threshold": 1,
                                    "realize_reads_threshold": 1}


def compile_options(mode: str | None = None) -> dict[str, Any]:
    """Inductor options for ``mode`` (None = default) merged with ``INDUCTOR_OPTIONS``.

    torch.compile refuses ``mode`` and ``options`` together, so the mode is expanded into the
    options it stands for."""
    options: dict[str, Any] = {}
    if mode is not None and mode != "default":
        from torch._inductor import list_mode_options

        options.update(list_mode_options(mode))
    options.update(INDUCTOR_OPTIONS)
    return options


def compile_model(model: nn.Module, *, mode: str | None = None, dynamic: bool | None = None) -> nn.Module:
    """Compile each encoder block of ``model`` in place and return ``model``.

    Compilation is lazy: the first forward pass of each distinct input shape / grad mode /
    train-eval state pays it. Numerics equal eager mode's up to float reassociation
    (tests/test_compile.py); dropout masks are the same. Idempotent.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"compile_model expects an RMAATModel (with .blocks), got {type(model).__name__}")
    # the scan's lru_cache'd constant builders are pure functions of their arguments, so Dynamo
    # tracing through the cache (it warns once per site) recomputes the same constants
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
    options = compile_options(mode)
    for block in blocks:
        if getattr(block, "_compiled_call_impl", None) is None:
            block.compile(dynamic=dynamic, options=options)
    return model


def is_compiled(model: nn.Module) -> bool:
    """Whether ``compile_model`` has been applied to ``model``."""
    blocks = getattr(model, "blocks", None) or []
    return bool(blocks) and all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)


def reset() -> None:
    """Drop every compiled graph of this process (tests; a benchmark between configurations)."""
    torch._dynamo.reset()
