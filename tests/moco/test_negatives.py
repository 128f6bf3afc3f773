"""Negative-sampling strategies (moco/negatives.py) against naive float64 loops, their identities, gradients,
schedules, determinism, diagnostics and config checks."""

import math

import pytest
import torch
import torch.nn.functional as F

from moco.backbones import build_backbone
from moco.config import ConfigError, TrainConfig
from moco.losses import contrastive_loss
from moco.model import MoCo
from moco.negatives import (Negatives, _pair_dots, _WeightedLogRatio, for_step, hcl_loss, mochi_draws, mochi_loss,
                            ring_loss)
from moco.vocabulary import STEP_STATS

B, K, D, TAU = 6, 40, 8, 0.2


def _unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def _inputs(use_ids=True, dtype=torch.float64):
    q, k, queue = _unit(B, D, seed=1, dtype=dtype), _unit(B, D, seed=2, dtype=dtype), _unit(K, D, seed=3, dtype=dtype)
    ids = (torch.arange(B), torch.arange(K) % 10) if use_ids else (None, None)
    return q, k, queue, ids


def _candidates(q, queue, b, ids, threshold):
    """[(column, s)] of query b after the same-id and threshold filters, most similar first."""
    out = []
    for j in range(queue.shape[0]):
        s = float(q[b].detach() @ queue[j])
        if ids[0] is not None and int(ids[1][j]) == int(ids[0][b]):
            continue
        if threshold < 1 and s > threshold:
            continue
        out.append((j, s))
    return sorted(out, key=lambda c: -c[1])


def _ceil(x):
    return math.ceil(round(x, 9))


def _naive_hcl(q, k, queue, ids, threshold, beta, tau_plus):
    total = 0.0
    for b in range(q.shape[0]):
        pos = math.exp(float(q[b] @ k[b]) / TAU)
        s = [c[1] for c in _candidates(q, queue, b, ids, threshold)]
        n = len(s)
        ng = 0.0
        if n:
            mean = sum(math.exp(beta * x / TAU) for x in s) / n
            weighted = sum(math.exp(beta * x / TAU) / mean * math.exp(x / TAU) for x in s)
            ng = max((weighted - tau_plus * n * pos) / (1 - tau_plus), n * math.exp(-1 / TAU))
        total += -math.log(pos / (pos + ng))
    return total / q.shape[0]


def _naive_ring(q, k, queue, ids, threshold, low, high):
    total = 0.0
    for b in range(q.shape[0]):
        pos = math.exp(float(q[b] @ k[b]) / TAU)
        s = [c[1] for c in _candidates(q, queue, b, ids, threshold)]
        n = len(s)
        kept = []
        if n:
            lo = min(_ceil(low * n), n - 1)
            hi = min(max(_ceil(high * n), lo + 1), n)
            kept = s[lo:hi]
        total += -math.log(pos / (pos + sum(math.exp(x / TAU) for x in kept)))
    return total / q.shape[0]


def _naive_mochi(q, k, queue, ids, threshold, hardest, draws, detach=True):
    """Synthetic negatives built explicitly as vectors; returns the loss as a tensor (for gradients)."""
    total = 0.0
    for b in range(q.shape[0]):
        cands = _candidates(q, queue, b, ids, threshold)
        nh = min(hardest, len(cands))
        logits = [q[b] @ k[b]] + [q[b] @ queue[j] for j, _ in cands]
        for m in range(draws.first.shape[1]):
            if nh < 2:
                continue
            i = int(float(draws.first[b, m]) * nh)
            j = int(float(draws.second[b, m]) * (nh - 1))
            j += j >= i
            a = float(draws.alpha[b, m])
            h = F.normalize(a * queue[cands[i][0]] + (1 - a) * queue[cands[j][0]], dim=0)
            logits.append(q[b] @ h)
        for m in range(draws.query_pick.shape[1]):
            if nh < 1:
                continue
            i = int(float(draws.query_pick[b, m]) * nh)
            g = 0.5 * float(draws.query_gamma[b, m])
            own = q[b].detach() if detach else q[b]
            h = F.normalize(g * own + (1 - g) * queue[cands[i][0]], dim=0)
            logits.append(q[b] @ h)
        z = torch.stack(logits) / TAU
        total = total - z[0] + torch.logsumexp(z, 0)
    return total / q.shape[0]


