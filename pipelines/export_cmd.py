"""``pipeline export``: a training checkpoint as a shareable folder (rmaat.hub).

    pipeline export --checkpoint runs/r/checkpoints/best.pt --out models/r

The folder (config.json, model.safetensors, README.md model card) loads with
``rmaat.hub.load_pretrained`` and works as ``--checkpoint`` of evaluate, generate and probe.
"""

from __future__ import annotations

import click


@click.command()
@click.option("--checkpoint", required=True, help="A checkpoint written by `pipeline train` (RUN_DIR/checkpoints/best.pt).")
@click.option("--out", required=True, help="The folder to write (refused if it exists and is not empty).")
@click.option("--force", is_flag=True, help="Replace an existing --out folder.")
def export(checkpoint, out, force) -> None:
    """Write CHECKPOINT's model to the folder OUT: config.json, model.safetensors, README.md."""
    from rmaat.hub.export import export_checkpoint

    path = export_checkpoint(checkpoint, out, force=force)
    click.echo(f"wrote {path} (config.json, model.safetensors, README.md)")
