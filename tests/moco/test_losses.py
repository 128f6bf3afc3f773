"""Contrastive term, selective negatives and the dual-view combination against naive references."""

import math

import pytest
import torch
import torch.nn.functional as F

from moco.losses import contrastive_loss, dual_view_loss, select_negatives


def _unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def _naive_loss(q, k, queue, tau, query_ids, queue_ids, ratio, threshold):
    """Per-sample Python loop straight from the definition (float64)."""
    total = 0.0
    for b in range(q.shape[0]):
        pos = float(q[b] @ k[b])
        cands = []
        for j in range(queue.shape[0]):
            s = float(q[b] @ queue[j])
            if query_ids is not None and int(queue_ids[j]) == int(query_ids[b]):
                continue
            if threshold < 1 and s > threshold:
                continue
            cands.append(s)
        cands.sort(reverse=True)
        n_keep = min(len(cands), max(1, math.ceil(round(ratio * len(cands), 9)))) if cands else 0
        kept = cands[:n_keep]
        denom = math.exp(pos / tau) + sum(math.exp(s / tau) for s in kept)
        total += -math.log(math.exp(pos / tau) / denom)
    return total / q.shape[0]


@pytest.mark.parametrize("ratio,threshold,use_ids", [
    (1.0, 1.0, False), (1.0, 1.0, True), (0.3, 1.0, False), (0.25, 0.2, True), (1.0, 0.0, True), (0.01, 0.5, True),
    (0.7, 1.0, False), (0.8, 0.3, True), (0.99, 1.0, True),
])
def test_matches_naive_loop(ratio, threshold, use_ids):
    B, K, D, tau = 6, 40, 8, 0.2
    q, k, queue = _unit(B, D, seed=1), _unit(B, D, seed=2), _unit(K, D, seed=3)
    query_ids = torch.arange(B) if use_ids else None
    queue_ids = torch.arange(K) % 10 if use_ids else None
    loss, info = contrastive_loss(q, k, queue, tau, query_ids=query_ids, queue_ids=queue_ids,
                                  ratio=ratio, threshold=threshold)
    expected = _naive_loss(q, k, queue, tau, query_ids, queue_ids, ratio, threshold)
    assert abs(loss.item() - expected) < 1e-6
    assert info.sim.shape == (B, K) and info.pos_sim.shape == (B,)


def test_moco_v2_mode_is_textbook():
    B, K, D, tau = 8, 64, 16, 0.2
    q, k, queue = _unit(B, D, seed=4, dtype=torch.float32), _unit(B, D, seed=5, dtype=torch.float32), \
        _unit(K, D, seed=6, dtype=torch.float32)
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,kc->nk", q, queue)
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    expected = F.cross_entropy(logits, torch.zeros(B, dtype=torch.long))
    loss, _ = contrastive_loss(q, k, queue, tau)
    assert torch.equal(loss, expected)
    loss_dv, infos = dual_view_loss(q, k, queue, tau, weight=1.0)
    assert torch.equal(loss_dv, expected) and len(infos) == 1


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.8])
def test_selection_keeps_exact_top_fraction_after_filtering(ratio):
    B, K, D = 5, 50, 8
    q, queue = _unit(B, D, seed=7), _unit(K, D, seed=8)
    sim = q @ queue.t()
    query_ids, queue_ids = torch.arange(B), torch.arange(K) % 7
    threshold = 0.4
    keep = select_negatives(sim, query_ids=query_ids, queue_ids=queue_ids, ratio=ratio, threshold=threshold)
    for b in range(B):
        cand = [j for j in range(K) if queue_ids[j] != query_ids[b] and sim[b, j] <= threshold]
        n = max(1, math.ceil(round(ratio * len(cand), 9)))
        top = sorted(cand, key=lambda j: -float(sim[b, j]))[:n]
        assert set(keep[b].nonzero().flatten().tolist()) == set(top)
        assert not keep[b][queue_ids == query_ids[b]].any()
        assert not keep[b][sim[b] > threshold].any()