# --- each strategy equals its naive loop ----------------------------------------------------------------------------
@pytest.mark.parametrize("beta,tau_plus,threshold,use_ids", [
    (1.0, 0.1, 1.0, True), (0.0, 0.0, 1.0, False), (6.0, 0.1, 0.5, True), (0.5, 0.5, 1.0, False),
    (2.0, 0.9, 1.0, True),  # a large prior: the lower bound N exp(-1/tau) binds for some rows
])
def test_hcl_matches_naive_loop(beta, tau_plus, threshold, use_ids):
    q, k, queue, ids = _inputs(use_ids)
    loss, info = hcl_loss(q, k, queue, TAU, query_ids=ids[0], queue_ids=ids[1], threshold=threshold, beta=beta,
                          tau_plus=tau_plus)
    assert abs(loss.item() - _naive_hcl(q, k, queue, ids, threshold, beta, tau_plus)) < 1e-6
    assert torch.allclose(info.mass_rows(B).sum(1), info.num_candidates.float())


@pytest.mark.parametrize("low,high,threshold,use_ids", [
    (0.001, 0.05, 1.0, True), (0.1, 0.4, 1.0, False), (0.1, 0.8, 0.5, True), (0.0, 0.3, 1.0, True),
    (0.5, 1.0, 1.0, False), (0.3, 0.31, 0.2, True), (0.0, 1.0, 1.0, True),
])
def test_ring_matches_naive_loop(low, high, threshold, use_ids):
    q, k, queue, ids = _inputs(use_ids)
    loss, info = ring_loss(q, k, queue, TAU, query_ids=ids[0], queue_ids=ids[1], threshold=threshold, low=low,
                           high=high)
    assert abs(loss.item() - _naive_ring(q, k, queue, ids, threshold, low, high)) < 1e-6
    assert (info.num_kept >= 1).all() and (info.keep.sum(1) == info.num_kept).all()


@pytest.mark.parametrize("hardest,mixes,query_mixes,threshold,use_ids", [
    (8, 5, 3, 1.0, True), (2, 4, 0, 1.0, False), (100, 0, 6, 0.5, True), (1, 0, 2, 1.0, True), (16, 7, 7, 0.3, True),
])
def test_mochi_matches_naive_loop(hardest, mixes, query_mixes, threshold, use_ids):
    q, k, queue, ids = _inputs(use_ids)
    draws = mochi_draws(B, mixes, query_mixes, torch.Generator().manual_seed(5), dtype=torch.float64)
    loss, info = mochi_loss(q, k, queue, TAU, query_ids=ids[0], queue_ids=ids[1], threshold=threshold,
                            hardest=hardest, mixes=mixes, query_mixes=query_mixes, draws=draws)
    expected = _naive_mochi(q, k, queue, ids, threshold, hardest, draws)
    assert abs(loss.item() - expected.item()) < 1e-6
    assert info.synthetic.sim.shape == (B, mixes + query_mixes)


# --- identities: each strategy at its identity setting is MoCo v2 ---------------------------------------------------
@pytest.mark.parametrize("term", [
    lambda *a, **kw: hcl_loss(*a, beta=0.0, tau_plus=0.0, **kw),
    lambda *a, **kw: ring_loss(*a, low=0.0, high=1.0, **kw),
    lambda *a, **kw: mochi_loss(*a, hardest=16, mixes=0, query_mixes=0, **kw),
])
def test_identity_settings_are_moco_v2_loss_and_gradient(term):
    q, k, queue, ids = _inputs(dtype=torch.float32)
    q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
    expected, _ = contrastive_loss(q1, k, queue, TAU, query_ids=ids[0], queue_ids=ids[1])
    loss, _ = term(q2, k, queue, TAU, query_ids=ids[0], queue_ids=ids[1])
    expected.backward()
    loss.backward()
    assert abs(loss.item() - expected.item()) < 1e-6
    assert torch.allclose(q1.grad, q2.grad, atol=1e-6)


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.6, 0.9])
def test_ring_without_a_low_cut_is_top_rho(ratio):
    q, k, queue, ids = _inputs()
    expected, sel = contrastive_loss(q, k, queue, TAU, query_ids=ids[0], queue_ids=ids[1], ratio=ratio)
    loss, ring = ring_loss(q, k, queue, TAU, query_ids=ids[0], queue_ids=ids[1], low=0.0, high=ratio)
    assert abs(loss.item() - expected.item()) < 1e-12 and torch.equal(sel.keep, ring.keep)


