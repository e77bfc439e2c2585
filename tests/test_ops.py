"""The operators in the PyTorch ecosystem: registration, opcheck (schema, fake kernels, autograd
registration, torch.compile), and torch.compile of the public function."""
import itertools
import os

import pytest
import torch

import conv_ext

from conftest import DEVICES

ops = torch.ops.conv_ext


def sample_calls(device, dtype=torch.float32):
    """(op, args) covering strides, padding, dilation, groups, bias and channels_last."""
    def t(*shape, cl=False):
        x = torch.randn(*shape, dtype=dtype, device=device)
        return x.contiguous(memory_format=torch.channels_last) if cl else x

    calls = []
    for cl in (False, True):
        for conv in [([1, 1], [1, 1], [1, 1], 1), ([2, 1], [0, 2], [1, 2], 2)]:
            x, w, b = t(2, 4, 9, 8, cl=cl), t(6, 4 // conv[3], 3, 3), t(6)
            y = ops.conv2d(x, w, b, *conv)
            gy = t(*y.shape, cl=cl)
            calls += [
                (ops.conv2d, (x, w, b, *conv)),
                (ops.conv2d, (x, w, None, *conv)),
                (ops.conv2d_grad_input, (gy, w, list(x.shape[2:]), *conv)),
                (ops.conv2d_grad_weight, (x, gy, list(w.shape[2:]), *conv)),
            ]
    return calls


def backward_calls(device, dtype=torch.float32):
    """conv2d_backward's calls: sample_calls' layers, and a depthwise layer of the kind the CPU
    computes in one pass (direct_conv2d_backward), with every output_mask."""
    calls = [(args[3:], args[:2]) for op, args in sample_calls(device, dtype) if op is ops.conv2d and args[2] is not None]
    x, w = torch.randn(2, 16, 7, 9, dtype=dtype, device=device), torch.randn(16, 1, 3, 3, dtype=dtype, device=device)
    calls.append((([1, 1], [1, 1], [1, 1], 16), (x, w)))
    out = []
    for conv, (x, w) in calls:
        gy = torch.randn_like(ops.conv2d(x, w, None, *conv))
        for mask in itertools.product((False, True), repeat=3):
            out.append((gy, x, w, *conv, list(mask)))
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in sample_calls(device):
        args = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        torch.library.opcheck(op, args)
    # Each layer with every gradient, and some masks on the first and the depthwise layer (each
    # opcheck compiles the op: all 40 calls took 20 s).
    calls = backward_calls(device)
    for args in [c for c in calls if all(c[-1])] + [c for c in calls[:8] + calls[-8:] if c[-1] in ([True, False, True], [False, True, False])]:
        torch.library.opcheck(ops.conv2d_backward, args)
        torch.library.opcheck(ops.conv2d_backward, [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args])


@pytest.mark.parametrize("device", DEVICES)
def test_backward_op_is_the_three_ops(device):
    """conv2d_backward(gy, x, w, mask): the input gradient, the weight gradient and the bias
    gradient (grad_output summed) that the mask asks for, None for the others; recorded (and
    right: gradcheck) for a double backward where its operands require gradients."""
    for gy, x, w, *conv, mask in backward_calls(device, torch.float64):
        expected = (ops.conv2d_grad_input(gy, w, list(x.shape[2:]), *conv),
                    ops.conv2d_grad_weight(x, gy, list(w.shape[2:]), *conv), gy.sum((0, 2, 3)))
        for result, wanted, e in zip(ops.conv2d_backward(gy, x, w, *conv, mask), mask, expected):
            if not wanted:
                assert result is None
                continue
            torch.testing.assert_close(result, e, rtol=1e-13, atol=1e-13)
            assert result.stride() == e.stride()
        if not all(mask):  # the gradcheck of every gradient covers the masks' subsets
            continue
        leaves = [t.detach().requires_grad_() for t in (gy, x, w)]
        results = [r for r in ops.conv2d_backward(*leaves, *conv, mask) if r is not None]
        assert all(r.grad_fn is not None for r in results)
        assert torch.autograd.gradcheck(
            lambda *t: [r for r in ops.conv2d_backward(*t, *conv, mask) if r is not None],
            [t.detach()[:1].clone().requires_grad_() for t in leaves[:2]] + [leaves[2].detach().clone().requires_grad_()])


@pytest.mark.parametrize("device", DEVICES)
def test_autograd_records_only_calls_with_a_gradient(device):
    """Calls without a gradient to record (grad mode off, or no operand requiring one) run the op
    directly; a call where any one operand requires a gradient, the bias alone too, records it."""
    for op, args in sample_calls(device):
        expected = op(*args)
        for grad_mode in (False, True):
            with torch.set_grad_enabled(grad_mode):
                result = op(*args)
            assert result.grad_fn is None and not result.requires_grad
            torch.testing.assert_close(result, expected, rtol=0, atol=0)
        with torch.inference_mode():
            torch.testing.assert_close(op(*args), expected, rtol=0, atol=0)
        for i, a in enumerate(args):
            if not isinstance(a, torch.Tensor):
                continue
            one = [b.detach().requires_grad_(j == i) if isinstance(b, torch.Tensor) else b for j, b in enumerate(args)]
            result = op(*one)
            assert result.grad_fn is not None, (op, i)
            (grad,) = torch.autograd.grad(result, one[i], torch.ones_like(result))
            assert grad.shape == a.shape
    x, w, b = (torch.randn(*shape, device=device) for shape in ((2, 3, 7, 6), (5, 3, 3, 3), (5,)))
    y = ops.conv2d(x, w, b.requires_grad_(), [1, 1], [1, 1], [1, 1], 1)
    gy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, b, gy)[0], gy.sum((0, 2, 3)))


# CI sets CONV_EXT_EXPECT_CUDA=1 where it builds the CUDA sources on a machine without a GPU.
EXPECT_CUDA = torch.cuda.is_available() or os.environ.get("CONV_EXT_EXPECT_CUDA") == "1"


@pytest.mark.parametrize("key", [
    "CPU",
    pytest.param("CUDA", marks=pytest.mark.skipif(not EXPECT_CUDA, reason="needs a CUDA build")),
])
def test_every_op_has_a_kernel_for(key):
    for name in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"conv_ext::{name}", key), name
    # conv2d_backward: the CPU's own kernel (one pass for depthwise layers), elsewhere the three
    # ops' calls, a composite kernel.
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        "conv_ext::conv2d_backward", "CPU" if key == "CPU" else "CompositeExplicitAutograd")


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_forward_and_backward(device):
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        conv_ext.Conv2d(3, 8, 3, padding="same"), torch.nn.ReLU(), conv_ext.Conv2d(8, 4, 3, stride=2, groups=2)
    ).to(device)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 12, 11, device=device, requires_grad=True)
    y, y_eager = compiled(x), model(x)
    torch.testing.assert_close(y, y_eager)
    gy = torch.randn_like(y)
    params = [x, *model.parameters()]
    for g, g_eager in zip(torch.autograd.grad(y, params, gy), torch.autograd.grad(y_eager, params, gy)):
        torch.testing.assert_close(g, g_eager)
