"""MoCo: query encoder f_q (backbone + 2-layer MLP head), momentum key encoder f_k, key queue, BatchNorm handling.

One training step (:meth:`MoCo.forward`), with lambda = ``dual_view_weight``::

    q1 = normalize(f_q(x1)), k2 = normalize(f_k(x2))               (computed when lambda > 0)
    q2 = normalize(f_q(x2)), k1 = normalize(f_k(x1))               (computed when lambda < 1)
    (Q, Q_ids) = queue snapshot                                    (one snapshot for both terms)
    L = lambda * l(q1, k2, N(q1)) + (1 - lambda) * l(q2, k1, N(q2))  (moco.losses.dual_view_loss)
    queue <- cat(k1, k2) with their image ids                      (once, after the loss)

The training loop calls :meth:`MoCo.momentum_update` after ``optimizer.step()``:
theta_k <- m * theta_k + (1 - m) * theta_q (parameters; the key encoder's BatchNorm running statistics come from its
own forward passes, as in official MoCo).

BatchNorm handling (``bn_mode``), which stops the model from cheating through batch statistics shared by a query and
its key:

* ``split``: every BatchNorm2d becomes :class:`SplitBatchNorm` (statistics over ``bn_splits`` sub-batches, like the
  MoCo CIFAR demo's), and the key encoder's input is randomly permuted (and its output un-permuted), so a query and its
  key see different sub-batches. Works on one device and per rank under DDP.
* ``shuffle``: ShuffleBN across ranks (official MoCo ``_batch_shuffle_ddp``): the key inputs of all ranks are
  gathered, shuffled with one permutation broadcast from rank 0, encoded, gathered and un-shuffled. It needs an
  initialised process group with world size > 1; otherwise a training forward raises ValueError (on one process a
  shuffle would be a silent no-op; use ``split`` there).
* ``sync``: SyncBatchNorm (GPU DDP); plain BatchNorm without a process group.
* ``none``: plain BatchNorm, no shuffle.
"""

from __future__ import annotations

from collections import OrderedDict

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from moco.backbones import build_backbone
from moco.losses import ContrastiveInfo, check_ratio, check_temperature, check_threshold, dual_view_loss
from moco.negatives import Negatives
from moco.queue import KeyQueue, gather_from_ranks

__all__ = ["MoCo", "SplitBatchNorm", "build_model", "update_momentum", "BN_MODES"]

BN_MODES = ("split", "shuffle", "sync", "none")
_QUANTILE_ROWS = 64  # stats over selected negatives use at most this many queries per term ...
_QUANTILE_VALUES = 1 << 16  # ... and the quantiles at most this many of their similarities (strided subsample)


# --- momentum --------------------------------------------------------------------------------------------------
@torch.no_grad()
def update_momentum(target: nn.Module, source: nn.Module, m: float) -> None:
    """theta_target <- m * theta_target + (1 - m) * theta_source for every parameter (same order and shapes)."""
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"m = {m!r} is not allowed: expected a number in [0, 1]")
    tgt = [p.detach() for p in target.parameters()]
    src = [p.detach() for p in source.parameters()]
    if len(tgt) != len(src):
        raise ValueError(f"target has {len(tgt)} parameters but source has {len(src)}: expected the same module")
    torch._foreach_mul_(tgt, m)
    torch._foreach_add_(tgt, src, alpha=1.0 - m)


