"""Memory-update rules (rmaat.memory): what each rule carries, in the classifier, the LM and the decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmaat.encoder.config import get_preset
from rmaat.encoder.model import build_model
from rmaat.errors import ConfigError
from rmaat.lm.config import lm_config
from rmaat.lm.generate import StreamingDecoder
from rmaat.lm.model import build_lm
from rmaat.memory import carried_memory, consolidation_rate

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

RF = np.array([0.4, 0.3, 0.2, 0.1])
SIZES = dict(vocab_size=16, n_classes=3, d_model=16, n_heads=2, n_layers=1, d_ff=24, dropout=0.0, n_mem=2,
             seq_len=12, n_segments=4)


def writes_and_carried(model, ids) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The writes mem'_2..mem'_{T+1} of each segment and the carried states mem_2..mem_{T+1}."""
    x, mask = model.prepare_inputs(ids, None)
    mem, read = model.initial_state(ids.shape[0])
    writes, carried = [], []
    for t, (ids_t, mask_t) in enumerate(model.split_segments(x, mask)):
        write, _ = model.segment_outputs(ids_t, mask_t, mem)
        mem, read = model.segment_step(t, ids_t, mask_t, mem, read)
        writes.append(write.clone())
        carried.append(mem)
    return writes, carried


def test_consolidation_rate_is_rf_share_of_the_running_sum():
    assert consolidation_rate(0.4, 0.0) == 1.0
    assert consolidation_rate(0.3, 0.4) == pytest.approx(0.3 / 0.7)
    assert consolidation_rate(0.0, 0.0) == 1.0  # nothing written yet, nothing to keep
    rho = consolidation_rate(torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    assert rho.item() == 1.0


@pytest.mark.parametrize("rule", ["paper", "overwrite", "consolidate"])
def test_classifier_carries_what_its_rule_says(rule):
    torch.manual_seed(0)
    extra = {"use_retention": False} if rule == "overwrite" else {}
    model = build_model("rmaat", retention_factors=None if rule == "overwrite" else RF, memory_rule=rule,
                        **SIZES, **extra).double().eval()
    ids = torch.randint(0, 16, (3, 12), generator=torch.Generator().manual_seed(1))
    rf = RF if rule == "overwrite" else model.retention_factors.numpy()  # the buffer holds float32 values
    with torch.no_grad():
        writes, carried = writes_and_carried(model, ids)
        model(ids)
    for t, mem in enumerate(carried):
        if rule == "paper":
            expected = rf[t] * writes[t]
        elif rule == "overwrite":
            expected = writes[t]
        else:  # the RF-weighted mean of every write so far
            w = rf[: t + 1] / rf[: t + 1].sum()
            expected = sum(float(w[s]) * writes[s] for s in range(t + 1))
        torch.testing.assert_close(mem, expected, rtol=1e-12, atol=1e-13)
        # the forward pass carries the same states
        torch.testing.assert_close(model.last_memory_states[t + 1], expected, rtol=1e-12, atol=1e-13)


def test_consolidated_memory_keeps_the_writes_scale():
    torch.manual_seed(0)
    rf = np.array([0.19, 0.1, 0.03, 0.008])  # RF(t, 16)-like: tiny late factors
    ids = torch.randint(0, 16, (4, 12), generator=torch.Generator().manual_seed(2))
    norms = {}
    for rule in ("paper", "consolidate"):
        model = build_model("rmaat", retention_factors=rf, memory_rule=rule, **SIZES).double().eval()
        with torch.no_grad():
            writes, carried = writes_and_carried(model, ids)
        norms[rule] = [(c.norm() / w.norm()).item() for c, w in zip(carried, writes)]
    assert norms["paper"] == pytest.approx(list(rf), rel=1e-6)
    assert all(n > 0.5 for n in norms["consolidate"])


def test_use_retention_false_is_the_overwrite_rule_and_contradictions_are_one_line_errors():
    assert get_preset("rmaat").carry_rule == "paper"
    assert get_preset("rmt").carry_rule == "overwrite"
    assert get_preset("rmaat").replace(use_retention=False).carry_rule == "overwrite"
    assert get_preset("transformer").carry_rule is None
    assert get_preset("rmaat").replace(memory_rule="consolidate").carry_rule == "consolidate"
    bad = [
        ({"memory_rule": "ema"}, "is not one of paper, overwrite, consolidate"),
        ({"memory_rule": "paper", "use_retention": False}, "reads the retention factors"),
        ({"memory_rule": "consolidate", "use_retention": False}, "reads the retention factors"),
        ({"memory_rule": "overwrite"}, "also set use_retention"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            get_preset("rmaat").replace(**overrides)
    with pytest.raises(ConfigError, match="non-recurrent"):
        get_preset("transformer").replace(memory_rule="overwrite")


def test_lm_rules_and_errors():
    assert lm_config("rmaat").carry_rule == "paper"
    assert lm_config("rmaat", retention="none").carry_rule == "overwrite"
    assert lm_config("rmt").carry_rule == "overwrite"
    assert lm_config("rmaat", memory_rule="consolidate").carry_rule == "consolidate"
    with pytest.raises(ConfigError, match="retention='none'"):
        lm_config("rmt", memory_rule="paper")
    with pytest.raises(ConfigError, match="no memory to update"):
        lm_config("transformer", memory_rule="overwrite")


def test_lm_and_decoder_consolidate_the_writes():
    """The LM's carried memory is the RF-weighted mean of its writes, and the decoder's equals it."""
    torch.manual_seed(0)
    factors = np.array([0.5, 0.3, 0.2])
    model = build_lm("rmaat", retention_loader=lambda T, v: factors[:T] / factors[:T].sum(), memory_rule="consolidate",
                     d_model=16, n_heads=2, n_layers=1, d_ff=24, segment_len=4, n_mem=2, dropout=0.0).double().eval()
    idx = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model(idx)
        states = model.last_memory_states
        # rebuild each write from the carried states: write_t = (mem_{t+1} - (1 - rho) mem_t) / rho
        rf = model.retention_factors(3).numpy()
        writes = []
        for t in range(3):
            rho = rf[t] / rf[: t + 1].sum()
            writes.append((states[t + 1] - (1 - rho) * states[t]) / rho)
        _, mem_raw = model.segment_logits(idx[:, 4:8], states[1])
        torch.testing.assert_close(writes[1], mem_raw, rtol=1e-10, atol=1e-12)
        decoder = StreamingDecoder(model, lambda t: float(rf[t]), batch=2)
        for i in range(12):
            decoder.feed(idx[:, i])
    for ours, ref in zip(decoder.memory_states, states):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_carried_memory_never_aliases_the_write():
    write = torch.randn(2, 3, 4)
    mem = torch.randn(2, 3, 4)
    for rule, factor in (("overwrite", None), ("paper", 1.0), ("consolidate", 1.0)):
        out = carried_memory(rule, mem, write, factor, 0.0)
        assert out.data_ptr() != write.data_ptr()
    with pytest.raises(ConfigError, match="is not one of"):
        carried_memory("ema", mem, write)


# ------------------------------------------------------------------ through `pipeline train`
def test_train_takes_the_rule_and_the_checkpoint_keeps_it(tmp_path, monkeypatch):
    """`--set model.memory_rule=consolidate` reaches the classifier and the LM; a bad rule is one line."""
    import json

    from click.testing import CliRunner

    from fixtures_data import write_listops
    from pipelines.cli import cli
    from retention.table import packaged_table_path
    from rmaat.train.checkpoint import load_checkpoint

    monkeypatch.setenv("RMAAT_RETENTION_TABLE", str(packaged_table_path()))
    data = write_listops(tmp_path / "listops")
    tiny = ["--d-model", "16", "--layers", "1", "--set", "model.d_ff=32", "--set", "model.n_heads=2",
            "--device", "cpu", "--no-progress", "--batch-size", "2", "--max-steps", "2", "--eval-every", "2",
            "--set", "train.eval_batches=1", "--seq-len", "64", "--segments", "2"]
    run = CliRunner().invoke(cli, ["train", "--task", "listops", "--data-dir", str(data), "--run-dir",
                                   str(tmp_path / "run"), *tiny, "--set", "model.memory_rule=consolidate"],
                             catch_exceptions=False)
    assert run.exit_code == 0, run.output
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert json.dumps(ckpt["config"]).count('"memory_rule": "consolidate"') == 1
    bad = CliRunner().invoke(cli, ["train", "--task", "listops", "--data-dir", str(data), "--run-dir",
                                   str(tmp_path / "bad"), *tiny, "--set", "model.memory_rule=ema"])
    assert bad.exit_code == 1
    assert bad.output.count("\n") == 1 and "memory_rule='ema' is not one of" in bad.output, bad.output
    assert "Traceback" not in bad.output


@pytest.mark.parametrize("rule,expected", [(None, "paper"), ("overwrite", "overwrite"), ("consolidate", "consolidate")])
def test_lm_run_config_takes_the_rule(rule, expected):
    from rmaat.train.config import RunConfig
    from rmaat.train.lm_trainer import lm_config_from_run

    raw = {"task": "kjv_lm", "model": {"preset": "rmaat", "segments": 2}, "data": {"seq_len": 256}}
    if rule is not None:
        raw["model"]["memory_rule"] = rule
    assert lm_config_from_run(RunConfig.from_dict(raw)).carry_rule == expected
