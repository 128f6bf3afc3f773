"""moco.augment: per-sample randomness, shapes/dtypes/ranges, seeding, the grayscale path and the eval path."""

from __future__ import annotations

import pytest
import torch

from moco.augment import Augment, _blur, _shift_hue, build_augment, normalize

MEAN3, STD3 = (0.5, 0.4, 0.3), (0.25, 0.25, 0.25)


def _images(b=16, c=3, s=32, seed=0):
    return torch.randint(0, 256, (b, c, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("c", [1, 3])
def test_identical_images_get_different_views(c):
    aug = Augment(32, c, MEAN3[:c], STD3[:c])
    x = _images(1, c).expand(8, -1, -1, -1).contiguous()
    y = aug(x, torch.Generator().manual_seed(0))
    flat = y.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(8) for j in range(i + 1, 8))


@pytest.mark.parametrize("c,size,out", [(1, 28, 28), (3, 32, 32), (3, 32, 24), (1, 8, 16)])
def test_shape_dtype_and_range(c, size, out):
    mean, std = MEAN3[:c], STD3[:c]
    aug = Augment(out, c, mean, std)
    y = aug(_images(32, c, size), torch.Generator().manual_seed(1))
    assert y.shape == (32, c, out, out) and y.dtype == torch.float32 and torch.isfinite(y).all()
    raw = y * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)  # back to 0..1
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert torch.equal(aug(_images(32, c, size).float() / 255, torch.Generator().manual_seed(1)), y)  # float input


def test_seeded_runs_repeat_and_seeds_differ():
    aug, x = Augment(32, 3, MEAN3, STD3), _images()
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    g = torch.Generator().manual_seed(5)
    q, k = aug(x, g), aug(x, g)  # two views from one generator differ
    assert torch.equal(q, a) and not torch.allclose(q, k)


def test_identity_settings_reduce_to_normalize():
    """No crop (scale 1, ratio 1), no flip/jitter/blur: the output is exactly the eval path."""
    x = _images(4, 3, 16)
    aug = Augment(16, 3, MEAN3, STD3, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0,
                  blur_p=0.0)
    assert torch.allclose(aug(x, torch.Generator().manual_seed(0)), normalize(x, MEAN3, STD3), atol=1e-5)
    flipped = Augment(16, 3, MEAN3, STD3, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, jitter_p=0.0,
                      gray_p=0.0, blur_p=0.0)(x)
    assert torch.allclose(flipped, normalize(x.flip(-1), MEAN3, STD3), atol=1e-5)


def test_grayscale_path_defaults():
    aug = Augment(28, 1, (0.286,), (0.353,))
    assert aug.params["gray_p"] == 0 and aug.params["jitter"][2:] == (0.0, 0.0)
    assert aug.params["blur_sigma"] == (0.1, 1.0) and aug.params["scale"] == (0.2, 1.0)
    y = aug(_images(64, 1, 28), torch.Generator().manual_seed(0))
    assert y.shape == (64, 1, 28, 28)
    with pytest.raises(ValueError, match="expected 1 channels"):
        aug(_images(2, 3, 28))
    with pytest.raises(TypeError, match="unknown augmentation setting"):
        Augment(28, 1, (0.5,), (0.5,), hue=0.1)


def test_grayscale_probability_makes_channels_equal():
    aug = Augment(16, 3, MEAN3, STD3, gray_p=1.0, jitter_p=0.0, blur_p=0.0)
    y = aug(_images(8, 3, 16)) * torch.tensor(STD3).view(1, 3, 1, 1) + torch.tensor(MEAN3).view(1, 3, 1, 1)
    assert torch.allclose(y[:, 0], y[:, 1], atol=1e-5) and torch.allclose(y[:, 1], y[:, 2], atol=1e-5)


def test_hue_shift_matches_torchvision():
    from torchvision.transforms.v2 import functional as TF

    x = _images(4, 3, 8).float() / 255
    shifts = torch.tensor([0.1, -0.05, 0.0, 0.5])
    ours = _shift_hue(x, shifts)
    ref = torch.stack([TF.adjust_hue(x[i], float(shifts[i])) for i in range(4)])
    assert torch.allclose(ours, ref, atol=1e-4)


def test_blur_keeps_constants_and_smooths():
    const = torch.full((2, 3, 12, 12), 0.3)
    assert torch.allclose(_blur(const, torch.tensor([0.5, 2.0]), 2.0), const, atol=1e-6)
    noise = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert _blur(noise, torch.tensor([1.5]), 2.0).std() < noise.std() / 2


def test_build_augment_and_normalize_resize():
    ds = type("D", (), dict(image_size=20, channels=1, mean=(0.3,), std=(0.3,)))()
    aug = build_augment(ds)
    assert aug.image_size == 20 and aug(_images(3, 1, 8)).shape == (3, 1, 20, 20)
    y = normalize(_images(3, 1, 8), (0.3,), (0.3,), size=20)
    assert y.shape == (3, 1, 20, 20) and y.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_parameters():
    aug, x = Augment(32, 3, MEAN3, STD3), _images()
    cpu = aug(x, torch.Generator().manual_seed(3))
    gpu = aug.cuda()(x.cuda(), torch.Generator().manual_seed(3))
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-3)
