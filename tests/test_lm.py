"""Causal byte LM (rmaat.lm.model) and its AMRB with a loss on every segment (rmaat.lm.amrb)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rmaat.errors import ConfigError, DataError
from rmaat.lm.amrb import lm_forward_backward
from rmaat.lm.config import lm_config
from rmaat.lm.model import IGNORE_INDEX, CausalLM, bits_per_byte, build_lm

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SIZES = dict(d_model=16, n_heads=2, n_layers=2, d_ff=24, segment_len=4, n_mem=2, dropout=0.1, max_len=64)


def falling_rf(total_segments: int, variant: str) -> np.ndarray:
    """Deterministic stand-in for the retention table (no file read): falling, sums to 1."""
    w = np.linspace(2.0, 1.0, total_segments)
    return w / w.sum()


def make(preset: str, **overrides) -> CausalLM:
    torch.manual_seed(0)
    return build_lm(preset, retention_loader=falling_rf, **{**SIZES, **overrides}).double().train()


def make_data(length: int, b: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, 256, (b, length + 1), generator=g)
    targets = seq[:, 1:].clone()
    targets[1, length // 2] = IGNORE_INDEX  # an ignored target counts nowhere
    return seq[:, :-1], targets


def gradients(model, idx, targets, backprop, impl="replay", seed=123):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout masks in every mode
    loss = lm_forward_backward(model, idx, targets, backprop, impl)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    after = torch.rand(1).item()  # the RNG must be left where BPTT leaves it
    return loss, grads, after, [s.clone() for s in model.last_memory_states]


GRAD_RTOL = 1e-10  # float64; measured max relative error ~1e-15


def assert_same(ref, other):
    loss_r, grads_r, rng_r, states_r = ref
    loss_o, grads_o, rng_o, states_o = other
    assert loss_o.item() == pytest.approx(loss_r.item(), rel=1e-13, abs=0)
    assert set(grads_o) == set(grads_r)
    for name, g in grads_r.items():
        err = (grads_o[name] - g).norm() / g.norm().clamp_min(1e-300)
        assert err <= GRAD_RTOL, (name, err.item())
    assert rng_o == rng_r
    assert len(states_o) == len(states_r)
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(states_r, states_o))


# T = 1 (one partial segment), 2 (two full ones), 8 (seven full + a partial last one)
@pytest.mark.parametrize("length,n_segments", [(3, 1), (8, 2), (31, 8)])
@pytest.mark.parametrize("preset", ["rmaat", "rmt"])
def test_amrb_gradients_equal_bptt(preset, length, n_segments):
    model = make(preset)
    idx, targets = make_data(length)
    ref = gradients(model, idx, targets, "bptt")
    assert len(ref[3]) == n_segments + 1
    assert len(ref[1]) == sum(1 for _ in model.parameters())  # every parameter learns, mem_init too
    assert ref[1]["mem_init"].norm() > 0
    assert_same(ref, gradients(model, idx, targets, "amrb", "replay"))
    assert_same(ref, gradients(model, idx, targets, "amrb", "checkpoint"))


@pytest.mark.parametrize("length", [8, 31])
def test_amrb_gradients_equal_bptt_consolidate(length):
    model = make("rmaat", memory_rule="consolidate")
    idx, targets = make_data(length)
    ref = gradients(model, idx, targets, "bptt")
    assert_same(ref, gradients(model, idx, targets, "amrb", "replay"))
    assert_same(ref, gradients(model, idx, targets, "amrb", "checkpoint"))


def test_amrb_rlt_and_streaming_rf():
    for preset, extra in (("rlt", {}), ("rmaat", {"retention": "streaming"})):
        model = make(preset, **extra)
        idx, targets = make_data(13)
        ref = gradients(model, idx, targets, "bptt")
        assert_same(ref, gradients(model, idx, targets, "amrb", "replay"))


def test_dropout_is_on_so_the_rng_matters():
    """Guard for the AMRB tests: another dropout draw changes the loss."""
    model = make("rmaat")
    idx, targets = make_data(13)
    assert gradients(model, idx, targets, "bptt", seed=1)[0] != gradients(model, idx, targets, "bptt", seed=2)[0]


def test_amrb_keeps_only_memory_states():
    """Peak live tensor bytes of a step: AMRB holds about one segment, BPTT all eight."""
    from rmaat.benchmarks.memory_bench import live_tensor_counter

    def peak(backprop, impl="replay"):
        torch.manual_seed(0)
        model = build_lm("rmaat", retention_loader=falling_rf, **{**SIZES, "segment_len": 16})
        idx, targets = make_data(8 * 16, b=4)
        lm_forward_backward(model, idx, targets, backprop, impl)  # warm-up; gradients allocated
        counter = live_tensor_counter()
        with counter:
            lm_forward_backward(model, idx, targets, backprop, impl)
        return counter.peak

    bptt, replay, ckpt = peak("bptt"), peak("amrb"), peak("amrb", "checkpoint")
    assert bptt / replay > 3.0 and bptt / ckpt > 3.0, (bptt, replay, ckpt)


# ---------------------------------------------------------------------------------- causality
def changed_positions(model, idx, j) -> torch.Tensor:
    """(L,) bool: which positions' logits change when byte j changes (dropout off)."""
    model.eval()
    with torch.no_grad():
        a, _ = model(idx)
        idx2 = idx.clone()
        idx2[:, j] = (idx2[:, j] + 97) % 256
        b, _ = model(idx2)
    return ((a - b).abs().amax(dim=(0, 2)) > 1e-12)


