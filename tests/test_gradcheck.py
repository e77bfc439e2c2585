"""gradcheck and gradgradcheck in float64: conv_ext.conv2d (all its arguments), Conv2dFunction,
each operator on its own, and the reference."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import conv_ext
from conv_ext import reference

from configs import Conv
from conftest import DEVICES, FORCED_CPU_PATHS, cpu_path

ops = torch.ops.conv_ext

CONFIGS = [
    Conv(2, 3, 4, (6, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    Conv(1, 5, 3, (9, 6), (3, 3), (1, 1), (2, 0), (1, 1), 1, True, "channels_last"),  # 2 x 1 tiles
    Conv(2, 3, 2, (7, 6), (5, 5), (1, 1), (2, 1), (1, 1), 1, True),  # 5x5: 4 x 2 tiles of 2x2
    Conv(2, 4, 6, (7, 7), (3, 2), (2, 1), (0, 1), (1, 1), 2, True),
    Conv(1, 3, 3, (7, 8), (3, 3), (2, 2), (2, 1), (2, 2), 3, False),  # depthwise
    Conv(2, 2, 3, (5, 6), (1, 1), (1, 1), (0, 0), (1, 1), 1, True),  # pointwise
    Conv(2, 2, 2, (5, 4), (2, 2), (1, 1), "same", (1, 1), 1, True),  # asymmetric 'same'
    Conv(2, 2, 3, (6, 5), (2, 3), (1, 1), "valid", (2, 1), 1, False),
    Conv(1, 4, 2, (8, 7), (3, 3), (3, 2), (1, 2), (1, 2), 2, True),
    Conv(0, 2, 2, (4, 4), (3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # empty batch
    Conv(1, 3, 2, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "unbatched"),
    Conv(2, 3, 2, (5, 6), (3, 3), (2, 1), (1, 1), (1, 1), 1, True, "channels_last"),
    Conv(2, 2, 2, (5, 5), (2, 3), (1, 2), (1, 0), (1, 1), 1, False, "strided"),
]


def function_apply(input, weight, bias, stride, padding, dilation, groups):
    """Conv2dFunction, the autograd.Function, with F.conv2d's keywords."""
    return conv_ext.Conv2dFunction.apply(input, weight, bias, stride, padding, dilation, groups)


def ids(conv):
    return f"k{conv.kernel}s{conv.stride}p{conv.padding}d{conv.dilation}g{conv.groups}{conv.layout}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("conv", CONFIGS, ids=ids)
@pytest.mark.parametrize("fn, path", [
    *((conv_ext.conv2d, path) for path in FORCED_CPU_PATHS[:3]), (function_apply, "auto"), (reference.conv2d, "auto"),
], ids=["conv_ext-gemm", "conv_ext-direct", "conv_ext-winograd", "Conv2dFunction", "reference"])
def test_gradcheck_and_gradgradcheck(fn, path, conv, device):
    x, w, b = conv.tensors(torch.float64, device, requires_grad=True)
    kw = conv.kwargs()

    def f(x, w, b):
        return fn(x, w, b, **kw)

    with cpu_path(path):
        assert gradcheck(f, (x, w, b))
        assert gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("conv", CONFIGS, ids=ids)
@pytest.mark.parametrize("fn", [conv_ext.conv2d, function_apply], ids=["conv_ext", "Conv2dFunction"])
def test_complex_gradcheck_and_gradgradcheck(fn, conv, device):
    """complex128 operands: gradcheck holds the gradients to PyTorch's complex convention
    (conjugate Wirtinger derivatives), through both the C++ autograd kernels and Conv2dFunction."""
    x, w, b = conv.tensors(torch.complex128, device, requires_grad=True)
    kw = conv.kwargs()

    def f(x, w, b):
        return fn(x, w, b, **kw)

    assert gradcheck(f, (x, w, b))
    assert gradgradcheck(f, (x, w, b))


def op_tensors(device, batch=2, c=4, k=6, size=(7, 6), kernel=(3, 2), groups=2):
    gen = torch.Generator().manual_seed(0)
    conv = ((2, 1), (1, 1), (1, 2), groups)
    out_size = [(s + 2 * p - d * (kk - 1) - 1) // st + 1 for s, kk, st, p, d in zip(size, kernel, *conv[:3])]

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()

    return rand(batch, c, *size), rand(k, c // groups, *kernel), rand(batch, k, *out_size), conv


@pytest.mark.parametrize("device", DEVICES)
def test_each_operator_to_third_order(device):
    """The ops differentiate each other, so the grad ops pass gradgradcheck too: third
    derivatives of the convolution."""
    x, w, gy, conv = op_tensors(device)
    b = torch.rand(w.shape[0], dtype=torch.float64, device=device, requires_grad=True)
    cases = {
        "conv2d": (lambda x, w, b: ops.conv2d(x, w, b, *conv), (x, w, b)),
        "conv2d_grad_input": (lambda gy, w: ops.conv2d_grad_input(gy, w, x.shape[2:], *conv), (gy, w)),
        "conv2d_grad_weight": (lambda x, gy: ops.conv2d_grad_weight(x, gy, w.shape[2:], *conv), (x, gy)),
    }
    for name, (f, args) in cases.items():
        assert gradcheck(f, args), name
        assert gradgradcheck(f, args), name


@pytest.mark.parametrize("device", DEVICES)
def test_grad_ops_are_the_adjoints(device):
    """<F(x, w), gy> = <x, GI(gy, w)> = <w, GW(x, gy)>: the defining property, checked directly."""
    x, w, gy, conv = op_tensors(device)
    y = ops.conv2d(x, w, None, *conv)
    gi = ops.conv2d_grad_input(gy, w, x.shape[2:], *conv)
    gw = ops.conv2d_grad_weight(x, gy, w.shape[2:], *conv)
    inner = (y * gy).sum()
    torch.testing.assert_close((x * gi).sum(), inner)
    torch.testing.assert_close((w * gw).sum(), inner)
