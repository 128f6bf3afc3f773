"""Pure loss functions: the contrastive (InfoNCE) term, selective negatives, and the dual-view combination.

Notation (all embeddings L2-normalised, shapes in brackets):

* ``q`` [B, D] queries (with gradient), ``k`` [B, D] positive keys (detached), ``queue_keys`` [K, D] negatives
  (detached; only *filled* queue entries are passed in, so K may be smaller than the queue capacity, even 0).
* ``sim = q @ queue_keys.T`` [B, K], the cosine similarity of each query to each queue entry.

Contrastive term, per query, over the kept negatives N(q)::

    l(q, k, N) = -log( exp(q.k / tau) / (exp(q.k / tau) + sum_{n in N} exp(q.n / tau)) )

Selective negatives (:func:`select_negatives`): drop queue entries with the query's own image id and entries with
``sim > threshold`` (likely false negatives; ``threshold = 1`` disables it). Of the K' remaining candidates keep the
``ceil(ratio * K')`` with the highest similarity (``ratio = 1`` keeps all), at least one when K' > 0. The selection is
made on detached similarities; the kept logits carry gradient, dropped ones are set to ``-inf`` and get none.

Dual-view loss (:func:`dual_view_loss`)::

    L = lambda * mean_b l(q1_b, k2_b, N(q1_b)) + (1 - lambda) * mean_b l(q2_b, k1_b, N(q2_b))

a *weighted mean* of the two directions. Note: the MoCo CIFAR demo *sums* the two symmetric terms, which doubles the
gradient scale (an effective 2x learning rate under SGD); with lambda = 0.5 this loss is half of the demo's.

With ``ratio = 1``, ``threshold = 1`` and no ids, :func:`contrastive_loss` computes exactly MoCo v2's
``cross_entropy(cat([l_pos, l_neg], 1) / tau, 0)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ContrastiveInfo", "select_negatives", "contrastive_loss", "selected_infonce", "dual_view_loss",
           "check_ratio", "check_threshold", "check_temperature", "check_weight"]


@dataclass
class _Selection:
    """The chosen negatives of a [B, K] similarity matrix, in whichever form was cheapest to produce.

    picks: (index [B, P], valid [B, P] bool): the kept entries are ``index[valid]`` per row (the top-k path); or
    dropped: [B, K] bool of entries not kept (filters and/or rank); or neither: every entry is kept.
    num_candidates [B]: K' after the filters. num_kept [B]: negatives kept.
    """

    num_candidates: Tensor
    num_kept: Tensor
    picks: tuple[Tensor, Tensor] | None = None
    dropped: Tensor | None = None

    def keep_rows(self, shape: tuple[int, int], rows: int | None = None) -> Tensor:
        """keep [min(rows, B), K] bool for the first ``rows`` queries (all when None), built on demand."""
        b, k = shape
        n = b if rows is None else min(rows, b)
        device = self.num_kept.device
        if self.picks is not None:
            index, valid = self.picks
            return torch.zeros(n, k, dtype=torch.bool, device=device).scatter_(1, index[:n], valid[:n])
        if self.dropped is not None:
            return ~self.dropped[:n]
        return torch.ones(n, k, dtype=torch.bool, device=device)


@dataclass
class ContrastiveInfo:
    """What diagnostics need from one contrastive term, computed anyway by the loss (all detached).

    pos_sim [B]: cosine q.k of each query with its positive key.
    sim [B, K]: cosine of each query with each queue entry.
    num_candidates [B], num_kept [B] (long): entries left after the same-id and threshold filters, and kept.
    keep [B, K] bool (property, built on demand): entries used as negatives; ``keep_rows(n)`` builds the first n rows.
    """

    pos_sim: Tensor
    sim: Tensor
    selection: _Selection
    #: None: every kept entry counts once in the diagnostics; else a kept entry counts in proportion to
    #: exp(mass_scale * sim) (hcl: its softmax mass, mass_scale = (1 + beta) / tau), scaled to sum to num_kept per row
    #: (built on demand by ``mass_rows``).
    mass_scale: float | None = None
    #: synthetic negatives appended to the kept ones (mochi; moco.negatives.Synthetic), or None.
    synthetic: object | None = None

    @property
    def num_candidates(self) -> Tensor:
        return self.selection.num_candidates

    @property
    def num_kept(self) -> Tensor:
        return self.selection.num_kept

    @property
    def keep(self) -> Tensor:
        return self.selection.keep_rows(tuple(self.sim.shape))

    def keep_rows(self, rows: int) -> Tensor:
        return self.selection.keep_rows(tuple(self.sim.shape), rows)

    def mass_rows(self, rows: int) -> Tensor:
        """[min(rows, B), K] float: how much each entry of the first ``rows`` queries counts (0 when not kept)."""
        keep = self.keep_rows(rows)
        if self.mass_scale is None:
            return keep.float()
        logits = (self.mass_scale * self.sim[:rows].float()).masked_fill(~keep, float("-inf"))
        share = torch.nan_to_num(logits.softmax(dim=1), nan=0.0)  # rows without kept entries: 0
        return share * self.num_kept[:rows].view(-1, 1)


# --- argument checks (one place, reused by the model) ------------------------------------------------------------
def _bad(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"{name} = {value!r} is not allowed: expected {allowed}")


def check_temperature(temperature: float) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise _bad("temperature", temperature, "a finite number > 0")


def check_ratio(ratio: float) -> None:
    if not 0.0 < ratio <= 1.0:
        raise _bad("ratio", ratio, "a number in (0, 1]")


def check_threshold(threshold: float) -> None:
    if not -1.0 < threshold <= 1.0:
        raise _bad("threshold", threshold, "a number in (-1, 1]")


def check_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise _bad("weight", weight, "a number in [0, 1]")


# --- selection ---------------------------------------------------------------------------------------------------
def _filtered_mask(sim: Tensor, query_ids: Tensor | None, queue_ids: Tensor | None, threshold: float) -> Tensor | None:
    """[B, K] bool of entries dropped by the same-id and ``sim > threshold`` filters; ``None`` when none apply."""
    mask = None
    if query_ids is not None and queue_ids is not None:
        mask = query_ids.view(-1, 1) == queue_ids.view(1, -1)
    if threshold < 1.0:
        above = sim > threshold
        mask = above if mask is None else mask | above
    return mask


def _keep_counts(num_candidates: Tensor, ratio: float) -> Tensor:
    """ceil(ratio * K') per row, at least 1 when K' > 0 (computed in float64 so that e.g. 0.3 * 10 gives 3, not 4)."""
    want = torch.ceil(num_candidates.double() * ratio - 1e-9).long()
    return torch.minimum(want.clamp_min(1), num_candidates)


def _extreme(scores: Tensor, counts: Tensor, largest: bool) -> tuple[Tensor, Tensor]:
    """(index [B, P], valid [B, P]): exactly ``counts[b]`` largest (or smallest) entries of each row of ``scores``.

    One unsorted ``topk`` with P = the batch's largest count; for rows that want fewer, the surplus (their least
    extreme picks) is marked invalid by a second, small ``topk`` over the picked values. Ties are broken by
    ``topk``; the counts are exact.
    """
    top = int(counts.max()) if counts.numel() else 0
    values, index = scores.topk(top, dim=1, largest=largest, sorted=False)
    valid = torch.ones_like(values, dtype=torch.bool)
    surplus = top - counts  # [B]
    most = int(surplus.max()) if counts.numel() else 0
    if most > 0:
        weakest = values.topk(most, dim=1, largest=not largest, sorted=True).indices
        valid.scatter_(1, weakest, torch.arange(most, device=scores.device).view(1, -1) >= surplus.view(-1, 1))
    return index, valid


def _select(sim: Tensor, query_ids: Tensor | None, queue_ids: Tensor | None, ratio: float,
            threshold: float) -> _Selection:
    """Filter, then keep the ceil(ratio * K') most similar candidates of each row (see :func:`select_negatives`).

    Vectorised over batch and queue. Filtered entries are pushed to -inf (or +inf) and one ``topk`` picks whichever
    set is smaller: the kept one (ratio <= 1/2, returned as ``picks`` so the loss can gather just those logits) or the
    dropped one (ratio > 1/2, merged into ``dropped``). ratio = 1 needs no ``topk``.
    """
    b, k = sim.shape
    filtered = _filtered_mask(sim, query_ids, queue_ids, threshold)
    if filtered is None:
        counts = torch.full((b,), k, dtype=torch.long, device=sim.device)
    else:
        counts = k - filtered.sum(dim=1, dtype=torch.int32).long()
    if ratio >= 1.0 or k == 0:
        return _Selection(counts, counts, dropped=filtered)
    keep_n = _keep_counts(counts, ratio)
    if ratio <= 0.5:
        scores = sim if filtered is None else sim.masked_fill(filtered, float("-inf"))
        return _Selection(counts, keep_n, picks=_extreme(scores, keep_n, largest=True))
    scores = sim if filtered is None else sim.masked_fill(filtered, float("inf"))
    index, valid = _extreme(scores, counts - keep_n, largest=False)
    dropped = torch.zeros_like(sim, dtype=torch.bool) if filtered is None else filtered.clone()
    return _Selection(counts, keep_n, dropped=dropped.scatter_(1, index, valid | dropped.gather(1, index)))


def select_negatives(sim: Tensor, *, query_ids: Tensor | None = None, queue_ids: Tensor | None = None,
                     ratio: float = 1.0, threshold: float = 1.0) -> Tensor:
    """Which queue entries each query uses as negatives.

    Args:
        sim: [B, K] detached cosine similarities of queries to the (filled) queue entries.
        query_ids: [B] image id of each query, or None. queue_ids: [K] image id of each queue entry, or None.
            Entries with the query's own id are dropped (only when both are given).
        ratio: rho in (0, 1]; keep the ceil(rho * K') most similar of the K' entries left after filtering.
        threshold: delta in (-1, 1]; drop entries with ``sim > delta`` (1 disables the filter).

    Returns:
        keep [B, K] bool. Every row with K' > 0 keeps at least one entry.
    """
    check_ratio(ratio)
    check_threshold(threshold)
    return _select(sim, query_ids, queue_ids, ratio, threshold).keep_rows(tuple(sim.shape))


# --- the contrastive term ----------------------------------------------------------------------------------------
def contrastive_loss(q: Tensor, k: Tensor, queue_keys: Tensor, temperature: float, *,
                     query_ids: Tensor | None = None, queue_ids: Tensor | None = None,
                     ratio: float = 1.0, threshold: float = 1.0) -> tuple[Tensor, ContrastiveInfo]:
    """Batch mean of l(q, k, N(q)) over selected negatives (see the module docstring).

    Args:
        q: [B, D] normalised queries. k: [B, D] normalised positive keys (treated as constants by the caller).
        queue_keys: [K, D] normalised negatives (filled entries only; K may be 0).
        temperature: tau > 0. query_ids [B], queue_ids [K], ratio, threshold: as in :func:`select_negatives`.

    Returns:
        (loss, info): the 0-d loss and a :class:`ContrastiveInfo` with detached ``pos_sim``, ``sim``, masks.
    """
    check_temperature(temperature)
    check_ratio(ratio)
    check_threshold(threshold)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
    l_neg = q @ queue_keys.t()  # [B, K]
    sim = l_neg.detach()
    selection = _select(sim, query_ids, queue_ids, ratio, threshold)
    loss = selected_infonce(l_pos, l_neg, selection, temperature)
    info = ContrastiveInfo(pos_sim=l_pos.detach().squeeze(1), sim=sim, selection=selection)
    return loss, info


def selected_infonce(l_pos: Tensor, l_neg: Tensor, selection: _Selection, temperature: float,
                     extra: Tensor | None = None) -> Tensor:
    """Batch mean of l(q, k, N(q)) from l_pos [B, 1] and l_neg [B, K] (cosines, with gradient) and a selection;
    ``extra`` [B, S]: further negative cosines appended to every row (-inf where a row has none)."""
    if selection.picks is not None:  # only the kept logits enter the softmax (and receive gradient)
        index, valid = selection.picks
        l_neg = l_neg.gather(1, index).masked_fill(~valid, float("-inf"))
    elif selection.dropped is not None:  # dropped logits become -inf: no softmax mass, no gradient
        l_neg = l_neg.masked_fill(selection.dropped, float("-inf"))
    logits = torch.cat([l_pos, l_neg] + ([extra] if extra is not None else []), dim=1) / temperature
    target = torch.zeros(l_pos.shape[0], dtype=torch.long, device=l_pos.device)
    return F.cross_entropy(logits, target)


def dual_view_loss(q1: Tensor | None, k2: Tensor | None, queue_keys: Tensor, temperature: float, *,
                   weight: float = 1.0, q2: Tensor | None = None, k1: Tensor | None = None,
                   query_ids: Tensor | None = None, queue_ids: Tensor | None = None,
                   ratio: float = 1.0, threshold: float = 1.0,
                   term: Callable[..., tuple[Tensor, ContrastiveInfo]] | None = None
                   ) -> tuple[Tensor, list[ContrastiveInfo]]:
    """L = lambda * l(q1, k2, N(q1)) + (1 - lambda) * l(q2, k1, N(q2)), each a batch mean: a weighted *mean*.

    Both terms use the same ``queue_keys`` snapshot (the caller enqueues k1 and k2 only afterwards). A term whose
    weight is 0 is not computed, so with ``weight = 1`` (one-way MoCo v2) ``q2`` and ``k1`` may be None, and with
    ``weight = 0`` ``q1`` and ``k2`` may be None. ``query_ids`` [B] are the image ids, shared by both views.

    ``term`` computes one direction's term instead of :func:`contrastive_loss` (another negative-sampling strategy,
    :mod:`moco.negatives`): ``term(q, k, queue_keys, temperature, query_ids=, queue_ids=, threshold=)``; it takes
    the place of ``ratio``, which must then be 1.

    Returns:
        (loss, infos): the 0-d loss and one :class:`ContrastiveInfo` per computed term (view-1 query term first).
    """
    check_weight(weight)
    if term is not None and ratio != 1.0:
        raise ValueError(f"ratio = {ratio!r} is not allowed with another strategy's term: expected 1 (top-rho is the "
                         "select strategy's)")
    terms = []
    for w, q, k, names in ((weight, q1, k2, "q1, k2"), (1.0 - weight, q2, k1, "q2, k1")):
        if w == 0.0:
            continue
        if q is None or k is None:
            raise ValueError(f"{names} are required when their weight is {w} (weight = {weight!r}, allowed [0, 1])")
        if term is None:
            loss, info = contrastive_loss(q, k, queue_keys, temperature, query_ids=query_ids, queue_ids=queue_ids,
                                          ratio=ratio, threshold=threshold)
        else:
            loss, info = term(q, k, queue_keys, temperature, query_ids=query_ids, queue_ids=queue_ids,
                              threshold=threshold)
        terms.append((w, loss, info))
    total = terms[0][1] if len(terms) == 1 else sum(w * loss for w, loss, _ in terms)
    return total, [info for _, _, info in terms]
