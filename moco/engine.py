"""The training engine: one MoCo pre-training run as plain PyTorch, epoch by epoch.

``Engine`` owns the model, optimiser and data of one worker and knows nothing about Ray: ``moco/train.py`` drives it
under Ray Train (reports, checkpoints), the tests drive it directly. Under ``torch.distributed`` (DDP) every rank
runs one Engine on its own shard; the global batch ``cfg.batch_size`` is split evenly across ranks.

Schedules are pure functions of the global step, and every random draw of an epoch comes from generators seeded by
``(seed, epoch, rank)``, so a run resumed from the checkpoint of epoch ``e`` repeats epoch ``e + 1`` exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from moco.allocator import retain_freed_memory
from moco.augment import build_augment
from moco.config import TrainConfig
from moco.data import Dataset, train_batches
from moco.evaluate import alignment, score_splits, uniformity
from moco.model import MoCo, build_model
from moco.negatives import for_step
from moco.precision import autocast, resolve_memory_format, resolve_precision, torch_memory_format
from moco.schedules import cosine_momentum, warmup_cosine_lr
from moco.vocabulary import (COMPUTE, EPOCH, FINAL_VAL_KNN, FINAL_VAL_PROBE, STEP_STATS, TEST_KNN, TEST_LINEAR,
                             VAL_KNN, VAL_PROBE)

class DivergedError(RuntimeError):
    """The loss or the gradient became non-finite; training stops rather than continuing on NaNs."""

    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(f"non-finite loss {loss} at epoch {epoch}, step {step}: the run diverged")
        self.epoch, self.step, self.loss = epoch, step, loss


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @staticmethod
    def current() -> "DistInfo":
        if dist.is_available() and dist.is_initialized():
            return DistInfo(dist.get_rank(), dist.get_world_size())
        return DistInfo()


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device = 'cuda' was requested but no CUDA GPU is available on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Engine:
    """One worker's share of a MoCo run: ``train_epoch``, then ``monitor`` and ``final_evaluation`` (scored by
    :func:`moco.evaluate.score_splits`); its checkpoints are :func:`moco.checkpoint.engine_state` and ``restore``."""

    def __init__(self, cfg: TrainConfig, dataset: Dataset, device: torch.device, dist_info: DistInfo | None = None):
        self.cfg, self.dataset, self.device = cfg, dataset, device
        self.dist = dist_info or DistInfo.current()
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size = {cfg.batch_size} must be divisible by the number of workers "
                             f"({self.dist.world_size})")
        self.local_batch = cfg.batch_size // self.dist.world_size
        self.retains_freed_memory = retain_freed_memory()  # malloc keeps freed pages for the next step
        seed_everything(cfg.seed)  # identical initial weights on every rank
        # Resolved ``precision`` (fp32 | bf16) and ``memory_format`` (channels_last | contiguous): moco/precision.py.
        self.precision = resolve_precision(cfg.precision, device)
        self.memory_format = resolve_memory_format(cfg.memory_format, device)
        self._layout = torch_memory_format(self.memory_format)
        self.model: MoCo = build_model(cfg, dataset.channels).to(device, memory_format=self._layout)
        self.net = self.model
        if self.dist.world_size > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.sgd_momentum,
                                         weight_decay=cfg.weight_decay)
        self.augment = build_augment(dataset).to(device)
        self.train_split = dataset.train.to(device) if hasattr(dataset.train, "to") else dataset.train
        self.steps_per_epoch = len(dataset.train) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size = {cfg.batch_size} is larger than the training set "
                             f"({len(dataset.train)} images)")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.epoch = 0  # epochs completed
        self.last_metrics: dict[str, Any] = {}  # the latest epoch's report (kept in checkpoints)
        self.images_seen = 0  # images through the encoders (both passes of each view count)
        self._raw_reported = not cfg.raw_reference  # raw-pixel monitor values are reported once per process
        gen = torch.Generator().manual_seed(cfg.seed + 7)
        self._bank_index = torch.randperm(len(dataset.labeled_train), generator=gen)[: cfg.knn_bank_size]
        self._val_index = torch.randperm(len(dataset.val), generator=gen)[: cfg.knn_val_size]

    @property
    def compute(self) -> int:
        """Compute spent so far (:data:`moco.vocabulary.COMPUTE`): epochs completed x views per epoch."""
        return self.epoch * self.cfg.views

    # --- training ---------------------------------------------------------------------------------------------
    def _generator(self, epoch: int, stream: int = 0) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        key = (self.cfg.seed, epoch, self.dist.rank) + ((stream,) if stream else ())
        gen.manual_seed(hash(key) % 2**62)
        return gen

    def selection(self, epoch: int) -> tuple[float, float]:
        """(ratio, threshold) for a 1-based epoch: plain MoCo during the selection warm-up."""
        if epoch <= self.cfg.selection_warmup_epochs:
            return 1.0, 1.0
        return self.cfg.hard_negative_ratio, self.cfg.false_negative_threshold

    def momentum_at(self, step: int) -> float:
        if self.cfg.momentum_schedule == "cosine":
            return cosine_momentum(step, self.total_steps, self.cfg.momentum)
        return self.cfg.momentum

    def train_epoch(self) -> dict[str, float]:
        """Run epoch ``self.epoch + 1``; return its averaged loss, schedules, throughput and step statistics."""
        cfg, epoch = self.cfg, self.epoch + 1
        self.model.train()
        ratio, threshold = self.selection(epoch)
        gen = self._generator(epoch)
        negatives_gen = self._generator(epoch, stream=1)  # MoCHi's draws: augmentations stay those of any strategy
        labels_known = self.dataset.num_classes > 0
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        n_steps, lr, m = 0, cfg.lr, cfg.momentum
        start = time.perf_counter()
        data_s = 0.0
        for images, ids, labels in train_batches(self.train_split, self.local_batch, seed=cfg.seed, epoch=epoch,
                                                 rank=self.dist.rank, world_size=self.dist.world_size,
                                                 device=self.device):
            step = (epoch - 1) * self.steps_per_epoch + n_steps
            lr = warmup_cosine_lr(step, self.total_steps, cfg.warmup_epochs * self.steps_per_epoch, cfg.lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            view1, view2 = self.augment(images, gen), self.augment(images, gen)
            view1, view2 = view1.contiguous(memory_format=self._layout), view2.contiguous(memory_format=self._layout)
            data_s += time.perf_counter() - t0
            with autocast(self.device, self.precision):
                loss, stats = self.net(view1, view2, ids, threshold=threshold,
                                       labels=labels if labels_known else None,
                                       negatives=for_step(cfg, step, self.steps_per_epoch, negatives_gen))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # The gradient norm is identical on every rank after DDP's all-reduce, so all ranks stop together.
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                raise DivergedError(epoch, n_steps, float(loss.detach()))
            self.optimizer.step()
            m = self.momentum_at(step)
            self.model.momentum_update(m)
            for key, value in (("loss", loss), *((k, stats[k]) for k in STEP_STATS if k in stats)):
                value = value.detach().float()  # a statistic is NaN while the queue is still empty
                sums[key] = sums.get(key, 0) + torch.nan_to_num(value, nan=0.0)
                counts[key] = counts.get(key, 0) + (~torch.isnan(value)).float()
            n_steps += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        images_epoch = n_steps * cfg.batch_size
        self.images_seen += images_epoch * 2 * cfg.views  # query and key pass of each view
        self.epoch = epoch
        out = self._mean_over_ranks({key: sums[key] / counts[key] for key in sums})
        out.update({EPOCH: epoch, COMPUTE: self.compute}, lr=lr, momentum=m, epoch_s=seconds,
                   images_per_s=images_epoch / seconds, data_share=data_s / seconds, images_seen=self.images_seen,
                   ratio=ratio, threshold=threshold,
                   precision=self.precision, memory_format=self.memory_format)  # vocabulary.RUN_SETTINGS
        return out

    def _mean_over_ranks(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Average per-rank epoch statistics over all ranks (one all-reduce per epoch)."""
        keys = sorted(values)
        packed = torch.stack([torch.as_tensor(values[k], dtype=torch.float32, device=self.device) for k in keys])
        if self.dist.world_size > 1:
            dist.all_reduce(packed)
            packed /= self.dist.world_size
        return dict(zip(keys, packed.tolist()))

    # --- evaluation (the protocol: moco.evaluate.score_splits) --------------------------------------------------
    def monitor(self) -> dict[str, float]:
        """The per-epoch validation monitor on a bounded bank and validation subset: kNN and ridge probe, alignment,
        uniformity; with ``raw_reference``, at the first call, raw pixels scored the same way (``raw_<metric>``);
        ``monitor_s``, its own wall time."""
        start = time.perf_counter()
        bank_split = self.dataset.labeled_train.subset(self._bank_index)
        val = self.dataset.val.subset(self._val_index)
        out = score_splits(self.model, self.dataset, self.cfg, self.device, bank_split, {(VAL_KNN, VAL_PROBE): val},
                           raw=not self._raw_reported)
        self._raw_reported = True
        with torch.no_grad():
            x = val.images[:512].to(self.device)
            gen = self._generator(-self.epoch)
            self.model.eval()
            z1 = F.normalize(self.model.features(self.augment(x, gen)).float(), dim=1)
            z2 = F.normalize(self.model.features(self.augment(x, gen)).float(), dim=1)
        out.update(alignment=float(alignment(z1, z2)), uniformity=float(uniformity(z1)),
                   monitor_s=time.perf_counter() - start)
        return out

    def final_evaluation(self) -> dict[str, float]:
        """The endpoints, with all labeled training images as the bank: kNN and ridge probe on the full validation
        split (for selection); kNN on test, and with ``linear_probe`` the SGD linear probe on test (final tables
        only); with ``raw_reference`` the raw-pixel value of each; ``final_eval_s``, its own wall time."""
        start = time.perf_counter()
        queries = {(FINAL_VAL_KNN, FINAL_VAL_PROBE): self.dataset.val}
        if len(self.dataset.test):
            queries[(TEST_KNN, None)] = self.dataset.test
        linear = TEST_LINEAR if self.cfg.linear_probe and len(self.dataset.test) else None
        out = score_splits(self.model, self.dataset, self.cfg, self.device, self.dataset.labeled_train, queries,
                           linear, raw=self.cfg.raw_reference)
        return {**out, "final_eval_s": time.perf_counter() - start}
