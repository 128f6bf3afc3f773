"""MoCo model: one queue snapshot per step, enqueue once after the loss, momentum update, no key gradients, stats."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moco.backbones import build_backbone
from moco.config import TrainConfig
from moco.losses import dual_view_loss
from moco.model import MoCo, SplitBatchNorm, build_model, update_momentum
from moco.vocabulary import STEP_STATS


def _model(weight=1.0, queue_size=64, bn_mode="none", norm="group", **kw):
    torch.manual_seed(0)
    backbone, dim = build_backbone("convnet", 1, width=4, norm=norm)
    return MoCo(backbone, dim, dim=16, mlp_hidden=32, queue_size=queue_size, temperature=0.2,
                dual_view_weight=weight, bn_mode=bn_mode, **kw)


def _views(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 12, 12, generator=g)
    return x + 0.1 * torch.randn(x.shape, generator=g), x + 0.1 * torch.randn(x.shape, generator=g)


def test_dual_view_uses_one_snapshot_and_enqueues_once_after():
    model = _model(weight=0.5)
    v1, v2 = _views(8, seed=1)
    model(*_views(8, seed=2), torch.arange(100, 108))  # pre-fill part of the queue with other images
    keys0, ids0, _ = model.queue.snapshot()
    calls = []
    enqueue = model.queue.enqueue
    model.queue.enqueue = lambda *a, **k: (calls.append(a[1].clone()), enqueue(*a, **k))
    ids = torch.arange(8)
    loss, _ = model(v1, v2, ids, ratio=0.5, threshold=0.9)
    with torch.no_grad():
        q1, q2 = model._query(v1), model._query(v2)
        k1, k2 = model._key(v1), model._key(v2)
    expected, _ = dual_view_loss(q1, k2, keys0, 0.2, weight=0.5, q2=q2, k1=k1, query_ids=ids, queue_ids=ids0,
                                 ratio=0.5, threshold=0.9)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert len(calls) == 1 and calls[0].tolist() == list(range(8)) * 2  # cat(k1, k2) once
    keys, qids, _ = model.queue.snapshot()
    assert len(model.queue) == 32 and qids[16:].tolist() == list(range(8)) * 2
    assert torch.allclose(keys[16:], torch.cat([k1, k2]), atol=1e-6)


def test_own_key_is_never_a_negative_in_the_same_step():
    model = _model(weight=0.5, queue_size=32)
    seen = {}
    import moco.model as mm
    original = mm.dual_view_loss

    def spy(*args, **kwargs):
        seen["queue_ids"] = kwargs["queue_ids"].clone()
        return original(*args, **kwargs)

    mm.dual_view_loss = spy
    try:
        model(*_views(8), torch.arange(8))
        assert seen["queue_ids"].numel() == 0
        model(*_views(8, seed=3), torch.arange(8, 16))
        assert set(seen["queue_ids"].tolist()) == set(range(8))
    finally:
        mm.dual_view_loss = original


def test_one_way_computes_only_q1_and_k2():
    model = _model(weight=1.0)
    calls = {"q": 0, "k": 0}
    model.encoder_q.register_forward_hook(lambda *a: calls.__setitem__("q", calls["q"] + 1))
    model.encoder_k.register_forward_hook(lambda *a: calls.__setitem__("k", calls["k"] + 1))
    model(*_views(8), torch.arange(8))
    assert calls == {"q": 1, "k": 1} and len(model.queue) == 8
    symmetric = _model(weight=0.5)
    calls = {"q": 0}
    symmetric.encoder_q.register_forward_hook(lambda *a: calls.__setitem__("q", calls["q"] + 1))
    symmetric(*_views(8), torch.arange(8))
    assert calls["q"] == 2 and len(symmetric.queue) == 16


def test_moco_v2_mode_matches_textbook_step():
    model = _model(weight=1.0)
    model(*_views(8, seed=5), torch.arange(50, 58))
    queue = model.queue.keys[:8].clone()
    v1, v2 = _views(8)
    with torch.no_grad():
        q, k = model._query(v1), model._key(v2)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], 1) / 0.2
    expected = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    loss, _ = model(v1, v2, torch.arange(8))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_key_encoder_has_no_gradients_and_momentum_update_is_exact():
    model = _model(weight=0.5)
    loss, _ = model(*_views(8), torch.arange(8))
    model(*_views(8, seed=1), torch.arange(8, 16))[0].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder_k.parameters())
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.encoder_k.parameters()]
    model.momentum_update(0.9)
    for b, k, q in zip(before, model.encoder_k.parameters(), model.encoder_q.parameters()):
        assert torch.allclose(k, 0.9 * b + 0.1 * q, rtol=0, atol=1e-6)
    frozen = [p.clone() for p in model.encoder_k.parameters()]  # taken before the update, compared after it
    model.momentum_update(1.0)
    assert all(torch.equal(k, f) for k, f in zip(model.encoder_k.parameters(), frozen))
    model.momentum_update(0.0)
    assert all(torch.equal(k, q) for k, q in zip(model.encoder_k.parameters(), model.encoder_q.parameters()))


def test_update_momentum_float64_exact():
    a, b = torch.nn.Linear(3, 3).double(), torch.nn.Linear(3, 3).double()
    expected = [0.99 * p + 0.01 * q for p, q in zip(a.parameters(), b.parameters())]
    update_momentum(a, b, 0.99)
    for p, e in zip(a.parameters(), expected):
        assert torch.allclose(p, e, rtol=1e-15, atol=1e-15)


def test_stats_names_and_false_negative_rate():
    model = _model(weight=0.5)
    labels = torch.tensor([0, 1] * 4)
    _, stats = model(*_views(8), torch.arange(8), labels=labels)
    assert set(stats) == set(STEP_STATS)
    assert torch.isnan(stats["neg_sim_q50"]) and stats["kept_negatives"] == 0
    _, stats = model(*_views(8, seed=1), torch.arange(8, 16), ratio=0.5, labels=labels)
    assert all(v.ndim == 0 and not v.requires_grad for v in stats.values())
    assert stats["kept_negatives"] == 8  # ceil(0.5 * 16)
    assert stats["filtered_frac"] == 0
    assert 0 <= stats["false_neg_rate"] <= 1
    assert stats["neg_sim_q10"] <= stats["neg_sim_q50"] <= stats["neg_sim_q90"]
    _, stats = model(*_views(8, seed=2), torch.arange(8))  # ids 0..7 are in the queue twice each
    assert "false_neg_rate" not in stats
    assert abs(stats["filtered_frac"].item() - 2 / 32) < 1e-6


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_split_batchnorm_statistics_per_split(layout):
    bn = SplitBatchNorm(3, num_splits=2, momentum=0.5)
    x = (torch.randn(8, 3, 4, 4) * 3 + 1).contiguous(memory_format=layout)
    out = bn(x)
    assert out.is_contiguous(memory_format=layout)
    means, variances = [], []
    for j in range(2):
        part = x[4 * j:4 * (j + 1)]
        var = part.var((0, 2, 3), unbiased=False, keepdim=True)
        ref = (part - part.mean((0, 2, 3), keepdim=True)) / torch.sqrt(var + bn.eps)
        assert torch.allclose(out[4 * j:4 * (j + 1)], ref, atol=1e-5)
        means.append(part.mean((0, 2, 3)))
        variances.append(part.var((0, 2, 3), unbiased=True))
    # running statistics: the momentum update of each split's, averaged over the splits
    assert torch.allclose(bn.running_mean, 0.5 * torch.stack(means).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, 0.5 + 0.5 * torch.stack(variances).mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="bn_splits"):
        bn(torch.randn(5, 3, 4, 4))


def test_split_batchnorm_gradients_match_per_split_batchnorm():
    bn = SplitBatchNorm(3, num_splits=4)
    ref = nn.BatchNorm2d(3)
    ref.load_state_dict(bn.state_dict())
    x = torch.randn(16, 3, 5, 5, requires_grad=True)
    g = torch.randn(16, 3, 5, 5)
    got = torch.autograd.grad(bn(x), (x, bn.weight, bn.bias), g)
    want = torch.autograd.grad(torch.cat([ref(p) for p in x.chunk(4)]), (x, ref.weight, ref.bias), g)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_split_batchnorm_without_gradient_gives_the_same_bits_as_with_it(layout, dtype):
    torch.manual_seed(0)
    with_grad, without = SplitBatchNorm(6, num_splits=4, momentum=0.3), SplitBatchNorm(6, num_splits=4, momentum=0.3)
    with torch.no_grad():
        with_grad.weight.uniform_(0.5, 1.5)
        with_grad.bias.uniform_(-1, 1)
    without.load_state_dict(with_grad.state_dict())
    without.requires_grad_(False)  # like the key encoder
    x = (torch.randn(16, 6, 5, 5) * 2 + 3).to(dtype).contiguous(memory_format=layout)
    for _ in range(2):  # the second call starts from the updated running statistics
        want = with_grad(x)  # the gradient path: a kernel call per sub-batch, then a concatenation
        with torch.no_grad():
            got = without(x)
        assert want.requires_grad and not got.requires_grad
        assert got.dtype == dtype and got.is_contiguous(memory_format=layout)
        assert torch.equal(got, want)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(without, name), getattr(with_grad, name)), name
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 input with fp32 weights
        want = with_grad(x.bfloat16())
        with torch.no_grad():
            assert torch.equal(without(x.bfloat16()), want)


def test_split_mode_converts_batchnorm_in_both_encoders():
    model = _model(bn_mode="split", norm="batch", bn_splits=4)
    n_q = sum(isinstance(m, SplitBatchNorm) for m in model.encoder_q.modules())
    n_k = sum(isinstance(m, SplitBatchNorm) for m in model.encoder_k.modules())
    assert n_q == n_k == 3
    loss, _ = model(*_views(8), torch.arange(8))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("weight,ratio", [(1.0, 1.0), (0.5, 1.0), (0.5, 0.25)])
def test_loss_decreases_on_a_fixed_batch(weight, ratio):
    model = _model(weight=weight, queue_size=32, bn_mode="split", norm="batch", bn_splits=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    v1, v2 = _views(16, seed=7)
    ids = torch.arange(16)
    with torch.no_grad():
        model(v1, v2, ids)
        model(v1, v2, ids)  # fill the queue so the loss scale is fixed
    losses = []
    for _ in range(20):
        loss, _ = model(v1, v2, ids, ratio=ratio)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.momentum_update(0.9)
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_invalid_arguments():
    backbone, dim = build_backbone("convnet", 1, width=4)
    for kw, name in [(dict(bn_mode="shuffled"), "bn_mode"), (dict(temperature=0.0), "temperature"),
                     (dict(dual_view_weight=1.5), "dual_view_weight"), (dict(bn_splits=0), "bn_splits")]:
        with pytest.raises(ValueError, match=name):
            MoCo(backbone, dim, **kw)
    model = _model(queue_size=8, weight=0.5)
    with pytest.raises(ValueError, match="queue_size"):
        model(*_views(8), torch.arange(8))
    with pytest.raises(ValueError, match="ratio"):
        _model()(*_views(8), torch.arange(8), ratio=0)
    with pytest.raises(ValueError, match="m = "):
        model.momentum_update(1.5)
    with pytest.raises(ValueError, match="shuffle"):
        _model(bn_mode="shuffle")(*_views(8), torch.arange(8))


def test_build_model_from_config_and_features():
    cfg = TrainConfig(backbone="convnet", width=4, feature_dim=16, mlp_hidden=32, queue_size=64, batch_size=8,
                      bn_splits=2).validate()
    model = build_model(cfg, in_channels=1)
    assert model.queue.keys.shape == (64, 16) and model.temperature == cfg.temperature
    assert model.features(torch.randn(4, 1, 28, 28)).shape == (4, 16)
