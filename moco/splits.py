"""Splits of a dataset and their batches on the training device.

* :class:`Split` -- an in-memory split (uint8 images and int64 labels), batched by indexing on its device.
* :class:`StreamingSplit` -- a split decoded and resized by DataLoader workers, arriving as the same uint8 batches.
* :func:`train_batches` -- ``(images, ids, labels)`` per step of one epoch of one rank: a per-epoch permutation seeded
  by ``(seed, epoch)``, sharded ``perm[rank::world_size]``, ``drop_last``.
* :func:`eval_batches` -- ``(images, labels)`` in split order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import torch


# ---------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Split:
    """An in-memory split: uint8 images ``[N, C, H, W]`` and int64 labels ``[N]`` (-1 = unlabeled)."""

    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device: Any) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, index: torch.Tensor) -> "Split":
        """The images at positions ``index`` (int64 [M])."""
        index = index.to(self.images.device)
        return Split(self.images[index], self.labels[index])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device


@dataclass
class StreamingSplit:
    """A split read through DataLoader workers: ``source[indices[i]]`` is ``(uint8 [C,S,S], label)``.

    ``ids`` yielded for it are positions ``0..len-1`` in this split, like for :class:`Split`.
    """

    source: Any  # a map-style dataset returning (uint8 tensor [C, S, S], int label)
    indices: torch.Tensor  # int64 [N] into source
    labels: torch.Tensor  # int64 [N]
    channels: int
    image_size: int
    workers: int = 2

    def to(self, device: Any) -> "StreamingSplit":  # nothing is resident; batches are moved as they arrive
        return self

    def subset(self, index: torch.Tensor) -> "StreamingSplit":
        """The images at positions ``index`` (int64 [M]), still streamed."""
        return dataclasses.replace(self, indices=self.indices[index], labels=self.labels[index])

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def materialize(self) -> Split:
        """Read every image into memory (for small streamed splits such as a validation set)."""
        images = torch.empty(len(self), self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        start = 0
        for imgs, _ in eval_batches(self, 256):
            images[start:start + len(imgs)] = imgs
            start += len(imgs)
        return Split(images, self.labels.clone())


# ---------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------
def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``range(n)`` for one epoch: a function of ``(seed, epoch)`` only (same on all ranks)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def shard_batches(n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """This rank's batches of split positions, ``[num_batches, batch_size]`` (same ``num_batches`` on every rank)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
    per_rank = n // world_size
    num = per_rank // batch_size
    if num == 0:
        raise ValueError(f"batch_size={batch_size} per worker x world_size={world_size} is more than the {n} "
                         "training images: no full batch; lower batch_size or raise train_subset")
    shard = epoch_permutation(n, seed, epoch)[rank::world_size]
    return shard[:num * batch_size].view(num, batch_size)


def train_batches(split: Split | StreamingSplit, batch_size: int, *, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1, device: Any = "cpu"
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(images uint8 [b,C,H,W], ids int64 [b], labels int64 [b])`` on ``device`` for one epoch of one rank.

    ``batch_size`` is the per-worker batch. ``ids`` are positions in ``split`` (stable image identity).
    """
    batches = shard_batches(len(split), batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size)
    device = torch.device(device)
    if isinstance(split, Split):
        batches = batches.to(split.images.device)
        for ids in batches:
            images, labels = split.images[ids], split.labels[ids]
            yield images.to(device, non_blocking=True), ids.to(device), labels.to(device)
        return
    yield from _stream(split, batches.tolist(), device)


def eval_batches(split: Split | StreamingSplit, batch_size: int, device: Any = "cpu"
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images uint8, labels int64)`` on ``device`` in split order (no shuffling; last batch may be short)."""
    device = torch.device(device)
    if isinstance(split, Split):
        for start in range(0, len(split), batch_size):
            yield (split.images[start:start + batch_size].to(device, non_blocking=True),
                   split.labels[start:start + batch_size].to(device))
        return
    positions = list(range(len(split)))
    batches = [positions[i:i + batch_size] for i in range(0, len(positions), batch_size)]
    for images, _, labels in _stream(split, batches, device):
        yield images, labels


class _Items(torch.utils.data.Dataset):
    def __init__(self, split: StreamingSplit):
        self.source, self.indices = split.source, split.indices.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, pos: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.source[self.indices[pos]]
        return image, pos, label


def _collate(items: list[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, ids, labels = zip(*items)
    return torch.stack(images), torch.tensor(ids, dtype=torch.int64), torch.tensor(labels, dtype=torch.int64)


def _stream(split: StreamingSplit, batches: list[list[int]], device: torch.device
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    workers = split.workers
    loader = torch.utils.data.DataLoader(
        _Items(split), batch_sampler=batches, num_workers=workers, collate_fn=_collate,
        pin_memory=device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None)
    for images, ids, labels in loader:
        yield images.to(device, non_blocking=True), ids.to(device), labels.to(device)
