"""torch.compile (rmaat.compile): compiled blocks give eager's outputs and gradients, BPTT and AMRB.

The whole file takes ~2.5 min on a loaded 2-core machine (compiles), hence the ``slow`` marks.

Tolerance: float32, relative error of every output / gradient <= 1e-4 of its norm (Inductor
reorders float sums; the dropout masks are the same, see rmaat.compile's fallback_random).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmaat.compile import compile_model, compile_options, is_compiled
from rmaat.encoder.amrb import forward_backward

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
slow = pytest.mark.slow  # compiles: ~10-60 s each on a loaded 2-core machine

RTOL = 1e-4
SIZES = dict(vocab_size=16, n_classes=3, d_model=16, n_heads=2, n_layers=2, d_ff=24, dropout=0.1, n_mem=2,
             dual_encoder=True)
T, SEG = 3, 5  # odd segment length; inputs shorter than seq_len are padded across a boundary


def make(preset: str = "rmaat"):
    from rmaat.encoder.model import build_model

    torch.manual_seed(0)
    rf = np.linspace(2.0, 1.0, T) / np.linspace(2.0, 1.0, T).sum()
    return build_model(preset, retention_factors=rf if preset == "rmaat" else None,
                       seq_len=T * SEG, n_segments=T, **SIZES)


def make_batch(b: int = 3, length: int = T * SEG - 2) -> dict:
    g = torch.Generator().manual_seed(1)
    data = {"input_ids": torch.randint(0, 16, (b, length), generator=g),
            "attention_mask": torch.ones(b, length, dtype=torch.bool),
            "input_ids_2": torch.randint(0, 16, (b, length), generator=g),
            "attention_mask_2": torch.ones(b, length, dtype=torch.bool),
            "label": torch.randint(0, 3, (b,), generator=g)}
    data["attention_mask"][1, 7:] = False
    data["attention_mask_2"][2, 4:] = False
    return data


def run(model, data, backprop):
    model.train().zero_grad(set_to_none=True)
    torch.manual_seed(123)  # the same dropout masks for eager and compiled
    loss, logits = forward_backward(model, data, backprop)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss, logits, grads


def assert_close(ref, other):
    loss_r, logits_r, grads_r = ref
    loss_o, logits_o, grads_o = other
    assert loss_o.item() == pytest.approx(loss_r.item(), rel=RTOL)
    assert ((logits_o - logits_r).norm() / logits_r.norm()).item() <= RTOL
    assert set(grads_o) == set(grads_r)
    for name, g in grads_r.items():
        err = ((grads_o[name] - g).norm() / g.norm().clamp_min(1e-30)).item()
        assert err <= RTOL, (name, err)


@pytest.fixture(scope="module")
def models():
    eager, compiled = make(), make()
    compile_model(compiled)
    return eager, compiled


@slow
@pytest.mark.parametrize("backprop", ["bptt", "amrb"])
def test_compiled_outputs_and_gradients_equal_eager(models, backprop):
    eager, compiled = models
    data = make_batch()
    assert_close(run(eager, data, backprop), run(compiled, data, backprop))


@slow
def test_compiled_amrb_gradients_equal_eager_bptt(models):
    """AMRB's replay through compiled blocks (checkpoint + RNG restore) is still exact BPTT."""
    eager, compiled = models
    data = make_batch()
    assert_close(run(eager, data, "bptt"), run(compiled, data, "amrb"))


@slow
def test_compiled_eval_forward_equals_eager(models):
    eager, compiled = models
    data = {k: v for k, v in make_batch(length=T * SEG).items() if k != "label"}
    with torch.no_grad():
        ref, out = eager.eval()(**data), compiled.eval()(**data)
    assert ((out - ref).norm() / ref.norm()).item() <= RTOL


def test_compile_keeps_parameter_names_and_is_idempotent(models):
    eager, compiled = models
    assert is_compiled(compiled) and not is_compiled(eager)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints load either way
    assert compile_model(compiled) is compiled