def test_ties_and_tiny_ratio_keep_at_least_one():
    sim = torch.zeros(3, 10)  # all tied
    keep = select_negatives(sim, ratio=0.35)
    assert keep.sum(1).tolist() == [4, 4, 4]
    keep = select_negatives(sim, ratio=1e-6)
    assert keep.sum(1).tolist() == [1, 1, 1]
    keep = select_negatives(sim, ratio=0.75)
    assert keep.sum(1).tolist() == [8, 8, 8]
    tied = torch.tensor([[0.5, 0.5, 0.5, 0.1, 0.9, 0.5]])
    assert select_negatives(tied, ratio=0.5).sum().item() == 3 and select_negatives(tied, ratio=0.5)[0, 4]
    assert not select_negatives(tied, ratio=0.7)[0, 3] and select_negatives(tied, ratio=0.7).sum().item() == 5
    # a row with no candidate at all keeps none and the loss stays finite (log 1 = 0 for that row)
    ids = torch.tensor([0, 1, 2])
    keep = select_negatives(sim, query_ids=ids, queue_ids=torch.zeros(10, dtype=torch.long), ratio=0.5)
    assert keep.sum(1).tolist() == [0, 5, 5]
    q, k, queue = _unit(3, 4, seed=1), _unit(3, 4, seed=2), _unit(10, 4, seed=3)
    loss, _ = contrastive_loss(q, k, queue, 0.1, query_ids=ids, queue_ids=torch.zeros(10, dtype=torch.long), ratio=0.5)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("ratio,B", [(0.2, 4), (0.8, 1)])  # one query at 0.8, else every entry is someone's negative
def test_no_gradient_to_dropped_entries(ratio, B):
    K, D = 30, 8
    q = _unit(B, D, seed=9).requires_grad_()
    queue = _unit(K, D, seed=10).requires_grad_()  # grad on the queue only to observe which logits are used
    k = _unit(B, D, seed=11)
    loss, info = contrastive_loss(q, k, queue, 0.2, query_ids=torch.arange(B), queue_ids=torch.arange(K) % 4,
                                  ratio=ratio, threshold=0.3)
    loss.backward()
    used = info.keep.any(dim=0)
    assert queue.grad[~used].abs().max() == 0
    assert (queue.grad[used].abs().sum(1) > 0).all()
    assert torch.isfinite(q.grad).all()


def test_empty_queue_gives_zero_loss():
    q, k = _unit(4, 8, seed=1), _unit(4, 8, seed=2)
    loss, info = contrastive_loss(q, k, torch.empty(0, 8, dtype=torch.float64), 0.2, ratio=0.5, threshold=0.5,
                                  query_ids=torch.arange(4), queue_ids=torch.empty(0, dtype=torch.long))
    assert loss.item() == 0.0 and info.keep.shape == (4, 0)


def test_dual_view_is_weighted_mean_over_one_snapshot():
    B, K, D, tau = 6, 20, 8, 0.2
    q1, q2, k1, k2 = _unit(B, D, seed=1), _unit(B, D, seed=2), _unit(B, D, seed=3), _unit(B, D, seed=4)
    queue = _unit(K, D, seed=5)
    kw = dict(query_ids=torch.arange(B), queue_ids=torch.arange(K), ratio=0.5, threshold=0.6)
    loss, infos = dual_view_loss(q1, k2, queue, tau, weight=0.3, q2=q2, k1=k1, **kw)
    a, _ = contrastive_loss(q1, k2, queue, tau, **kw)
    b, _ = contrastive_loss(q2, k1, queue, tau, **kw)
    assert torch.allclose(loss, 0.3 * a + 0.7 * b, atol=1e-12)
    assert len(infos) == 2
    only_second, infos = dual_view_loss(None, None, queue, tau, weight=0.0, q2=q2, k1=k1, **kw)
    assert torch.equal(only_second, b) and len(infos) == 1


@pytest.mark.parametrize("kwargs,name", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(ratio=0.0), "ratio"), (dict(ratio=1.5), "ratio"),
    (dict(threshold=-1.0), "threshold"), (dict(threshold=1.01), "threshold"),
])
def test_invalid_arguments(kwargs, name):
    q, k, queue = _unit(2, 4), _unit(2, 4, seed=1), _unit(5, 4, seed=2)
    args = dict(temperature=0.2, ratio=1.0, threshold=1.0) | kwargs
    tau = args.pop("temperature")
    with pytest.raises(ValueError, match=name):
        contrastive_loss(q, k, queue, tau, **args)


def test_invalid_weight_and_missing_views():
    q, k, queue = _unit(2, 4), _unit(2, 4, seed=1), _unit(5, 4, seed=2)
    with pytest.raises(ValueError, match="weight"):
        dual_view_loss(q, k, queue, 0.2, weight=1.2)
    with pytest.raises(ValueError, match="q2, k1"):
        dual_view_loss(q, k, queue, 0.2, weight=0.5)
