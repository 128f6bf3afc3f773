"""Evaluation of frozen representations: features of a split, weighted kNN, linear probe, alignment and uniformity,
and :func:`score_splits`, the protocol of the engine's monitor and final evaluation (kNN and probes of query splits
against a labelled bank, with the raw-pixel reference).

Accuracies are returned in **percent (0-100)**.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moco.vocabulary import raw_name

__all__ = ["embed", "pixels", "score_splits", "knn_predict", "knn_accuracy", "ridge_probe", "linear_probe",
           "alignment", "uniformity"]


@torch.no_grad()
def embed(model: nn.Module, dataset: Any, split: Any, device: torch.device | str = "cpu",
          batch: int = 1024) -> tuple[Tensor, Tensor]:
    """L2-normalised backbone features [N, F] and labels [N] of ``split`` (in memory or streamed), its images
    normalised with ``dataset``'s mean and std as the encoder sees them in training; ``model`` is put in eval mode.
    The same features as the engine's kNN monitor and final evaluation use."""
    model.eval()
    return _collect(dataset, split, lambda x: F.normalize(model.features(x).float(), dim=1), device, batch)


@torch.no_grad()
def pixels(dataset: Any, split: Any, device: torch.device | str = "cpu", batch: int = 1024) -> tuple[Tensor, Tensor]:
    """Raw pixels [N, C*H*W] of ``split`` (normalised with ``dataset``'s mean and std, as the encoder sees them) and
    labels [N]: the raw-pixel reference of :func:`score_splits`."""
    return _collect(dataset, split, lambda x: x.flatten(1).float(), device, batch)


def _collect(dataset: Any, split: Any, fn: Callable[[Tensor], Tensor], device: torch.device | str,
             batch: int) -> tuple[Tensor, Tensor]:
    from moco.augment import normalize
    from moco.data import eval_batches

    feats, labels = [], []
    for images, y in eval_batches(split, batch, device):
        feats.append(fn(normalize(images, dataset.mean, dataset.std, dataset.image_size)))
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


Queries = dict[tuple[str, "str | None"], Any]  #: (kNN name, probe name or None) -> a split to score


def score_splits(model: nn.Module, dataset: Any, cfg: Any, device: torch.device | str, bank_split: Any,
                 queries: Queries, linear: str | None = None, raw: bool = False) -> dict[str, float]:
    """Score ``model``'s features with ``bank_split`` as the labelled bank; with ``raw``, raw pixels too, under
    ``raw_<name>``. ``cfg`` (a TrainConfig) gives the kNN's ``knn_k`` and ``knn_t`` and the ``probe_epochs`` of the
    linear probe.

    ``queries`` maps (kNN name, probe name) to a split: kNN and ridge probe of that split are returned under those
    names; with ``linear``, the SGD linear probe of the last split under that name. Raw pixels are centred on the
    bank's mean first: cosine kNN on uncentred pixels mostly measures brightness, and the centred value is the strong
    raw-pixel reference.
    """
    out = _scores(lambda split: embed(model, dataset, split, device), bank_split, queries, dataset.num_classes, cfg,
                  linear)
    if raw:
        scored = _scores(lambda split: pixels(dataset, split, device), bank_split, queries, dataset.num_classes, cfg,
                         linear, centre=True)
        out.update({raw_name(k): v for k, v in scored.items()})
    return out


def _scores(features: Callable[[Any], tuple[Tensor, Tensor]], bank_split: Any, queries: Queries, num_classes: int,
            cfg: Any, linear: str | None, centre: bool = False) -> dict[str, float]:
    """:func:`score_splits` of one representation ``features(split) -> (X [N, D], y [N])``."""
    bank = features(bank_split)
    mean = bank[0].mean(0) if centre else 0.0
    bank = (bank[0] - mean, bank[1])
    out: dict[str, float] = {}
    for (knn_name, probe_name), split in queries.items():
        x, y = features(split)
        x = x - mean
        out[knn_name] = knn_accuracy(bank[0], bank[1], x, y, num_classes, k=cfg.knn_k, t=cfg.knn_t)
        if probe_name:
            out[probe_name] = ridge_probe(bank[0], bank[1], x, y, num_classes)
    if linear:
        out[linear] = linear_probe(bank[0], bank[1], x, y, num_classes, epochs=cfg.probe_epochs)
    return out


_KNN_CHUNK_ELEMENTS = 1 << 24  # at most 16M similarities (64 MB in float32) per test batch