def test_compile_options_keep_eager_dropout_and_expand_modes():
    assert compile_options()["fallback_random"] is True
    tuned = compile_options("max-autotune-no-cudagraphs")
    assert tuned["fallback_random"] is True and tuned["max_autotune"] is True


def test_compile_model_rejects_models_without_blocks():
    with pytest.raises(TypeError, match="RMAATModel"):
        compile_model(torch.nn.Linear(2, 2))


@slow
def test_train_compile_is_a_runtime_key_and_compiles_the_trainers_model(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from test_train_loop import PACKAGED_TABLE, TINY, write_listops_max

    from pipelines.cli import cli
    from rmaat.train.config import RUNTIME_KEYS, TrainSection, config_hash, load_task_config

    assert "train.compile" in RUNTIME_KEYS and TrainSection().compile is False
    base = load_task_config("listops")
    base.train.compile = True
    hashed = config_hash(base)
    base.train.compile = False
    assert config_hash(base) == hashed  # how, not what, is trained: a resumed run may switch it

    monkeypatch.setenv("RMAAT_RETENTION_TABLE", PACKAGED_TABLE)
    compiled = []
    import rmaat.compile

    real = rmaat.compile.compile_model
    monkeypatch.setattr(rmaat.compile, "compile_model", lambda m, **kw: compiled.append(m) or real(m, **kw))
    data = write_listops_max(tmp_path / "data", (8, 4, 4))
    result = CliRunner().invoke(cli, ["train", "--task", "listops", "--data-dir", str(data), "--run-dir",
                                      str(tmp_path / "run"), "--seq-len", "16", "--max-steps", "1",
                                      "--batch-size", "4", "--compile", *TINY], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(compiled) == 1 and is_compiled(compiled[0])
    assert "compile: true" in (tmp_path / "run" / "config.yaml").read_text()


@slow
def test_bench_throughput_compile_reports_compile_time_apart():
    from rmaat.benchmarks.throughput_bench import run_throughput_bench, summarise

    rows = run_throughput_bench(["rmaat"], doc_len=2 * SEG, segments=2, d_model=16, n_layers=1, rounds=1,
                                device="cpu", compile=True)
    eager, compiled = rows
    assert (eager["preset"], eager["compiled"], eager["compile_seconds"]) == ("rmaat", False, None)
    assert (compiled["preset"], compiled["compiled"]) == ("rmaat+compiled", True)
    assert compiled["compile_seconds"] > 0 and compiled["peak_bytes"] is None  # CPU: not measured
    ratio = summarise(rows)[1]["compiled_vs_eager"]
    assert ratio == pytest.approx(compiled["tokens_per_s"] / eager["tokens_per_s"])


def test_throughput_summary_compares_each_twin_with_its_own_eager_preset():
    from rmaat.benchmarks.throughput_bench import summarise

    rows = [{"preset": "rmaat", "tokens_per_s": 1.0, "peak_bytes": 2},
            {"preset": "rmt", "tokens_per_s": 2.0, "peak_bytes": 4},
            {"preset": "rmaat+compiled", "compiled": True, "tokens_per_s": 1.5, "peak_bytes": None,
             "compile_seconds": 3.0},
            {"preset": "rmt+compiled", "compiled": True, "tokens_per_s": 2.5, "peak_bytes": None,
             "compile_seconds": 0.5}]
    by = {e["preset"]: e for e in summarise(rows)}
    assert by["rmaat+compiled"]["compiled_vs_eager"] == 1.5 and by["rmt+compiled"]["compiled_vs_eager"] == 1.25
    assert by["rmaat+compiled"]["throughput_vs_rmt"] == 0.75 and by["rmaat+compiled"]["memory_vs_rmt"] is None
    assert by["rmaat"]["compiled_vs_eager"] is None and by["rmaat+compiled"]["compile_seconds"] == 3.0
    assert "compiled_vs_eager" not in summarise(rows[:2])[0]  # eager-only runs print what they did
