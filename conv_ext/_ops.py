"""Loads the compiled operators, gives them fake kernels, and autograd.Functions for torch.func.

Fake kernels give the output's shape, dtype and layout without computing it (torch.compile,
torch.export, opcheck). The ops' autograd kernels are in C++ (csrc/autograd.cpp): the three ops
differentiate each other, so derivatives of any order exist (conv2d's backward calls
conv2d_backward, the three in one call). torch.func's transforms do not
take C++ autograd kernels; under them the Python layer calls Conv2dOp, GradInputOp and
GradWeightOp, autograd.Functions with the same derivatives, forward-mode ones and vmap rules.
"""
import torch
import torch.autograd.forward_ad as forward_ad
from torch._prims_common import suggest_memory_format

from . import _C  # noqa: F401  (importing it registers torch.ops.conv_ext.*)

ops = torch.ops.conv_ext


def _output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _memory_format(a, b):
    """The layout of the result, as in F.conv2d: channels_last when either operand is, on the
    CPU, and on CUDA where cuDNN computes it (not float64 or complex128, not with cuDNN off)."""
    if torch.channels_last not in (suggest_memory_format(a), suggest_memory_format(b)):
        return torch.contiguous_format
    if a.device.type != "cuda":
        return torch.channels_last
    cudnn_runs_it = (torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled
                     and a.dtype not in (torch.float64, torch.complex128))
    return torch.channels_last if cudnn_runs_it else torch.contiguous_format


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


@torch.library.register_fake("conv_ext::conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    grad_input = _conv2d_grad_input_fake(grad_output, weight, input.shape[2:], stride, padding, dilation, groups)
    grad_weight = _conv2d_grad_weight_fake(input, grad_output, weight.shape[2:], stride, padding, dilation, groups)
    grad_bias = grad_output.new_empty(grad_output.shape[1])
    return tuple(t if wanted else None for t, wanted in zip((grad_input, grad_weight, grad_bias), output_mask))


def needs_python_functions():
    """Whether a torch.func transform (grad, vjp, jacrev, jvp, jacfwd, vmap) is running, or
    forward-mode AD (torch.autograd.forward_ad.dual_level): neither takes the C++ autograd
    kernels (forward AD's tangents they refuse), so the Python layer then calls the Functions
    below, which compute the same derivatives, forward-mode ones too."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


class OpArgs:
    """An op's arguments after its tensors: the spatial size (of the grad ops' result) and
    (stride, padding, dilation, groups), as one object, which torch.func's transforms take as a
    single argument (tuples would be flattened into more inputs than there are tangents)."""

    __slots__ = ("size", "conv")

    def __init__(self, size, conv):
        self.size, self.conv = size, conv


def _samples_first(t, dim, samples):
    """t with vmap's sample dimension first, expanded where t has none."""
    return t.expand(samples, *t.shape) if dim is None else t.movedim(dim, 0)


def _as_groups(args, samples):
    """args for one call over all samples: each sample's groups become groups of its own."""
    stride, padding, dilation, groups = args.conv
    return OpArgs(args.size, (stride, padding, dilation, samples * groups))


def _bilinear_jvp(op, a, a_t, b, b_t, constant_t=None):
    """Forward-mode derivative of op(a, b) (+ a constant term), op bilinear: op(da, b) + op(a, db)
    (+ the constant's tangent), the terms whose tangent exists; None if none does."""
    terms = [op(u, v) for u, v in ((a_t, b), (a, b_t)) if u is not None and v is not None]
    if constant_t is not None:
        terms.append(constant_t)
    return sum(terms[1:], terms[0]) if terms else None


class Conv2dOp(torch.autograd.Function):
    """ops.conv2d as an autograd.Function that torch.func's transforms take. backward and jvp
    follow the table in csrc/autograd.cpp, each term a call of these Functions, so that nested
    transforms (a Hessian, per-sample gradients) work. Under vmap the samples of the input join
    its batch, and samples with weights of their own run as groups of one call."""

    @staticmethod
    def forward(input, weight, bias, args):
        return ops.conv2d(input, weight, bias, *args.conv)

    @staticmethod
    def vmap(info, in_dims, input, weight, bias, args):
        input_dim, weight_dim, bias_dim, _ = in_dims
        samples = info.batch_size
        if weight_dim is None and bias_dim is None:
            output = Conv2dOp.apply(input.movedim(input_dim, 0).flatten(0, 1), weight, bias, args)
            return output.unflatten(0, (samples, -1)), 0
        x = _samples_first(input, input_dim, samples).transpose(0, 1).flatten(1, 2)  # (N, samples * C, H, W)
        w = _samples_first(weight, weight_dim, samples).flatten(0, 1)
        b = None if bias is None else _samples_first(bias, bias_dim, samples).flatten()
        output = Conv2dOp.apply(x, w, b, _as_groups(args, samples))
        return output.unflatten(1, (samples, -1)).transpose(0, 1), 0

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _, ctx.args = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        conv = ctx.args.conv
        grad_input, grad_weight, grad_bias = conv2d_grads(input, weight, grad, conv, ctx.needs_input_grad[:3])
        return grad_input, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, _):
        input, weight = ctx.saved_tensors
        return conv2d_jvp(input, weight, input_t, weight_t, bias_t, ctx.args)


