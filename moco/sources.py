"""Where each dataset is found, and the one clear error when it is not (no torch: the study driver imports this).

Looked for, in order: ``cfg.data_root``, ``$MOCO_DATA_DIR``, Debian's package location (Fashion-MNIST:
``apt-get install dataset-fashion-mnist``), the download cache ``~/.cache/mocostudy/data``; then, with
``download: true``, a torchvision download (by :func:`moco.data.load_dataset`) into the first of those roots.
Missing data raises one :class:`DatasetNotFoundError` naming every place searched and how to provide the data.
:func:`check_dataset` does only these existence checks, so a CLI or study can call it before any worker starts.

Downloads are serialised: :func:`obtain` looks and downloads under an exclusive ``fcntl`` lock on
``<download root>/.mocostudy-download.lock`` (:func:`download_lock`), so processes sharing a download root (the Train
workers of a node, or of several nodes on one shared file system) download once, one at a time, and never read
files that another process is still writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Callable, Iterator

from moco.config import ConfigError, TrainConfig

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_CACHE = Path.home() / ".cache" / "mocostudy" / "data"
ENV_VAR = "MOCO_DATA_DIR"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
#: sub-folders of a root that may hold each dataset (torchvision's layout included)
_SUBDIRS = {
    "fashion_mnist": (".", "fashion_mnist", "fashion-mnist", "FashionMNIST/raw", "fashion_mnist/FashionMNIST/raw"),
    "cifar10": ("cifar-10-batches-py", "cifar10/cifar-10-batches-py"),
    "cifar100": ("cifar-100-python", "cifar100/cifar-100-python"),
    "stl10": ("stl10_binary", "stl10/stl10_binary"),
    "imagefolder": (".",),
}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is in none of the places searched; the message lists them and how to provide the data."""


def search_roots(cfg: TrainConfig) -> list[Path]:
    """The roots searched, in order (Debian's location is added for Fashion-MNIST by :func:`locate`)."""
    roots = []
    if cfg.data_root:
        roots.append(Path(cfg.data_root).expanduser())
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]).expanduser())
    return roots


def download_root(cfg: TrainConfig) -> Path:
    roots = search_roots(cfg)
    return roots[0] if roots else DOWNLOAD_CACHE


def _has_fashion(d: Path) -> bool:
    return all((d / f).is_file() or (d / (f + ".gz")).is_file() for f in FASHION_FILES)


def _present(name: str, d: Path) -> bool:
    if name == "fashion_mnist":
        return _has_fashion(d)
    if name == "cifar10":
        return (d / "data_batch_1").is_file() and (d / "test_batch").is_file()
    if name == "cifar100":
        return (d / "train").is_file() and (d / "test").is_file()
    if name == "stl10":
        return (d / "train_X.bin").is_file() and (d / "test_X.bin").is_file()
    if name == "imagefolder":
        return d.is_dir() and any(class_dirs(d / "train" if (d / "train").is_dir() else d))
    raise ValueError(f"unknown dataset {name!r}")


def _candidates(cfg: TrainConfig) -> list[Path]:
    name = cfg.dataset
    places = [r / sub for r in search_roots(cfg) for sub in _SUBDIRS[name]]
    if name == "fashion_mnist":
        places.append(DEBIAN_FASHION_MNIST)
    if name != "imagefolder":
        places += [DOWNLOAD_CACHE / sub for sub in _SUBDIRS[name]]
    return [Path(os.path.normpath(p)) for p in places]


def _how_to_provide(cfg: TrainConfig) -> str:
    name = cfg.dataset
    if name == "imagefolder":
        return (f"point data_root (--set data_root=/path) or ${ENV_VAR} at a folder of class sub-folders "
                "(optionally with train/ and val/ or test/ sub-folders)")
    ways = []
    if name == "fashion_mnist":
        ways.append("install Debian's package: apt-get install dataset-fashion-mnist")
    ways.append(f"let torchvision download it: --set download=true (into data_root, ${ENV_VAR} or {DOWNLOAD_CACHE})")
    ways.append(f"or put the files under data_root (--set data_root=/path) or ${ENV_VAR}")
    return "; ".join(ways)


