"""Datasets by name: loading, the seeded validation split, and the dataset record.

Files are read by :mod:`moco.readers`; the splits and their batches are :mod:`moco.splits` (re-exported here).

Two kinds of split:

* :class:`Split` -- small datasets (Fashion-MNIST, digits, CIFAR-10/100) are held in memory as one uint8 tensor
  ``[N, C, H, W]`` plus int64 labels, moved to the training device once (:meth:`Split.to`), and batched by
  indexing on the device: no DataLoader, no per-image Python work.
* :class:`StreamingSplit` -- large datasets (STL-10 unlabeled, image folders) are decoded and resized to a fixed
  ``image_size`` by DataLoader workers and arrive as the same uint8 batches.

Batching (both kinds, same tuples):

* :func:`train_batches` -- ``(images uint8 [b,C,H,W] on device, ids int64 [b], labels int64 [b])`` per step, from a
  per-epoch permutation seeded by ``(seed, epoch)`` (identical on every rank), sharded ``perm[rank::world_size]``,
  ``drop_last`` so every rank takes the same number of equal batches. ``ids`` index the train split (stable image
  identity, used by the MoCo queue to mask an image's own keys). Labels are -1 for unlabeled images (STL-10).
* :func:`eval_batches` -- ``(images, labels)`` in order, no shuffling, the last batch may be short (kNN features).
  Callers may also slice ``Split.images`` directly.

Where data is looked for, and the error when it is missing: :mod:`moco.sources` (re-exported here).

The validation split is carved from the training set with ``cfg.split_seed`` (fixed across a study's trials and
seeds, so every trial is scored on the same images); ``cfg.train_subset`` then keeps a seeded subset of the
remaining training images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from moco.config import TrainConfig
from moco.readers import (FileSource, StlSource, download, read_cifar, read_digits, read_fashion, resize_uint8,
                          scan_folder, stl_labels)
from moco.sources import (  # noqa: F401 - DatasetNotFoundError and check_dataset are re-exported
    DatasetNotFoundError, check_dataset, class_dirs, locate, obtain)
from moco.splits import Split, StreamingSplit, eval_batches, train_batches  # noqa: F401 - re-exported

#: per-channel mean/std on the 0..1 scale (the usual published values; digits and image folders are computed/ImageNet)
KNOWN_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet statistics
}
NUM_CLASSES = {"fashion_mnist": 10, "digits": 10, "cifar10": 10, "cifar100": 100, "stl10": 10}

# ---------------------------------------------------------------------------------------------------------------
# The dataset record
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A loaded dataset. ``mean``/``std`` are per channel on the 0..1 scale.

    ``labeled_train`` is the labeled training data for the kNN memory bank / linear probe: the train split itself,
    except for STL-10, whose train split is mostly unlabeled (it is then the labeled train images minus validation).
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split | StreamingSplit
    val: Split
    test: Split | StreamingSplit
    labeled_train: Split | StreamingSplit | None = field(default=None)

    def __post_init__(self) -> None:
        if self.labeled_train is None:
            self.labeled_train = self.train


# ---------------------------------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------------------------------
def split_indices(n: int, val_size: int, train_subset: int | None, seed: int,
                  name: str = "dataset") -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, disjoint ``(train, val)`` index sets over ``n`` training images, each sorted ascending."""
    if val_size >= n:
        raise ValueError(f"val_size={val_size} leaves no training images: {name} has {n} training images; "
                         f"set val_size below {n} (--set val_size=...)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = perm[:val_size], perm[val_size:]
    if train_subset is not None:
        if train_subset > len(train):
            raise ValueError(f"train_subset={train_subset} is more than the {len(train)} training images of {name} "
                             f"left after val_size={val_size}")
        train = train[:train_subset]
    return train.sort().values, val.sort().values


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 ``[N,C,H,W]`` images on the 0..1 scale (chunked, float64 sums)."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for chunk in images.split(8192):
        x = chunk.to(torch.float64).div_(255.0)
        s += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------
def load_dataset(cfg: TrainConfig) -> Dataset:
    """Load ``cfg.dataset`` on the CPU (the engine moves the in-memory training split with :meth:`Split.to`)."""
    name = cfg.dataset
    place = obtain(cfg, download)  # a download under a file lock: concurrent workers download once
    if name in ("stl10", "imagefolder"):
        return _load_streaming(cfg, place)

    if name == "digits":
        xtr, ytr, xte, yte = read_digits()
    elif name == "fashion_mnist":
        xtr, ytr, xte, yte = read_fashion(place)
    else:
        xtr, ytr, xte, yte = read_cifar(name, place)
    xtr, xte = torch.from_numpy(np.array(xtr, copy=True)), torch.from_numpy(np.array(xte, copy=True))
    ytr, yte = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))
    mean, std = KNOWN_STATS.get(name) or channel_stats(xtr)
    size = cfg.image_size or int(xtr.shape[-1])
    xtr, xte = resize_uint8(xtr, size), resize_uint8(xte, size)

    tr, va = split_indices(len(xtr), cfg.val_size, cfg.train_subset, cfg.split_seed, name)
    return Dataset(name=name, num_classes=NUM_CLASSES[name], channels=int(xtr.shape[1]), image_size=size,
                   mean=mean, std=std, train=Split(xtr[tr].contiguous(), ytr[tr]),
                   val=Split(xtr[va].contiguous(), ytr[va]), test=Split(xte, yte))