# --- gradients ------------------------------------------------------------------------------------------------------
def _grads_to_q(q, losses):
    """name -> d loss / d q for each of ``losses`` (name -> loss function of q), each on a fresh leaf copy of q."""
    grads = {}
    for name, fn in losses.items():
        x = q.clone().requires_grad_()
        fn(x).backward()
        grads[name] = x.grad
    return grads


def test_hcl_weights_carry_gradient_as_documented():
    q, k, queue, _ = _inputs(use_ids=False)
    beta, tau_plus = 2.0, 0.1

    def direct(q, detach):
        pos, neg = ((q * k).sum(1) / TAU).exp(), (q @ queue.t() / TAU).exp()
        imp = (beta * q @ queue.t() / TAU).exp()
        imp = imp.detach() if detach else imp
        w = imp / imp.mean(1, keepdim=True)
        ng = torch.clamp(((w * neg).sum(1) - tau_plus * K * pos) / (1 - tau_plus), min=K * math.exp(-1 / TAU))
        return -(pos / (pos + ng)).log().mean()

    grads = _grads_to_q(q, {"ours": lambda x: hcl_loss(x, k, queue, TAU, beta=beta, tau_plus=tau_plus)[0],
                            "attached": lambda x: direct(x, False), "detached": lambda x: direct(x, True)})
    assert torch.allclose(grads["ours"], grads["attached"], atol=1e-10)
    assert not torch.allclose(grads["ours"], grads["detached"], atol=1e-3)


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("with_dropped", [False, True])
def test_hcl_fused_log_ratio_matches_two_logsumexps_with_its_gradient(beta, with_dropped):
    g = torch.Generator().manual_seed(3)
    x = (3 * torch.randn(6, 11, generator=g, dtype=torch.float64)).requires_grad_()
    dropped = torch.rand(6, 11, generator=g) < 0.4 if with_dropped else None
    if dropped is not None:
        dropped[:, 4] = False  # every row keeps one entry (hcl_log_ng's contract)
    fill = (lambda t: t) if dropped is None else (lambda t: t.masked_fill(dropped, float("-inf")))
    expected = fill((1 + beta) * x).logsumexp(1) - fill(beta * x).logsumexp(1)
    assert torch.allclose(_WeightedLogRatio.apply(x, dropped, beta), expected, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: _WeightedLogRatio.apply(t, dropped, beta), (x,))
    if dropped is not None:  # dropped entries get no gradient
        _WeightedLogRatio.apply(x, dropped, beta).sum().backward()
        assert (x.grad[dropped] == 0).all()


def test_ring_gives_no_gradient_to_dropped_negatives():
    q, k, queue, _ = _inputs(use_ids=False)
    q, k = q[:1], k[:1]
    keys = queue.clone().requires_grad_()
    ring_loss(q, k, keys, TAU, low=0.1, high=0.5)[0].backward()
    order = (q @ queue.t()).squeeze(0).argsort(descending=True)
    norms = keys.grad.norm(dim=1)[order]
    assert (norms[:4] == 0).all() and (norms[4:20] > 0).all() and (norms[20:] == 0).all()  # ranks 5..20 of 40


def test_mochi_gradient_does_not_flow_through_synthetic_negatives():
    q, k, queue, ids = _inputs()
    draws = mochi_draws(B, 4, 4, torch.Generator().manual_seed(9), dtype=torch.float64)
    grads = _grads_to_q(q, {
        "ours": lambda x: mochi_loss(x, k, queue, TAU, query_ids=ids[0], queue_ids=ids[1], hardest=8, mixes=4,
                                     query_mixes=4, draws=draws)[0],
        "constant_h": lambda x: _naive_mochi(x, k, queue, ids, 1.0, 8, draws, detach=True),
        "through_h": lambda x: _naive_mochi(x, k, queue, ids, 1.0, 8, draws, detach=False)})
    assert torch.allclose(grads["ours"], grads["constant_h"], atol=1e-10)
    assert not torch.allclose(grads["ours"], grads["through_h"], atol=1e-4)


# --- schedules and randomness ---------------------------------------------------------------------------------------
def test_ring_high_anneals_linearly_from_one_over_the_warm_up():
    cfg = TrainConfig(negatives="ring", ring_low=0.01, ring_high=0.2, selection_warmup_epochs=2)
    highs = [for_step(cfg, step, 10).params["high"] for step in (0, 5, 10, 20, 35)]
    assert highs == pytest.approx([1.0, 1.0 - 0.8 / 4, 0.6, 0.2, 0.2])
    assert {for_step(cfg, step, 10).params["low"] for step in (0, 20)} == {0.01}
    assert for_step(cfg.replace(selection_warmup_epochs=0), 0, 10).params["high"] == 0.2


