"""conv_ext.conv2d and Conv2dFunction: F.conv2d's interface over the conv_ext operators."""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair, _single

from ._ops import Conv2dOp, OpArgs, conv2d_grads, conv2d_jvp, needs_python_functions, ops


def _as_pair(value):
    """An int or a sequence of 1 or 2 ints as a pair; longer sequences pass through for the
    operator to reject with a message naming them."""
    # The common cases (F.conv2d's ints, nn.Conv2d's pairs) without _pair's checks: ~0.5 us each.
    if type(value) is int:
        return (value, value)
    if type(value) is tuple and len(value) == 2:
        return value
    value = tuple(_pair(value))
    return value * 2 if len(value) == 1 else value


def _check_operands(name, input, weight, spatial_dims):
    """Tensors, and an input of rank spatial_dims + 1 (unbatched) or + 2, as F.conv*d demand."""
    if not (isinstance(input, torch.Tensor) and isinstance(weight, torch.Tensor)):
        raise TypeError(
            f"{name}(): input and weight must be Tensors, "
            f"got {type(input).__name__} and {type(weight).__name__}"
        )
    if input.dim() not in (spatial_dims + 1, spatial_dims + 2):
        raise RuntimeError(
            f"Expected {spatial_dims + 1}D (unbatched) or {spatial_dims + 2}D (batched) input to "
            f"{name}, but got input of size: {list(input.shape)}"
        )


class Conv2dArgs(NamedTuple):
    """F.conv2d's arguments normalised for the operators.

    conv: (stride, padding, dilation, groups) with symmetric padding, as the ops take it.
    unbatched: the input was (C, H, W).
    extra_pad: (bottom, right) zero padding beyond the symmetric part, which padding='same' needs
    for even kernels; like torch, we pad the input explicitly in that case.
    """

    conv: tuple
    unbatched: bool
    extra_pad: tuple

    @classmethod
    def parse(cls, input, weight, stride, padding, dilation, groups):
        _check_operands("conv2d", input, weight, 2)
        stride, dilation = _as_pair(stride), _as_pair(dilation)
        extra_pad = (0, 0)
        if isinstance(padding, str):
            padding, extra_pad = _padding_for_mode(padding, weight, stride, dilation)
        return cls((stride, _as_pair(padding), dilation, groups), input.dim() == 3, extra_pad)

    def batched(self, tensor):
        return tensor.unsqueeze(0) if self.unbatched else tensor

    def unbatched_like_input(self, tensor):
        return tensor.squeeze(0) if self.unbatched else tensor

    def prepare_input(self, input):
        """The 4-D input the operators see: batched, with any extra 'same' padding applied."""
        x = self.batched(input)
        if any(self.extra_pad):
            x = F.pad(x, (0, self.extra_pad[1], 0, self.extra_pad[0]))
        return x

    def conv2d(self, input, weight, bias):
        """The convolution of input (as F.conv2d takes it) by the operator (under torch.func's
        transforms and forward-mode AD, by Conv2dOp)."""
        x = self.prepare_input(input)
        if needs_python_functions():
            return self.unbatched_like_input(Conv2dOp.apply(x, weight, bias, OpArgs(None, self.conv)))
        return self.unbatched_like_input(ops.conv2d(x, weight, bias, *self.conv))

    def input_grad(self, grad):
        """The adjoint of prepare_input: crop the extra padding, drop the batch dimension."""
        if any(self.extra_pad):
            grad = grad[..., : grad.shape[-2] - self.extra_pad[0], : grad.shape[-1] - self.extra_pad[1]]
        return self.unbatched_like_input(grad)


def _padding_for_mode(mode, weight, stride, dilation):
    """(symmetric padding, extra bottom/right padding) for padding='valid' or 'same'."""
    if mode == "valid":
        return (0, 0), (0, 0)
    if mode != "same":
        raise RuntimeError(f"Invalid padding string: '{mode}'")
    if any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    if weight.dim() != 4:
        raise RuntimeError(
            "expected weight to be 4-D (out_channels, in_channels / groups, kH, kW), "
            f"but got weight of size {list(weight.shape)}"
        )
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    return tuple(t // 2 for t in total), tuple(t % 2 for t in total)


class Conv2dFunction(torch.autograd.Function):
    """conv2d as an autograd.Function taking F.conv2d's positional arguments:
    ``Conv2dFunction.apply(input, weight, bias, stride, padding, dilation, groups)``.

    backward and jvp are written with differentiable Functions of the conv_ext operators, so
    gradgradcheck, higher derivatives and torch.func's transforms (grad, vjp, jacrev, jvp,
    jacfwd, hessian, vmap) work.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        return Conv2dArgs.parse(input, weight, stride, padding, dilation, groups).conv2d(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, *conv = inputs
        ctx.args = Conv2dArgs.parse(input, weight, *conv)
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        args = ctx.args
        # Under autocast the operator computed in the autocast dtype, which is the output's and so
        # grad_output's: cast the saved operands the same way (a no-op otherwise). prepare_input
        # runs here rather than in forward so that double backward sees the path from input.
        dtype = grad_output.dtype
        grad_input, grad_weight, grad_bias = conv2d_grads(
            args.prepare_input(input.to(dtype)), weight.to(dtype), args.batched(grad_output),
            args.conv, ctx.needs_input_grad[:3],
        )
        if grad_input is not None:
            grad_input = args.input_grad(grad_input)
        return grad_input, grad_weight, grad_bias, None, None, None, None

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, *_):
        input, weight = ctx.saved_tensors
        args = ctx.args
        input_t = None if input_t is None else args.prepare_input(input_t)
        output_t = conv2d_jvp(args.prepare_input(input), weight, input_t, weight_t, bias_t, OpArgs(None, args.conv))
        return None if output_t is None else args.unbatched_like_input(output_t)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Drop-in for torch.nn.functional.conv2d, computed by the conv_ext kernels.

    input (N, C, H, W) or unbatched (C, H, W); weight (K, C / groups, kH, kW); bias (K,) or None;
    stride, padding, dilation an int or a pair; padding also 'valid' or 'same'.

    The operator differentiates itself (its autograd kernel is C++), and so do the padding and
    reshapes around it: no autograd.Function here, whose Python layer would cost more per call
    than PyTorch's whole F.conv2d on a small layer. Conv2dFunction computes the same. Under
    torch.func's transforms and forward-mode AD (torch.autograd.forward_ad), which do not take the
    C++ autograd kernel, the operator's autograd.Function Conv2dOp runs instead.
    """
    return Conv2dArgs.parse(input, weight, stride, padding, dilation, groups).conv2d(input, weight, bias)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Drop-in for torch.nn.functional.conv1d, computed by the 2-D kernels on a height-1 image.

    input (N, C, L) or unbatched (C, L); weight (K, C / groups, kL); bias (K,) or None;
    padding an int, a 1-tuple, 'valid' or 'same'.
    """
    _check_operands("conv1d", input, weight, 1)
    if weight.dim() != 3:
        raise RuntimeError(
            "expected weight to be 3-D (out_channels, in_channels / groups, kL), "
            f"but got weight of size {list(weight.shape)}"
        )
    if not isinstance(padding, str):
        padding = (0, *_single(padding))
    output = conv2d(
        input.unsqueeze(-2), weight.unsqueeze(-2), bias,
        (1, *_single(stride)), padding, (1, *_single(dilation)), groups,
    )
    return output.squeeze(-2)
