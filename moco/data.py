"""Datasets by name: where to find them, the seeded validation split, and batches on the training device.

Two kinds of split:

* :class:`Split` -- small datasets (Fashion-MNIST, digits, CIFAR-10/100) are held in memory as one uint8 tensor
  ``[N, C, H, W]`` plus int64 labels, moved to the training device once (:meth:`Dataset.to`), and batched by
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

import dataclasses
import gzip
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from moco.config import TrainConfig
from moco.sources import (  # noqa: F401 - DatasetNotFoundError and check_dataset are re-exported
    FASHION_FILES, IMAGE_EXTENSIONS, DatasetNotFoundError, check_dataset, class_dirs, download_root, locate)

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
# Splits and the dataset record
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

    def to(self, device: Any) -> "Dataset":
        """Move the in-memory splits to ``device`` once (streamed splits stay where they are)."""
        moved = {s: getattr(self, s).to(device) for s in ("train", "val", "test")}
        labeled = moved["train"] if self.labeled_train is self.train else self.labeled_train.to(device)
        return Dataset(self.name, self.num_classes, self.channels, self.image_size, self.mean, self.std,
                       moved["train"], moved["val"], moved["test"], labeled)


def _download(cfg: TrainConfig) -> Path:
    import torchvision.datasets as tvd

    root = download_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    name = cfg.dataset
    if name == "fashion_mnist":
        for train in (True, False):
            tvd.FashionMNIST(str(root), train=train, download=True)
        return root / "FashionMNIST" / "raw"
    if name == "cifar10":
        tvd.CIFAR10(str(root), download=True)
        return root / "cifar-10-batches-py"
    if name == "cifar100":
        tvd.CIFAR100(str(root), download=True)
        return root / "cifar-100-python"
    if name == "stl10":
        tvd.STL10(str(root), split="test", download=True)
        return root / "stl10_binary"
    raise DatasetNotFoundError(f"dataset {name!r} cannot be downloaded")


# ---------------------------------------------------------------------------------------------------------------
# Readers (raw uint8 arrays)
# ---------------------------------------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or not): magic, dims as big-endian int32, then uint8 data."""
    gz = path.with_name(path.name + ".gz")
    raw = gzip.decompress(gz.read_bytes()) if gz.is_file() else path.read_bytes()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def _read_fashion(d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    xtr, ytr, xte, yte = (_read_idx(d / f) for f in FASHION_FILES)
    return xtr[:, None], ytr, xte[:, None], yte


def _read_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (values 0..16 -> 0..255); the last 20% (360 images) are the test set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    cut = len(x) - len(x) // 5
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _read_cifar(name: str, d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if name == "cifar10":
        train = [_unpickle(d / f"data_batch_{i}") for i in range(1, 6)]
        test = [_unpickle(d / "test_batch")]
        key = b"labels"
    else:
        train, test, key = [_unpickle(d / "train")], [_unpickle(d / "test")], b"fine_labels"

    def cat(parts: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)
        return x, np.concatenate([np.asarray(p[key], dtype=np.int64) for p in parts])

    return (*cat(train), *cat(test))


def _stl_images(path: Path) -> np.memmap:
    """STL-10 binary images as a read-only memmap ``[N, 3, 96, 96]`` stored column-major (transpose H/W on read)."""
    return np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)


def _stl_labels(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1


# ---------------------------------------------------------------------------------------------------------------
# Streaming sources
# ---------------------------------------------------------------------------------------------------------------
def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 ``[N,C,H,W]`` so the shorter side is ``size``, then centre-crop to ``size x size``."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    out = []
    for chunk in images.split(4096):
        x = F.interpolate(chunk.float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    x = torch.cat(out)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top:top + size, left:left + size].contiguous()


class _StlSource(torch.utils.data.Dataset):
    """STL-10 images from memory-mapped binaries (unlabeled first, then labeled train), resized to ``size``."""

    def __init__(self, files: Sequence[Path], labels: Sequence[np.ndarray], size: int):
        self.files, self.size = list(files), size
        self.lengths = [len(lab) for lab in labels]
        self.labels = np.concatenate(labels)
        self._maps: list[np.memmap] | None = None  # opened lazily in each worker

    def __len__(self) -> int:
        return int(sum(self.lengths))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._maps is None:
            self._maps = [_stl_images(f) for f in self.files]
        j = 0
        while i >= self.lengths[j]:
            i -= self.lengths[j]
            j += 1
        img = torch.from_numpy(np.array(self._maps[j][i])).transpose(1, 2)
        return _resize_uint8(img[None], self.size)[0], int(self.labels[sum(self.lengths[:j]) + i])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}


class _FileSource(torch.utils.data.Dataset):
    """Image files decoded with PIL, converted to RGB and resized (shorter side, centre crop) to ``size``."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], size: int):
        self.paths, self.labels, self.size = list(paths), list(labels), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = self.size / min(w, h)
            nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - self.size) // 2, (nh - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            arr = np.asarray(im, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), self.labels[i]


def _scan_folder(d: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, cls in enumerate(classes):
        for root, _, files in os.walk(d / cls):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, f))
                    labels.append(label)
    return paths, labels


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
    """Load ``cfg.dataset`` on the CPU (call :meth:`Dataset.to` to move it to the training device)."""
    name = cfg.dataset
    place = locate(cfg)
    if place is None and name != "digits":
        place = _download(cfg)
    if name in ("stl10", "imagefolder"):
        return _load_streaming(cfg, place)

    if name == "digits":
        xtr, ytr, xte, yte = _read_digits()
    elif name == "fashion_mnist":
        xtr, ytr, xte, yte = _read_fashion(place)
    else:
        xtr, ytr, xte, yte = _read_cifar(name, place)
    xtr, xte = torch.from_numpy(np.array(xtr, copy=True)), torch.from_numpy(np.array(xte, copy=True))
    ytr, yte = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))
    mean, std = KNOWN_STATS.get(name) or channel_stats(xtr)
    size = cfg.image_size or int(xtr.shape[-1])
    xtr, xte = _resize_uint8(xtr, size), _resize_uint8(xte, size)

    tr, va = split_indices(len(xtr), cfg.val_size, cfg.train_subset, cfg.split_seed, name)
    return Dataset(name=name, num_classes=NUM_CLASSES[name], channels=int(xtr.shape[1]), image_size=size,
                   mean=mean, std=std, train=Split(xtr[tr].contiguous(), ytr[tr]),
                   val=Split(xtr[va].contiguous(), ytr[va]), test=Split(xte, yte))


def _load_streaming(cfg: TrainConfig, place: Path) -> Dataset:
    name, workers = cfg.dataset, cfg.loader_workers
    mean, std = KNOWN_STATS[name]
    if name == "stl10":
        size = cfg.image_size or 96
        y_lab = _stl_labels(place / "train_y.bin")
        tr, va = split_indices(len(y_lab), cfg.val_size, None, cfg.split_seed, "stl10 (labeled train)")
        labeled = StreamingSplit(_StlSource([place / "train_X.bin"], [y_lab], size), tr, torch.from_numpy(y_lab)[tr],
                                 3, size, workers)
        val = StreamingSplit(labeled.source, va, torch.from_numpy(y_lab)[va], 3, size, workers).materialize()
        y_te = _stl_labels(place / "test_y.bin")
        test = StreamingSplit(_StlSource([place / "test_X.bin"], [y_te], size), torch.arange(len(y_te)),
                              torch.from_numpy(y_te), 3, size, workers)
        # pre-training: unlabeled images, then the labeled training images not held out for validation
        files, labels = [place / "train_X.bin"], [y_lab]
        if (place / "unlabeled_X.bin").is_file():
            n_unl = (place / "unlabeled_X.bin").stat().st_size // (3 * 96 * 96)
            files, labels = [place / "unlabeled_X.bin", place / "train_X.bin"], [np.full(n_unl, -1, np.int64), y_lab]
        src = _StlSource(files, labels, size)
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
    paths, labels = _scan_folder(train_dir, classes)
    src = _FileSource(paths, labels, size)
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
        tpaths, tlabels = _scan_folder(test_dir, classes)
        test = StreamingSplit(_FileSource(tpaths, tlabels, size), torch.arange(len(tpaths)),
                              torch.tensor(tlabels, dtype=torch.int64), 3, size, workers)
    train = StreamingSplit(src, tr, y[tr], 3, size, workers)
    val = StreamingSplit(src, va, y[va], 3, size, workers).materialize()
    return Dataset(name, len(classes), 3, size, mean, std, train, val, test)


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


def num_train_batches(split: Split | StreamingSplit, batch_size: int, world_size: int = 1) -> int:
    """Batches per epoch that :func:`train_batches` yields on each rank."""
    return (len(split) // world_size) // batch_size


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
    yield from _stream(split, batches.tolist(), device, with_ids=True)


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
    for images, _, labels in _stream(split, batches, device, with_ids=False):
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


def _stream(split: StreamingSplit, batches: list[list[int]], device: torch.device, with_ids: bool
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    workers = split.workers
    loader = torch.utils.data.DataLoader(
        _Items(split), batch_sampler=batches, num_workers=workers, collate_fn=_collate,
        pin_memory=device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None)
    for images, ids, labels in loader:
        yield images.to(device, non_blocking=True), ids.to(device), labels.to(device)
