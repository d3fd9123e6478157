"""`pipeline export` and rmaat.hub: a checkpoint as a folder (config.json, model.safetensors,
README.md) that loads back to the very same model, works as `--checkpoint` of evaluate and
generate, and refuses a damaged or mismatched folder with one line."""

import json
import re
import shutil

import pytest
import torch
from click.testing import CliRunner

from fixtures_data import write_aan, write_listops
from pipelines.cli import cli
from retention.table import packaged_table_path
from rmaat.hub import load_pretrained
from rmaat.train.checkpoint import load_checkpoint, stored_config
from rmaat.train.config import RunConfig, config_hash

CLASSIFIER = ["--d-model", "16", "--layers", "1", "--set", "model.d_ff=32", "--set", "model.n_heads=2",
              "--device", "cpu", "--no-progress", "--batch-size", "2", "--max-steps", "2", "--eval-every", "2",
              "--set", "train.eval_batches=1", "--seq-len", "64", "--segments", "2"]
LM = ["--d-model", "16", "--layers", "1", "--set", "model.d_ff=32", "--set", "model.n_heads=2",
      "--set", "model.n_mem=2", "--device", "cpu", "--no-progress", "--batch-size", "2", "--max-steps", "3",
      "--seq-len", "32", "--segments", "2", "--eval-every", "3", "--set", "train.eval_batches=1",
      "--set", "train.final_eval_batches=1"]


def invoke(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=not ok)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{kind: (best.pt, exported folder)} for a listops classifier, a retrieval dual encoder and a byte LM."""
    root = tmp_path_factory.mktemp("export")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RMAAT_RETENTION_TABLE", str(packaged_table_path()))
        lm_data = root / "lmdata"
        lm_data.mkdir()
        for split, n in (("train", 400), ("val", 60), ("test", 60)):
            (lm_data / f"{split}.txt").write_text("the cat sat on the mat. a dog ran. " * (n // 10 + 1))
        write_aan(root / "aan")
        tasks = {"classifier": ("listops", write_listops(root / "listops"), CLASSIFIER),
                 "dual": ("retrieval", root / "aan", CLASSIFIER), "lm": ("kjv_lm", lm_data, LM)}
        out = {}
        for kind, (task, data, options) in tasks.items():
            run = root / kind
            invoke("train", "--task", task, "--data-dir", data, "--run-dir", run, *options)
            best = run / "checkpoints" / "best.pt"
            invoke("export", "--checkpoint", best, "--out", root / f"{kind}-export")
            out[kind] = (best, root / f"{kind}-export")
        yield out
    torch.set_num_threads(threads)


def reference_model(best):
    """The checkpoint's model as `pipeline evaluate` builds it (independently of rmaat.hub)."""
    state = load_checkpoint(best)
    config = stored_config(state, best)
    if config.task == "kjv_lm":
        from rmaat.train.lm_trainer import load_lm_checkpoint

        return load_lm_checkpoint(best)[0]
    from rmaat.data import get_task
    from rmaat.train.batching import build_run_model

    model, _ = build_run_model(config, get_task(config.task), state.get("retention_factors"))
    model.load_state_dict(state["model"])
    return model.eval()


def logits(model, kind, dtype):
    generator = torch.Generator().manual_seed(0)
    if kind == "lm":
        return model(torch.randint(0, 256, (2, 32), generator=generator))[0]
    ids = torch.randint(1, model.cfg.vocab_size, (2, 64), generator=generator)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 40:] = False
    extra = {"input_ids_2": ids.flip(1), "attention_mask_2": mask.flip(1)} if kind == "dual" else {}
    return model(ids, mask, **extra)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["classifier", "dual", "lm"])
