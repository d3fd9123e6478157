"""RMAAT model: presets, shapes, segment recurrence, retention scaling, masking, config errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from rmaat.encoder.config import PRESETS, ModelConfig, get_preset
from rmaat.encoder.model import RMAATModel, build_model
from rmaat.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


RECURRENT = ("rmt", "rlt", "rmaat")
SMALL = dict(vocab_size=20, n_classes=3, d_model=16, n_heads=2, n_layers=2, d_ff=32, seq_len=32)
RF4 = np.array([0.4, 0.3, 0.2, 0.1])


def small(preset: str, n_segments: int = 4, rf=None, **overrides) -> RMAATModel:
    """A tiny model; recurrent presets get 4 segments of 8 tokens."""
    kw = {**SMALL, **overrides}
    if get_preset(preset).recurrent:
        kw.setdefault("n_segments", n_segments)
    if get_preset(preset).use_retention and kw.get("use_retention", True) and rf is None:
        rf = RF4 if kw.get("n_segments", n_segments) == 4 else np.full(kw["n_segments"], 1 / kw["n_segments"])
    torch.manual_seed(0)
    return build_model(preset, retention_factors=rf, **kw).eval()


def batch(b: int = 3, length: int = 32, vocab: int = 20, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (b, length), generator=g)


class FinalOutputs:
    """Forward hook on the model's final norm: collects each attention call's output (B, N, D)."""

    def __init__(self, model: RMAATModel):
        self.outputs: list[torch.Tensor] = []
        self.handle = model.final_norm.register_forward_hook(lambda _m, _i, out: self.outputs.append(out.detach()))


# ---------------------------------------------------------------------- shapes and presets
@pytest.mark.parametrize("preset", list(PRESETS))
def test_forward_shapes_every_preset(preset):
    model = small(preset)
    logits = model(batch())
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    if preset in RECURRENT:
        assert len(model.last_memory_states) == 5
        assert all(s.shape == (3, 1, 16) for s in model.last_memory_states)
    else:
        assert model.last_memory_states == []


@pytest.mark.parametrize("preset", list(PRESETS))
def test_dual_encoder_shapes_and_shared_encoder(preset):
    model = small(preset, dual_encoder=True)
    a, b = batch(seed=1), batch(seed=2)
    logits = model(a, None, b, None)
    assert logits.shape == (3, 3)
    # both documents go through the same encoder and meet only in the head
    u, _ = model.encode(a)
    v, _ = model.encode(b)
    assert torch.allclose(logits, model.classify(u, v), atol=1e-6)
    assert model.head[0].in_features == 4 * 16
    if preset in RECURRENT:
        assert len(model.last_memory_states_2) == 5
    with pytest.raises(DataError, match="input_ids_2"):
        model(a)
    with pytest.raises(DataError, match="dual encoder"):
        small(preset)(a, None, b, None)


def test_presets_mechanisms():
    expected = {
        "transformer": ("softmax", False, False, "bptt"),
        "rmt": ("softmax", True, False, "bptt"),
        "rlt": ("linear", True, False, "bptt"),
        "at": ("astro", False, False, "bptt"),
        "rmaat": ("astro", True, True, "amrb"),
    }
    for name, (attn, rec, ret, bp) in expected.items():
        cfg = PRESETS[name]
        assert (cfg.attention, cfg.recurrent, cfg.use_retention, cfg.backprop) == (attn, rec, ret, bp), name
    assert PRESETS["rlt"].astro_use_astro is False
    # same sizes everywhere
    sizes = {(c.d_model, c.n_heads, c.n_layers, c.d_ff, c.seq_len, c.n_mem) for c in PRESETS.values()}
    assert len(sizes) == 1


def test_parameter_counts_comparable():
    counts = {p: small(p).num_parameters(exclude_positional=True) for p in PRESETS}
    lo, hi = min(counts.values()), max(counts.values())
    assert hi / lo < 1.03, counts
    # the span-dependent tables are what differs: L rows for non-recurrent, L/T + M for recurrent
    full = {p: small(p).num_parameters() for p in PRESETS}
    assert full["at"] > full["rmaat"] and full["transformer"] > full["rmt"]
    sin = {p: small(p, positions="sinusoidal").num_parameters() for p in ("transformer", "rmt", "rlt")}
    assert max(sin.values()) / min(sin.values()) < 1.03, sin


# ---------------------------------------------------------------------- recurrence and retention
def test_retention_factors_scale_the_stored_memory():
    model = small("rmaat")
    hook = FinalOutputs(model)
    model(batch())
    states = model.last_memory_states
    assert len(hook.outputs) == 4  # one attention pass per segment
    assert torch.equal(states[0], model.mem_init.detach().expand(3, -1, -1))
    for t in range(4):
        raw = hook.outputs[t][:, :1]  # prepend: memory at position 0; mem'_{t+1}
        assert torch.allclose(states[t + 1], float(RF4[t]) * raw, rtol=1e-6, atol=0), t
        assert not torch.allclose(states[t + 1], raw)
    assert torch.allclose(model.retention_factors.double(), torch.from_numpy(RF4))
    assert "retention_factors" in model.state_dict()


def test_retention_factors_change_the_output_and_no_retention_stores_raw_memory():
    x = batch()
    with_rf = small("rmaat")(x)
    ones = small("rmaat", rf=np.ones(4))(x)
    assert not torch.allclose(with_rf, ones, atol=1e-4)
    model = small("rmaat", use_retention=False)
    hook = FinalOutputs(model)
    model(x)
    for t in range(4):
        assert torch.equal(model.last_memory_states[t + 1], hook.outputs[t][:, :1])
    # RF = 1 is the same computation as no retention
    assert torch.allclose(ones, model(x), atol=1e-6)


def test_memory_carries_information_across_segments():
    for preset in RECURRENT:
        model = small(preset)
        x = batch()
        y = x.clone()
        y[:, :8] = (y[:, :8] + 1) % 20  # change only the first segment
        assert not torch.allclose(model(x), model(y), atol=1e-5), preset
        # the state after segment 1 cannot depend on segment 2's tokens; the one after segment 2 does
        model(x)
        before = [s.clone() for s in model.last_memory_states]
        z = x.clone()
        z[:, 8:16] = (z[:, 8:16] + 1) % 20
        model(z)
        after = model.last_memory_states
        assert torch.equal(before[1], after[1]) and not torch.equal(before[2], after[2]), preset


def test_append_placement_reads_memory_at_the_end():
    model = small("rmaat", mem_placement="append", n_mem=2)
    hook = FinalOutputs(model)
    model(batch())
    for t in range(4):
        assert torch.allclose(model.last_memory_states[t + 1], float(RF4[t]) * hook.outputs[t][:, -2:], rtol=1e-6)


# ---------------------------------------------------------------------- masking and padding
VARIANTS = [
    ("transformer", {}), ("at", {}), ("rmt", {}), ("rlt", {}), ("rmaat", {}),
    ("rmaat", {"readout": "mean"}), ("rmaat", {"mem_placement": "append"}), ("rmaat", {"norm": "pre"}),
    ("rmaat", {"positions": "sinusoidal", "n_mem": 3}), ("rmaat", {"embedding": "pixel"}),
    ("rmaat", {"dual_encoder": True}),
]


@pytest.mark.parametrize("preset,overrides", VARIANTS)
def test_padding_at_the_end_changes_nothing(preset, overrides):
    model = small(preset, **overrides)
    lengths = torch.tensor([32, 13, 5])  # full; ends inside segment 2; segments 2-4 fully padded
    x = batch()
    mask = torch.arange(32)[None, :] < lengths[:, None]
    other = torch.where(mask, x, batch(seed=9))  # different ids in the padded positions
    extra = {} if not overrides.get("dual_encoder") else {"input_ids_2": x, "attention_mask_2": mask}
    extra_o = {} if not overrides.get("dual_encoder") else {"input_ids_2": other, "attention_mask_2": mask}
    a = model(x, mask, **extra)
    b = model(other, mask, **extra_o)
    assert torch.allclose(a, b, atol=1e-6)
    # an input shorter than seq_len is right-padded: the same as padding it by hand
    short = model(x[1:2, :13], **({} if not extra else {"input_ids_2": x[1:2, :13]}))
    assert torch.allclose(short, a[1:2], atol=1e-6)
    if preset in RECURRENT:
        states = model.last_memory_states  # of the 13-token input: segments 3 and 4 are empty
        assert torch.equal(states[2], states[4]) and not torch.equal(states[1], states[2])


def test_empty_segments_are_processed_when_skip_is_off():
    model = small("rmaat", skip_empty_segments=False)
    x = batch()
    mask = torch.ones(3, 32, dtype=torch.bool)
    mask[0, 8:] = False
    model(x, mask)
    states = model.last_memory_states
    assert not torch.equal(states[1][0], states[2][0])


# ---------------------------------------------------------------------- numerics
@pytest.mark.parametrize("preset", list(PRESETS))
def test_bf16_cpu_autocast_has_no_nan(preset):
    model = small(preset, dual_encoder=preset == "rmaat")
    x = batch()
    mask = torch.ones(3, 32, dtype=torch.bool)
    mask[2, 3:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x, mask, x if preset == "rmaat" else None, mask if preset == "rmaat" else None)
    assert torch.isfinite(logits.float()).all()


def test_build_model_reads_the_retention_table(monkeypatch):
    import retention

    calls = []

    def fake(total_segments):
        calls.append(total_segments)
        return np.full(total_segments, 1.0 / total_segments)

    monkeypatch.setattr(retention, "load_retention_factors", fake, raising=False)
    model = build_model("rmaat", **SMALL, n_segments=8)
    assert calls == [8]
    assert torch.allclose(model.retention_factors, torch.full((8,), 1 / 8))
    build_model("rmt", **SMALL, n_segments=8)  # no retention: the table is not read
    assert calls == [8]


# ---------------------------------------------------------------------- configuration errors
@pytest.mark.parametrize("overrides,match", [
    (dict(seq_len=30, n_segments=4), "segment length would be 7.50"),
    (dict(d_model=18, n_heads=4), "n_heads=4 does not divide d_model=18"),
    (dict(attention="flash"), "attention='flash'"),
    (dict(mem_placement="middle"), "mem_placement"),
    (dict(readout="cls"), "readout"),
    (dict(dropout=1.0), "dropout"),
    (dict(n_mem=0), "n_mem"),
    (dict(recurrent=False), "needs recurrent=True"),
    (dict(backprop="truncated"), "backprop"),
    (dict(colour="blue"), "unknown model option"),
])
def test_bad_configs_raise_config_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_model("rmaat", retention_factors=RF4, **{**SMALL, "n_segments": 4, **overrides})


def test_other_user_errors():
    with pytest.raises(ConfigError, match="unknown preset"):
        build_model("gpt")
    with pytest.raises(ConfigError, match="needs recurrent=True"):
        build_model("transformer", **SMALL, n_segments=4)
    with pytest.raises(ConfigError, match="load_retention_factors\\(4\\)"):
        build_model("rmaat", retention_factors=np.ones(3), **SMALL, n_segments=4)
    with pytest.raises(ConfigError, match="use_retention=False"):
        build_model("rmt", retention_factors=RF4, **SMALL, n_segments=4)
    with pytest.raises(ConfigError, match="non-negative"):
        build_model("rmaat", retention_factors=[0.5, np.nan, 0.2, 0.1], **SMALL, n_segments=4)
    with pytest.raises(ConfigError, match="amrb"):
        small("transformer")(batch(), backprop="amrb")
    model = small("rmaat")
    with pytest.raises(DataError, match="exceeds seq_len=32"):
        model(batch(length=40))
    with pytest.raises(DataError, match="vocab_size=20"):
        model(batch() + 20)
    with pytest.raises(DataError, match="attention_mask shape"):
        model(batch(), torch.ones(3, 31, dtype=torch.bool))


def test_config_round_trip_and_messages_are_one_line():
    """A config survives to_dict/from_dict, and an impossible replace() raises a one-line
    ConfigError that names the problem and the fix (not some other error, and not silently)."""
    cfg = get_preset("rmaat").replace(seq_len=64, n_segments=8)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.segment_len == 8
    with pytest.raises(ConfigError, match=r"seq_len=65 is not divisible into n_segments=8") as err:
        cfg.replace(seq_len=65)
    assert "\n" not in str(err.value) and "e.g. 72" in str(err.value)


def test_config_module_does_not_import_torch():
    code = "import sys, rmaat, rmaat.encoder.config; assert 'torch' not in sys.modules; rmaat.encoder.config.get_preset('rmaat')"
    subprocess.run([sys.executable, "-c", code], check=True)
