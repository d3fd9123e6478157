"""Byte-identical outputs of a fixed-seed train / evaluate / generate in two source trees.

A refactoring that only moves code (issue 21: the layout) must not change a single number.
This runs one small recipe in each tree, with that tree's code, and compares:

* a tiny classifier (rmaat preset, AMRB) trained 20 steps on generated bAbI qa1, the same
  model as rmt (BPTT) and as rmaat under the consolidate memory rule; ``pipeline evaluate
  --json --by depth`` of each;
* a tiny byte LM (rmaat, AMRB) trained 20 steps on a small text directory, its
  ``pipeline evaluate --json`` (bits per byte), the streaming evaluation (``--stream-bytes``)
  and ``pipeline generate`` with a fixed seed (temperature 0.8 and greedy).

Recorded per tree: the SHA-256 of the generated data files, of each checkpoint's model weights
(``torch.load`` of ``best.pt``/``last.pt``, the ``model`` state dict hashed tensor by tensor in
name order: name, dtype, shape, bytes), of the evaluate JSON without its timing fields, and of
the generated text. Every run uses one thread, ``--device cpu``, ``--seed 0`` and the packaged
retention table (``RMAAT_RETENTION_TABLE``), so the recipe is deterministic on its own.

    python scripts/check_identical_outputs.py                 # HEAD's parent tree (default
                                                              # --before) against this tree
    python scripts/check_identical_outputs.py --before REF    # any git revision
    python scripts/check_identical_outputs.py record TREE OUT.json
    python scripts/check_identical_outputs.py compare A.json B.json

The before tree is a throwaway ``git worktree`` under a temporary directory, removed at exit.
Exit status 0 when every recorded value is identical, 1 otherwise (the differing keys printed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The last commit before issue 21 moved anything: the reference tree.
BEFORE_DEFAULT = "0d58494"
#: Fields of `pipeline evaluate --json` that measure time, not behaviour.
VOLATILE = {"seconds", "elapsed_s", "tokens_per_s", "wall_s", "time_s", "throughput"}
TINY = ["--d-model", "32", "--layers", "1", "--set", "model.d_ff=64", "--set", "model.n_heads=2",
        "--device", "cpu", "--no-progress", "--seed", "0", "--max-steps", "20", "--batch-size", "8",
        "--eval-every", "10", "--set", "train.eval_batches=2", "--set", "train.save_every=10"]
#: Where the recipe's files live while it runs, the same for both trees (emptied before and after).
WORK = Path(tempfile.gettempdir()) / "check_identical_outputs.work"
SENTENCES = ["the cat sat on the mat. ", "a dog ran in the park. ", "the sun is warm today. ",
             "we like to read books. ", "birds sing in the morning. "]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _env(tree: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(tree),
           "PYTHONHASHSEED": "0",
           "RMAAT_RETENTION_TABLE": str(tree / "retention" / "data" / "default_table.nc")}
    return env


def _pipeline(tree: Path, *args: object) -> bytes:
    """Run ``pipeline ARGS`` with TREE's code (cwd and PYTHONPATH = TREE); its stdout, as bytes
    (generated text need not be UTF-8)."""
    cmd = [sys.executable, "-c", "from pipelines.cli import cli; cli()", *map(str, args)]
    result = subprocess.run(cmd, cwd=tree, env=_env(tree), capture_output=True)
    if result.returncode:
        sys.exit(f"failed in {tree}: pipeline {' '.join(map(str, args))}\n"
                 f"{result.stdout.decode(errors='replace')}\n{result.stderr.decode(errors='replace')}")
    return result.stdout


def _weights_sha(tree: Path, checkpoint: Path) -> str:
    """SHA-256 of a checkpoint's model weights: each tensor's name, dtype, shape and bytes, by name."""
    code = (
        "import hashlib, sys, torch\n"
        "state = torch.load(sys.argv[1], map_location='cpu', weights_only=True)['model']\n"
        "h = hashlib.sha256()\n"
        "for name in sorted(state):\n"
        "    t = state[name].detach().cpu().contiguous().reshape(-1)\n"
        "    h.update(f'{name}|{t.dtype}|{tuple(t.shape)}|'.encode())\n"
        "    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')\n"
        "print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(checkpoint)], cwd=tree, env=_env(tree),
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _strip_volatile(value):
    if isinstance(value, dict):
        return {k: _strip_volatile(v) for k, v in sorted(value.items()) if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip_volatile(v) for v in value]
    return value


def _evaluate(tree: Path, *args: object) -> dict:
    out = _pipeline(tree, "evaluate", "--device", "cpu", "--json", *args)
    return _strip_volatile(json.loads(out))


def record(tree: Path, work: Path) -> dict[str, object]:
    """Run the recipe with TREE's code, its files under WORK; the values to compare."""
    tree, work = tree.resolve(), work.resolve()
    where = subprocess.run([sys.executable, "-c", "import rmaat, pipelines; print(rmaat.__file__, pipelines.__file__)"],
                           cwd=tree, env=_env(tree), capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(tree) for p in where), f"imports came from {where}, not {tree}"
    rec: dict[str, object] = {}

    # -- classifier: bAbI qa1, 2 segments of 64 bytes
    data = work / "babi"
    _pipeline(tree, "data", "generate", "--task", "babi_qa1", "--out", data, "--length", 128,
              "--segment-length", 64, "--facts", 1, "--size", 600, "--seed", 0)
    for f in sorted(p for p in data.rglob("*") if p.is_file()):
        rec[f"data/babi/{f.relative_to(data)}"] = _sha(f.read_bytes())
    for label, preset, extra in (("rmaat", "rmaat", []), ("rmt", "rmt", []),
                                 ("rmaat-consolidate", "rmaat", ["--set", "model.memory_rule=consolidate"])):
        run = work / f"clf-{label}"
        _pipeline(tree, "train", "--task", "babi_qa1", "--preset", preset, "--data-dir", data,
                  "--run-dir", run, "--seq-len", 128, "--segments", 2, *extra, *TINY)
        for name in ("best.pt", "last.pt"):
            rec[f"clf-{label}/weights/{name}"] = _weights_sha(tree, run / "checkpoints" / name)
        ev = _evaluate(tree, "--checkpoint", run / "checkpoints" / "best.pt", "--by", "depth")
        rec[f"clf-{label}/evaluate"] = ev

    # -- byte LM: a small text directory, 2 segments of 64 bytes, 2 memory tokens
    import random
    rng = random.Random(0)
    text_dir = work / "text"
    text_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 3000), ("val", 300), ("test", 300)):
        (text_dir / f"{split}.txt").write_text("".join(rng.choice(SENTENCES) for _ in range(n)))
    run = work / "lm"
    _pipeline(tree, "train", "--task", "kjv_lm", "--data-dir", text_dir, "--run-dir", run,
              "--seq-len", 128, "--segments", 2, "--set", "model.n_mem=2",
              "--set", "train.final_eval_batches=4", *TINY)
    best = run / "checkpoints" / "best.pt"
    for name in ("best.pt", "last.pt"):
        rec[f"lm/weights/{name}"] = _weights_sha(tree, run / "checkpoints" / name)
    rec["lm/evaluate"] = _evaluate(tree, "--checkpoint", best)
    rec["lm/evaluate-stream"] = _evaluate(tree, "--checkpoint", best, "--stream-bytes", 512, "--streams", 2)
    for label, extra in (("sampled", ["--temperature", "0.8", "--seed", "3"]),
                         ("greedy", ["--temperature", "0"])):
        text = _pipeline(tree, "generate", "--checkpoint", best, "--prompt", "the ", "--max-bytes", 120, *extra)
        rec[f"lm/generate-{label}"] = text.decode("utf-8", "backslashreplace")
        rec[f"lm/generate-{label}/sha256"] = _sha(text)
    return rec


