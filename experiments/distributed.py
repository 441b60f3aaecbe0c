"""torch.distributed plumbing for the experiments: one context object, no global state elsewhere.

Under ``torchrun`` (WORLD_SIZE > 1 in the environment) :func:`init_distributed` joins the process
group (gloo on CPU, NCCL on CUDA) with a finite timeout, so a rank that dies makes the others
fail with a clear message instead of hanging forever; without torchrun it returns a
single-process context whose collectives are the identity.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import UserError

__all__ = ["DistContext", "init_distributed", "partition", "rank_seed", "shard_batch"]


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, results and plots."""
        return self.rank == 0

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def agreed(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on every rank; a UserError on any rank is raised on all of them (otherwise the
        healthy ranks would wait in their next collective until the timeout)."""
        error, value = None, None
        try:
            value = fn()
        except UserError as exc:
            error = str(exc)
        errors = [e for e in self.all_gather_object(error) if e]
        if errors:
            raise UserError(errors[0])
        return value

    def shutdown(self, *, clean: bool = True) -> None:
        """Leave the process group; after a clean run, in step with the other ranks.

        Without the barrier a rank can tear down its gloo threads while a peer is still sending
        (seen once in the DDP tests: a rank aborted with "terminate called without an active
        exception" after finishing its work). After an error there is no barrier: the
        peers may never reach it.
        """
        if self.enabled and torch.distributed.is_initialized():
            if clean:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise ValueError(f"expected an integer in ${name}, got {os.environ.get(name)!r}") from None


def init_distributed(device: torch.device, *, timeout_s: float = 600.0) -> DistContext:
    """Join the torchrun process group if there is one; else a single-process context.

    Args:
        device: the requested device; on CUDA each rank takes ``cuda:LOCAL_RANK``.
        timeout_s: collective timeout; a dead peer turns into an error after this long.

    Returns:
        The :class:`DistContext` for this process.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext(device=device)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend, timeout=datetime.timedelta(seconds=timeout_s), rank=rank, world_size=world
        )
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend, device=device)


def rank_seed(seed: int, rank: int, stream: int = 0) -> int:
    """A 63-bit seed for (seed, rank, stream) from NumPy's SeedSequence: distinct ranks and
    streams get statistically independent generators, and rank 0 of a 1-process run is stable."""
    state = np.random.SeedSequence([int(seed), int(rank), int(stream)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def shard_batch(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous share of a global batch of indices (sizes differ by at most one)."""
    n = indices.shape[0]
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    bounds = [n * r // world_size for r in range(world_size + 1)]
    return indices[bounds[rank] : bounds[rank + 1]]


def partition(items: Sequence[Any], rank: int, world_size: int) -> list:
    """Round-robin share of a list of jobs (a sweep grid) for this rank."""
    return list(items[rank::world_size])
