"""Data parallelism does what one process with the whole batch does.

``tests/test_train_ddp.py`` shows that two ``torchrun`` replicas stay identical, which they also
do when every rank reads the same shard. Here: the samplers deal each rank its own examples and
together all of them, and a step of 2 ranks x batch b equals a step of 1 process x batch 2b.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from pipelines.cli import cli
from retention.table import packaged_table_path
from rmaat.train.checkpoint import load_checkpoint
from rmaat.train.distributed import ResumableSampler, ShardSampler
from test_train_ddp import _free_port, _write_listops


# ------------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("n", [1, 7, 8, 10])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("limit", [None, 5])
def test_evaluation_shards_are_disjoint_and_cover_the_split(n, world_size, limit):
    """ShardSampler: rank r evaluates r, r + W, ... so that summing over ranks counts every example
    of the (limited) split exactly once."""
    shards = [ShardSampler(n, rank, world_size, limit).indices for rank in range(world_size)]
    every = sorted(i for shard in shards for i in shard)
    assert every == list(range(n if limit is None else min(n, limit)))  # disjoint (no repeat) and covering
    assert [len(ShardSampler(n, rank, world_size, limit)) for rank in range(world_size)] == [len(s) for s in shards]


@pytest.mark.parametrize("n, world_size", [(12, 2), (12, 3), (10, 3), (7, 4)])
def test_training_ranks_read_disjoint_parts_of_one_permutation(n, world_size):
    """ResumableSampler: in every epoch the ranks' orders together are that epoch's permutation
    (repeating only the wrap-around padding to a multiple of W), and step s of W ranks with
    micro-batch b reads exactly the examples that one process with micro-batch W*b reads at step s."""
    for epoch in (0, 1):
        single = ResumableSampler(n, seed=5)
        single.set_position(epoch)
        permutation = list(single)
        ranks = []
        for rank in range(world_size):
            sampler = ResumableSampler(n, seed=5, rank=rank, world_size=world_size)
            sampler.set_position(epoch)
            ranks.append(list(sampler))
        padded = (permutation * 2)[:-(-n // world_size) * world_size]
        assert sorted(i for order in ranks for i in order) == sorted(padded)
        assert set().union(*map(set, ranks)) == set(range(n))
        if n % world_size == 0:
            assert not set(ranks[0]) & set().union(*map(set, ranks[1:]))  # disjoint
        b = 1 if n // world_size < 2 else 2
        for step in range(n // (world_size * b)):
            together = sorted(i for order in ranks for i in order[step * b:(step + 1) * b])
            assert together == sorted(permutation[step * world_size * b:(step + 1) * world_size * b])


# ----------------------------------------------------------------- 2 x b == 1 x 2b, end to end
#: AdamW with eps = 1 and lr = 1 (no warm-up, decay or clipping): the first step moves every
#: parameter by -g / (|g| + 1), a monotone map of the gradient g, so g = -d / (1 - |d|) is
#: recovered from the change d and the gradients themselves can be compared.
ONE_STEP = ["--task", "listops", "--device", "cpu", "--no-progress", "--preset", "rmaat", "--backprop", "amrb",
            "--seq-len", "16", "--segments", "2", "--d-model", "16", "--layers", "1",
            "--set", "model.d_ff=32", "--set", "model.n_heads=2", "--set", "model.dropout=0.0",
            "--max-steps", "1", "--lr", "1.0", "--set", "optim.eps=1.0", "--set", "optim.weight_decay=0.0",
            "--set", "optim.warmup=0.0", "--set", "optim.grad_clip=0.0"]
#: float32 sums in another order (8 examples in one batch vs. 4 + 4 averaged by all-reduce): measured
#: at most 6e-8 on gradients up to 0.25
GRAD_ATOL, GRAD_RTOL = 1e-6, 1e-5


def _initial_parameters(run_dir):
    """The parameters a run of ``run_dir``'s config starts from, built as the Trainer builds them."""
    from rmaat.data import get_task
    from rmaat.train.batching import build_run_model
    from rmaat.train.config import load_config_file

    config = load_config_file(run_dir / "config.yaml")
    torch.manual_seed(config.train.seed)
    model, _ = build_run_model(config, get_task(config.task))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _gradients(before, after):
    """g from the AdamW first-step change d = -g / (|g| + 1) (see ONE_STEP)."""
    grads = {}
    for name, p0 in before.items():
        if name == "retention_factors":
            continue
        d = (after[name] - p0).double()
        grads[name] = -d / (1 - d.abs())
    return grads


@pytest.mark.slow
def test_two_ranks_with_batch_b_equal_one_process_with_batch_2b(tmp_path, monkeypatch):
    """One AMRB step of ``torchrun --nproc-per-node 2`` with batch 4 per rank gives the gradients
    of one process with batch 8 (to GRAD_ATOL + GRAD_RTOL |g|: float32 sums in another order), and
    the sharded validation/test passes give the single process's loss and accuracy."""
    data = _write_listops(tmp_path / "data")
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1",
               RMAAT_RETENTION_TABLE=str(packaged_table_path()))
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "pipelines.cli", "train",
               *ONE_STEP, "--data-dir", str(data), "--run-dir", str(ddp_dir), "--batch-size", "4"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    monkeypatch.setenv("RMAAT_RETENTION_TABLE", str(packaged_table_path()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(cli, ["train", *ONE_STEP, "--data-dir", str(data), "--run-dir", str(single_dir),
                                          "--batch-size", "8"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        before = _initial_parameters(single_dir)
    finally:
        torch.set_num_threads(threads)

    ddp, single = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (ddp_dir, single_dir))
    assert ddp["world_size"] == 2 and single["world_size"] == 1 and ddp["step"] == single["step"] == 1
    g_ddp, g_single = _gradients(before, ddp["model"]), _gradients(before, single["model"])
    assert max(g.abs().max().item() for g in g_single.values()) > 100 * GRAD_ATOL  # the step did move
    for name in g_single:
        torch.testing.assert_close(g_ddp[name], g_single[name], atol=GRAD_ATOL, rtol=GRAD_RTOL,
                                   msg=lambda text, name=name: f"gradient of {name}: {text}")

    s_ddp, s_single = (json.loads((d / "summary.json").read_text()) for d in (ddp_dir, single_dir))
    assert s_ddp["n_test"] == s_single["n_test"] == 8 and s_ddp["n_val"] == s_single["n_val"] == 8
    assert s_ddp["test_loss"] == pytest.approx(s_single["test_loss"], rel=1e-5)
    assert s_ddp["test_accuracy"] == s_single["test_accuracy"]
    assert s_ddp["majority_baseline"] == s_single["majority_baseline"]
