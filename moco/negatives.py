"""Negative-sampling strategies beyond top-rho: HCL reweighting, a rank window (ring) and MoCHi's synthetic negatives.

Every strategy is a pure, vectorised contrastive term on the same queue snapshot as
:func:`moco.losses.contrastive_loss`, with the same filters: queue entries with the query's own image id and, with a
threshold delta < 1, entries with cosine > delta are never negatives. For one query q (all vectors L2-normalised),
let n_1..n_N be the N candidates left after the filters, s_i = q.n_i, tau the temperature, pos = exp(q.k / tau) and
neg_i = exp(s_i / tau). MoCo v2's term is l = -log(pos / (pos + sum_i neg_i)).

* ``select`` (:func:`moco.losses.contrastive_loss`): the ceil(rho N) most similar candidates (top-rho), unchanged.
* ``hcl`` (Robinson et al., ICLR 2021, with Chuang et al.'s debiasing), beta >= 0, tau+ in [0, 1)::

      w_i = exp(beta s_i / tau) / mean_j exp(beta s_j / tau)
      Ng  = max( (sum_i w_i neg_i - tau+ N pos) / (1 - tau+),  N exp(-1 / tau) )
      l   = -log( pos / (pos + Ng) )

  beta = 0, tau+ = 0 is MoCo v2 (the lower bound never binds: every neg_i >= exp(-1/tau)).
* ``ring`` (Wu et al., ICLR 2021; Cai et al., 2020), 0 <= rho_lo < rho_hi <= 1: rank the candidates by s,
  descending; drop the first lo = ceil(rho_lo N) and keep ranks lo+1 .. hi with hi = ceil(rho_hi N); at least one is
  kept when N > 0 (hi >= lo + 1, lo <= N - 1). rho_lo = 0, rho_hi = 1 is MoCo v2; rho_lo = 0 is top-rho_hi.
* ``mochi`` (Kalantidis et al., NeurIPS 2020), N_h, s_mix, s_q: keep all N candidates and append s_mix synthetic
  negatives h = normalize(alpha n_i + (1 - alpha) n_j), alpha ~ U(0, 1), i != j uniform among the min(N_h, N)
  hardest, and s_q synthetic negatives h' = normalize(gamma q^ + (1 - gamma) n_i), gamma ~ U(0, 1/2), i uniform
  among the hardest, q^ = q detached. h and h' are constants (no gradient through them). s_mix = s_q = 0 is MoCo v2.

The strategies and how a :class:`moco.config.TrainConfig` sets them up step by step are in :data:`STRATEGIES`
(a registry); :func:`for_step` builds one step's :class:`Negatives`. Shapes: q [B, D] (with gradient), k [B, D] and
queue_keys [K, D] constants, query_ids [B] and queue_ids [K] image ids (or None).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from moco.losses import (ContrastiveInfo, _bad, _extreme, _filtered_mask, _Selection, check_temperature,
                         check_threshold, contrastive_loss, selected_infonce)

__all__ = ["Negatives", "Synthetic", "STRATEGIES", "for_step", "hcl_loss", "ring_loss", "ring_counts", "mochi_loss",
           "mochi_draws"]


# --- shared: the filters ------------------------------------------------------------------------------------------
def _candidates(sim: Tensor, query_ids: Tensor | None, queue_ids: Tensor | None,
                threshold: float) -> tuple[Tensor | None, Tensor]:
    """(dropped [B, K] bool or None, N [B] long): the same-id and threshold filters of moco.losses."""
    dropped = _filtered_mask(sim, query_ids, queue_ids, threshold)
    k = sim.shape[1]
    if dropped is None:
        return None, torch.full((sim.shape[0],), k, dtype=torch.long, device=sim.device)
    return dropped, k - dropped.sum(dim=1, dtype=torch.int32).long()


def _terms(q: Tensor, k: Tensor, queue_keys: Tensor, temperature: float, threshold: float):
    check_temperature(temperature)
    check_threshold(threshold)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
    l_neg = q @ queue_keys.t()  # [B, K]
    return l_pos, l_neg, l_neg.detach()


# --- hcl ----------------------------------------------------------------------------------------------------------
def check_hcl(beta: float, tau_plus: float) -> None:
    if not (beta >= 0 and math.isfinite(beta)):
        raise _bad("beta", beta, "a finite number >= 0")
    if not 0.0 <= tau_plus < 1.0:
        raise _bad("tau_plus", tau_plus, "a number in [0, 1)")


class _WeightedLogRatio(torch.autograd.Function):
    """r [B] = LSE_i((1 + beta) x_i) - LSE_i(beta x_i) over each row's entries not in ``dropped`` (every row keeps one).

    x [B, K] (with gradient), dropped [B, K] bool or None. With m the row's kept maximum, d = x - m (-inf where
    dropped), e_b = exp(beta d) and e_h = e_b exp(d): r = m + log sum e_h - log sum e_b, and the gradient is
    dr/dx_i = (1 + beta) e_h,i / sum e_h - beta e_b,i / sum e_b. One fused pass each way over [B, K] instead of two
    masked copies and two logsumexps with their backward (on 2 CPU cores at B = 256, K = 16384 the HCL term cost
    about as much again as MoCo v2's).
    """

    @staticmethod
    def forward(ctx, x: Tensor, dropped: Tensor | None, beta: float) -> Tensor:
        d = x.clone() if dropped is None else x.masked_fill(dropped, float("-inf"))
        m = d.amax(dim=1, keepdim=True)
        e1 = d.sub_(m).exp()  # d <= 0; 0 where dropped
        if beta == 0.0:
            e_b, e_h = torch.ones_like(e1) if dropped is None else (~dropped).to(x.dtype), e1
        else:
            e_b = e1 if beta == 1.0 else d.mul_(beta).exp_()
            e_h = e_b * e1
        z_h, z_b = e_h.sum(dim=1), e_b.sum(dim=1)
        ctx.beta = beta
        ctx.save_for_backward(e_h, e_b, z_h, z_b)
        return m.squeeze(1) + z_h.log() - z_b.log()

    @staticmethod
    def backward(ctx, grad: Tensor):
        e_h, e_b, z_h, z_b = ctx.saved_tensors
        beta = ctx.beta
        out = e_h * (grad * (1.0 + beta) / z_h).unsqueeze(1)
        if beta != 0.0:
            out.addcmul_(e_b, (grad * -beta / z_b).unsqueeze(1))
        return out, None, None


def hcl_log_ng(pos_logit: Tensor, neg_logits: Tensor, dropped: Tensor | None, counts: Tensor, beta: float,
               tau_plus: float, temperature: float) -> Tensor:
    """log Ng [B] of the module docstring, in log space (stable for large beta / tau), -inf for rows with N = 0.

    pos_logit [B] = q.k / tau, neg_logits [B, K] = s / tau (with gradient), dropped [B, K] (filtered entries),
    counts [B] = N. Uses sum_i w_i neg_i = N * sum_i exp((1 + beta) s_i / tau) / sum_j exp(beta s_j / tau)
    (:class:`_WeightedLogRatio`).
    """
    b, k = neg_logits.shape
    inf = float("inf")
    if k == 0:
        return pos_logit.new_full((b,), -inf)
    has = counts > 0
    if dropped is not None:  # rows without candidates compute on all entries (finite values, discarded below)
        dropped = dropped & has.view(-1, 1)
    log_n = torch.where(has, counts, k).to(neg_logits.dtype).log()
    log_weighted = log_n + _WeightedLogRatio.apply(neg_logits, dropped, float(beta))  # log sum_i w_i neg_i
    if tau_plus > 0.0:
        log_debias = math.log(tau_plus) + log_n + pos_logit  # log(tau+ N pos)
        top = torch.maximum(log_weighted, log_debias)
        diff = torch.exp(log_weighted - top) - torch.exp(log_debias - top)
        positive = diff > 0  # else the debiased sum is <= 0 and the lower bound takes over
        core = top + torch.log(torch.where(positive, diff, torch.ones_like(diff))) - math.log1p(-tau_plus)
        log_weighted = torch.where(positive, core, torch.full_like(core, -inf))
    log_ng = torch.maximum(log_weighted, log_n - 1.0 / temperature)
    return torch.where(has, log_ng, torch.full_like(log_ng, -inf))


def hcl_loss(q: Tensor, k: Tensor, queue_keys: Tensor, temperature: float, *, query_ids: Tensor | None = None,
             queue_ids: Tensor | None = None, threshold: float = 1.0, beta: float = 1.0,
             tau_plus: float = 0.1) -> tuple[Tensor, ContrastiveInfo]:
    """Batch mean of the HCL term l = -log(pos / (pos + Ng)) (module docstring) over all N candidates.

    Gradient: w carries gradient, as in HCL's reference code (``imp = (beta * neg.log()).exp()`` is not detached),
    so this is the gradient of the published objective and the literature's numbers apply to it. With Z_g =
    sum_i exp(g s_i / tau), the weighted sum is N Z_{1+beta} / Z_beta and its log has d/ds_i = ((1 + beta)
    p_i^{(1+beta)} - beta p_i^{(beta)}) / tau, p^{(g)} = softmax(g s / tau): the hardest negatives are pushed harder
    than with detached weights, and the easiest are pulled slightly (detaching w would keep only the first part
    and change the method). Where the lower bound N exp(-1/tau) binds, the negatives get no gradient.

    The info's ``mass_rows`` give each candidate's share of sum_i w_i neg_i (softmax of (1 + beta) s / tau), scaled
    to sum to N per row: what the diagnostics weight false negatives by.
    """
    check_hcl(beta, tau_plus)
    l_pos, l_neg, sim = _terms(q, k, queue_keys, temperature, threshold)
    dropped, counts = _candidates(sim, query_ids, queue_ids, threshold)
    pos_logit = l_pos.squeeze(1) / temperature
    log_ng = hcl_log_ng(pos_logit, l_neg / temperature, dropped, counts, beta, tau_plus, temperature)
    loss = (torch.stack([pos_logit, log_ng], dim=1).logsumexp(dim=1) - pos_logit).mean()
    info = ContrastiveInfo(pos_sim=l_pos.detach().squeeze(1), sim=sim,
                           selection=_Selection(counts, counts, dropped=dropped), mass_scale=(1.0 + beta) / temperature)
    return loss, info


# --- ring ---------------------------------------------------------------------------------------------------------
def check_ring(low: float, high: float) -> None:
    if not 0.0 < high <= 1.0:
        raise _bad("high", high, "a number in (0, 1]")
    if not 0.0 <= low < high:
        raise _bad("low", low, f"a number in [0, high = {high})")


def ring_counts(counts: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    """(lo [B], hi [B]): lo = min(ceil(rho_lo N), N - 1), hi = min(max(ceil(rho_hi N), lo + 1), N); 0, 0 when N = 0.

    Computed in float64 with the same rounding guard as top-rho (0.3 * 10 gives 3, not 4)."""
    n = counts.double()
    lo = torch.minimum(torch.ceil(n * low - 1e-9).long(), (counts - 1).clamp_min(0))
    hi = torch.minimum(torch.maximum(torch.ceil(n * high - 1e-9).long(), lo + 1), counts)
    return lo, hi


def _mark(mask: Tensor, picks: tuple[Tensor, Tensor]) -> Tensor:
    index, valid = picks
    return mask.scatter_(1, index, valid | mask.gather(1, index))


def ring_selection(sim: Tensor, dropped: Tensor | None, counts: Tensor, low: float, high: float) -> _Selection:
    """The kept ranks lo+1 .. hi of each row (see :func:`ring_counts`), by the cheaper of two ``topk`` paths.

    high <= 1/2: the top hi (as ``picks``), less their top lo; otherwise the dropped set: filtered, top lo and the
    N - hi least similar. low = 0 and high = 1 needs no ``topk``.
    """
    lo, hi = ring_counts(counts, low, high)
    if sim.shape[1] == 0 or (low == 0.0 and high >= 1.0):
        return _Selection(counts, hi - lo, dropped=dropped)
    inf = float("inf")
    below = sim if dropped is None else sim.masked_fill(dropped, -inf)
    if high <= 0.5:
        index, valid = _extreme(below, hi, largest=True)
        if int(lo.max()) > 0:
            picked = below.gather(1, index).masked_fill(~valid, -inf)
            top, top_valid = _extreme(picked, lo, largest=True)
            valid = valid.scatter(1, top, valid.gather(1, top) & ~top_valid)
        return _Selection(counts, hi - lo, picks=(index, valid))
    mask = torch.zeros_like(sim, dtype=torch.bool) if dropped is None else dropped.clone()
    if int(lo.max()) > 0:
        mask = _mark(mask, _extreme(below, lo, largest=True))
    if int((counts - hi).max()) > 0:
        above = sim if dropped is None else sim.masked_fill(dropped, inf)
        mask = _mark(mask, _extreme(above, counts - hi, largest=False))
    return _Selection(counts, hi - lo, dropped=mask)


def ring_loss(q: Tensor, k: Tensor, queue_keys: Tensor, temperature: float, *, query_ids: Tensor | None = None,
              queue_ids: Tensor | None = None, threshold: float = 1.0, low: float = 0.001,
              high: float = 0.05) -> tuple[Tensor, ContrastiveInfo]:
    """Batch mean of l(q, k, ring(q)), MoCo v2's term over the candidates ranked lo+1 .. hi (module docstring)."""
    check_ring(low, high)
    l_pos, l_neg, sim = _terms(q, k, queue_keys, temperature, threshold)
    dropped, counts = _candidates(sim, query_ids, queue_ids, threshold)
    selection = ring_selection(sim, dropped, counts, low, high)
    loss = selected_infonce(l_pos, l_neg, selection, temperature)
    return loss, ContrastiveInfo(pos_sim=l_pos.detach().squeeze(1), sim=sim, selection=selection)


# --- mochi --------------------------------------------------------------------------------------------------------
@dataclass
class Synthetic:
    """MoCHi's synthetic negatives of one term, for the diagnostics (all detached).

    sim [B, S]: their cosine with the query (-inf where ``valid`` is False). sources [B, S, 2] long: the queue
    columns each was mixed from, -1 for the query itself; weights [B, S, 2]: the mixing coefficients.
    """

    sim: Tensor
    valid: Tensor
    sources: Tensor
    weights: Tensor


@dataclass
class MochiDraws:
    """The random numbers of one MoCHi term, all U(0, 1) [B, s_mix] or [B, s_q] (alpha ~ U(0, 1); the query mixes'
    gamma is half of ``query_gamma``): drawn by :func:`mochi_draws`, passed in so that the term stays pure."""

    first: Tensor
    second: Tensor
    alpha: Tensor
    query_pick: Tensor
    query_gamma: Tensor


def mochi_draws(batch: int, mixes: int, query_mixes: int, generator: torch.Generator | None,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> MochiDraws:
    """All random numbers of one term from ``generator`` (the engine's seeded one: the same seed gives the same
    synthetic negatives)."""
    def u(n: int) -> Tensor:
        return torch.rand(batch, n, generator=generator, device=device, dtype=dtype)

    return MochiDraws(u(mixes), u(mixes), u(mixes), u(query_mixes), u(query_mixes))


def check_mochi(hardest: int, mixes: int, query_mixes: int) -> None:
    if not hardest >= 1 or (mixes > 0 and hardest < 2):
        raise _bad("hardest", hardest, "an integer >= 1 (>= 2 with mixes > 0: pairs i != j)")
    for name, value in (("mixes", mixes), ("query_mixes", query_mixes)):
        if value < 0:
            raise _bad(name, value, "an integer >= 0")


def _mix_norm(a: Tensor, cos: Tensor) -> Tensor:
    """|a u + (1 - a) v| for unit u, v with u.v = cos."""
    return (a * a + (1 - a) ** 2 + 2 * a * (1 - a) * cos).clamp_min(1e-24).sqrt()


def _pair_dots(keys: Tensor, rows_i: Tensor, rows_j: Tensor, chunk: int = 4096) -> Tensor:
    """keys[rows_i] . keys[rows_j] [P] for index vectors [P], ``chunk`` pairs at a time: the gathered rows stay in
    cache (on 2 CPU cores, 131k pairs of 128-d keys: 16 ms in chunks against 108 ms gathered at once)."""
    return torch.cat([torch.linalg.vecdot(keys.index_select(0, a), keys.index_select(0, b))
                      for a, b in zip(rows_i.split(chunk), rows_j.split(chunk))]) if len(rows_i) else \
        keys.new_zeros(0)


def mochi_synthetic(q: Tensor, l_neg: Tensor, queue_keys: Tensor, dropped: Tensor | None, counts: Tensor,
                    hardest: int, draws: MochiDraws) -> tuple[Tensor, Synthetic]:
    """(logits [B, s_mix + s_q] cosines with gradient to q only, Synthetic) of the module docstring.

    Closed form, no [B, S, D] mixture is normalised: q.normalize(a u + (1 - a) v) = (a q.u + (1 - a) q.v) /
    |a u + (1 - a) v|, the norm from detached cosines, so the gradient with respect to q is h (a constant). The
    hardest are the first min(N_h, N) of a sorted ``topk``; i = floor(u N_h'), j = floor(u' (N_h' - 1)), j += j >= i.
    """
    b = q.shape[0]
    sim = l_neg.detach()
    nh = torch.clamp(counts, max=hardest)  # [B]
    top_n = int(nh.max()) if b else 0
    below = sim if dropped is None else sim.masked_fill(dropped, float("-inf"))
    order = below.topk(top_n, dim=1, largest=True, sorted=True).indices  # [B, top_n]
    if top_n == 0:
        order = torch.zeros(b, 1, dtype=torch.long, device=q.device)
    nh_f = nh.view(-1, 1).to(draws.first.dtype)

    # mixes of two hard negatives
    first = torch.minimum((draws.first * nh_f).long(), (nh - 1).clamp_min(0).view(-1, 1))
    second = torch.minimum((draws.second * (nh_f - 1)).long(), (nh - 2).clamp_min(0).view(-1, 1))
    second = second + (second >= first).long()
    col_i, col_j = order.gather(1, first), order.gather(1, second.clamp(max=order.shape[1] - 1))
    alpha = draws.alpha.to(sim.dtype)
    cos = _pair_dots(queue_keys.detach(), col_i.flatten(), col_j.flatten()).view_as(col_i)  # n_i.n_j [B, s_mix]
    mix = (alpha * l_neg.gather(1, col_i) + (1 - alpha) * l_neg.gather(1, col_j)) / _mix_norm(alpha, cos)
    mix_valid = (nh >= 2).view(-1, 1).expand_as(mix)

    # mixes of the (detached) query with one hard negative
    pick = torch.minimum((draws.query_pick * nh_f).long(), (nh - 1).clamp_min(0).view(-1, 1))
    col = order.gather(1, pick)
    gamma = 0.5 * draws.query_gamma.to(sim.dtype)
    s_n = l_neg.gather(1, col)
    self_sim = (q * q.detach()).sum(dim=1, keepdim=True)  # q.q^ (= 1), gradient q^
    qmix = (gamma * self_sim + (1 - gamma) * s_n) / _mix_norm(gamma, s_n.detach())
    qmix_valid = (nh >= 1).view(-1, 1).expand_as(qmix)

    logits = torch.cat([mix, qmix], dim=1)
    valid = torch.cat([mix_valid, qmix_valid], dim=1)
    logits = logits.masked_fill(~valid, float("-inf"))
    sources = torch.cat([torch.stack([col_i, col_j], -1), torch.stack([col, torch.full_like(col, -1)], -1)], 1)
    weights = torch.cat([torch.stack([alpha, 1 - alpha], -1), torch.stack([1 - gamma, gamma], -1)], 1)
    return logits, Synthetic(logits.detach(), valid, sources, weights.detach())


def mochi_loss(q: Tensor, k: Tensor, queue_keys: Tensor, temperature: float, *, query_ids: Tensor | None = None,
               queue_ids: Tensor | None = None, threshold: float = 1.0, hardest: int = 1024, mixes: int = 512,
               query_mixes: int = 256, generator: torch.Generator | None = None,
               draws: MochiDraws | None = None) -> tuple[Tensor, ContrastiveInfo]:
    """Batch mean of MoCo v2's term over all N candidates plus the synthetic negatives (module docstring).

    ``draws`` (else drawn from ``generator``) fix the randomness; with mixes = query_mixes = 0 nothing is drawn."""
    check_mochi(hardest, mixes, query_mixes)
    l_pos, l_neg, sim = _terms(q, k, queue_keys, temperature, threshold)
    dropped, counts = _candidates(sim, query_ids, queue_ids, threshold)
    selection = _Selection(counts, counts, dropped=dropped)
    if mixes + query_mixes == 0 or sim.shape[1] == 0:
        loss = selected_infonce(l_pos, l_neg, selection, temperature)
        return loss, ContrastiveInfo(pos_sim=l_pos.detach().squeeze(1), sim=sim, selection=selection)
    if draws is None:
        draws = mochi_draws(q.shape[0], mixes, query_mixes, generator, q.device)
    extra, synthetic = mochi_synthetic(q, l_neg, queue_keys, dropped, counts, hardest, draws)
    loss = selected_infonce(l_pos, l_neg, selection, temperature, extra=extra)
    return loss, ContrastiveInfo(pos_sim=l_pos.detach().squeeze(1), sim=sim, selection=selection,
                                 synthetic=synthetic)


# --- the registry -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    """A strategy's term and how a TrainConfig sets it up for one step: ``params(cfg, warm, progress, generator)``
    gives its keyword arguments, where ``warm`` is True during ``selection_warmup_epochs`` and ``progress`` in
    [0, 1] is the share of the warm-up done (1 without one)."""

    loss: Callable[..., tuple[Tensor, ContrastiveInfo]]
    params: Callable[[Any, bool, float, torch.Generator | None], dict[str, Any]]


STRATEGIES: dict[str, Strategy] = {
    # top-rho + delta: plain MoCo v2 (rho = 1) during the warm-up.
    "select": Strategy(contrastive_loss, lambda cfg, warm, p, g: {"ratio": 1.0 if warm else cfg.hard_negative_ratio}),
    # no warm-up of its own.
    "hcl": Strategy(hcl_loss, lambda cfg, warm, p, g: {"beta": cfg.hcl_beta, "tau_plus": cfg.hcl_tau_plus}),
    # rho_hi anneals linearly from 1 to ring_high over the warm-up; rho_lo applies from the start.
    "ring": Strategy(ring_loss, lambda cfg, warm, p, g: {"low": cfg.ring_low,
                                                         "high": p * cfg.ring_high + (1.0 - p)}),
    # no synthetic negatives during the warm-up.
    "mochi": Strategy(mochi_loss, lambda cfg, warm, p, g: {"hardest": cfg.mochi_hardest,
                                                           "mixes": 0 if warm else cfg.mochi_mixes,
                                                           "query_mixes": 0 if warm else cfg.mochi_query_mixes,
                                                           "generator": g}),
}


@dataclass(frozen=True)
class Negatives:
    """One step's strategy: its name in :data:`STRATEGIES` and the keyword arguments of its loss."""

    name: str = "select"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in STRATEGIES:
            raise _bad("negatives", self.name, f"one of {', '.join(STRATEGIES)}")

    @property
    def term(self) -> Callable[..., tuple[Tensor, ContrastiveInfo]]:
        """``term(q, k, queue_keys, temperature, query_ids=, queue_ids=, threshold=)``, for dual_view_loss."""
        return partial(STRATEGIES[self.name].loss, **self.params)


def for_step(cfg, step: int, steps_per_epoch: int, generator: torch.Generator | None = None) -> Negatives:
    """The strategy of ``cfg.negatives`` at a 0-based global step (warm-up: the first selection_warmup_epochs)."""
    warm_steps = cfg.selection_warmup_epochs * steps_per_epoch
    progress = min(1.0, step / warm_steps) if warm_steps else 1.0
    strategy = STRATEGIES[cfg.negatives]
    return Negatives(cfg.negatives, strategy.params(cfg, step < warm_steps, progress, generator))