@torch.no_grad()
def knn_predict(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, num_classes: int, k: int = 200,
                t: float = 0.1, *, batch_size: int | None = None) -> Tensor:
    """Weighted kNN (InstDisc / MoCo demo): cosine similarity, the k nearest training features vote with exp(s / t).

    score[c] = sum_{i in top-k} exp(s_i / t) * [y_i = c]; prediction = argmax_c score. Features [N, F] / [M, F] are
    L2-normalised here; computed in test batches of ``batch_size`` ([batch, N] similarities at a time; by default as
    many rows as keep that matrix under 16M entries, so a 55k bank takes 305 queries at a time), on the device of
    ``test_feats``. Returns predicted labels [M] (long).
    """
    if k < 1:
        raise ValueError(f"k = {k!r} is not allowed: expected an integer >= 1")
    if not t > 0:
        raise ValueError(f"t = {t!r} is not allowed: expected a number > 0")
    if num_classes < 1:
        raise ValueError(f"num_classes = {num_classes!r} is not allowed: expected an integer >= 1")
    device = test_feats.device
    bank = F.normalize(train_feats.to(device).float(), dim=1)
    bank_labels = train_labels.to(device).long()
    k = min(k, bank.shape[0])
    batch_size = batch_size or max(1, min(1024, _KNN_CHUNK_ELEMENTS // max(1, bank.shape[0])))
    preds = []
    for chunk in F.normalize(test_feats.float(), dim=1).split(batch_size):
        sim, idx = (chunk @ bank.t()).topk(k, dim=1)
        weights = (sim / t).exp()
        scores = torch.zeros(chunk.shape[0], num_classes, device=device)
        scores.scatter_add_(1, bank_labels[idx], weights)
        preds.append(scores.argmax(dim=1))
    return torch.cat(preds)


def _percent(pred: Tensor, labels: Tensor) -> float:
    return 100.0 * (pred.cpu() == labels.cpu()).float().mean().item()


def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 num_classes: int, k: int = 200, t: float = 0.1, *, batch_size: int | None = None) -> float:
    """Top-1 accuracy of :func:`knn_predict`, in percent (0-100)."""
    return _percent(knn_predict(train_feats, train_labels, test_feats, num_classes, k, t, batch_size=batch_size),
                    test_labels)


@torch.no_grad()
def ridge_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                num_classes: int, *, ridge: float = 0.1) -> float:
    """Test accuracy (percent, 0-100) of a closed-form ridge-regression probe on frozen features.

    Features [N, D] are standardised with the training mean and std and given a bias column (X [N, D + 1]); the
    weights W [D + 1, C] solve (X^T X + a I) W = X^T Y for one-hot targets Y [N, C], with
    a = ``ridge`` * tr(X^T X) / (D + 1), about ``ridge`` * N for standardised features (scale-free); the prediction
    is argmax_c (x W)_c. The products run in float32 on the features' device, the (D + 1)-square solve in float64:
    O(N D^2 + D^3), deterministic, no learning rate or epochs to tune. This is the per-epoch probe metric
    (``val_probe_top1``).

    >>> x = torch.randn(200, 8); y = (x[:, 0] > 0).long()
    >>> ridge_probe(x, y, x, y, num_classes=2) > 90
    True
    """
    if not ridge > 0:
        raise ValueError(f"ridge = {ridge!r} is not allowed: expected a number > 0")
    device = train_feats.device
    x_train = train_feats.float()
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)

    def design(feats: Tensor) -> Tensor:
        x = (feats.to(device).float() - mean) / std
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=device)], dim=1)

    x = design(x_train)
    targets = F.one_hot(train_labels.to(device).long(), num_classes).float()
    gram, moments = (x.T @ x).double(), (x.T @ targets).double()  # products in float32, the solve in float64
    alpha = ridge * gram.diagonal().sum() / gram.shape[0]
    weights = torch.linalg.solve(gram + alpha * torch.eye(gram.shape[0], dtype=gram.dtype, device=device), moments)
    return _percent((design(test_feats) @ weights.float()).argmax(1), test_labels)


def linear_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 num_classes: int, epochs: int = 20, *, lr: float = 0.1, batch_size: int = 256,
                 weight_decay: float = 0.0, seed: int = 0) -> float:
    """Test accuracy (percent, 0-100) of a linear classifier trained on frozen features.

    Features are standardised with the training mean and std; a ``Linear(F, num_classes)`` is trained with
    minibatch SGD (momentum 0.9, cosine learning rate, cross-entropy) for ``epochs`` epochs, seeded shuffling, on the
    device of ``train_feats``. Cheap on CPU for F ~ 512 and N ~ 50k.
    """
    if epochs < 1:
        raise ValueError(f"epochs = {epochs!r} is not allowed: expected an integer >= 1")
    device = train_feats.device
    mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    x_train = ((train_feats - mean) / std).detach().float()
    x_test = ((test_feats.to(device) - mean) / std).detach().float()
    y_train = train_labels.to(device).long()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = nn.Linear(x_train.shape[1], num_classes).to(device)
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = -(-x_train.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(x_train.shape[0], generator=gen).to(device)
            for idx in order.split(batch_size):
                loss = F.cross_entropy(clf(x_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    with torch.no_grad():
        return _percent(clf(x_test).argmax(1), test_labels)


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Wang & Isola alignment E ||z1_i - z2_i||^alpha over positive pairs z1, z2 [N, D] (normalised); lower is
    better."""
    return (z1 - z2).norm(dim=1).pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """Wang & Isola uniformity log E_{i<j} exp(-t ||z_i - z_j||^2) over z [N, D] (normalised); lower is better.

    O(N^2) memory: pass a subsample (a few thousand points).
    """
    return torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log()
