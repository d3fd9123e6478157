"""Training and evaluation of RMAAT and its baselines on the LRA tasks.

Modules (imported on demand; this package import stays torch-free):

- ``config``      run-config dataclasses, per-task YAML files, CLI overrides, config hash
- ``trainer``     the training loop (AdamW + warmup/decay, grad accumulation, bf16 autocast,
                  evaluation, best checkpoint, resumable, DDP under ``torchrun``)
- ``batching``    a run's inputs: splits, the model built for them, resumable micro-batches
- ``evaluation``  accuracy on a split, and ``pipeline evaluate`` on a checkpoint
- ``checkpoint``  atomic checkpoint files with RNG states and data position
- ``distributed`` process-group set-up and the seeded, resumable, sharded sampler
- ``metrics``     JSON-lines + TensorBoard logger and the loss/accuracy curve plot
"""
