"""Raw files of the datasets: IDX, pickled CIFAR batches, STL-10 binaries, image folders, and downloads.

Readers return uint8 numpy arrays ``[N, C, H, W]`` and int64 labels; the streaming sources (STL-10, image folders)
are map-style datasets that decode and resize one image at a time, for :class:`moco.splits.StreamingSplit`.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from moco.config import TrainConfig
from moco.sources import FASHION_FILES, IMAGE_EXTENSIONS, DatasetNotFoundError, download_root


def download(cfg: TrainConfig) -> Path:
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
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or not): magic, dims as big-endian int32, then uint8 data."""
    gz = path.with_name(path.name + ".gz")
    raw = gzip.decompress(gz.read_bytes()) if gz.is_file() else path.read_bytes()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def read_fashion(d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    xtr, ytr, xte, yte = (read_idx(d / f) for f in FASHION_FILES)
    return xtr[:, None], ytr, xte[:, None], yte


def read_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def read_cifar(name: str, d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def stl_images(path: Path) -> np.memmap:
    """STL-10 binary images as a read-only memmap ``[N, 3, 96, 96]`` stored column-major (transpose H/W on read)."""
    return np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)


def stl_labels(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1


# ---------------------------------------------------------------------------------------------------------------
# Streaming sources
# ---------------------------------------------------------------------------------------------------------------
def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
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


class StlSource(torch.utils.data.Dataset):
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
            self._maps = [stl_images(f) for f in self.files]
        j = 0
        while i >= self.lengths[j]:
            i -= self.lengths[j]
            j += 1
        img = torch.from_numpy(np.array(self._maps[j][i])).transpose(1, 2)
        return resize_uint8(img[None], self.size)[0], int(self.labels[sum(self.lengths[:j]) + i])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}


class FileSource(torch.utils.data.Dataset):
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


def scan_folder(d: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, cls in enumerate(classes):
        for root, _, files in os.walk(d / cls):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, f))
                    labels.append(label)
    return paths, labels