def test_warm_up_turns_mochi_and_top_rho_off():
    mochi = TrainConfig(negatives="mochi", selection_warmup_epochs=1)
    assert (for_step(mochi, 9, 10).params["mixes"], for_step(mochi, 9, 10).params["query_mixes"]) == (0, 0)
    assert (for_step(mochi, 10, 10).params["mixes"], for_step(mochi, 10, 10).params["query_mixes"]) == (512, 256)
    select = TrainConfig(hard_negative_ratio=0.1, selection_warmup_epochs=1)
    assert for_step(select, 9, 10).params == {"ratio": 1.0} and for_step(select, 10, 10).params == {"ratio": 0.1}
    hcl = TrainConfig(negatives="hcl", hcl_beta=0.5, selection_warmup_epochs=1)
    assert for_step(hcl, 0, 10).params == {"beta": 0.5, "tau_plus": 0.1}


def test_mochi_is_deterministic_under_a_seeded_generator():
    q, k, queue, _ = _inputs(dtype=torch.float32)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return [mochi_loss(q, k, queue, TAU, hardest=8, mixes=6, query_mixes=3, generator=gen)[0].item()
                for _ in range(2)]

    first, again, other = run(3), run(3), run(4)
    assert first == again and first[0] != first[1] and first != other


# --- the model: strategies, statistics, precision -------------------------------------------------------------------
def _model(queue_size=64):
    torch.manual_seed(0)
    backbone, dim = build_backbone("convnet", 1, width=4, norm="group")
    return MoCo(backbone, dim, dim=16, mlp_hidden=32, queue_size=queue_size, temperature=0.2, bn_mode="none")


@pytest.mark.parametrize("name,params,kept", [
    ("select", {"ratio": 0.5}, 12), ("hcl", {"beta": 1.0, "tau_plus": 0.1}, 24),
    ("ring", {"low": 0.1, "high": 0.5}, 12 - 3), ("mochi", {"hardest": 8, "mixes": 5, "query_mixes": 3}, 24 + 8),
])
def test_model_step_with_each_strategy_reports_every_statistic(name, params, kept):
    model = _model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 12, 12, generator=g)
    labels = torch.arange(8) % 3
    for step in range(4):  # 24 keys of other images in the queue at the fourth step
        if name == "mochi":
            params = {**params, "generator": torch.Generator().manual_seed(step)}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, stats = model(x + 0.1 * torch.randn(x.shape, generator=g), x, torch.arange(8) + 8 * step,
                                labels=labels, negatives=Negatives(name, params))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert set(stats) == set(STEP_STATS) and all(torch.isfinite(v) for v in stats.values())
    assert stats["kept_negatives"] == kept
    assert 0 <= stats["false_neg_rate"] <= 1 and stats["neg_sim_q10"] <= stats["neg_sim_q90"]


def test_hcl_false_negative_rate_is_weighted_by_softmax_mass():
    from moco.model import _step_stats

    q, k, queue, _ = _inputs(use_ids=False, dtype=torch.float32)
    queue_labels, labels = torch.arange(K) % 2, torch.arange(B) % 2
    _, info = hcl_loss(q, k, queue, TAU, beta=1.0, tau_plus=0.0)
    p = (2.0 * (q @ queue.t()) / TAU).softmax(1)  # the share of each negative in sum_i w_i neg_i
    expected = (p * (labels.view(-1, 1) == queue_labels.view(1, -1))).sum(1).mean()
    assert abs(_step_stats([info], labels, queue_labels)["false_neg_rate"].item() - expected.item()) < 1e-5


def test_mochi_false_negative_rate_counts_mixes_by_source():
    from moco.model import _step_stats

    q, k, queue, _ = _inputs(use_ids=False, dtype=torch.float32)
    queue_labels, labels = torch.arange(K) % 2, torch.arange(B) % 2
    draws = mochi_draws(B, 3, 2, torch.Generator().manual_seed(1))
    _, info = mochi_loss(q, k, queue, TAU, hardest=6, mixes=3, query_mixes=2, draws=draws)
    s = info.synthetic
    same = lambda col, b: 1.0 if int(col) < 0 else float(int(queue_labels[col]) == int(labels[b]))  # noqa: E731
    hits = sum(float(s.weights[b, m, t]) * same(s.sources[b, m, t], b) for b in range(B) for m in range(5)
               for t in range(2))
    hits += sum(float(int(queue_labels[j]) == int(labels[b])) for b in range(B) for j in range(K))
    rate = _step_stats([info], labels, queue_labels)["false_neg_rate"].item()
    assert abs(rate - hits / (B * (K + 5))) < 1e-5