@pytest.mark.parametrize("preset", ["rmaat", "rmt", "rlt", "transformer"])
def test_no_prediction_sees_its_future(preset):
    model = make(preset)
    idx, _ = make_data(14, b=2)  # segments [0,4) [4,8) [8,12) [12,14)
    for j in (0, 3, 4, 5, 8, 12, 13):  # segment starts and ends, inside, the partial last one
        changed = changed_positions(model, idx, j)
        assert not changed[:j].any(), (preset, j, changed.nonzero().flatten().tolist())
        assert changed[j:].all()  # byte j reaches every later prediction (through memory too)


def test_memory_carries_across_segments_and_rf_scales_it():
    model = make("rmaat")
    idx, _ = make_data(12, b=2)
    assert changed_positions(model, idx, 1)[4:].all()  # segment 0's bytes reach segments 1 and 2
    model.retention_loader = lambda T, variant: np.array([0.0] + [1.0] * (T - 1))
    model._rf_cache.clear()
    changed = changed_positions(model, idx, 1)  # mem_2 = 0 * mem'_2: segment 0 is forgotten
    assert changed[1:4].all() and not changed[4:].any()
    with torch.no_grad():
        model(idx)
    assert model.last_memory_states[1].abs().max() == 0


# ---------------------------------------------------------------------------------- loss, shapes
@pytest.mark.parametrize("preset,length", [("rmaat", 1), ("rmaat", 6), ("rmt", 9), ("transformer", 7)])
def test_odd_lengths_loss_is_mean_over_predicted_bytes(preset, length):
    model = make(preset).eval()
    idx, targets = make_data(length)
    with torch.no_grad():
        logits, loss = model(idx, targets)
    assert logits.shape == (3, length, 256)
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    n_seg = -(-length // SIZES["segment_len"]) if preset != "transformer" else 0
    assert len(model.last_memory_states) == (n_seg + 1 if n_seg else 0)
    assert bits_per_byte(loss) == pytest.approx(loss.item() / math.log(2))


def test_table_retention_factors():
    from retention import load_retention_factors

    paper = build_lm("rmaat", **SIZES)
    assert torch.equal(paper.retention_factors(8), torch.from_numpy(load_retention_factors(8)))
    streaming = build_lm("rmaat", retention="streaming", **SIZES)
    assert torch.allclose(streaming.retention_factors(8)[:2], streaming.retention_factors(2))  # T-free
    assert build_lm("rmt", **SIZES).retention_factors(8) is None


def test_presets_same_sizes_and_user_errors():
    counts = {p: build_lm(p, **SIZES).num_parameters() for p in ("rmaat", "rmt", "rlt", "transformer")}
    # rmaat has the astrocyte projection W_R; the transformer a longer position table, no mem_init
    assert counts["rmt"] == counts["rlt"]
    with pytest.raises(ConfigError):
        lm_config("gpt")
    with pytest.raises(ConfigError):
        lm_config("transformer", retention="paper")
    transformer = make("transformer")
    with pytest.raises(DataError):
        transformer(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ConfigError):
        lm_forward_backward(transformer, *make_data(5), backprop="amrb")
    with pytest.raises(DataError):
        make("rmt")(torch.full((1, 3), 256))


# ---------------------------------------------------------------------------------- training smoke
@pytest.mark.parametrize("preset,backprop", [("rmaat", "amrb"), ("transformer", "bptt")])
def test_tiny_model_overfits_a_repeated_string(preset, backprop):
    torch.manual_seed(0)
    model = build_lm(preset, retention_loader=falling_rf, d_model=32, n_heads=2, n_layers=2, d_ff=64,
                     segment_len=16, n_mem=2, dropout=0.0, max_len=64)
    data = torch.tensor(list(b"the cat sat on a mat. " * 3))[None, :49].repeat(2, 1)
    idx, targets = data[:, :-1], data[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(50):
        opt.zero_grad(set_to_none=True)
        loss = lm_forward_backward(model, idx, targets, backprop)
        opt.step()
    assert loss.item() < 0.25 * math.log(256), loss.item()
