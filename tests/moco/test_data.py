"""moco.data: locating datasets, the seeded validation split, shapes/dtypes, and sharded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moco import data, sources
from moco.config import ConfigError, TrainConfig
from moco.data import DatasetNotFoundError, Split, StreamingSplit, check_dataset, load_dataset, train_batches

FASHION_PRESENT = sources._has_fashion(sources.DEBIAN_FASHION_MNIST)


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """An empty data_root, no $MOCO_DATA_DIR, no Debian files and an empty download cache."""
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "debian" / "fashion-mnist")
    monkeypatch.setattr(sources, "DOWNLOAD_CACHE", tmp_path / "cache")
    (tmp_path / "root").mkdir()
    return tmp_path


@pytest.fixture(scope="module")
def digits():
    return load_dataset(TrainConfig(dataset="digits", val_size=200))


# --- locating -------------------------------------------------------------------------------------------------
def test_missing_dataset_names_every_place_and_the_fix(no_data, monkeypatch):
    monkeypatch.setenv(sources.ENV_VAR, str(no_data / "env"))
    cfg = TrainConfig(data_root=str(no_data / "root"))
    with pytest.raises(DatasetNotFoundError) as err:
        check_dataset(cfg)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for place in (no_data / "root", no_data / "env", no_data / "debian" / "fashion-mnist", no_data / "cache"):
        assert str(place) in msg
    assert msg.index(str(no_data / "root")) < msg.index(str(no_data / "env")) < msg.index(str(no_data / "debian"))
    assert "apt-get install dataset-fashion-mnist" in msg and "download=true" in msg
    with pytest.raises(DatasetNotFoundError):
        load_dataset(cfg)


def test_missing_cifar_and_imagefolder_errors(no_data):
    with pytest.raises(DatasetNotFoundError, match="(?s)cifar-10-batches-py.*download=true"):
        check_dataset(TrainConfig(dataset="cifar10", data_root=str(no_data / "root")))
    with pytest.raises(DatasetNotFoundError, match="class sub-folders"):
        check_dataset(TrainConfig(dataset="imagefolder", data_root=str(no_data / "root")))
    check_dataset(TrainConfig(dataset="cifar10", data_root=str(no_data / "root"), download=True))  # will download
    check_dataset(TrainConfig(dataset="digits", val_size=300))  # bundled
    with pytest.raises(ConfigError, match="val_size"):  # the default 5,000 held out is more than digits has
        check_dataset(TrainConfig(dataset="digits"))


def _write_idx(path, array):
    import gzip

    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))


def test_data_root_then_env_order(no_data, monkeypatch):
    """A copy in $MOCO_DATA_DIR is found; data_root wins when both hold one."""
    rng = np.random.default_rng(0)
    for where, n in (("env", 30), ("root/fashion-mnist", 40)):
        d = no_data / where
        d.mkdir(parents=True, exist_ok=True)
        _write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(d / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
        _write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, 28, 28)))
        _write_idx(d / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 10))
    monkeypatch.setenv(sources.ENV_VAR, str(no_data / "env"))
    assert len(load_dataset(TrainConfig(val_size=5)).train) == 25
    ds = load_dataset(TrainConfig(val_size=5, data_root=str(no_data / "root")))
    assert len(ds.train) == 35 and ds.test.images.shape == (10, 1, 28, 28)


# --- splits ---------------------------------------------------------------------------------------------------
def test_validation_split_is_seeded_and_disjoint():
    tr, va = data.split_indices(1000, 100, None, seed=3)
    tr2, va2 = data.split_indices(1000, 100, None, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == 100 and len(tr) == 900
    assert not set(tr.tolist()) & set(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(1000))
    _, va3 = data.split_indices(1000, 100, None, seed=4)
    assert not torch.equal(va, va3)
    sub, va4 = data.split_indices(1000, 100, 300, seed=3)
    assert torch.equal(va4, va) and len(sub) == 300 and set(sub.tolist()) <= set(tr.tolist())


def test_val_size_too_large_is_a_clear_error():
    with pytest.raises(ValueError, match="val_size=5000 leaves no training images: digits has 1438"):
        load_dataset(TrainConfig(dataset="digits"))
    with pytest.raises(ValueError, match="train_subset=2000"):
        load_dataset(TrainConfig(dataset="digits", val_size=100, train_subset=2000))


def test_digits_shapes_and_dtypes(digits):
    ds = digits
    assert (ds.name, ds.num_classes, ds.channels, ds.image_size) == ("digits", 10, 1, 8)
    assert ds.train.images.shape == (1238, 1, 8, 8) and ds.val.images.shape == (200, 1, 8, 8)
    assert ds.test.images.shape == (359, 1, 8, 8)
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.is_contiguous()
    assert int(ds.train.images.max()) == 255 and set(ds.train.labels.tolist()) == set(range(10))
    assert len(ds.mean) == len(ds.std) == 1 and 0 < ds.mean[0] < 1 and 0 < ds.std[0] < 1
    assert ds.labeled_train is ds.train


def test_resize_on_load():
    ds = load_dataset(TrainConfig(dataset="digits", val_size=100, image_size=16, train_subset=50))
    assert ds.image_size == 16 and ds.train.images.shape == (50, 1, 16, 16) and ds.test.images.shape[-1] == 16


@pytest.mark.skipif(not FASHION_PRESENT, reason=f"Fashion-MNIST not installed at {sources.DEBIAN_FASHION_MNIST} "
                                                "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_debian(monkeypatch):
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    ds = load_dataset(TrainConfig())
    assert (ds.channels, ds.image_size, ds.num_classes) == (1, 28, 10)
    assert ds.train.images.shape == (55000, 1, 28, 28) and ds.val.images.shape == (5000, 1, 28, 28)
    assert ds.test.images.shape == (10000, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    assert abs(ds.mean[0] - 0.286) < 1e-3 and abs(ds.std[0] - 0.353) < 1e-3


# --- batches --------------------------------------------------------------------------------------------------
def test_train_batches_shard_disjointly_with_equal_counts(digits):
    split, bs, world = digits.train, 32, 3
    per_rank = []
    for rank in range(world):
        batches = list(train_batches(split, bs, seed=1, epoch=2, rank=rank, world_size=world))
        for images, ids, labels in batches:
            assert images.shape == (bs, 1, 8, 8) and images.dtype == torch.uint8
            assert ids.dtype == labels.dtype == torch.int64
            assert torch.equal(images, split.images[ids]) and torch.equal(labels, split.labels[ids])
        per_rank.append(torch.cat([ids for _, ids, _ in batches]).tolist())
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == (len(split) // world) // bs * bs
    seen = [i for p in per_rank for i in p]
    assert len(seen) == len(set(seen))
    again = torch.cat([ids for _, ids, _ in train_batches(split, bs, seed=1, epoch=2, rank=0, world_size=world)])
    assert again.tolist() == per_rank[0]
    other = torch.cat([ids for _, ids, _ in train_batches(split, bs, seed=1, epoch=3, rank=0, world_size=world)])
    assert other.tolist() != per_rank[0]


def test_train_batches_too_big_batch(digits):
    with pytest.raises(ValueError, match="no full batch"):
        next(train_batches(digits.train, 1000, seed=0, epoch=0, world_size=2))


def test_eval_batches_in_order(digits):
    parts = list(data.eval_batches(digits.test, 100))
    assert [len(x) for x, _ in parts] == [100, 100, 100, 59]
    assert torch.equal(torch.cat([x for x, _ in parts]), digits.test.images)


def test_imagefolder_streams_same_tuples(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / split / cls / f"{i}.png")
    cfg = TrainConfig(dataset="imagefolder", data_root=str(tmp_path), val_size=4, image_size=16, loader_workers=0)
    check_dataset(cfg)
    ds = load_dataset(cfg)
    assert isinstance(ds.train, StreamingSplit) and isinstance(ds.val, Split)
    assert (ds.num_classes, len(ds.train), len(ds.val), len(ds.test)) == (2, 20, 4, 8)
    assert ds.val.images.shape == (4, 3, 16, 16)
    batches = list(train_batches(ds.train, 4, seed=0, epoch=0, rank=1, world_size=2))
    assert len(batches) == 2
    images, ids, labels = batches[0]
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8 and ids.dtype == torch.int64
    assert torch.equal(labels, ds.train.labels[ids])
    assert sum(len(x) for x, _ in data.eval_batches(ds.test, 3)) == 8


def test_stl10_binary_layout(tmp_path):
    d = tmp_path / "stl10_binary"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 20), ("test", 6), ("unlabeled", 10)):
        (d / f"{name}_X.bin").write_bytes(rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tobytes())
        if name != "unlabeled":
            (d / f"{name}_y.bin").write_bytes(rng.integers(1, 11, n, dtype=np.uint8).tobytes())
    cfg = TrainConfig(dataset="stl10", data_root=str(tmp_path), val_size=5, image_size=32, loader_workers=0)
    ds = load_dataset(cfg)
    assert (len(ds.train), len(ds.val), len(ds.test), len(ds.labeled_train)) == (25, 5, 6, 15)
    assert int((ds.train.labels == -1).sum()) == 10 and int(ds.val.labels.min()) >= 0
    images, ids, labels = next(train_batches(ds.train, 8, seed=0, epoch=0))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8
