"""Synchronous data parallelism for the torch training loops (SPEC section 10).

Under Ray Train (pipeline/scale.py, `train.backend: ray`) every worker runs the same training code
on the same data with the same seed; torch.distributed is initialised by Ray's TorchTrainer (gloo on
CPU, nccl on GPU). The loops then differ from the one-process path in three places only:

    batches = shard(batches)           rank r takes rows r, r+W, ... of every batch of the same shuffle
    loss.backward(); average_gradients(model.parameters())    all-reduce mean, as DDP does
    stop = agree(stop)                 any rank's stop (a time budget) stops every rank

and `sync_rng` makes every rank start each epoch from rank 0's generator state, so that the
shuffle stays the same on all ranks whatever each rank's steps drew. Parameters start equal
because every rank builds the model from the same seed (`broadcast_parameters` makes sure).

Outside a process group (world size 1) every function is a no-op: the local path is unchanged,
which is why 1 Ray worker gives the same model as the local path (tests/test_ray_train.py).
The models call their sub-modules directly rather than one `forward`, so torch's
DistributedDataParallel wrapper (which hooks `forward`) does not fit; averaging the gradients
after backward is the same arithmetic.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if not _active():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def is_main() -> bool:
    return world()[0] == 0


def shard(batches: Sequence[np.ndarray]) -> list[np.ndarray]:
    """This rank's rows of every batch: rows rank, rank+W, ... of each. The batch size stays the
    global one (the same steps per epoch and the same hyper-parameters as one process); a batch
    with fewer rows than ranks is dropped on every rank."""
    rank, size = world()
    if size == 1:
        return list(batches)
    return [np.asarray(b)[rank::size] for b in batches if len(b) >= size]


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over the ranks (one flat all-reduce). A parameter that
    got no gradient on any rank keeps None (the optimiser then skips it, as in one process);
    one that got a gradient on some ranks only counts zeros for the others."""
    if not _active():
        return
    params = [p for p in params if p.requires_grad]
    flat = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
            for p in params]
    has = torch.tensor([p.grad is not None for p in params], dtype=flat[0].dtype, device=flat[0].device)
    buf = torch.cat(flat + [has])
    torch.distributed.all_reduce(buf)
    buf /= torch.distributed.get_world_size()
    offset = 0
    for p, flag in zip(params, buf[-len(params):].tolist()):
        part = buf[offset: offset + p.numel()].view_as(p)
        offset += p.numel()
        if flag > 0:
            p.grad = part.clone()


def agree(flag: bool) -> bool:
    """True on every rank when it is true on any rank."""
    if not _active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def sync_rng(rng: np.random.Generator) -> None:
    """Give every rank rank 0's generator state."""
    if not _active():
        return
    state = [rng.bit_generator.state]
    torch.distributed.broadcast_object_list(state, src=0)
    rng.bit_generator.state = state[0]


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not _active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(t.data, src=0)
