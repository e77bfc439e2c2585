"""Loads the compiled operators and gives them fake kernels.

Fake kernels give the output's shape, dtype and layout without computing it (torch.compile,
torch.export, opcheck). The ops' autograd kernels are in C++ (csrc/autograd.cpp): the three ops
differentiate each other, so derivatives of any order exist.
"""
import torch
from torch._prims_common import suggest_memory_format

from . import _C  # noqa: F401  (importing it registers torch.ops.conv_ext.*)

ops = torch.ops.conv_ext


def _output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _memory_format(a, b):
    """The layout of the result: channels_last when either operand is, as in F.conv2d."""
    if torch.channels_last in (suggest_memory_format(a), suggest_memory_format(b)):
        return torch.channels_last
    return torch.contiguous_format


def _empty(shape, like, other):
    return torch.empty(
        shape, dtype=like.dtype, device=like.device, memory_format=_memory_format(like, other)
    )


@torch.library.register_fake("conv_ext::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    out_hw = [
        _output_size(input.shape[2 + d], weight.shape[2 + d], stride[d], padding[d], dilation[d])
        for d in (0, 1)
    ]
    return _empty((input.shape[0], weight.shape[0], *out_hw), input, weight)


@torch.library.register_fake("conv_ext::conv2d_grad_input")
def _conv2d_grad_input_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
    shape = (grad_output.shape[0], weight.shape[1] * groups, *input_size)
    return _empty(shape, grad_output, weight)


@torch.library.register_fake("conv_ext::conv2d_grad_weight")
def _conv2d_grad_weight_fake(input, grad_output, kernel_size, stride, padding, dilation, groups):
    shape = (grad_output.shape[1], input.shape[1] // groups, *kernel_size)
    return _empty(shape, input, grad_output)


def conv2d_grads(input, weight, grad_output, conv, needs_input_grad):
    """(grad_input, grad_weight, grad_bias) of conv2d(input, weight, bias, *conv), each computed
    only where needs_input_grad asks for it. Complex operands enter conjugated (PyTorch's complex
    gradients are conjugate Wirtinger derivatives); conj() of a real tensor is the tensor."""
    need_input, need_weight, need_bias = needs_input_grad
    grad_input = grad_weight = grad_bias = None
    if need_input:
        grad_input = ops.conv2d_grad_input(grad_output, weight.conj(), input.shape[2:], *conv)
    if need_weight:
        grad_weight = ops.conv2d_grad_weight(input.conj(), grad_output, weight.shape[2:], *conv)
    if need_bias:
        grad_bias = grad_output.sum((0, 2, 3))
    return grad_input, grad_weight, grad_bias