# --- BatchNorm -------------------------------------------------------------------------------------------------
class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed over ``num_splits`` contiguous sub-batches.

    Input [N, C, H, W] with N divisible by s = ``num_splits``; sub-batch j is samples [j N/s, (j + 1) N/s), each
    normalised with its own mean and variance over (N/s, H, W). Running statistics are the mean over the sub-batches;
    evaluation is plain BatchNorm. Contiguous sub-batches are free slices of both contiguous and channels-last memory,
    so every layout runs the fused BatchNorm kernel on views and pays one concatenation (the MoCo CIFAR demo's
    interleaved split, a reshape to [N/s, C s, H, W], is a copy in and out under channels-last). Without gradient
    on a CPU (the key encoder) each sub-batch is written straight into the output instead, the same values bit for
    bit (on 2 cores, the default config's key encoder forward is about 5 % faster in fp32 and in bf16 +
    channels-last). Batches arrive in a random order and the key encoder's input is permuted, so which samples share
    a sub-batch is random either way.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        s = self.num_splits
        if x.shape[0] % s:
            raise ValueError(f"batch size = {x.shape[0]} is not allowed with bn_splits = {s}: expected a multiple of "
                             "bn_splits")
        means = self.running_mean.repeat(s, 1)  # [s, C]: each sub-batch updates its own row
        variances = self.running_var.repeat(s, 1)
        momentum = 0.1 if self.momentum is None else self.momentum
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                     for t in (x, self.weight, self.bias))
        if needs_grad or x.device.type != "cpu":
            out = torch.cat([F.batch_norm(part, means[j], variances[j], self.weight, self.bias, True, momentum,
                                          self.eps) for j, part in enumerate(x.chunk(s))])
        else:  # no gradient on a CPU (the key encoder): the same kernel writes each sub-batch into one output
            out, saved = torch.empty_like(x), means.new_empty((2, s, x.shape[1]))  # saved: unused means, 1/stds
            for j, (part, part_out) in enumerate(zip(x.chunk(s), out.chunk(s))):
                torch.ops.aten.native_batch_norm.out(part, self.weight, self.bias, means[j], variances[j], True,
                                                     momentum, self.eps, out=part_out, save_mean=saved[0, j],
                                                     save_invstd=saved[1, j])
        with torch.no_grad():
            self.running_mean.copy_(means.mean(0))
            self.running_var.copy_(variances.mean(0))
            self.num_batches_tracked.add_(1)
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_splits={self.num_splits}"