def conv2d_jvp(input, weight, input_t, weight_t, bias_t, args):
    """Forward-mode derivative of conv2d(input, weight, bias): F(dx, w) + F(x, dw) + db."""
    return _bilinear_jvp(lambda x, w: Conv2dOp.apply(x, w, None, args), input, input_t, weight, weight_t,
                         None if bias_t is None else bias_t.view(1, -1, 1, 1))


class _GradOp(torch.autograd.Function):
    """What GradInputOp and GradWeightOp share: op(a, b, args), a and b saved for both modes."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, ctx.args = inputs
        ctx.save_for_backward(a, b)
        ctx.save_for_forward(a, b)


class GradInputOp(_GradOp):
    """ops.conv2d_grad_input as an autograd.Function that torch.func's transforms take (see
    Conv2dOp)."""

    @staticmethod
    def forward(grad_output, weight, args):
        return ops.conv2d_grad_input(grad_output, weight, args.size, *args.conv)

    @staticmethod
    def vmap(info, in_dims, grad_output, weight, args):
        grad_output_dim, weight_dim, _ = in_dims
        samples = info.batch_size
        if weight_dim is None:
            grad_input = GradInputOp.apply(grad_output.movedim(grad_output_dim, 0).flatten(0, 1), weight, args)
            return grad_input.unflatten(0, (samples, -1)), 0
        gy = _samples_first(grad_output, grad_output_dim, samples).transpose(0, 1).flatten(1, 2)
        grad_input = GradInputOp.apply(gy, weight.movedim(weight_dim, 0).flatten(0, 1), _as_groups(args, samples))
        return grad_input.unflatten(1, (samples, -1)).transpose(0, 1), 0

    @staticmethod
    def backward(ctx, grad):
        grad_output, weight = ctx.saved_tensors
        conv = ctx.args.conv
        d_grad_output = d_weight = None
        if ctx.needs_input_grad[0]:
            d_grad_output = Conv2dOp.apply(grad, weight.conj(), None, OpArgs(None, conv))
        if ctx.needs_input_grad[1]:
            d_weight = GradWeightOp.apply(grad, grad_output.conj(), OpArgs(weight.shape[2:], conv))
        return d_grad_output, d_weight, None

    @staticmethod
    def jvp(ctx, grad_output_t, weight_t, _):
        grad_output, weight = ctx.saved_tensors
        return _bilinear_jvp(lambda gy, w: GradInputOp.apply(gy, w, ctx.args), grad_output, grad_output_t, weight, weight_t)


class GradWeightOp(_GradOp):
    """ops.conv2d_grad_weight as an autograd.Function that torch.func's transforms take (see
    Conv2dOp). Under vmap every sample has a weight gradient of its own: groups of one call."""

    @staticmethod
    def forward(input, grad_output, args):
        return ops.conv2d_grad_weight(input, grad_output, args.size, *args.conv)

    @staticmethod
    def vmap(info, in_dims, input, grad_output, args):
        input_dim, grad_output_dim, _ = in_dims
        samples = info.batch_size
        x = _samples_first(input, input_dim, samples).transpose(0, 1).flatten(1, 2)
        gy = _samples_first(grad_output, grad_output_dim, samples).transpose(0, 1).flatten(1, 2)
        return GradWeightOp.apply(x, gy, _as_groups(args, samples)).unflatten(0, (samples, -1)), 0

    @staticmethod
    def backward(ctx, grad):
        input, grad_output = ctx.saved_tensors
        conv = ctx.args.conv
        d_input = d_grad_output = None
        if ctx.needs_input_grad[0]:
            d_input = GradInputOp.apply(grad_output.conj(), grad, OpArgs(input.shape[2:], conv))
        if ctx.needs_input_grad[1]:
            d_grad_output = Conv2dOp.apply(input.conj(), grad, None, OpArgs(None, conv))
        return d_input, d_grad_output, None

    @staticmethod
    def jvp(ctx, input_t, grad_output_t, _):
        input, grad_output = ctx.saved_tensors
        return _bilinear_jvp(lambda x, gy: GradWeightOp.apply(x, gy, ctx.args), input, input_t, grad_output, grad_output_t)


def conv2d_grads(input, weight, grad_output, conv, needs_input_grad):
    """(grad_input, grad_weight, grad_bias) of conv2d(input, weight, bias, *conv), each computed
    only where needs_input_grad asks for it, by the Functions above (so under torch.func too).
    Complex operands enter conjugated (PyTorch's complex gradients are conjugate Wirtinger
    derivatives); conj() of a real tensor is the tensor."""
    need_input, need_weight, need_bias = needs_input_grad
    grad_input = grad_weight = grad_bias = None
    if need_input:
        grad_input = GradInputOp.apply(grad_output, weight.conj(), OpArgs(input.shape[2:], conv))
    if need_weight:
        grad_weight = GradWeightOp.apply(input.conj(), grad_output, OpArgs(weight.shape[2:], conv))
    if need_bias:
        grad_bias = grad_output.sum((0, 2, 3))
    return grad_input, grad_weight, grad_bias
