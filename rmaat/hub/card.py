"""The ``README.md`` model card of an exported folder: task, preset, data, the run's test
metrics and baselines (summary.json's values as written there), how it was trained, and
where its retention factors came from."""

from __future__ import annotations

import json
from typing import Any

#: summary.json keys shown first in the card's metrics table (then every other scalar entry).
HEADLINE = ("test_accuracy", "majority_baseline", "test_bpb", "unigram_bpb", "bigram_bpb", "val_accuracy",
            "val_bpb", "n_test")


def metrics_rows(summary: dict[str, Any]) -> list[str]:
    """``| `key` | value |`` for each scalar of summary.json, the value as JSON (exact)."""
    scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None}
    order = [k for k in HEADLINE if k in scalars] + sorted(k for k in scalars if k not in HEADLINE)
    return [f"| `{k}` | {json.dumps(scalars[k])} |" for k in order]


def model_card(meta: dict[str, Any], copied: dict[str, str]) -> str:
    """The card's Markdown text for config.json's ``meta`` and the run files copied beside it."""
    run = meta["run_config"]
    data = run.get("data", {})
    family = "byte-level causal language model" if meta["family"] == "lm" else "sequence classifier"
    lines = [f"# RMAAT {meta['preset']} {family}: {meta['task']}", "",
             f"- task: `{meta['task']}`" + (f" ({meta['summary'].get('task_title')})"
                                            if meta.get("summary") and meta["summary"].get("task_title") else ""),
             f"- preset: `{meta['preset']}`, class `{meta['model_class']}`, {meta['weights']['parameters']} parameters",
             f"- data: `{data.get('data_dir') or 'the task default'}`, seq_len {data.get('seq_len')}, "
             f"{run.get('model', {}).get('segments')} segment(s)",
             f"- checkpoint: `{meta['source']['checkpoint']}` (step {meta['step']})", "",
             "Load it (no network, json + safetensors only):", "", "```python",
             "from rmaat.hub import load_pretrained", "model, config = load_pretrained(\"THIS_FOLDER\")", "```", "",
             "or pass the folder as `--checkpoint` to `pipeline evaluate` / `pipeline generate`.", "",
             "## Metrics (the run's summary.json)", ""]
    if meta.get("summary"):
        lines += ["| metric | value |", "| --- | --- |", *metrics_rows(meta["summary"])]
    else:
        lines.append("No summary.json beside the checkpoint: the run's metrics are unknown.")
    lines += ["", "## Training", ""]
    if "command" in copied:
        lines += ["Command recorded with the run:", "", "```", copied["command"].strip(), "```", ""]
    if "training_config.yaml" in copied:
        lines += ["The run's full config is `training_config.yaml` beside this card; it retrains with",
                  "", "```", "pipeline train --config training_config.yaml", "```"]
    else:
        lines.append("The run's config is `run_config` in config.json (no config.yaml was found in the run directory).")
    retention = meta["retention"]
    provenance = retention["provenance"]
    lines += ["", "## Retention factors", "",
              f"- variant `{retention['variant']}`, T = {retention['trained_segments']}: "
              + (", ".join(f"{v:.6g}" for v in retention["factors"]) if retention["factors"] else "none")]
    if "note" in provenance:
        lines.append(f"- provenance: {provenance['note']}")
    else:
        lines += [f"- table: `{provenance['table']}` (sha256 {provenance['table_sha256']}), read at export time",
                  f"- row: {json.dumps(provenance['row'])}"]
        if provenance.get("run"):
            lines.append(f"- simulation run: {json.dumps(provenance['run'])}")
    return "\n".join(lines) + "\n"