def _load_streaming(cfg: TrainConfig, place: Path) -> Dataset:
    name, workers = cfg.dataset, cfg.loader_workers
    mean, std = KNOWN_STATS[name]
    if name == "stl10":
        size = cfg.image_size or 96
        y_lab = stl_labels(place / "train_y.bin")
        tr, va = split_indices(len(y_lab), cfg.val_size, None, cfg.split_seed, "stl10 (labeled train)")
        labeled = StreamingSplit(StlSource([place / "train_X.bin"], [y_lab], size), tr, torch.from_numpy(y_lab)[tr],
                                 3, size, workers)
        val = StreamingSplit(labeled.source, va, torch.from_numpy(y_lab)[va], 3, size, workers).materialize()
        y_te = stl_labels(place / "test_y.bin")
        test = StreamingSplit(StlSource([place / "test_X.bin"], [y_te], size), torch.arange(len(y_te)),
                              torch.from_numpy(y_te), 3, size, workers)
        # pre-training: unlabeled images, then the labeled training images not held out for validation
        files, labels = [place / "train_X.bin"], [y_lab]
        if (place / "unlabeled_X.bin").is_file():
            n_unl = (place / "unlabeled_X.bin").stat().st_size // (3 * 96 * 96)
            files, labels = [place / "unlabeled_X.bin", place / "train_X.bin"], [np.full(n_unl, -1, np.int64), y_lab]
        src = StlSource(files, labels, size)
        offset = len(src) - len(y_lab)
        idx = torch.cat([torch.arange(offset), tr + offset])
        if cfg.train_subset is not None:
            gen = torch.Generator().manual_seed(cfg.split_seed + 1)
            keep = torch.randperm(len(idx), generator=gen)[:cfg.train_subset]
            idx = idx[keep.sort().values]
        train = StreamingSplit(src, idx, torch.from_numpy(src.labels)[idx], 3, size, workers)
        return Dataset(name, 10, 3, size, mean, std, train, val, test, labeled_train=labeled)

    # imagefolder: root/train + root/val|test when present, else one folder (val and test both carved from it)
    size = cfg.image_size or 224
    train_dir = place / "train" if (place / "train").is_dir() else place
    test_dir = next((place / s for s in ("test", "val") if train_dir != place and (place / s).is_dir()), None)
    classes = [p.name for p in class_dirs(train_dir)]
    paths, labels = scan_folder(train_dir, classes)
    src = FileSource(paths, labels, size)
    y = torch.tensor(labels, dtype=torch.int64)
    if test_dir is None:
        n_test = min(cfg.val_size, len(paths) // 5) or len(paths) // 5
        perm = torch.randperm(len(paths), generator=torch.Generator().manual_seed(cfg.split_seed + 7919))
        te, rest = perm[:n_test].sort().values, perm[n_test:]
        tr_rel, va_rel = split_indices(len(rest), cfg.val_size, cfg.train_subset, cfg.split_seed, "imagefolder")
        tr, va = rest[tr_rel].sort().values, rest[va_rel].sort().values
        test = StreamingSplit(src, te, y[te], 3, size, workers)
    else:
        tr, va = split_indices(len(paths), cfg.val_size, cfg.train_subset, cfg.split_seed, "imagefolder")
        tpaths, tlabels = scan_folder(test_dir, classes)
        test = StreamingSplit(FileSource(tpaths, tlabels, size), torch.arange(len(tpaths)),
                              torch.tensor(tlabels, dtype=torch.int64), 3, size, workers)
    train = StreamingSplit(src, tr, y[tr], 3, size, workers)
    val = StreamingSplit(src, va, y[va], 3, size, workers).materialize()
    return Dataset(name, len(classes), 3, size, mean, std, train, val, test)
