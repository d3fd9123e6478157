"""Multi-process training through ``torch.distributed`` (``torchrun``) and data sharding.

``pipeline train`` is the same command on one device and under ``torchrun --nproc-per-node N``:
:func:`init_distributed` reads the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and starts a process group (NCCL on CUDA,
gloo on CPU). Without those variables it is a single process and nothing is initialised.

:class:`ResumableSampler` is the one data order for both cases: a permutation seeded by
``(seed, epoch)`` and dealt round-robin to the ranks, as ``DistributedSampler`` does, plus a
start offset so a resumed run skips exactly the examples it already consumed.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from rmaat.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, number of processes, rank on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when a process group with more than one process is running."""
        return self.world_size > 1


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Start the process group if launched by ``torchrun``; return (DistInfo, device).

    ``device`` is the run config's ``train.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
    Under torchrun with CUDA each process takes GPU ``LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was requested but CUDA is not available; use --device cpu")
    if world_size > 1:
        if use_cuda:
            torch_device = torch.device("cuda", local_rank)
        else:
            torch_device = torch.device("cpu")
        if not dist.is_initialized():
            _import_world_capturing_modules()
            dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                    timeout=datetime.timedelta(minutes=30))
    else:
        # an explicit index: torch.cuda.set_device refuses a bare "cuda" device
        torch_device = (torch.device(device) if use_cuda and ":" in device
                        else torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank), torch_device


def _import_world_capturing_modules() -> None:
    """Import, before any process group exists, the torch modules that capture one at import.

    ``torch.distributed.nn.functional`` (imported by ``DistributedDataParallel`` on first use)
    has defaults ``group=group.WORLD``, evaluated when it is imported. Imported after
    ``init_process_group`` they hold the default group for good: ``destroy_process_group`` cannot
    free it, and its backend threads outlive :func:`shutdown_distributed` (see there why that
    aborts processes at exit). Imported first, the defaults are None.
    """
    import torch.distributed.nn  # noqa: F401
    import torch.nn.parallel.distributed  # noqa: F401


#: Name prefixes (``/proc/self/task/*/comm``) of the c10d threads that hold work items, and so
#: tensors with Python objects: gloo's workers and NCCL's watchdog and heartbeat monitor. (gloo's
#: transport loop, ``gloo_tcp_loop``, holds none; it can outlive the group for a moment.)
BACKEND_THREAD_PREFIXES = ("pt_gloo", "pt_nccl")


def backend_threads() -> list[str]:
    """Names of this process's live c10d backend threads (gloo workers, NCCL watchdog).

    Read from ``/proc`` (these are C++ threads, which ``threading`` does not list); empty where
    ``/proc`` does not exist.
    """
    names = []
    tasks = "/proc/self/task"
    for tid in os.listdir(tasks) if os.path.isdir(tasks) else ():
        try:
            with open(f"{tasks}/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:  # the thread ended while we looked
            continue
        if name.startswith(BACKEND_THREAD_PREFIXES):
            names.append(name)
    return sorted(names)


def shutdown_distributed(*, synchronize: bool = False) -> None:
    """Destroy the process group, if one was started, and join its threads now.

    The shutdown order matters. A gloo worker thread frees each finished collective's work item,
    whose tensors have Python objects, so freeing them takes the GIL. If that thread is still
    alive when the interpreter finalises, taking the GIL ends the thread inside a C++ destructor:
    ``std::terminate`` -> "terminate called without an active exception" -> SIGABRT, about one
    ``torchrun`` launch in ten on two CPU ranks (see ``scripts/torchrun_soak.py``). So:

    1. with ``synchronize`` (a normal end), every rank waits at a barrier first, so no
       collective is in flight anywhere when the groups are torn down (NCCL's destroy with a
       peer mid-collective can hang);
    2. the caller has dropped every other reference to the group (the ``DistributedDataParallel``
       wrapper holds one), so ``destroy_process_group`` drops the last and the backend's
       destructor joins its threads here, while Python is alive; a gloo worker waiting for the GIL
       gets it and finishes.

    Leave ``synchronize`` off after an error: a peer that has failed never reaches the barrier.
    A warning names the backend threads still alive afterwards (a reference was kept somewhere).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if synchronize:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
            torch.cuda.synchronize()
        else:
            dist.barrier()
    dist.destroy_process_group()
    survivors = backend_threads()
    if survivors:
        import sys

        print(f"warning: {len(survivors)} process-group thread(s) outlived shutdown ({', '.join(survivors)}); "
              "a reference to the group is still held, and the process may abort at exit", file=sys.stderr)


@contextlib.contextmanager
def distributed_session(device: str) -> Iterator[tuple[DistInfo, torch.device]]:
    """``with distributed_session(device) as (info, torch_device):`` one process group's life:
    :func:`init_distributed` on entry, :func:`shutdown_distributed` on exit (synchronised when
    the block ended normally)."""
    info, torch_device = init_distributed(device)
    try:
        yield info, torch_device
    except BaseException:
        shutdown_distributed()
        raise
    shutdown_distributed(synchronize=True)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op for one process) and return it."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (no-op for one process)."""
    if info.enabled:
        dist.barrier()


def gather_objects(obj: object, info: DistInfo) -> list[object]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


class ResumableSampler(Sampler[int]):
    """Seeded, sharded, resumable order of dataset indices.

    Epoch ``e`` uses ``randperm(n)`` from a generator seeded with ``seed + e`` (``shuffle``) or
    ``0..n-1``; the order is padded by wrapping around to a multiple of ``world_size`` and rank
    ``r`` takes positions ``r, r + W, ...`` (as ``DistributedSampler``). :meth:`set_position`
    picks the epoch and how many of this rank's indices to skip.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ConfigError("the training split is empty")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    @property
    def per_rank(self) -> int:
        """Indices each rank sees per epoch."""
        return -(-self.n // self.world_size)

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` beginning at this rank's ``start``-th index."""
        self.epoch, self.start = epoch, start

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's full index order for ``epoch``."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        order = (order * (-(-total // self.n)))[:total]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order(self.epoch)[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start


class ShardSampler(Sampler[int]):
    """Evaluation order: rank ``r`` takes ``r, r + W, ...`` with no padding, so summing counts
    over ranks counts every example exactly once."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, limit: int | None = None):
        self.indices = list(range(rank, n if limit is None else min(n, limit), world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