def _record_fresh(tree: Path, work: Path) -> dict[str, object]:
    """record() in an emptied WORK (the same path for both trees: paths may show in outputs)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        return record(tree, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(before: dict, after: dict) -> int:
    keys = sorted(set(before) | set(after))
    differ = [k for k in keys if before.get(k) != after.get(k)]
    for k in keys:
        value = before.get(k)
        shown = value if isinstance(value, str) and len(value) == 64 else _sha(json.dumps(value, sort_keys=True).encode())
        print(f"{'DIFFERS' if k in differ else 'same   '}  {k:36s} {shown[:16]}")
    if differ:
        print(f"{len(differ)} of {len(keys)} values differ: {', '.join(differ)}")
        return 1
    print(f"all {len(keys)} values byte-identical")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    p_rec = sub.add_parser("record")
    p_rec.add_argument("tree", type=Path)
    p_rec.add_argument("out", type=Path)
    p_cmp = sub.add_parser("compare")
    p_cmp.add_argument("a", type=Path)
    p_cmp.add_argument("b", type=Path)
    parser.add_argument("--before", default=BEFORE_DEFAULT, help="git revision of the reference tree")
    args = parser.parse_args()

    if args.cmd == "record":
        rec = _record_fresh(args.tree, WORK)
        args.out.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        return 0
    if args.cmd == "compare":
        return compare(json.loads(args.a.read_text()), json.loads(args.b.read_text()))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before_tree = tmp / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before_tree), args.before],
                       check=True, capture_output=True)
        try:
            print(f"before: {args.before} ({before_tree}); after: {REPO}")
            before = _record_fresh(before_tree, WORK)
            after = _record_fresh(REPO, WORK)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before_tree)], check=True)
        return compare(before, after)


if __name__ == "__main__":
    sys.exit(main())
