"""KeyQueue: the K most recent (detached) keys, with the image id each came from and, for diagnostics, its label.

A ring buffer with a write pointer ``ptr`` and a fill count ``filled``; any number of keys N <= K can be enqueued
(wrap-around, no ``K % batch`` requirement). Unfilled slots are never returned by :meth:`KeyQueue.snapshot`, so they
never act as negatives (no random fake keys). All state lives in persistent buffers, so the queue travels in
``state_dict`` and checkpoints. Under ``torch.distributed`` (initialised, world size > 1) :meth:`KeyQueue.enqueue`
first all-gathers the keys, ids and labels of every rank (same N on each, concatenated in rank order), so every rank
holds the same queue.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["KeyQueue", "gather_from_ranks"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def gather_from_ranks(x: Tensor) -> Tensor:
    """Concatenate ``x`` [N, ...] from all ranks in rank order -> [world * N, ...] (no gradient); ``x`` alone
    otherwise."""
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def _view_major(x: Tensor, views: int) -> Tensor:
    """Reorder gathered rows [rank][view][i] -> [view][rank][i] (a no-op for one rank or one view)."""
    if views == 1 or not _distributed():
        return x
    world = dist.get_world_size()
    return x.view(world, views, -1, *x.shape[1:]).transpose(0, 1).reshape(x.shape)


class KeyQueue(nn.Module):
    """Ring buffer of ``size`` keys of dimension ``dim``.

    Buffers: ``keys`` [K, D] float, ``ids`` [K] long, ``labels`` [K] long (-1 = unknown), ``ptr`` and ``filled``
    (0-d long). Move it with the model (``.to(device)``).
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"size = {size!r} is not allowed: expected an integer >= 1")
        if dim < 1:
            raise ValueError(f"dim = {dim!r} is not allowed: expected an integer >= 1")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.filled)

    def snapshot(self) -> tuple[Tensor, Tensor, Tensor]:
        """(keys [K', D], ids [K'], labels [K']): copies of the filled entries (K' = ``len(self)``).

        The filled entries are always the first K' slots (slots fill in order before the pointer wraps); their order
        does not matter to the loss. Copies (as official MoCo's ``queue.clone().detach()``), because the loss keeps the
        keys for its backward pass while :meth:`enqueue` overwrites the buffers in place in the same step.
        """
        n = int(self.filled)
        return self.keys[:n].clone(), self.ids[:n].clone(), self.labels[:n].clone()

    @torch.no_grad()
    def enqueue(self, keys: Tensor, ids: Tensor, labels: Tensor | None = None, *, views: int = 1) -> None:
        """Write keys [N, D], ids [N] (and labels [N], default -1) at the pointer, wrapping around; gathers under DDP.

        ``views``: the rows are ``views`` equal blocks (e.g. ``cat(k1, k2)``). After the gather, entries are put in
        view-major, then rank, order, exactly as one process holding the global batch would enqueue them; so which
        entries a later partial overwrite evicts does not depend on the number of ranks.
        Raises ValueError when the (gathered) N exceeds the queue size or shapes disagree.
        """
        if views < 1 or keys.shape[0] % views:
            raise ValueError(f"views = {views!r} is not allowed: expected an integer >= 1 dividing N = {keys.shape[0]}")
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys.shape = {tuple(keys.shape)} is not allowed: expected [N, {self.dim}]")
        if ids.shape != (keys.shape[0],):
            raise ValueError(f"ids.shape = {tuple(ids.shape)} is not allowed: expected [{keys.shape[0]}]")
        if labels is None:
            labels = torch.full_like(ids, -1)
        elif labels.shape != ids.shape:
            raise ValueError(f"labels.shape = {tuple(labels.shape)} is not allowed: expected [{keys.shape[0]}]")
        keys = _view_major(gather_from_ranks(keys.detach().to(self.keys.dtype)), views)
        ids = _view_major(gather_from_ranks(ids.to(self.ids.device, torch.long)), views)
        labels = _view_major(gather_from_ranks(labels.to(self.labels.device, torch.long)), views)
        n = keys.shape[0]
        if n > self.size:
            raise ValueError(f"keys per enqueue = {n} is not allowed: expected at most the queue size K = {self.size} "
                             "(K must hold at least one global batch of keys)")
        slots = (int(self.ptr) + torch.arange(n, device=self.keys.device)) % self.size
        self.keys.index_copy_(0, slots, keys)
        self.ids.index_copy_(0, slots, ids)
        self.labels.index_copy_(0, slots, labels)
        self.ptr.fill_((int(self.ptr) + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
