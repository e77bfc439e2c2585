"""Bad input: wherever F.conv2d rejects its arguments, conv_ext raises an ordinary exception whose
message names the problem; direct torch.ops callers are checked too. Never a crash."""
import pytest
import torch
import torch.nn.functional as F

import conv_ext

from conftest import DEVICES

ops = torch.ops.conv_ext


def x(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


W = x(6, 4, 3, 3)

# (id, input, weight, bias, kwargs, pattern our message must match)
BAD_CALLS = [
    ("input-2d", x(5, 5), W, None, {}, r"Expected 3D \(unbatched\) or 4D \(batched\) input"),
    ("input-5d", x(1, 4, 5, 5, 5), W, None, {}, r"Expected 3D \(unbatched\) or 4D"),
    ("weight-3d", x(2, 4, 5, 5), x(6, 4, 3), None, {}, r"expected weight to be 4-D"),
    ("channels", x(2, 3, 5, 5), W, None, {}, r"expected input\[2, 3, 5, 5\] to have 4 channels"),
    ("groups-channels", x(2, 4, 5, 5), W, None, {"groups": 2}, r"to have 8 channels"),
    ("groups-out", x(2, 4, 5, 5), x(5, 2, 3, 3), None, {"groups": 2}, r"divisible by 2 at dimension 0"),
    ("no-out-channels", x(2, 4, 5, 5), x(0, 4, 3, 3), None, {}, r"at least 1 at dimension 0"),
    ("stride-0", x(2, 4, 5, 5), W, None, {"stride": 0}, r"non-positive stride"),
    ("stride-neg", x(2, 4, 5, 5), W, None, {"stride": (1, -1)}, r"non-positive stride"),
    ("stride-3", x(2, 4, 5, 5), W, None, {"stride": (1, 1, 1)}, r"stride to be a single integer value or a list of 2"),
    ("dilation-0", x(2, 4, 5, 5), W, None, {"dilation": 0}, r"non-positive dilation"),
    ("padding-neg", x(2, 4, 5, 5), W, None, {"padding": -1}, r"negative padding"),
    ("groups-0", x(2, 4, 5, 5), W, None, {"groups": 0}, r"non-positive groups"),
    ("kernel-too-big", x(2, 4, 2, 2), W, None, {}, r"Kernel size can't be greater than actual input size"),
    ("dilated-too-big", x(2, 4, 4, 4), W, None, {"dilation": 2}, r"Kernel size can't be greater"),
    ("empty-spatial", x(2, 4, 0, 5), W, None, {"padding": 2}, r"Only zero batch or zero channel inputs"),
    ("dtype-mismatch", x(2, 4, 5, 5, dtype=torch.float64), W, None, {}, r"Input type \(Double\) and weight type \(Float\) should be the same"),
    ("bias-dtype", x(2, 4, 5, 5), W, x(6, dtype=torch.float64), {}, r"bias type \(Double\) should be the same"),
    ("bias-size", x(2, 4, 5, 5), W, x(5), {}, r"expected bias to be 1-dimensional with 6 elements"),
    ("bias-2d", x(2, 4, 5, 5), W, x(6, 1), {}, r"expected bias to be 1-dimensional"),
    ("same-strided", x(2, 4, 5, 5), W, None, {"padding": "same", "stride": 2}, r"padding='same' is not supported for strided"),
    ("padding-string", x(2, 4, 5, 5), W, None, {"padding": "full"}, r"Invalid padding string: 'full'"),
]


@pytest.mark.parametrize("args", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_rejected_like_f_conv2d(args):
    _, input, weight, bias, kwargs, pattern = args
    with pytest.raises(RuntimeError):
        F.conv2d(input, weight, bias, **kwargs)
    with pytest.raises(RuntimeError, match=pattern):
        conv_ext.conv2d(input, weight, bias, **kwargs)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex32])
