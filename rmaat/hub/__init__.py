"""Trained models as hub-style folders: ``pipeline export`` writes one, ``load_pretrained`` reads it.

A folder holds ``config.json`` (run config, model config, retention factors, the weights'
SHA-256), ``model.safetensors`` (weights only: no pickle) and a ``README.md`` model card.
Read with safetensors and json directly (no huggingface_hub: nothing reaches the network and
no extra dependency). ``rmaat.train.checkpoint.load_checkpoint`` accepts such a folder too, so
every command taking ``--checkpoint`` does.
"""

from rmaat.exports import lazy_exports

_EXPORTS = {
    "export_checkpoint": "rmaat.hub.export",
    "load_pretrained": "rmaat.hub.export",
    "read_folder": "rmaat.hub.folder",
    "is_model_folder": "rmaat.hub.folder",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