# --- configuration ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values,key,fragment", [
    ({"negatives": "hlc"}, "negatives", "did you mean 'hcl'?"),
    ({"negatives": "hcl", "hcl_beta": -1.0}, "hcl_beta", ">= 0"),
    ({"negatives": "hcl", "hcl_tau_plus": 1.0}, "hcl_tau_plus", "[0, 1)"),
    ({"negatives": "ring", "ring_low": 0.2, "ring_high": 0.1}, "ring_low", "[0, ring_high = 0.1)"),
    ({"negatives": "ring", "ring_high": 0.0}, "ring_high", "(0, 1]"),
    ({"negatives": "mochi", "mochi_hardest": 1}, "mochi_hardest", ">= 2 with mochi_mixes > 0"),
    ({"negatives": "mochi", "mochi_query_mixes": -1}, "mochi_query_mixes", ">= 0"),
    ({"negatives": "ring", "hcl_beta": 2.0}, "hcl_beta", "only negatives = hcl reads it"),
    ({"negatives": "hcl", "hard_negative_ratio": 0.1}, "hard_negative_ratio", "only negatives = select reads it"),
    ({"mochi_mixes": 3}, "mochi_mixes", "set negatives: mochi"),
    ({"ring_hihg": 0.3}, "ring_hihg", "did you mean 'ring_high'?"),
])
def test_config_refuses_bad_negative_sampling_settings(values, key, fragment):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(values, source="x.yaml")
    assert err.value.key == key and fragment in str(err.value)


def test_config_accepts_each_strategy_at_its_defaults_and_identity():
    for name in ("select", "hcl", "ring", "mochi"):
        assert TrainConfig.from_dict({"negatives": name}).negatives == name
    TrainConfig.from_dict({"negatives": "hcl", "hcl_beta": 0, "hcl_tau_plus": 0})
    TrainConfig.from_dict({"negatives": "ring", "ring_low": 0, "ring_high": 1})
    TrainConfig.from_dict({"negatives": "mochi", "mochi_mixes": 0, "mochi_query_mixes": 0, "mochi_hardest": 1})
    with pytest.raises(ValueError, match="one of select, hcl, ring, mochi"):
        Negatives("hlc")


# --- through the engine ----------------------------------------------------------------------------------------------
def test_engine_mochi_is_reproducible_and_plain_moco_during_the_warm_up():
    from moco.data import load_dataset
    from moco.engine import Engine
    from tests.conftest import CONFIGS

    def cfg(**kw):
        return TrainConfig.from_yaml(CONFIGS / "digits.yaml", {"epochs": 2, "final_eval": False, "train_subset": 640,
                                                                "selection_warmup_epochs": 1, **kw})

    data = load_dataset(cfg())
    mochi = cfg(negatives="mochi", mochi_hardest=64, mochi_mixes=32, mochi_query_mixes=16)
    runs = [[Engine(c, data, torch.device("cpu")).train_epoch() for _ in range(1)] for c in (cfg(), mochi)]
    assert runs[0][0]["loss"] == runs[1][0]["loss"]  # warm-up: no synthetic negatives, same augmentations
    a = Engine(mochi, data, torch.device("cpu"))  # engines seed torch's global generator: build each when used
    first = [a.train_epoch() for _ in range(2)]
    b = Engine(mochi, data, torch.device("cpu"))
    again = [b.train_epoch() for _ in range(2)]
    assert first[1]["loss"] == again[1]["loss"] and first[1]["kept_negatives"] == again[1]["kept_negatives"]
    assert first[1]["kept_negatives"] > first[0]["kept_negatives"]


def test_pair_dots_in_chunks_equal_the_dots_gathered_at_once():
    keys = F.normalize(torch.randn(100, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    i, j = torch.randint(0, 100, (2, 1037), generator=torch.Generator().manual_seed(1))
    whole = torch.linalg.vecdot(keys[i], keys[j])
    assert torch.equal(_pair_dots(keys, i, j, chunk=256), whole)  # 1037 = 4 chunks of 256 and one of 13
    assert _pair_dots(keys, i[:0], j[:0]).shape == (0,)