def test_non_floating_dtypes_rejected(dtype):
    # (F.conv2d computes some integer convolutions on CPU but not on CUDA; we support none.)
    with pytest.raises(RuntimeError, match=r"floating-point and complex Input only"):
        conv_ext.conv2d(x(2, 4, 5, 5).to(dtype), W.to(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_device_mismatch_rejected(device):
    if device == "cpu":
        pytest.skip("needs two devices")
    with pytest.raises(RuntimeError, match=r"should be on the same device"):
        conv_ext.conv2d(x(2, 4, 5, 5).to(device), W)


def test_non_tensor_arguments_rejected():
    with pytest.raises(TypeError, match=r"input and weight must be Tensors, got list"):
        conv_ext.conv2d([[1.0]], W)
    with pytest.raises((TypeError, RuntimeError)):
        conv_ext.conv2d(x(2, 4, 5, 5), W, stride="2")


G = x(2, 6, 3, 3)  # grad_output of x(2, 4, 5, 5) with W, stride 1, no padding
CONV = ([1, 1], [0, 0], [1, 1], 1)

BAD_OP_CALLS = [
    ("fwd-stride-3", lambda: ops.conv2d(x(2, 4, 5, 5), W, None, [1, 1, 1], [0, 0], [1, 1], 1), r"list of 2 values"),
    ("fwd-padding-1", lambda: ops.conv2d(x(2, 4, 5, 5), W, None, [1, 1], [0], [1, 1], 1), r"padding to be a single integer"),
    ("fwd-3d-input", lambda: ops.conv2d(x(4, 5, 5), W, None, *CONV), r"expected input to be 4-D"),
    ("gi-input-size", lambda: ops.conv2d_grad_input(G, W, [6, 5], *CONV), r"expected grad_output of spatial size \(4, 3\)"),
    ("gi-input-size-len", lambda: ops.conv2d_grad_input(G, W, [5], *CONV), r"input_size to be the input's \(H, W\)"),
    ("gi-channels", lambda: ops.conv2d_grad_input(x(2, 5, 3, 3), W, [5, 5], *CONV), r"expected grad_output to have 6 channels"),
    ("gi-groups", lambda: ops.conv2d_grad_input(G, W, [5, 5], [1, 1], [0, 0], [1, 1], 4), r"divisible by groups"),
    ("gi-dtype", lambda: ops.conv2d_grad_input(G.double(), W, [5, 5], *CONV), r"should be the same"),
    ("gw-batch", lambda: ops.conv2d_grad_weight(x(3, 4, 5, 5), G, [3, 3], *CONV), r"same batch size"),
    ("gw-kernel", lambda: ops.conv2d_grad_weight(x(2, 4, 5, 5), G, [2, 2], *CONV), r"expected grad_output of spatial size \(4, 4\)"),
    ("gw-kernel-0", lambda: ops.conv2d_grad_weight(x(2, 4, 5, 5), G, [0, 3], *CONV), r"kernel size must be positive"),
    ("gw-groups", lambda: ops.conv2d_grad_weight(x(2, 4, 5, 5), G, [3, 3], [1, 1], [0, 0], [1, 1], 3), r"divisible by groups"),
    ("bw-size", lambda: ops.conv2d_backward(x(2, 6, 4, 3), x(2, 4, 5, 5), W, *CONV, [True] * 3), r"expected grad_output of spatial size \(3, 3\)"),
    ("bw-batch", lambda: ops.conv2d_backward(x(3, 6, 3, 3), x(2, 4, 5, 5), W, *CONV, [False, False, True]), r"expected grad_output of size \(2, 6, 3, 3\)"),
    ("bw-channels", lambda: ops.conv2d_backward(G, x(2, 5, 5, 5), W, *CONV, [True] * 3), r"to have 4 channels, but got 5"),
    ("bw-3d", lambda: ops.conv2d_backward(x(6, 3, 3), x(2, 4, 5, 5), W, *CONV, [True] * 3), r"expected grad_output to be 4-D"),
    ("bw-dtype", lambda: ops.conv2d_backward(G.double(), x(2, 4, 5, 5), W, *CONV, [True] * 3), r"should be the same"),
    ("bw-mask", lambda: ops.conv2d_backward(G, x(2, 4, 5, 5), W, *CONV, [True] * 2), r"fixed-size array of size 3"),
]


@pytest.mark.parametrize("call", BAD_OP_CALLS, ids=[c[0] for c in BAD_OP_CALLS])
def test_operators_check_their_arguments(call):
    _, fn, pattern = call
    with pytest.raises(RuntimeError, match=pattern):
        fn()
