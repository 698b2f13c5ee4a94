"""torch.distributed set-up for ``torchrun`` launches (one node or many) and the helpers
the training loop needs: who am I, am I rank 0, average a value, average gradients.

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` for every process; without them pixelwise runs as a single process.
The backend is NCCL when training on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
HINT = ("launch with `torchrun --nproc-per-node N -m pixelwise train CONFIG` (it sets all of them), "
        "or unset them for a single-process run")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # setup() created the process group, so cleanup() ends it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, logs and plots."""
        return self.rank == 0


def _int_var(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"environment variable {name}={env[name]!r} is not an integer; {HINT}") from None


def read_launch_env(env: Mapping[str, str], *, device_type: str, cuda_count: int) -> tuple[int, int, int]:
    """Check the launcher's variables; return ``(rank, local_rank, world_size)``.

    Raises :class:`ConfigError` naming the inconsistency: ``RANK`` without ``WORLD_SIZE``
    (or the reverse), ``LOCAL_RANK`` or ``MASTER_ADDR``/``MASTER_PORT`` missing in a
    multi-process job, ranks out of range, or more local processes than GPUs with NCCL.
    """
    present = [k for k in ("RANK", "WORLD_SIZE") if k in env]
    if not present:
        return 0, 0, 1
    if len(present) == 1:
        missing = "WORLD_SIZE" if present == ["RANK"] else "RANK"
        raise ConfigError(f"{present[0]} is set but {missing} is not; {HINT}")
    rank, world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent (need 0 <= RANK < WORLD_SIZE); {HINT}")
    if world == 1:
        return 0, 0, 1
    missing = [k for k in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; {HINT}")
    local_rank = _int_var(env, "LOCAL_RANK")
    if local_rank < 0 or local_rank > rank:
        raise ConfigError(f"LOCAL_RANK={local_rank} is impossible for RANK={rank}; {HINT}")
    if device_type == "cuda":
        local_world = _int_var(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world
        if local_rank >= cuda_count or local_world > cuda_count:
            raise ConfigError(f"{local_world} processes on this node (LOCAL_RANK={local_rank}) but only "
                              f"{cuda_count} CUDA device(s): NCCL needs one GPU per process; lower "
                              f"--nproc-per-node to {cuda_count} or train on the CPU (train.device: cpu, gloo)")
    return rank, local_rank, world


def setup(device_name: str) -> DistEnv:
    """Join the process group if launched by ``torchrun``; pick this process's device.

    ``device_name`` is ``train.device`` (``auto``, ``cpu``, ``cuda``). With CUDA each
    process uses GPU ``LOCAL_RANK``. Idempotent: a group that is already initialised is
    reused (tests, notebooks).
    """
    want_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {device_name!r} but no CUDA device is available; use auto or cpu")
    rank, local_rank, world = read_launch_env(os.environ, device_type="cuda" if want_cuda else "cpu",
                                              cuda_count=torch.cuda.device_count())
    if want_cuda:
        index = local_rank if world > 1 else (torch.device(device_name).index or 0)
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = world > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if want_cuda else "gloo", rank=rank, world_size=world,
                                device_id=device if want_cuda else None)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=device, owns_group=owns)


def cleanup(env: DistEnv) -> None:
    """Leave the process group, only if :func:`setup` created it (a caller's group stays, so a
    script may train several times in one ``torchrun`` job)."""
    if env.distributed and env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op in a single process)."""
    if env.distributed:
        dist.barrier()


def mean_across(env: DistEnv, value: float) -> float:
    """The mean of a Python float over all ranks (for logging the global loss)."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / env.world_size


def any_across(env: DistEnv, flag: bool) -> bool:
    """True if ``flag`` is true on any rank (a stop request must stop every rank at the same step)."""
    if not env.distributed:
        return flag
    t = torch.tensor([int(flag)], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def average_gradients(env: DistEnv, module: nn.Module) -> None:
    """All-reduce-average the gradients of a module that is not wrapped in DDP (the GAN discriminator)."""
    if not env.distributed:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(env.world_size)


def convert_sync_bn(env: DistEnv, model: nn.Module, *, enabled: bool) -> nn.Module:
    """Replace BatchNorm layers by SyncBatchNorm (statistics over the global batch, Zhang et
    al. 2018, EncNet) in a multi-process job; call before the optimiser is built."""
    if not (enabled and env.distributed):
        return model
    if env.device.type != "cuda":
        raise ConfigError("train.sync_bn is true but this job trains on the CPU; PyTorch's SyncBatchNorm only "
                          "runs on CUDA. Set train.sync_bn: false, or use a model without BatchNorm "
                          "(e.g. model.args.norm: group or none) for multi-process CPU training")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_model(env: DistEnv, model: nn.Module) -> nn.Module:
    """``DistributedDataParallel`` around ``model``; ``model`` itself when not distributed.
    Parameters with ``requires_grad=False`` at wrap time are not synchronised, so the
    trainer re-wraps when it unfreezes the encoder."""
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
