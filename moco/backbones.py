"""Backbones: torchvision ResNet-18/50 (optional CIFAR stem, any input channels) and a small fast ConvNet.

``build_backbone`` returns ``(module, feature_dim)``; the module maps images [B, C, H, W] to features
[B, feature_dim] (the classifier is removed).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["BACKBONES", "NORMS", "build_backbone", "norm_layer", "ConvNet", "GridAvgPool", "MaxPool2"]

BACKBONES = ("convnet", "resnet18", "resnet50")
NORMS = ("batch", "group", "none")


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """A factory ``channels -> module`` for 2-d feature maps: BatchNorm2d, GroupNorm (up to 8 groups) or Identity.

    GroupNorm normalises each sample on its own, so the result does not depend on how a batch is split across ranks.
    """
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda channels: nn.GroupNorm(math.gcd(channels, 8), channels)
    if norm == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"norm = {norm!r} is not allowed: expected one of {', '.join(NORMS)}")


class _MaxPool2Cpu(torch.autograd.Function):
    """max_pool2d(x, 2) of a contiguous CPU tensor: forward through torch's channels-last kernel, backward through the
    contiguous one. Each kernel is the fast one of its direction on the CPU; values, indices and gradients are those
    of ``F.max_pool2d(x, 2)`` bit for bit (tests/moco/test_backbones.py)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out, idx = torch.ops.aten.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), [2, 2],
                                                          [2, 2])
        idx = idx.contiguous()
        ctx.save_for_backward(x, idx)
        return out.contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        x, idx = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, [2, 2], [2, 2], [0, 0], [1, 1],
                                                               False, idx)