def test_export_loads_back_to_identical_logits(runs, kind, dtype):
    best, folder = runs[kind]
    model, config = load_pretrained(folder)
    assert type(model).__name__ == ("CausalLM" if kind == "lm" else "RMAATModel")
    assert config.task == {"classifier": "listops", "dual": "retrieval", "lm": "kjv_lm"}[kind]
    assert (kind == "dual") == bool(getattr(model.cfg, "dual_encoder", False))
    ref = reference_model(best).to(dtype)
    with torch.no_grad():
        expected, got = logits(ref, kind, dtype), logits(model.to(dtype), kind, dtype)
    assert got.dtype == dtype and torch.equal(got, expected)
    names = json.loads((folder / "config.json").read_text())
    assert names["family"] == ("lm" if kind == "lm" else "classifier") and names["retention"]["factors"]


@pytest.mark.parametrize("kind", ["classifier", "lm"])
def test_evaluate_takes_the_folder(runs, kind):
    best, folder = runs[kind]
    results = [json.loads(invoke("evaluate", "--checkpoint", path, "--json", "--device", "cpu").output)
               for path in (best, folder)]
    for result in results:
        result.pop("checkpoint")
    assert results[0] == results[1]


def test_generate_takes_the_folder(runs):
    best, folder = runs["lm"]
    texts = [invoke("generate", "--checkpoint", path, "--prompt", "the ", "--max-bytes", 40, "--seed", 5).stdout_bytes
             for path in (best, folder)]
    assert texts[0] == texts[1] and len(texts[0]) == len(b"the ") + 40 + 1


def test_model_card_numbers_are_the_summary(runs):
    for kind, (best, folder) in runs.items():
        summary = json.loads((best.parent.parent / "summary.json").read_text())
        card = (folder / "README.md").read_text()
        rows = dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", card, flags=re.M))
        numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
        assert numbers and {k: json.loads(rows[k]) for k in numbers} == numbers
        headline = ("test_bpb", "unigram_bpb") if kind == "lm" else ("test_accuracy", "majority_baseline")
        assert all(k in rows for k in headline)
        assert "pipeline train --config training_config.yaml" in card and (folder / "training_config.yaml").is_file()
        assert "default_table.nc" in card  # the retention table's provenance


def _damaged(folder, tmp_path, how):
    copy = tmp_path / "damaged"
    shutil.copytree(folder, copy)
    weights, config_path = copy / "model.safetensors", copy / "config.json"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        weights.write_bytes(data[:-3] + bytes([data[-3] ^ 0x01]) + data[-2:])
    else:  # d_model no longer that of the weights; the config hash recomputed, so only the shapes tell
        config = json.loads(config_path.read_text())
        config["run_config"]["model"]["d_model"] = config["model_config"]["d_model"] = 24
        config["config_hash"] = config_hash(RunConfig.from_dict(config["run_config"]))
        config_path.write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("how,message", [
    ("truncated", "cannot be read"), ("flipped", "is damaged: its bytes no longer match the SHA-256"),
    ("d_model", "config.json does not fit the weights"),
])
@pytest.mark.parametrize("kind", ["classifier", "lm"])
def test_damaged_folder_is_one_line(runs, tmp_path, kind, how, message):
    copy = _damaged(runs[kind][1], tmp_path, how)
    command = ("generate", "--prompt", "a") if kind == "lm" else ("evaluate", "--device", "cpu")
    result = invoke(command[0], "--checkpoint", copy, *command[1:], ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ") and message in result.output, \
        result.output
    if how == "d_model":
        key = re.search(r"fit the weights: ([\w.]+) is shape \[16", result.output)  # names the first differing key
        assert key and key.group(1) in load_checkpoint(runs[kind][0])["model"], result.output
    from rmaat.errors import CheckpointError

    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_pretrained(copy)


def test_export_refuses_a_non_empty_out_without_force(runs, tmp_path):
    best, _ = runs["classifier"]
    out = tmp_path / "D"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("export", "--checkpoint", best, "--out", out, ok=False)
    assert result.exit_code == 1 and "not empty" in result.output and (out / "keep.txt").is_file()
    invoke("export", "--checkpoint", best, "--out", out, "--force")
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as handle:  # weights only
        assert handle.metadata() == {"format": "pt"} and "retention_factors" in handle.keys()
