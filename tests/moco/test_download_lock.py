"""Concurrent downloads into one folder are serialised (moco.sources.obtain under an fcntl lock): two processes
that need the same missing dataset at once download it once, and the second reads it only when it is complete."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from moco import sources
from moco.config import TrainConfig

CIFAR_FILES = ("data_batch_1", "test_batch")


def _slow_fetch(cfg: TrainConfig) -> None:
    """A fake torchvision download: logs its start and end, writes the files one by one, slowly."""
    root = Path(cfg.data_root)
    log = root.parent / "fetch.log"
    with open(log, "a") as f:
        f.write(f"start {os.getpid()}\n")
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    for name in CIFAR_FILES:
        (d / name).write_bytes(b"partial")
        time.sleep(1.0)
        (d / name).write_bytes(b"complete")
    with open(log, "a") as f:
        f.write(f"end {os.getpid()}\n")


def _stage(data_root: str, barrier, out) -> None:
    cfg = TrainConfig(dataset="cifar10", data_root=data_root, download=True)
    barrier.wait()  # both look for the dataset at the same moment
    place = sources.obtain(cfg, _slow_fetch)
    contents = sorted((place / name).read_bytes().decode() for name in CIFAR_FILES)
    out.put((os.getpid(), str(place), contents, time.time()))


def test_two_concurrent_stagings_download_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no download cache of this machine's user
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    data_root = tmp_path / "data"
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_stage, args=(str(data_root), barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    log = (tmp_path / "fetch.log").read_text().split()
    assert log[0::2] == ["start", "end"], log  # one download, not two interleaved
    assert {r[1] for r in results} == {str(data_root / "cifar-10-batches-py")}
    assert all(r[2] == ["complete", "complete"] for r in results)  # nobody read a half-written download
    assert (data_root / sources.LOCK_NAME).is_file()


def test_obtain_without_download_takes_no_lock(tmp_path, monkeypatch):
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in CIFAR_FILES:
        (d / name).write_bytes(b"")
    cfg = TrainConfig(dataset="cifar10", data_root=str(tmp_path))

    def never(cfg):
        raise AssertionError("no download with the files present")

    assert sources.obtain(cfg, never) == d
    assert not (tmp_path / sources.LOCK_NAME).exists()
