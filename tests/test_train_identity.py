"""A run on a generated short-ListOps demo set never reports itself as LRA ListOps."""

import json
from types import SimpleNamespace

from rmaat.data import get_task
from rmaat.data.listops import GENERATION_FILE, read_generation_record
from rmaat.train.batching import task_identity
from rmaat.train.summary import format_summary


def _dataset_in(folder):
    return SimpleNamespace(source=str(folder / "basic_test.tsv"))


def test_demo_set_is_labelled_and_not_lra(tmp_path):
    (tmp_path / GENERATION_FILE).write_text(json.dumps({"task": "listops", "lra_rules": False}))
    title, is_lra = task_identity(get_task("listops"), _dataset_in(tmp_path))
    assert (title, is_lra) == ("short-ListOps demo set", False)
    line = format_summary({"task_title": title, "is_lra": is_lra, "preset": "rmaat", "backprop": "amrb",
                           "steps": 1, "wall_time_s": 1.0, "test_accuracy": 0.5, "majority_baseline": 0.1,
                           "n_test": 4, "best_step": 1, "val_accuracy": 0.5, "train_tokens_per_s": 1.0,
                           "peak_memory_bytes": 1, "peak_memory_kind": "cpu_max_rss"})
    assert "not an LRA result" in line


def test_lra_rule_data_keeps_the_task_name(tmp_path):
    assert read_generation_record(tmp_path) is None  # official data has no generation.json
    assert task_identity(get_task("listops"), _dataset_in(tmp_path)) == ("ListOps", True)
    (tmp_path / GENERATION_FILE).write_text(json.dumps({"task": "listops", "lra_rules": True}))
    assert task_identity(get_task("listops"), _dataset_in(tmp_path)) == ("ListOps", True)
