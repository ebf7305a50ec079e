"""Several processes, one run: `torchrun --nproc-per-node N -m asymco train ...`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them a run is one process and every
function here is a no-op. Each net is wrapped in DistributedDataParallel (NCCL on GPUs, gloo on
CPUs). What DDP does not cover is done here:

- per-sample state (selection counters, EMA label distributions): each sample is trained on by
  exactly one rank per epoch, so each rank updates only its own rows; `sync_rows` then gives
  every rank every rank's rows (an all-reduce of the owners' values), at epoch ends and before a
  mid-epoch checkpoint;
- figures that must describe the global batch (a method's hit or selection counts) are
  summed over ranks with `global_sum` inside the training step;
- only rank 0 writes files and prints; `on_main` runs such work there and hands its result, or
  its error, to every rank, so a failure on rank 0 never leaves the others waiting.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from asymco.errors import UserError

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False
    """This run started the process group (and ends it); False when the caller did."""

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def global_sum(self, value: Tensor) -> Tensor:
        """`value` summed over all ranks (a new tensor; no gradient flows through it)."""
        if not self.enabled:
            return value
        total = value.detach().clone()
        tdist.all_reduce(total)
        return total

    def global_min(self, value: Tensor) -> Tensor:
        if not self.enabled:
            return value
        out = value.detach().clone()
        tdist.all_reduce(out, op=tdist.ReduceOp.MIN)
        return out

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only and return its result on every rank. An error there is
        raised on every rank (a `UserError` keeps its sentence), so no rank waits forever."""
        if not self.enabled:
            return fn()
        box: list = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except UserError as err:
                box[0] = ("user", str(err))
            except BaseException as err:
                box[0] = ("error", f"rank 0 failed: {type(err).__name__}: {err}")
                tdist.broadcast_object_list(box, src=0)
                raise
        tdist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "user":
            raise UserError(value)
        if kind == "error":
            raise RuntimeError(value)
        return value

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` in DistributedDataParallel (itself when running alone)."""
        if not self.enabled:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)


@torch.no_grad()  # per-sample parameters are leaves that require grad: no in-place copy else
def sync_rows(buffers: list[Tensor], mine: Tensor, touched: Tensor, dist: Dist) -> None:
    """Make per-sample buffers (and per-sample parameters) identical on every rank.

    `mine` (N,) marks the rows this rank updated since the ranks last agreed, `touched` the rows
    any rank updated; every touched row has exactly one owner (the sharding guarantees it), so the
    sum over ranks of the owners' values is the row's new value.
    """
    if not dist.enabled:
        return
    for buf in buffers:
        shape = (-1,) + (1,) * (buf.dim() - 1)
        wide = buf.to(torch.uint8) if buf.dtype == torch.bool else buf
        owned = torch.where(mine.view(shape), wide, torch.zeros_like(wide))
        tdist.all_reduce(owned)
        buf.copy_(torch.where(touched.view(shape), owned.to(buf.dtype), buf))


def init_distributed(device_name: str) -> tuple[Dist, str]:
    """Join the process group torchrun describes, if any. Returns the Dist and the device name
    this rank trains on (a GPU per local rank when the run uses GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device_name
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (
        device_name == "auto" and torch.cuda.is_available()
    )
    if use_cuda:
        if not torch.cuda.is_available():
            raise UserError(f"train.device is {device_name!r} but no CUDA GPU is available")
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"local rank {local_rank} has no GPU: this node has "
                f"{torch.cuda.device_count()}; start at most that many processes per node"
            )
        torch.cuda.set_device(local_rank)
        device_name, backend = f"cuda:{local_rank}", "nccl"
    else:
        device_name, backend = "cpu", "gloo"
    owns = not tdist.is_initialized()
    if owns:
        tdist.init_process_group(backend=backend)
    logger.debug("rank %d of %d on %s (%s)", rank, world, device_name, backend)
    return Dist(rank, world, local_rank, backend, owns), device_name


def shutdown(dist: Dist) -> None:
    if dist.owns_group and tdist.is_initialized():
        tdist.destroy_process_group()


def state_digest(buffers: list[Tensor]) -> str:
    """A SHA-256 of per-sample buffers: equal digests on every rank show the state agrees."""
    sha = hashlib.sha256()
    for buf in buffers:
        sha.update(buf.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()