def check_data_root(cfg: TrainConfig) -> None:
    """A ``data_root`` that is given must be a folder: a file is a ``ConfigError``; a folder that does not exist (and
    is not where ``download: true`` will put the files) is a :class:`DatasetNotFoundError`, never a silent fall-back
    to the other places searched."""
    if not cfg.data_root or "://" in cfg.data_root:
        return
    root = Path(cfg.data_root).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError("data_root", cfg.data_root, "a folder (this is a file), or null to search $"
                          f"{ENV_VAR} and the system's copy")
    if not root.exists() and not cfg.download:
        raise DatasetNotFoundError(f"data_root = {cfg.data_root!r}: no such folder. Point it at the folder holding "
                                   f"the dataset, or set it to null to search ${ENV_VAR} and the system's copy.")


def locate(cfg: TrainConfig) -> Path | None:
    """The folder holding ``cfg.dataset``'s files, or ``None`` (digits is bundled with scikit-learn: ``None``);
    a given ``data_root`` is checked first (:func:`check_data_root`)."""
    check_data_root(cfg)
    if cfg.dataset == "digits":
        return None
    for place in _candidates(cfg):
        if _present(cfg.dataset, place):
            return place
    if cfg.download and cfg.dataset != "imagefolder":
        return None  # load_dataset will download
    searched = "\n".join(f"  - {p}" for p in _candidates(cfg)) or "  (no data_root and no $" + ENV_VAR + " set)"
    raise DatasetNotFoundError(
        f"dataset {cfg.dataset!r} not found. Searched, in order:\n{searched}\n"
        f"(data_root={cfg.data_root!r}, ${ENV_VAR}={os.environ.get(ENV_VAR)!r}).\n"
        f"To provide it: {_how_to_provide(cfg)}.")


LOCK_NAME = ".mocostudy-download.lock"


@contextlib.contextmanager
def download_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``root``'s lock file (created with ``root``) until the block ends; a
    second process blocks here until the first leaves. POSIX record locks (``lockf``) also hold across the nodes of
    an NFS mount with a lock manager."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_NAME, "a+") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def _inside(place: Path, root: Path) -> bool:
    try:
        return Path(os.path.realpath(place)).is_relative_to(os.path.realpath(root))
    except OSError:
        return False


def obtain(cfg: TrainConfig, fetch: Callable[[TrainConfig], object]) -> Path | None:
    """The folder holding ``cfg.dataset`` (:func:`locate`), downloaded with ``fetch(cfg)`` when it is missing and
    ``download: true``. With ``download: true``, looking in the download root and downloading happen under
    :func:`download_lock`: concurrent callers download once, and none reads a half-written download."""
    place = locate(cfg)
    if cfg.dataset == "digits" or not cfg.download or cfg.dataset == "imagefolder":
        return place
    root = download_root(cfg)
    if place is not None and not _inside(place, root):
        return place  # found elsewhere (Debian's copy, the cache under another root): nobody downloads there
    with download_lock(root):
        place = locate(cfg)
        if place is None:
            fetch(cfg)
            place = locate(cfg)
            if place is None:
                raise DatasetNotFoundError(f"dataset {cfg.dataset!r}: downloaded into {root}, but its files are "
                                           "not there")
    return place


#: training images of the datasets whose size is fixed (digits: scikit-learn's 1,797 less the last fifth for test)
TRAIN_SIZES = {"fashion_mnist": 60_000, "digits": 1_438, "cifar10": 50_000, "cifar100": 50_000}


def check_sizes(cfg: TrainConfig, source: str | None = None) -> None:
    """The split sizes against the dataset's own (where it is fixed): a ``ConfigError`` naming the key, before any
    worker starts, instead of a failure inside the worker."""
    n = TRAIN_SIZES.get(cfg.dataset)
    if n is None:
        return
    if cfg.val_size >= n:
        raise ConfigError("val_size", cfg.val_size, f"fewer than the {n:,} training images of {cfg.dataset}", source)
    left = n - cfg.val_size
    if cfg.train_subset is not None and cfg.train_subset > left:
        raise ConfigError("train_subset", cfg.train_subset, f"at most the {left:,} training images of {cfg.dataset} "
                          f"left after val_size = {cfg.val_size}", source)
    if cfg.batch_size > (cfg.train_subset or left):
        raise ConfigError("batch_size", cfg.batch_size, f"at most the {cfg.train_subset or left:,} training images "
                          "of one epoch", source)


def check_dataset(cfg: TrainConfig) -> None:
    """Cheap checks only: the split sizes (:func:`check_sizes`, a ``ConfigError``) and the files' existence
    (:class:`DatasetNotFoundError`; with ``download: true`` a missing torchvision dataset is accepted: it will be
    downloaded by :func:`load_dataset`)."""
    check_sizes(cfg)
    locate(cfg)


def class_dirs(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