def _to_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` (in place) by a SplitBatchNorm with the same state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            split = SplitBatchNorm(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                   affine=child.affine, track_running_stats=child.track_running_stats)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            _to_split_bn(child, num_splits)
    return module


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# --- the model -------------------------------------------------------------------------------------------------
def _mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """MoCo v2 head: Linear - ReLU - Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class MoCo(nn.Module):
    """MoCo v2 with a dual-view loss and selective negatives (see the module docstring).

    Args:
        backbone: maps images [B, C, H, W] to features [B, feature_dim].
        feature_dim: the backbone's output dimension.
        dim: embedding dimension (MLP output). mlp_hidden: MLP hidden width.
        queue_size: K. temperature: tau > 0. dual_view_weight: lambda in [0, 1] (1 = one-way MoCo v2).
        bn_mode: one of ``split``, ``shuffle``, ``sync``, ``none``. bn_splits: sub-batches for ``split``.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, *, dim: int = 128, mlp_hidden: int = 512,
                 queue_size: int = 4096, temperature: float = 0.2, dual_view_weight: float = 1.0,
                 bn_mode: str = "split", bn_splits: int = 8):
        super().__init__()
        check_temperature(temperature)
        if not 0.0 <= dual_view_weight <= 1.0:
            raise ValueError(f"dual_view_weight = {dual_view_weight!r} is not allowed: expected a number in [0, 1]")
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode = {bn_mode!r} is not allowed: expected one of {', '.join(BN_MODES)}")
        if bn_splits < 1:
            raise ValueError(f"bn_splits = {bn_splits!r} is not allowed: expected an integer >= 1")
        for name, value in (("feature_dim", feature_dim), ("dim", dim), ("mlp_hidden", mlp_hidden)):
            if value < 1:
                raise ValueError(f"{name} = {value!r} is not allowed: expected an integer >= 1")
        self.temperature = float(temperature)
        self.dual_view_weight = float(dual_view_weight)
        self.bn_mode = bn_mode
        if bn_mode == "split":
            _to_split_bn(backbone, bn_splits)
        elif bn_mode == "sync":
            backbone = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
        self.encoder_q = nn.Sequential(OrderedDict(backbone=backbone, head=_mlp_head(feature_dim, mlp_hidden, dim)))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.encoder_k.requires_grad_(False)
        self.queue = KeyQueue(queue_size, dim)

    # --- encoders ----------------------------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """Backbone features [B, feature_dim] of the query encoder (for kNN and linear probes)."""
        return self.encoder_q.backbone(x)

    def _query(self, x: Tensor) -> Tensor:
        """Normalised queries [B, dim] in fp32 (under bf16 autocast the head's output is bf16; cast before
        normalising)."""
        return F.normalize(self.encoder_q(x).float(), dim=1)

    @torch.no_grad()
    def _key(self, x: Tensor) -> Tensor:
        """Normalised fp32 keys [B, dim] of the key encoder, with the key-input shuffle that ``bn_mode`` asks for."""
        if not self.training or self.bn_mode in ("none", "sync"):
            return F.normalize(self.encoder_k(x).float(), dim=1)
        if self.bn_mode == "split":
            perm = torch.randperm(x.shape[0], device=x.device)
            keys = F.normalize(self.encoder_k(x[perm]).float(), dim=1)
            return keys[torch.argsort(perm)]
        return self._key_shuffled_across_ranks(x)

    @torch.no_grad()
    def _key_shuffled_across_ranks(self, x: Tensor) -> Tensor:
        """ShuffleBN: gather key inputs of all ranks, encode a shared random permutation's share, gather, un-shuffle."""
        rank, world = _world()
        if world < 2:
            raise ValueError(f"bn_mode = 'shuffle' is not allowed here: ShuffleBN needs torch.distributed initialised "
                             f"with world size > 1 (world size = {world}); on one process use bn_mode = 'split'")
        x_all = gather_from_ranks(x)
        perm = torch.randperm(x_all.shape[0], device=x.device)
        dist.broadcast(perm, src=0)
        mine = perm.view(world, -1)[rank]
        keys_all = gather_from_ranks(F.normalize(self.encoder_k(x_all[mine]).float(), dim=1))
        return keys_all[torch.argsort(perm).view(world, -1)[rank]]

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q; call after ``optimizer.step()``."""
        update_momentum(self.encoder_k, self.encoder_q, m)

    # --- the step ----------------------------------------------------------------------------------------------
    def forward(self, view1: Tensor, view2: Tensor, image_ids: Tensor, *, ratio: float = 1.0,
                threshold: float = 1.0, labels: Tensor | None = None,
                negatives: Negatives | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """One MoCo step on views [B, C, H, W] of images with ids [B] (labels [B] only for diagnostics).

        ``negatives`` (moco.negatives.for_step) chooses the strategy; None is ``select`` with ``ratio``, which must be
        1 otherwise. ``threshold`` is the false-negative filter of every strategy.

        Returns ``(loss, stats)``, an fp32 loss also under autocast; ``stats`` maps :data:`moco.vocabulary.STEP_STATS`
        (``false_neg_rate`` only when ``labels`` are given) to detached 0-d tensors. The keys of the computed views
        are enqueued before returning.
        """
        check_ratio(ratio)
        check_threshold(threshold)
        lam = self.dual_view_weight
        first, second = lam > 0.0, lam < 1.0
        views = int(first) + int(second)
        world = _world()[1]
        if views * view1.shape[0] * world > self.queue.size:
            raise ValueError(f"queue_size = {self.queue.size} is not allowed: expected at least one global batch of "
                             f"keys ({views} views x {view1.shape[0]} x {world} ranks)")
        image_ids = image_ids.to(self.queue.ids.device)
        q1 = self._query(view1) if first else None
        q2 = self._query(view2) if second else None
        k2 = self._key(view2) if first else None
        k1 = self._key(view1) if second else None
        queue_keys, queue_ids, queue_labels = self.queue.snapshot()
        # Under a bf16 autocast only the encoders above run in bf16: q and k are fp32 already, and the logits,
        # softmax, loss and statistics are computed with autocast off, so in fp32 like the queue.
        with torch.autocast(view1.device.type, enabled=False):
            loss, infos = dual_view_loss(q1, k2, queue_keys, self.temperature, weight=lam, q2=q2, k1=k1,
                                         query_ids=image_ids, queue_ids=queue_ids, ratio=ratio, threshold=threshold,
                                         term=None if negatives is None else negatives.term)
            stats = _step_stats(infos, labels, queue_labels)
        new_keys = torch.cat([k for k in (k1, k2) if k is not None])
        self.queue.enqueue(new_keys, image_ids.repeat(views), None if labels is None else labels.repeat(views),
                           views=views)
        return loss, stats


@torch.no_grad()
def _step_stats(infos: list[ContrastiveInfo], labels: Tensor | None, queue_labels: Tensor) -> dict[str, Tensor]:
    """Diagnostics from what the loss computed anyway, pooled over the computed terms.

    pos_sim: mean q.k. filtered_frac: share of (query, queue entry) pairs dropped by the same-id and threshold
    filters. kept_negatives: mean negatives per query (synthetic ones included). To bound the cost, the following use
    the first ``_QUANTILE_ROWS`` queries of each term only: neg_sim_q10/50/90, quantiles of the similarity of the
    negatives in the loss (kept and synthetic; over a strided subsample of at most ``_QUANTILE_VALUES``; NaN while the
    queue is empty), and false_neg_rate (only with labels), the share of the effective negatives with a known label
    (>= 0) equal to the query's label (NaN when there is none). Each kept negative counts with its ``mass_rows`` (1,
    or hcl's softmax share scaled to sum to the kept count); a synthetic one by its sources, each with its mixing
    coefficient (the query itself counts as its own class).
    """
    device = infos[0].sim.device
    nan = torch.tensor(float("nan"), device=device)
    pairs = sum(i.sim.numel() for i in infos)
    candidates = torch.cat([i.num_candidates for i in infos]).sum()
    extra = [i.synthetic.valid.sum(dim=1) if i.synthetic is not None else 0 for i in infos]
    kept = torch.cat([i.num_kept + e for i, e in zip(infos, extra)]).float().mean()
    rows = [(i.sim[:_QUANTILE_ROWS], i.keep_rows(_QUANTILE_ROWS)) for i in infos]
    synthetic = [i.synthetic for i in infos if i.synthetic is not None]
    selected = torch.cat([sim[keep] for sim, keep in rows]
                         + [s.sim[:_QUANTILE_ROWS][s.valid[:_QUANTILE_ROWS]] for s in synthetic]).float()
    if selected.numel() > _QUANTILE_VALUES:  # a deterministic strided subsample bounds the sort
        selected = selected[:: -(-selected.numel() // _QUANTILE_VALUES)]
    if selected.numel():
        q10, q50, q90 = torch.quantile(selected, torch.tensor([0.1, 0.5, 0.9], device=device))
    else:
        q10 = q50 = q90 = nan
    stats = {
        "pos_sim": torch.cat([i.pos_sim for i in infos]).float().mean(),
        "neg_sim_q10": q10, "neg_sim_q50": q50, "neg_sim_q90": q90,
        "filtered_frac": 1.0 - candidates.float() / pairs if pairs else torch.tensor(0.0, device=device),
        "kept_negatives": kept,
    }
    if labels is not None:
        labels = labels.to(queue_labels.device)[:_QUANTILE_ROWS]
        same = labels.view(-1, 1) == queue_labels.view(1, -1)
        known = (queue_labels >= 0).view(1, -1)
        hits, total = torch.zeros((), device=device), torch.zeros((), device=device)
        for info in infos:
            weight = info.mass_rows(_QUANTILE_ROWS)
            hits = hits + (weight * same).sum()
            total = total + (weight * known).sum()
            if info.synthetic is not None:
                s = info.synthetic
                src = s.sources[:len(labels)]
                weights = s.weights[:len(labels)] * s.valid[:len(labels)].unsqueeze(-1)
                src_labels = queue_labels[src.clamp_min(0)]
                is_query = src < 0
                hits = hits + (weights * (is_query | (src_labels == labels.view(-1, 1, 1)))).sum()
                total = total + (weights * (is_query | (src_labels >= 0))).sum()
        stats["false_neg_rate"] = hits.float() / total if float(total) > 0 else nan
    return {name: value.detach() for name, value in stats.items()}


def build_model(cfg, in_channels: int) -> MoCo:
    """A :class:`MoCo` from a :class:`moco.config.TrainConfig` (backbone, width, norm, pool_grid, cifar_stem,
    feature_dim, mlp_hidden, queue_size, temperature, dual_view_weight, bn_mode, bn_splits)."""
    backbone, backbone_dim = build_backbone(cfg.backbone, in_channels, cifar_stem=cfg.cifar_stem, width=cfg.width,
                                            norm=cfg.norm, pool_grid=cfg.pool_grid)
    return MoCo(backbone, backbone_dim, dim=cfg.feature_dim, mlp_hidden=cfg.mlp_hidden, queue_size=cfg.queue_size,
                temperature=cfg.temperature, dual_view_weight=cfg.dual_view_weight, bn_mode=cfg.bn_mode,
                bn_splits=cfg.bn_splits)
