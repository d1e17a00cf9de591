"""torchrun support shared by caching and training: rank, world size and barriers."""

from __future__ import annotations

import atexit
import gc
import os

import torch


def distributed() -> tuple[int, int]:
    """(rank, world size) under ``torchrun`` (initialising the process group: nccl on CUDA, else gloo), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # tear the group down together before the interpreter exits: a gloo group left alive at exit, or torn
        # down by one rank while another still works, can abort the process ("terminate called without an
        # active exception") after the work is done
        atexit.register(_shutdown)
    return dist.get_rank(), dist.get_world_size()


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        # DistributedDataParallel's reducer keeps the group alive from inside reference cycles, so without a
        # collection here the group is destroyed during interpreter finalisation, where a gloo worker thread
        # still holding tensors can abort the process.
        gc.collect()
        dist.barrier()  # leave together: a rank that tore down while another still worked aborted now and then
        dist.destroy_process_group()


def barrier(world: int) -> None:
    """Wait for every rank (no-op in a single process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` as a checked :class:`torch.device`; under
    ``torchrun`` a bare ``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``)."""
    from sae_vit.core.errors import SaeVitError

    text = str(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda" and "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        text = f"cuda:{os.environ['LOCAL_RANK']}"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise SaeVitError(f"Unknown --device {text!r}; use auto, cpu, cuda or cuda:N.") from exc
    if dev.type not in ("cpu", "cuda", "mps"):
        raise SaeVitError(f"Unsupported --device {text!r}; use auto, cpu, cuda or cuda:N.")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise SaeVitError(f"--device {text} asks for a GPU this machine does not have; use --device cpu or auto.")
    return dev
