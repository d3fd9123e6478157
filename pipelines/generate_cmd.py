"""``pipeline generate``: continue a prompt with a trained byte LM, streaming.

    pipeline generate --checkpoint runs/lm/checkpoints/best.pt --prompt "In the beginning" --max-bytes 400

Bytes are printed as they are sampled, after the prompt's own bytes (taken as given, UTF-8 or
not: the model reads bytes). A recurrent model (rmaat, rmt, rlt) carries its memory
across segments for as long as it runs: rmaat with the T-free streaming factor r_t (the paper's
RF needs the total length in advance, unknown while generating; rmaat.lm.stream), rmt and rlt
unscaled. The transformer slides its window past its trained context (rmaat.lm.generate).
"""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--checkpoint", required=True, help="A checkpoint of `pipeline train --task kjv_lm`.")
@click.option("--prompt", required=True,
              help="Text to continue, as the bytes given (UTF-8 or not: the model reads bytes; at least one).")
@click.option("--max-bytes", type=int, default=400, show_default=True, help="Bytes to generate.")
@click.option("--temperature", type=float, default=0.8, show_default=True,
              help="Sampling temperature; 0 = greedy (always the most likely byte).")
@click.option("--top-k", type=int, default=None, help="Sample among the k most likely bytes only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler (same seed, same text).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (or auto).")
def generate(checkpoint, prompt, max_bytes, temperature, top_k, seed, device) -> None:
    """Continue PROMPT with MAX_BYTES sampled bytes, printed as they come."""
    from rmaat.errors import ConfigError

    if max_bytes < 0:
        raise ConfigError(f"--max-bytes must be >= 0, got {max_bytes}")
    data = prompt_bytes(prompt)
    from pipelines.options import check_device

    check_device(device)
    from rmaat.lm.generate import stream
    from rmaat.lm.stream import t_free_factor
    from rmaat.train.distributed import distributed_session
    from rmaat.train.lm_trainer import load_lm_checkpoint

    # the session opens the device as train does (one-line error where CUDA is missing)
    with distributed_session(device) as (_, torch_device):
        model, config, _ = load_lm_checkpoint(checkpoint, torch_device)
        factor = t_free_factor(config.model.retention_table) if model.cfg.retention_variant != "none" else None
        # stream() checks its arguments when called: before the prompt is printed
        sampled = stream(model, data, max_bytes, temperature=temperature, top_k=top_k, seed=seed,
                         factor=factor if model.cfg.recurrent else None)
        out = sys.stdout.buffer
        out.write(data)
        for byte in sampled:
            out.write(byte)
            out.flush()
        out.write(b"\n")
        out.flush()


def prompt_bytes(prompt: str) -> bytes:
    """The bytes of ``--prompt`` as typed: UTF-8, and any byte that is not UTF-8 as itself.

    Python decodes a POSIX command line with ``surrogateescape`` (a byte b that is not UTF-8
    becomes U+DC00 + b), so encoding the same way gives back the very bytes of the argument;
    a surrogate no byte stands behind (from a Windows command line or a caller) is refused."""
    from rmaat.errors import ConfigError

    try:
        return prompt.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as error:
        raise ConfigError(f"--prompt holds {error.object[error.start:error.end]!a}, which is not text and "
                          "stands for no byte; give text or raw bytes") from None
