"""Backbones: output shapes, CIFAR stem, any channel count, norms, unknown names."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moco.backbones import GridAvgPool, MaxPool2, build_backbone


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_convnet_shapes_and_norms(norm):
    net, dim = build_backbone("convnet", 1, width=8, norm=norm)
    assert dim == 32 and net(torch.randn(3, 1, 28, 28)).shape == (3, 32)
    kinds = {type(m) for m in net.modules()}
    assert (nn.BatchNorm2d in kinds) == (norm == "batch") and (nn.GroupNorm in kinds) == (norm == "group")


@pytest.mark.parametrize("grid", [1, 2, 3])
def test_convnet_pool_grid_keeps_a_grid_of_the_last_map(grid):
    net, dim = build_backbone("convnet", 1, width=8, pool_grid=grid)
    x = torch.randn(3, 1, 28, 28)
    feats = net(x)
    assert dim == 32 * grid * grid and feats.shape == (3, dim)
    last = net.net[:-1](x)  # [3, 32, 7, 7], before pooling
    assert last.shape == (3, 32, 7, 7)
    # flattened channel-major: feature (c, i, j) is the mean of the last map's (i, j) window of channel c
    assert torch.allclose(feats.view(3, 32, grid, grid), F.adaptive_avg_pool2d(last, grid), atol=1e-6)
    if grid == 2:  # on a 7x7 map the windows are rows/columns 0-3 and 3-6
        assert torch.allclose(feats.view(3, 32, 2, 2)[..., 1, 0], last[:, :, 3:, :4].mean((2, 3)), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grid", [1, 2])
def test_grid_avg_pool_equals_adaptive_pooling_and_keeps_the_gradient_channels_last(grid, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 16, 7, 7, generator=g).to(dtype)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    for layout in (torch.contiguous_format, torch.channels_last):
        a = x.contiguous(memory_format=layout).clone().requires_grad_()
        b = a.detach().clone().requires_grad_()
        b_out = b * 1  # not a leaf: its gradient keeps the layout the pooling's backward gives it
        arriving = []
        b_out.register_hook(arriving.append)
        want, got = nn.Flatten()(nn.AdaptiveAvgPool2d(grid)(a)), GridAvgPool(grid)(b_out)
        assert got.shape == (6, 16 * grid * grid) and torch.allclose(want.float(), got.float(), atol=tol)
        grad = torch.randn(want.shape, generator=g).to(dtype)
        want.backward(grad)
        got.backward(grad)
        assert torch.allclose(a.grad.float(), b.grad.float(), atol=tol)
        if grid == 1:  # the layer before gets its gradient in its own layout
            assert arriving[0].is_contiguous(memory_format=layout)


def test_resnet_pools_with_grid_avg_pool():
    net, _ = build_backbone("resnet18", 3)
    assert isinstance(net.avgpool, GridAvgPool)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    net = net.to(memory_format=torch.channels_last).eval()
    assert torch.allclose(net(x), net(x.contiguous()), atol=1e-5)


def test_group_norm_is_independent_of_batch_split():
    net, _ = build_backbone("convnet", 1, width=8, norm="group")
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(net(x), torch.cat([net(x[:2]), net(x[2:])]), atol=1e-5)


def test_resnet18_cifar_stem_any_channels():
    net, dim = build_backbone("resnet18", 5, cifar_stem=True)
    assert dim == 512 and isinstance(net.fc, nn.Identity) and isinstance(net.maxpool, nn.Identity)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.padding == (1, 1)
    assert net.conv1.in_channels == 5
    assert net(torch.randn(2, 5, 16, 16)).shape == (2, 512)
    plain, _ = build_backbone("resnet18", 1, cifar_stem=False)
    assert plain.conv1.kernel_size == (7, 7) and plain.conv1.in_channels == 1


def test_resnet50_feature_dim():
    _, dim = build_backbone("resnet50", 3)
    assert dim == 2048


def test_invalid_arguments():
    with pytest.raises(ValueError, match="convnet, resnet18, resnet50"):
        build_backbone("vit", 3)
    with pytest.raises(ValueError, match="norm"):
        build_backbone("convnet", 1, norm="layer")
    with pytest.raises(ValueError, match="in_channels"):
        build_backbone("convnet", 0)
    with pytest.raises(ValueError, match="pool_grid"):
        build_backbone("convnet", 1, pool_grid=0)
    with pytest.raises(ValueError, match="ResNets pool globally"):
        build_backbone("resnet18", 3, pool_grid=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 8, 28, 28), (5, 3, 9, 7), (2, 1, 3, 2)])
def test_maxpool2_equals_torchs_values_and_gradients_bit_for_bit(shape, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).to(dtype)
    for inp in (x, (x * 4).round() / 4, torch.where(x > 0, x, torch.zeros_like(x))):  # ties, as after a ReLU
        for layout in (torch.contiguous_format, torch.channels_last):
            a = inp.contiguous(memory_format=layout).clone().requires_grad_()
            b = a.detach().clone().requires_grad_()
            want, got = F.max_pool2d(a, 2), MaxPool2()(b)
            assert torch.equal(want, got) and got.is_contiguous(memory_format=layout)
            grad = torch.randn(want.shape, generator=g).to(dtype)
            want.backward(grad)
            got.backward(grad)
            assert torch.equal(a.grad, b.grad)
    with torch.no_grad():  # the path without indices
        got = MaxPool2()(x)
        assert torch.equal(got, F.max_pool2d(x, 2)) and got.is_contiguous()


def _relu_before_pool(net: nn.Sequential) -> nn.Sequential:
    """The same layers (shared modules) in the textbook order conv, norm, ReLU, pool."""
    layers = list(net)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], MaxPool2) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_convnet_pools_before_relu_with_the_textbook_orders_values_and_gradients(dtype, layout):
    torch.manual_seed(0)
    model, _ = build_backbone("convnet", 1, width=8)
    net = model.net
    kinds = [type(m).__name__ for m in net]
    assert kinds[:8] == ["Conv2d", "BatchNorm2d", "MaxPool2", "ReLU"] * 2  # ReLU on the pooled quarter of the map
    model = model.to(memory_format=layout)
    textbook = _relu_before_pool(net)
    # 7x7 blocks of one value: inside a block conv and norm give equal values, so the first pool's windows hold ties
    x = torch.randn(16, 1, 4, 4).repeat_interleave(7, 2).repeat_interleave(7, 3).contiguous(memory_format=layout)
    outs, grads = [], []
    for module in (net, textbook):
        inp = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = module(inp)
        out.float().pow(2).sum().backward()
        outs.append(out.detach())
        grads.append([inp.grad] + [p.grad.clone() for p in module.parameters()])
        module.zero_grad(set_to_none=True)
    assert torch.equal(*outs)
    assert all(torch.equal(a, b) for a, b in zip(*grads))
