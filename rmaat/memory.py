"""How the memory carried into the next segment is formed: the memory-update rules.

After segment t (0-based) the encoder's outputs at the memory positions are the *write*
mem'_{t+1} (B, M, D). The memory carried into segment t+1 is

    paper        mem_{t+1} = RF(t, T) * mem'_{t+1}
                 The paper's rule (SPEC §3) and the default of the `rmaat` presets.
    overwrite    mem_{t+1} = mem'_{t+1}
                 RMT's rule: the full-scale write replaces the memory. What `use_retention=False`
                 (classifier) or `retention="none"` (byte LM) has always meant.
    consolidate  mem_{t+1} = (1 - rho_t) mem_t + rho_t mem'_{t+1},   rho_t = RF(t, T) / sum_{s<=t} RF(s, T)
                 BEYOND THE PAPER: an RF-weighted running mean of the writes. mem_{t+1} is the
                 mean of mem'_1..mem'_{t+1} weighted by RF(0..t, T), so the memory stays at the
                 writes' (unit, post-norm) scale at every boundary while the RF profile decides
                 how much each segment counts (earlier segments weigh more as the LTP trace
                 saturates). It is one reading of the retention factors' "total capacity
                 normalised to 1", not the paper's text. rho_0 = 1: mem_1 (the learned initial
                 memory) is replaced by the first write, as in the other rules.

Every rule is linear in (mem_t, mem'_{t+1}) with weights fixed by the factors, so AMRB's replay
stays exact (the weights are recomputed identically in the replayed segment).

Both model families (the classifier `rmaat.encoder.model.RMAATModel` and the byte LM `rmaat.lm.model.CausalLM`),
the streaming evaluation and streaming generation call :func:`carried_memory`; the factors are a
tensor (classifier), a float64 array (LM) or a running sum (generation, which does not know T).
"""

from __future__ import annotations

from typing import Any

import torch

from rmaat.errors import ConfigError

MEMORY_RULES = ("paper", "overwrite", "consolidate")
#: rules that read the retention factors (and so need a retention table or variant)
RULES_WITH_FACTORS = ("paper", "consolidate")


def resolve_memory_rule(rule: str | None, uses_factors: bool, *, factor_option: str) -> str:
    """The rule in use: ``rule``, or when None the one the factor switch has always meant
    (``paper`` with factors, ``overwrite`` without). Contradictions give a one-line ConfigError
    naming ``factor_option`` (the config key that turns the factors on or off)."""
    if rule is None:
        return "paper" if uses_factors else "overwrite"
    if rule not in MEMORY_RULES:
        raise ConfigError(f"memory_rule={rule!r} is not one of {', '.join(MEMORY_RULES)}")
    if rule in RULES_WITH_FACTORS and not uses_factors:
        raise ConfigError(f"memory_rule={rule!r} reads the retention factors but {factor_option} turns "
                          f"them off; drop that setting or use memory_rule='overwrite'")
    if rule == "overwrite" and uses_factors:
        raise ConfigError(f"memory_rule='overwrite' uses no retention factors; also set {factor_option} "
                          f"(or choose memory_rule='paper' or 'consolidate')")
    return rule


def consolidation_rate(factor: Any, earlier_sum: Any) -> Any:
    """rho_t = RF(t) / (RF(0) + ... + RF(t)); 1 where no factor so far is positive (nothing to keep)."""
    total = factor + earlier_sum
    if isinstance(total, torch.Tensor):
        return torch.where(total > 0, factor / torch.where(total > 0, total, 1.0), 1.0)
    return factor / total if total > 0 else 1.0


def carried_memory(rule: str, mem: torch.Tensor, write: torch.Tensor, factor: Any = None,
                   earlier_sum: Any = 0.0) -> torch.Tensor:
    """mem_{t+1} (B, M, D) from mem_t (B, M, D) and the write mem'_{t+1} (B, M, D).

    ``factor`` is RF(t, T) (a float or a 0-dim tensor; unused by ``overwrite``) and
    ``earlier_sum`` the sum of the factors of segments 0..t-1 (``consolidate`` only).
    The result never aliases ``write``: a view would keep the whole segment's output alive
    between segments, and AMRB would then store one segment-sized tensor per segment.
    """
    if rule == "overwrite":
        return write.clone()
    if rule == "paper":
        return write * factor
    if rule == "consolidate":
        rho = consolidation_rate(factor, earlier_sum)
        return (1.0 - rho) * mem.to(write.dtype) + rho * write
    raise ConfigError(f"memory_rule={rule!r} is not one of {', '.join(MEMORY_RULES)}")
