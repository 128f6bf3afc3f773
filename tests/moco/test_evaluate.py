"""Evaluation: kNN against a naive loop, linear probe on separable features, alignment/uniformity, split features."""

import math

import pytest
import torch
import torch.nn.functional as F

from moco.evaluate import (alignment, embed, knn_accuracy, knn_predict, linear_probe, ridge_probe,
                           uniformity)


def test_knn_matches_naive_weighted_vote():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 6, generator=g), torch.randn(7, 6, generator=g)
    labels = torch.randint(0, 3, (50,), generator=g)
    pred = knn_predict(train, labels, test, num_classes=3, k=5, t=0.5, batch_size=3)
    tn, sn = F.normalize(train, dim=1), F.normalize(test, dim=1)
    for i in range(7):
        sims = sorted(((float(sn[i] @ tn[j]), int(labels[j])) for j in range(50)), reverse=True)[:5]
        votes = [sum(math.exp(s / 0.5) for s, y in sims if y == c) for c in range(3)]
        assert int(pred[i]) == max(range(3), key=lambda c: votes[c])


def test_knn_accuracy_percent_on_clusters():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(4, 16, generator=g) * 5
    y = torch.arange(200) % 4
    x = centers[y] + torch.randn(200, 16, generator=g)
    acc = knn_accuracy(x[:150], y[:150], x[150:], y[150:], num_classes=4, k=10)
    assert acc == pytest.approx(100.0)
    assert 0 <= knn_accuracy(x[:150], y[:150], x[150:], y[150:].roll(1), 4, k=10) < 50


def test_ridge_probe_separates_separable_features_and_is_at_chance_on_random_ones():
    g = torch.Generator().manual_seed(3)
    classes, dim = 10, 64
    centers = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(6000) % classes
    x = centers[y] + torch.randn(6000, dim, generator=g)
    assert ridge_probe(x[:5000], y[:5000], x[5000:], y[5000:], classes) >= 99.0
    noise = torch.randn(6000, dim, generator=g)  # features that carry nothing about the labels
    assert abs(ridge_probe(noise[:5000], y[:5000], noise[5000:], y[5000:], classes) - 100 / classes) < 5.0


def test_ridge_probe_matches_the_normal_equations_in_float64():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(300, 5, generator=g), torch.randint(0, 3, (300,), generator=g)
    test = torch.randn(50, 5, generator=g)
    xs = (x.double() - x.double().mean(0)) / x.double().std(0)
    design = torch.cat([xs, torch.ones(300, 1, dtype=torch.float64)], 1)
    gram = design.T @ design
    w = torch.linalg.solve(gram + 0.1 * gram.trace() / 6 * torch.eye(6, dtype=torch.float64),
                           design.T @ F.one_hot(y, 3).double())
    ts = (test.double() - x.double().mean(0)) / x.double().std(0)
    expected = (torch.cat([ts, torch.ones(50, 1, dtype=torch.float64)], 1) @ w).argmax(1)
    assert ridge_probe(x, y, test, expected, 3) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="ridge"):
        ridge_probe(x, y, test, expected, 3, ridge=0.0)


def test_linear_probe_learns_linear_labels():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(600, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    acc = linear_probe(x[:500], y[:500], x[500:], y[500:], num_classes=2, epochs=5)
    assert acc > 90.0


def test_alignment_and_uniformity():
    z = F.normalize(torch.randn(100, 8), dim=1)
    assert alignment(z, z).item() == 0.0
    assert alignment(z, -z).item() == pytest.approx(4.0)
    collapsed = F.normalize(torch.ones(10, 8), dim=1)
    assert uniformity(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    assert uniformity(z).item() < -1.0


def test_embed_gives_the_encoders_normalised_features():
    from moco.augment import normalize
    from moco.config import TrainConfig
    from moco.data import load_dataset
    from moco.engine import Engine

    cfg = TrainConfig(dataset="digits", val_size=200, queue_size=64, batch_size=32, width=8)
    dataset = load_dataset(cfg)
    engine = Engine(cfg, dataset, torch.device("cpu"))
    feats, labels = embed(engine.model, dataset, dataset.val, batch=64)
    with torch.no_grad():  # the whole split at once, by hand
        x = normalize(dataset.val.images, dataset.mean, dataset.std, dataset.image_size)
        ref_feats, ref_labels = F.normalize(engine.model.features(x).float(), dim=1), dataset.val.labels
    assert feats.shape == (200, ref_feats.shape[1]) and torch.equal(labels, ref_labels)
    assert torch.allclose(feats, ref_feats) and torch.allclose(feats.norm(dim=1), torch.ones(200))


def test_invalid_arguments():
    x, y = torch.randn(5, 3), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="k = "):
        knn_predict(x, y, x, 2, k=0)
    with pytest.raises(ValueError, match="t = "):
        knn_predict(x, y, x, 2, t=0)
    with pytest.raises(ValueError, match="epochs"):
        linear_probe(x, y, x, y, 2, epochs=0)