class MaxPool2(nn.Module):
    """2x2 max-pool, stride 2: out[b, c, i, j] = max of x[b, c, 2i:2i+2, 2j:2j+2], [B, C, H, W] -> [B, C, H//2, W//2].

    The same function as ``nn.MaxPool2d(2)``, bit for bit, faster on CPU for contiguous (NCHW) inputs, where torch's
    NCHW forward kernel is slow: on 2 cores (AMD EPYC, torch 2.14), [256, 32, 28, 28] in bf16, forward + backward
    11.2 ms instead of 24.5, and without gradient 3.6 ms instead of 21.5. Other inputs (CUDA, channels-last) go to
    ``F.max_pool2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous():
            return F.max_pool2d(x, 2)
        if torch.is_grad_enabled() and x.requires_grad:
            return _MaxPool2Cpu.apply(x)
        # no gradient (the key encoder, the monitor): the max of the four strided corners, no indices
        z = x[:, :, : x.shape[2] // 2 * 2, : x.shape[3] // 2 * 2]
        return torch.maximum(torch.maximum(z[:, :, 0::2, 0::2], z[:, :, 0::2, 1::2]),
                             torch.maximum(z[:, :, 1::2, 0::2], z[:, :, 1::2, 1::2]))


class GridAvgPool(nn.Module):
    """Average-pool [B, C, H, W] to a g x g grid and flatten: [B, C g^2], channel-major (``nn.AdaptiveAvgPool2d(g)``
    then ``nn.Flatten()``, the same values up to the summation order's rounding).

    For g = 1 on a channels-last input the mean runs over the [B, HW, C] view of its memory, so that the gradient
    goes back to the layer before in channels-last layout too. ``AdaptiveAvgPool2d``'s gradient comes back
    contiguous (NCHW), and the CPU's ReLU backward before it is then slow on the two mixed layouts.
    """

    def __init__(self, grid: int = 1):
        super().__init__()
        self.grid = grid

    def forward(self, x: Tensor) -> Tensor:
        if self.grid == 1 and x.dim() == 4 and not x.is_contiguous() \
                and x.is_contiguous(memory_format=torch.channels_last):
            return x.permute(0, 2, 3, 1).flatten(1, 2).mean(1)
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)


class ConvNet(nn.Module):
    """Three conv blocks (width w, 2w, 4w; 3x3 conv, norm, ReLU; 2x2 max-pool after the first two), then average
    pooling of the last feature map to a g x g grid (``pool_grid`` g; g = 1 is global average pooling).

    The first two blocks pool before their ReLU: max(relu(a), relu(b)) = relu(max(a, b)) since ReLU is monotone,
    and the gradient reaches the same element (the window's first maximum; zero where the maximum is <= 0), so the
    block computes conv, norm, ReLU, pool bit for bit while its ReLU and ReLU backward touch a quarter of the map.
    Parameter names are unchanged (ReLU and pool hold none).

    Input [B, C, H, W] (designed for 28x28 grayscale; any size >= 4 works) -> features [B, 4w g^2]. With g > 1 the
    features keep where in the image each pattern was (on 28x28 inputs the last map is 7x7, and g = 2 averages four
    overlapping 4x4 windows of it), which kNN and linear probes of small centred images such as Fashion-MNIST use.
    """

    def __init__(self, in_channels: int, width: int = 32, norm: str = "batch", pool_grid: int = 1):
        super().__init__()
        if pool_grid < 1:
            raise ValueError(f"pool_grid = {pool_grid!r} is not allowed: expected an integer >= 1")
        make_norm = norm_layer(norm)
        widths = (width, 2 * width, 4 * width)
        layers: list[nn.Module] = []
        prev = in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(prev, w, 3, padding=1, bias=norm == "none"), make_norm(w)]
            if i < len(widths) - 1:  # pool before the ReLU: the same values and gradients (class docstring)
                layers.append(MaxPool2())
            layers.append(nn.ReLU(inplace=True))
            prev = w
        layers.append(GridAvgPool(pool_grid))
        self.net = nn.Sequential(*layers)
        self.feature_dim = widths[-1] * pool_grid * pool_grid

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _resnet(name: str, in_channels: int, cifar_stem: bool, norm: str) -> tuple[nn.Module, int]:
    import torchvision  # here: importing it costs every process ~125 MB, and the ConvNet does not need it

    net = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer(norm))
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    feature_dim = net.fc.in_features
    net.avgpool, net.fc = GridAvgPool(1), nn.Identity()  # [B, C]: torchvision's flatten after it changes nothing
    return net, feature_dim


def build_backbone(name: str, in_channels: int, *, cifar_stem: bool = True, width: int = 32,
                   norm: str = "batch", pool_grid: int = 1) -> tuple[nn.Module, int]:
    """Build a backbone by name; returns ``(module, feature_dim)``.

    Args:
        name: one of ``convnet``, ``resnet18``, ``resnet50``.
        in_channels: image channels (1 for grayscale, 3 for RGB, anything else works).
        cifar_stem: ResNet only: 3x3 stride-1 padding-1 conv1 and no max-pool (for 32x32 images).
        width: ConvNet base width (ResNets have fixed widths).
        norm: ``batch``, ``group`` or ``none`` (for both families).
        pool_grid: ConvNet only: pool the last feature map to a ``pool_grid`` x ``pool_grid`` grid (1 = global
            average pooling; ResNets always pool globally).
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone = {name!r} is not allowed: expected one of {', '.join(BACKBONES)}")
    if in_channels < 1:
        raise ValueError(f"in_channels = {in_channels!r} is not allowed: expected an integer >= 1")
    if width < 1:
        raise ValueError(f"width = {width!r} is not allowed: expected an integer >= 1")
    norm_layer(norm)  # validates
    if name == "convnet":
        net = ConvNet(in_channels, width, norm, pool_grid)
        return net, net.feature_dim
    if pool_grid != 1:
        raise ValueError(f"pool_grid = {pool_grid!r} is not allowed for {name}: ResNets pool globally (pool_grid 1)")
    return _resnet(name, in_channels, cifar_stem, norm)
