"""AMRB: exact gradients (== BPTT) with dropout on, both implementations, memory, train_step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmaat.benchmarks.memory_bench import live_tensor_counter, summarise
from rmaat.encoder.amrb import forward_backward, train_step
from rmaat.encoder.model import build_model
from rmaat.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


SIZES = dict(vocab_size=16, n_classes=3, d_model=16, n_heads=2, n_layers=2, d_ff=24, dropout=0.1, n_mem=2)


def make(preset: str, n_segments: int, seg_len: int = 4, **overrides):
    torch.manual_seed(0)
    rf = np.linspace(2.0, 1.0, n_segments) / np.linspace(2.0, 1.0, n_segments).sum()
    kw = {**SIZES, "seq_len": n_segments * seg_len, "n_segments": n_segments, **overrides}
    uses_rf = kw.get("use_retention", preset == "rmaat")
    return build_model(preset, retention_factors=rf if uses_rf else None, **kw).double().train()


def make_batch(model, b: int = 3, seed: int = 0) -> dict:
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    length = cfg.seq_len
    data = {"input_ids": torch.randint(0, cfg.vocab_size, (b, length), generator=g),
            "attention_mask": torch.ones(b, length, dtype=torch.bool),
            "label": torch.randint(0, cfg.n_classes, (b,), generator=g)}
    data["attention_mask"][1, length // 2 + 1:] = False  # padding across segment boundaries
    data["attention_mask"][2, 3:] = False
    if cfg.dual_encoder:
        data["input_ids_2"] = torch.randint(0, cfg.vocab_size, (b, length), generator=g)
        data["attention_mask_2"] = torch.ones(b, length, dtype=torch.bool)
        data["attention_mask_2"][0, 2:] = False
    return data


def gradients(model, data, backprop, impl="checkpoint", seed=123):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout masks in every mode (the RNG is the only source)
    loss, _ = forward_backward(model, data, backprop, amrb_impl=impl)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    after = torch.rand(1).item()  # the RNG must be left where BPTT leaves it
    return loss, grads, after, [s.clone() for s in model.last_memory_states]


def assert_same_gradients(ref, other):
    loss_r, grads_r, rng_r, states_r = ref
    loss_o, grads_o, rng_o, states_o = other
    assert loss_o.item() == pytest.approx(loss_r.item(), rel=1e-12, abs=0)
    assert set(grads_o) == set(grads_r)
    for name, g in grads_r.items():
        err = (grads_o[name] - g).norm() / g.norm().clamp_min(1e-300)
        assert err <= 1e-6, (name, err.item())
    assert rng_o == rng_r
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-14) for a, b in zip(states_r, states_o))


@pytest.mark.parametrize("n_segments", [1, 2, 16])
def test_amrb_gradients_equal_bptt_rmaat(n_segments):
    model = make("rmaat", n_segments)
    data = make_batch(model)
    ref = gradients(model, data, "bptt")
    assert "mem_init" in ref[1] and ref[1]["mem_init"].norm() > 0  # the initial memory learns
    assert len(ref[1]) == sum(1 for _ in model.parameters())  # every parameter has a gradient
    assert_same_gradients(ref, gradients(model, data, "amrb", "checkpoint"))
    assert_same_gradients(ref, gradients(model, data, "amrb", "replay"))


@pytest.mark.parametrize("preset", ["rmt", "rlt"])
def test_amrb_gradients_equal_bptt_baselines(preset):
    model = make(preset, 4)
    data = make_batch(model)
    ref = gradients(model, data, "bptt")
    assert_same_gradients(ref, gradients(model, data, "amrb", "checkpoint"))
    assert_same_gradients(ref, gradients(model, data, "amrb", "replay"))


@pytest.mark.parametrize("overrides", [{"dual_encoder": True}, {"readout": "mean", "mem_placement": "append"},
                                       {"norm": "pre", "skip_empty_segments": False}])
def test_amrb_gradients_equal_bptt_variants(overrides):
    model = make("rmaat", 3, **overrides)
    data = make_batch(model)
    ref = gradients(model, data, "bptt")
    assert_same_gradients(ref, gradients(model, data, "amrb", "checkpoint"))
    assert_same_gradients(ref, gradients(model, data, "amrb", "replay"))


@pytest.mark.parametrize("overrides", [{"memory_rule": "consolidate"},
                                       {"memory_rule": "overwrite", "use_retention": False},
                                       {"memory_rule": "consolidate", "skip_empty_segments": False, "norm": "pre"}])
def test_amrb_gradients_equal_bptt_memory_rules(overrides):
    model = make("rmaat", 5, **overrides)
    data = make_batch(model)
    ref = gradients(model, data, "bptt")
    assert len(ref[1]) == sum(1 for _ in model.parameters())
    assert_same_gradients(ref, gradients(model, data, "amrb", "checkpoint"))
    assert_same_gradients(ref, gradients(model, data, "amrb", "replay"))


def test_dropout_is_on_so_the_rng_matters():
    """Guard for the tests above: with another dropout draw the loss and gradients differ."""
    model = make("rmaat", 4)
    data = make_batch(model)
    a = gradients(model, data, "bptt", seed=1)
    b = gradients(model, data, "bptt", seed=2)
    assert a[0].item() != b[0].item()
    model.eval()
    c = gradients(model, data, "amrb", seed=1)
    d = gradients(model, data, "bptt", seed=2)
    assert c[0].item() == d[0].item()  # without dropout the draw does not matter


def test_amrb_keeps_only_memory_states():
    """Peak live tensor memory of a step: AMRB holds about one segment, BPTT all of them."""
    def peak(backprop, impl="checkpoint"):
        torch.manual_seed(0)
        model = build_model("rmaat", retention_factors=np.full(6, 1 / 6), vocab_size=16, d_model=16, n_heads=2,
                            n_layers=1, d_ff=32, seq_len=6 * 16, n_segments=6, dropout=0.1)
        data = {"input_ids": torch.randint(0, 16, (4, 96)), "label": torch.zeros(4, dtype=torch.long)}
        forward_backward(model, data, backprop, amrb_impl=impl)  # warm-up; gradients allocated
        counter = live_tensor_counter()
        with counter:
            forward_backward(model, data, backprop, amrb_impl=impl)
        return counter.peak

    bptt, amrb, replay = peak("bptt"), peak("amrb"), peak("amrb", "replay")
    assert bptt / amrb > 3.5 and bptt / replay > 3.5, (bptt, amrb, replay)


def test_train_step_updates_and_reports():
    model = make("rmaat", 4).float()
    data = make_batch(model)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_step(model, data, opt, "amrb", max_grad_norm=1.0)
    assert set(out) == {"loss", "accuracy", "grad_norm"} and np.isfinite(out["loss"]) and out["grad_norm"] > 0
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    out = train_step(model, data, opt, "amrb", amrb_impl="replay", autocast_dtype=torch.bfloat16)
    assert np.isfinite(out["loss"]) and 0.0 <= out["accuracy"] <= 1.0
    out = train_step(model, data, opt)  # the preset's default: rmaat trains with AMRB
    assert np.isfinite(out["loss"])


def test_user_errors():
    transformer = build_model("transformer", vocab_size=16, d_model=16, n_heads=2, seq_len=16)
    data = {"input_ids": torch.randint(0, 16, (2, 16)), "label": torch.zeros(2, dtype=torch.long)}
    with pytest.raises(ConfigError, match="recurrent"):
        forward_backward(transformer, data, "amrb")
    model = make("rmt", 2)
    with pytest.raises(ConfigError, match="amrb_impl"):
        forward_backward(model, make_batch(model), "amrb", amrb_impl="magic")
    with pytest.raises(DataError, match="label"):
        forward_backward(model, {"input_ids": data["input_ids"][:, :8]}, "bptt")


def test_summarise_ratios_and_flatness():
    rows = [{"segments": t, "mode": m, "peak_bytes": p, "step_seconds": s, "step_cpu_seconds": s,
             "method": "live_tensor_bytes"}
            for t, m, p, s in [(4, "bptt", 400, 1.0), (4, "amrb", 100, 1.3), (16, "bptt", 1600, 4.0),
                               (16, "amrb", 105, 5.6)]]
    out = summarise(rows)
    at16 = out["per_segments"][1]
    assert at16["memory_ratio"] == pytest.approx(1600 / 105) and at16["time_ratio"] == pytest.approx(1.4)
    assert at16["limit"] == 8.5
    assert out["amrb_flatness"] == pytest.approx(1.05)
    assert out["goals"] == {"memory_ratio_at_16_ge_8": True, "amrb_flat_within_10pct": True,
                            "time_ratio_le_1.35": False}
