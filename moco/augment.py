"""Batched MoCo v2 augmentation on the training device: independent random parameters per sample, no PIL.

The pipeline (MoCo v2, He et al. / Chen et al. 2020, ``moco/main_moco.py --aug-plus``), in this order:

====================  ============================================  ===============================================
step                  RGB defaults (MoCo v2)                        grayscale defaults (channels = 1)
====================  ============================================  ===============================================
random resized crop   scale (0.2, 1), ratio (3/4, 4/3)              scale (0.2, 1), ratio (3/4, 4/3)
horizontal flip       p = 0.5                                       p = 0.5
colour jitter         (0.4, 0.4, 0.4, 0.1) with p = 0.8             brightness 0.4, contrast 0.4, with p = 0.8
random grayscale      p = 0.2                                       -- (meaningless)
Gaussian blur         sigma (0.1, 2.0), p = 0.5                     sigma (0.1, 1.0), p = 0.5
normalise             dataset mean / std                            dataset mean / std
====================  ============================================  ===============================================

Notes on the defaults. MoCo v2's ImageNet recipe is the RGB column (blur sigma is in pixels of a 224 image). The
official CIFAR-10 Colab demo (``moco/colab/moco_cifar10_demo.ipynb``) uses crop scale (0.08, 1), the same jitter,
grayscale and flip, and *no blur*; pass ``scale=(0.08, 1.0), blur_p=0.0`` to reproduce it. For 28x28 grayscale images
sigma 2 erases most of the structure, so the grayscale default caps sigma at 1.0 (``blur_sigma`` overrides it).
Flip is folded into the crop's resampling (one ``grid_sample``); it commutes with the colour steps and with a
symmetric blur, so this equals MoCo v2's order (crop, jitter, grayscale, blur, flip).

Differences from torchvision's per-image transforms, all deliberate: the crop box is continuous (sub-pixel) and
resampled bilinearly without antialiasing; the crop keeps torchvision's 10 rejection-sampling attempts, but falls
back to the whole image; colour jitter applies brightness, contrast, saturation, hue in this fixed order (torchvision
shuffles the order per call); the blur kernel has ``2 * ceil(3 * sigma_max) + 1`` taps (at most the image side - 1)
with reflect padding, like kornia.

Randomness: all parameters for a batch come from one ``torch.rand(B, 31, generator=g)`` on the generator's device
(CPU by default) and are moved to the images' device in one copy, so a seed gives the same batch on CPU and CUDA.

Implementation choice: this compact hand-written pipeline rather than ``kornia.augmentation``, which was 1.7-3.5x
slower per batch on this project's CPU (measured: ``python -m bench.augment``, section 2 of docs/benchmarks.md), also
draws from the global RNG (no ``torch.Generator`` argument) and is not a declared dependency.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RGB_DEFAULTS: dict[str, Any] = dict(
    scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5,
    jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, blur_sigma=(0.1, 2.0), blur_p=0.5)
GRAY_DEFAULTS: dict[str, Any] = dict(
    scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5,
    jitter=(0.4, 0.4, 0.0, 0.0), jitter_p=0.8, gray_p=0.0, blur_sigma=(0.1, 1.0), blur_p=0.5)

_ATTEMPTS = 10
_NPARAMS = 2 * _ATTEMPTS + 11
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL / torchvision rgb_to_grayscale


def _to_float(images: Tensor) -> Tensor:
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float], size: int | None = None) -> Tensor:
    """The eval path: uint8 (0..255) or float (0..1) ``[B,C,H,W]`` -> float32 normalised, resized to ``size``."""
    x = _to_float(images)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def _gray(x: Tensor) -> Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Exact HSV hue rotation of RGB ``x`` in [0,1] by ``shift`` (fraction of the circle, per sample ``[B]``)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0)
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    v = maxc
    # hsv -> rgb without branches: each channel is v * (1 - s * clamp(min(k, 4 - k), 0, 1)), k = (n + 6h) mod 6
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + h * 6.0, 6.0)
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim=1)


def _blur(x: Tensor, sigma: Tensor, max_sigma: float) -> Tensor:
    """Per-sample separable Gaussian blur (reflect padding), one grouped conv per direction."""
    b, c, h, w = x.shape
    radius = max(1, min(math.ceil(3.0 * max_sigma), (min(h, w) - 1) // 2))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(taps.view(1, -1) ** 2) / (2.0 * sigma.view(-1, 1) ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [b*c, 2r+1]
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


class Augment(nn.Module):
    """MoCo v2 augmentation of a batch: ``[B,C,H,W]`` uint8 or float (0..1) -> float32 normalised ``[B,C,S,S]``.

    ``overrides`` may set any key of :data:`RGB_DEFAULTS` / :data:`GRAY_DEFAULTS`: ``scale``, ``ratio``, ``flip_p``,
    ``jitter`` (brightness, contrast, saturation, hue), ``jitter_p``, ``gray_p``, ``blur_sigma``, ``blur_p``.
    Call it once per view: ``q, k = aug(x, g), aug(x, g)``.
    """

    def __init__(self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float], **overrides: Any):
        super().__init__()
        defaults = GRAY_DEFAULTS if channels == 1 else RGB_DEFAULTS
        unknown = set(overrides) - set(defaults)
        if unknown:
            raise TypeError(f"unknown augmentation setting(s) {sorted(unknown)}; allowed: {sorted(defaults)}")
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {len(mean)} and {len(std)}")
        self.image_size, self.channels = int(image_size), int(channels)
        self.params = {**defaults, **overrides}
        if channels != 3:  # saturation, hue and grayscale need RGB
            self.params.update(gray_p=0.0, jitter=(*self.params["jitter"][:2], 0.0, 0.0))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, channels={self.channels}, " + ", ".join(
            f"{k}={v}" for k, v in self.params.items())

    # ---------------------------------------------------------------------------------------------------------
    def sample(self, batch: int, generator: torch.Generator | None = None, device: Any = "cpu") -> Tensor:
        """All uniforms for one batch, ``[B, 31]``, drawn on the generator's device, returned on ``device``."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(batch, _NPARAMS, generator=generator, device=gen_device)
        return u.to(device, non_blocking=True)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        p = self.params
        x = _to_float(images)
        b, c = x.shape[:2]
        if c != self.channels:
            raise ValueError(f"expected {self.channels} channels, got images of shape {tuple(images.shape)}")
        u = self.sample(b, generator, x.device)
        a = 2 * _ATTEMPTS
        u_area, u_ratio, u_pos, u = u[:, :_ATTEMPTS], u[:, _ATTEMPTS:a], u[:, a:a + 2], u[:, a + 2:]

        # --- random resized crop + flip: one affine resampling -------------------------------------------------
        h_in, w_in = x.shape[-2:]
        lo, hi = p["scale"]
        area = lo + (hi - lo) * u_area  # fraction of the image area
        lr0, lr1 = math.log(p["ratio"][0]), math.log(p["ratio"][1])
        ratio = torch.exp(lr0 + (lr1 - lr0) * u_ratio) * (h_in / w_in)  # width / height in pixel units
        cw, ch = torch.sqrt(area * ratio), torch.sqrt(area / ratio)  # fractions of width / height
        ok = (cw <= 1.0) & (ch <= 1.0)
        first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)
        any_ok = ok.any(dim=1)
        cw = torch.where(any_ok, cw.gather(1, first).squeeze(1), torch.ones_like(any_ok, dtype=x.dtype))
        ch = torch.where(any_ok, ch.gather(1, first).squeeze(1), torch.ones_like(any_ok, dtype=x.dtype))
        cx, cy = (2.0 * u_pos[:, 0] - 1.0) * (1.0 - cw), (2.0 * u_pos[:, 1] - 1.0) * (1.0 - ch)
        flip = torch.where(u[:, 0] < p["flip_p"], -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw * flip, cx, ch, cy
        s = self.image_size
        grid = F.affine_grid(theta, [b, c, s, s], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

        # --- colour jitter (p = jitter_p per sample; identity factors where not applied) -------------------------
        bri, con, sat, hue = p["jitter"]
        on = (u[:, 1] < p["jitter_p"]).to(x.dtype)

        def factor(col: int, strength: float) -> Tensor:
            f = 1.0 + strength * (2.0 * u[:, col] - 1.0)
            return (1.0 + on * (f.clamp_min(0.0) - 1.0)).view(b, 1, 1, 1)

        if bri > 0:
            x = (x * factor(2, bri)).clamp_(0.0, 1.0)
        if con > 0:
            gray = x if c == 1 else _gray(x)
            m = gray.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - m) * factor(3, con) + m).clamp_(0.0, 1.0)
        if sat > 0:
            gray = _gray(x)
            x = ((x - gray) * factor(4, sat) + gray).clamp_(0.0, 1.0)
        if hue > 0:
            x = _shift_hue(x, on * hue * (2.0 * u[:, 5] - 1.0))

        # --- random grayscale -----------------------------------------------------------------------------------
        if p["gray_p"] > 0:
            to_gray = (u[:, 6] < p["gray_p"]).view(b, 1, 1, 1)
            x = torch.where(to_gray, _gray(x).expand_as(x), x)

        # --- Gaussian blur on the selected samples only ------------------------------------------------------------
        if p["blur_p"] > 0:
            sel = torch.nonzero(u[:, 7] < p["blur_p"]).squeeze(1)
            if sel.numel() > 0:
                s0, s1 = p["blur_sigma"]
                sigma = s0 + (s1 - s0) * u[sel, 8]
                x = x.index_copy(0, sel, _blur(x.index_select(0, sel), sigma, s1))

        return (x - self.mean) / self.std


def build_augment(dataset: Any, **overrides: Any) -> Augment:
    """The augmentation for a loaded :class:`moco.data.Dataset` (output side ``dataset.image_size``)."""
    return Augment(dataset.image_size, dataset.channels, dataset.mean, dataset.std, **overrides)
