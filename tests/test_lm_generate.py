"""Streaming generation (rmaat.lm.generate): the byte-at-a-time decoder equals the full forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmaat.errors import ConfigError, DataError
from rmaat.lm.generate import StreamingDecoder, generate, stream
from rmaat.lm.model import CausalLM, build_lm

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SIZES = dict(d_model=16, n_heads=2, n_layers=2, d_ff=24, segment_len=5, n_mem=2, dropout=0.0, max_len=32)
TOL = 1e-10  # float64; measured ~1e-15


def streaming_r(t: int) -> float:
    """A T-free stand-in for the streaming r_t (no table read)."""
    return 0.8 ** t + 0.1


def paper_rf(total_segments: int, variant: str) -> np.ndarray:
    """A stand-in for the paper RF(t, T): falling, sums to 1 over the T segments."""
    w = np.linspace(2.0, 1.0, total_segments)
    return w / w.sum()


def make(preset: str, **overrides) -> CausalLM:
    torch.manual_seed(0)
    loader = overrides.pop("retention_loader", paper_rf)
    return build_lm(preset, retention_loader=loader, **{**SIZES, **overrides}).double().eval()


def random_bytes(b: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, length), generator=torch.Generator().manual_seed(seed))


def teacher_force(decoder: StreamingDecoder, idx: torch.Tensor) -> torch.Tensor:
    """idx (B, L) -> per-byte logits (B, L, V) from the decoder."""
    return torch.stack([decoder.feed(idx[:, i]) for i in range(idx.shape[1])], dim=1)


# (preset, LMConfig overrides, factor for the decoder given the forward's T)
CASES = {
    "rmaat-streaming": ("rmaat", dict(retention="streaming",
                                      retention_loader=lambda T, v: np.array([streaming_r(t) for t in range(T)])),
                        lambda T: streaming_r),
    "rmaat-paper": ("rmaat", {}, lambda T: (lambda t: float(paper_rf(T, "paper")[t]))),
    "rmaat-paper-post": ("rmaat", dict(norm="post"), lambda T: (lambda t: float(paper_rf(T, "paper")[t]))),
    "rmaat-consolidate": ("rmaat", dict(memory_rule="consolidate"),
                          lambda T: (lambda t: float(paper_rf(T, "paper")[t]))),
    "rmt": ("rmt", {}, lambda T: None),
    "rmt-post": ("rmt", dict(norm="post"), lambda T: None),
    "rlt": ("rlt", {}, lambda T: None),
    "transformer": ("transformer", {}, lambda T: None),
}


@pytest.mark.parametrize("length", [13, 10])  # a partial last segment, and exactly 2 full ones
@pytest.mark.parametrize("case", list(CASES))
def test_teacher_forced_logits_and_memory_equal_forward(case, length):
    preset, overrides, factor_of = CASES[case]
    model = make(preset, **overrides)
    idx = random_bytes(2, length)                                        # batch 2: rows stay apart
    ref_logits, _ = model(idx)
    ref_states = model.last_memory_states
    n_segments = -(-length // SIZES["segment_len"])
    decoder = StreamingDecoder(model, factor_of(n_segments), batch=2)
    logits = teacher_force(decoder, idx)
    assert logits.shape == ref_logits.shape
    assert (logits - ref_logits).abs().max().item() <= TOL
    decoder.end_segment()                                                # the forward closes a partial last segment
    if preset == "transformer":
        assert decoder.memory_states == [] and ref_states == []
        return
    assert len(decoder.memory_states) == len(ref_states) == n_segments + 1
    for ours, ref in zip(decoder.memory_states, ref_states):
        assert (ours - ref).abs().max().item() <= TOL
    assert decoder.end_segment() is decoder.memory                       # empty segment: nothing to close


def test_decoder_ignores_training_mode_and_dropout():
    model = make("rmaat", dropout=0.3, retention="streaming",
                 retention_loader=lambda T, v: np.array([streaming_r(t) for t in range(T)]))
    idx = random_bytes(1, 12, seed=1)
    ref, _ = model.eval()(idx)
    model.train()
    logits = teacher_force(StreamingDecoder(model, streaming_r), idx)
    assert model.training                                                # mode left alone
    assert (logits - ref).abs().max().item() <= TOL


def test_transformer_sliding_restart_equals_forward_of_window():
    model = make("transformer", max_len=8)
    idx = random_bytes(1, 11, seed=2)
    decoder = StreamingDecoder(model)
    logits = teacher_force(decoder, idx)
    full, _ = model(idx[:, :8])
    assert (logits[:, :8] - full).abs().max().item() <= TOL
    # byte 8 arrives with 8 in the context: keep bytes 4..7, so bytes 8, 9, 10 see the window from 4
    window, _ = model(idx[:, 4:11])
    assert (logits[:, 8:] - window[:, 4:]).abs().max().item() <= TOL


def test_long_stream_carries_memory_over_many_segments():
    model = make("rmt")
    out = generate(model, b"hello", 40, seed=3)                          # 45 bytes: 9 segments
    assert len(out) == 40
    decoder = StreamingDecoder(model)
    teacher_force(decoder, torch.tensor([list(b"hello" + out)]))
    assert decoder.segment == 9 and len(decoder.memory_states) == 10


def test_generation_deterministic_given_seed_and_differs_across_seeds():
    model = make("rmaat", retention="streaming")
    a = generate(model, b"abc", 20, seed=7, factor=streaming_r)
    assert a == generate(model, b"abc", 20, seed=7, factor=streaming_r)
    assert a != generate(model, b"abc", 20, seed=8, factor=streaming_r)
    assert b"".join(stream(model, b"abc", 20, seed=7, factor=streaming_r)) == a
    assert generate(model, b"abc", 0, factor=streaming_r) == b""


@pytest.mark.parametrize("preset", ["rlt", "transformer"])
def test_greedy_is_argmax_of_teacher_forced_logits_and_top_k_1_is_greedy(preset):
    model = make(preset)
    prompt = b"xyz"
    out = generate(model, prompt, 12, temperature=0.0)
    logits, _ = model(torch.tensor([list(prompt + out)]))               # (1, 15, V)
    expected = logits[0, len(prompt) - 1:-1].argmax(dim=-1).tolist()
    assert list(out) == expected
    assert generate(model, prompt, 12, temperature=0.7, top_k=1, seed=5) == out


def test_generate_leaves_global_rng_alone():
    model = make("rmt")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    generate(model, b"q", 10, seed=1)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("kwargs", [
    dict(max_bytes=-1), dict(max_bytes=2.0), dict(temperature=-0.1), dict(temperature=float("nan")),
    dict(top_k=0), dict(top_k=1.5),
])
def test_bad_arguments_raise_config_error(kwargs):
    model = make("rmt")
    args = {"max_bytes": 3, **kwargs}
    max_bytes = args.pop("max_bytes")
    with pytest.raises(ConfigError):
        generate(model, b"ab", max_bytes, **args)
    with pytest.raises(ConfigError):                                     # checked at the call, not at next()
        stream(model, b"ab", max_bytes, **args)


def test_factor_rules_and_bad_inputs():
    with pytest.raises(ConfigError, match="needs factor"):
        StreamingDecoder(make("rmaat"))                                  # paper RF needs T: caller must say
    with pytest.raises(ConfigError, match="no memory"):
        StreamingDecoder(make("transformer"), factor=lambda t: 1.0)
    with pytest.raises(ConfigError, match="non-negative"):
        generate(make("rmaat"), b"0123456789", 1, factor=lambda t: -1.0)
    with pytest.raises(DataError):
        generate(make("rmt"), b"", 3)
    with pytest.raises(DataError):
        StreamingDecoder(make("rmt")).feed(256)
