"""Run configs: packaged task files, overrides, validation and the config hash (no torch needed)."""

import pytest

from rmaat.data.tasks import TASKS
from rmaat.errors import ConfigError
from rmaat.train.config import (
    RUNTIME_KEYS, RunConfig, apply_overrides, available_tasks, config_diff, config_hash, load_config_file,
    load_task_config, parse_set_options,
)


def test_one_config_per_task_with_paper_lengths_and_512_token_segments():
    from rmaat.data.kjv_lm import LM_TASKS

    assert set(available_tasks()) == set(TASKS) | set(LM_TASKS)
    for name in LM_TASKS:  # byte LMs: 2K-byte contexts in 512-byte segments
        cfg = load_task_config(name)
        cfg.validate()
        assert (cfg.task, cfg.data.seq_len, cfg.segment_len) == (name, 2048, 512)
        assert cfg.model.preset == "rmaat" and cfg.model.backprop is None
    for name in sorted(set(available_tasks()) - set(LM_TASKS)):
        cfg = load_task_config(name)
        cfg.validate()
        spec = TASKS[name]
        assert cfg.task == name
        if spec.fixed_length:  # memory tasks: the generator's default length, whatever the registry allows
            from rmaat.data.babi import BabiConfig

            assert cfg.data.seq_len == BabiConfig().length <= spec.seq_len
        else:
            assert cfg.data.seq_len == spec.seq_len  # paper length (per document for retrieval)
        assert cfg.segment_len == min(512, spec.seq_len)
        assert cfg.model.preset == "rmaat"
        assert cfg.model.backprop is None  # the preset's own mode (AMRB for rmaat)


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid tasks: .*listops.*pathfinder"):
        load_task_config("sudoku")


def test_overrides_dotted_bare_and_model_passthrough():
    base = load_task_config("listops")
    cfg = apply_overrides(base, {"optim.lr": 2e-3, "grad_accum": 2, "model.n_mem": 4, "model.d_model": 32,
                                 "train.stop_after": None})
    assert cfg.optim.lr == 2e-3 and cfg.train.grad_accum == 2
    assert cfg.model.overrides["n_mem"] == 4 and cfg.model.overrides["d_model"] == 32
    assert base.model.overrides["d_model"] == 128  # the original is untouched
    with pytest.raises(ConfigError, match="valid optim keys"):
        apply_overrides(base, {"optim.learning_rate": 1.0})
    with pytest.raises(ConfigError, match="unknown config section"):
        apply_overrides(base, {"trian.max_steps": 1})
    with pytest.raises(ConfigError, match="train.max_steps must be int"):
        apply_overrides(base, {"train.max_steps": "many"})


def test_set_values_are_yaml_scalars():
    assert parse_set_options(["optim.lr=1e-3", "train.stop_after=null", "model.astro_use_astro=false"]) == {
        "optim.lr": "1e-3", "train.stop_after": None, "model.astro_use_astro": False}
    assert apply_overrides(load_task_config("text"), {"optim.lr": "1e-3"}).optim.lr == 1e-3
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_options(["train.max_steps"])


@pytest.mark.parametrize("key,value,message", [
    ("train.max_steps", 0, "max_steps must be >= 1"),
    ("train.batch_size", -4, "batch_size must be >= 1"),
    ("optim.lr", 0.0, "lr must be > 0"),
    ("optim.lr", -1e-3, "lr must be > 0"),
    ("optim.warmup", 1.5, "warmup"),
    ("optim.schedule", "exponential", "schedule must be one of"),
    ("optim.grad_clip", -1.0, "grad_clip"),
    ("train.grad_accum", 3, "multiple of train.grad_accum"),
    ("model.segments", 3, "multiple of model.segments"),
    ("model.segments", 0, "segments must be >= 1"),
    ("model.backprop", "magic", "backprop must be one of"),
    ("train.device", "tpu", "device must be"),
    ("train.precision", "fp8", "precision must be one of"),
    ("train.eval_every", 0, "eval_every must be >= 1"),
])
def test_impossible_values_are_refused(key, value, message):
    cfg = apply_overrides(load_task_config("listops"), {key: value})
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_hash_covers_what_is_trained_not_where_or_how_often():
    base = load_task_config("listops")
    runtime = apply_overrides(base, {"data.data_dir": "/elsewhere", "train.device": "cpu",
                                     "train.eval_every": 7, "train.save_every": 3, "train.stop_after": 2})
    assert config_hash(runtime) == config_hash(base)
    for key, value in (("optim.lr", 1e-2), ("model.d_model", 64), ("train.seed", 1), ("train.max_steps", 9),
                       ("data.seq_len", 1024), ("model.preset", "rmt")):
        changed = apply_overrides(base, {key: value})
        assert config_hash(changed) != config_hash(base), key
        assert any(line.startswith(key) for line in config_diff(base, changed))
    assert all(k.split(".")[0] in ("data", "train") for k in RUNTIME_KEYS)


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(load_task_config("retrieval"), {"model.n_mem": 2, "train.eval_batches": None})
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config_file(path)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_malformed_config_file_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: listops\nmodel:\n  preset: [rmaat\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: not valid YAML"):
        load_config_file(path)
    path.write_text("task: listops\nschedule: cosine\n")
    with pytest.raises(ConfigError, match="unknown top-level key"):
        load_config_file(path)
