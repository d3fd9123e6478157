"""Checkpoints carry a SHA-256 of their tensors (rmaat.train.checkpoint): bytes damaged after the
save are a one-line CheckpointError naming the file, not a model that loads silently with other
weights (issue 18). Checkpoints written before the digest existed still load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rmaat.errors import CheckpointError
from rmaat.train.checkpoint import FORMAT, atomic_torch_save, load_checkpoint


def make_state() -> dict:
    """A checkpoint-shaped dict: model and optimiser tensors of several dtypes and shapes."""
    return {
        "format": FORMAT, "step": 3, "config": {"task": "kjv_lm"}, "config_hash": "0" * 16,
        "model": {"w": torch.arange(1000, dtype=torch.float32), "b": torch.full((7, 3), 0.25, dtype=torch.float64),
                  "h": torch.linspace(-1, 1, 64).to(torch.bfloat16), "scale": torch.tensor(2.5)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.arange(500, dtype=torch.float32) / 7}},
                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.98), "params": [0]}]},
        "rng": {"torch": torch.arange(256, dtype=torch.uint8), "cuda": None},
        "retention_factors": [0.5, 0.5],
    }


def flip(path: Path, tensor: torch.Tensor, n: int = 400) -> None:
    """Invert ``n`` bytes of ``tensor``'s data inside the saved file (found by its own bytes)."""
    raw = bytearray(path.read_bytes())
    start = bytes(raw).find(tensor.contiguous().numpy().tobytes())
    assert start > 0, "tensor bytes not found in the file"
    for i in range(start, start + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("where", ["model", "optimizer"])
def test_flipped_tensor_bytes_are_refused_naming_the_file(tmp_path, where):
    state = make_state()
    path = tmp_path / "last.pt"
    atomic_torch_save(state, path)
    flip(path, state["model"]["w"] if where == "model" else state["optimizer"]["state"][0]["exp_avg"])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "digest" in message and "\n" not in message


def test_a_saved_checkpoint_loads_with_its_tensors_unchanged(tmp_path):
    state = make_state()
    path = tmp_path / "best.pt"
    atomic_torch_save(state, path)
    loaded = load_checkpoint(path)
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value), key
    assert "tensor_sha256" not in state  # the caller's dict is not changed by the save
    assert len(loaded["tensor_sha256"]) == 64


def test_a_checkpoint_without_a_digest_still_loads(tmp_path):
    """Written before digests existed (a plain torch.save of the same dict)."""
    path = tmp_path / "old.pt"
    torch.save(make_state(), path)
    assert load_checkpoint(path)["step"] == 3


def test_edited_and_saved_again_gets_a_fresh_digest(tmp_path):
    """A checkpoint loaded, changed and written back through atomic_torch_save loads; the same
    change written without a new digest (torch.save) is refused."""
    path = tmp_path / "last.pt"
    atomic_torch_save(make_state(), path)
    state = load_checkpoint(path)
    state["model"]["w"] = state["model"]["w"] * 2
    atomic_torch_save(state, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], make_state()["model"]["w"] * 2)
    state["model"]["b"] = state["model"]["b"] + 1
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(path)


def test_the_digest_covers_names_shapes_and_dtypes():
    from rmaat.train.checkpoint import tensor_digest

    base = tensor_digest(make_state())
    swapped = make_state()
    swapped["model"]["x"] = swapped["model"].pop("w")  # same bytes under another name
    reshaped = make_state()
    reshaped["model"]["w"] = reshaped["model"]["w"].view(10, 100)
    retyped = make_state()
    retyped["model"]["w"] = retyped["model"]["w"].view(torch.int32)  # same bytes, another dtype
    assert len({base, tensor_digest(swapped), tensor_digest(reshaped), tensor_digest(retyped)}) == 4
    assert tensor_digest(make_state()) == base
    # a non-contiguous view hashes as its values, like the contiguous copy torch.save writes
    t = torch.arange(12.0).view(3, 4)
    assert tensor_digest({"t": t.t()}) == tensor_digest({"t": t.t().contiguous()})


def test_weights_that_do_not_fit_the_model_are_one_line_checkpoint_errors():
    import torch

    from rmaat.errors import CheckpointError
    from rmaat.train.checkpoint import load_model_weights

    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"^checkpoint X does not fit the model its config describes \(") as info:
        load_model_weights(model, torch.nn.Linear(3, 2).state_dict(), "checkpoint X")
    assert "\n" not in str(info.value)
    load_model_weights(model, torch.nn.Linear(2, 2).state_dict(), "checkpoint X")  # fitting weights load
