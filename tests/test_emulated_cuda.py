"""The CUDA backend's tiled GEMM kernels (csrc/cuda/tiled_gemm.cuh), depthwise kernels
(csrc/cuda/depthwise.cuh) and direct kernels (csrc/cuda/direct.cuh), run on the CPU by a small
emulator (emulated_cuda/cuda_on_cpu.h: a block's threads are fibers meeting at __syncthreads, the
tensor cores' wmma products computed on whole matrices), against torch: every op, dtype, stride,
padding, dilation and group count, tiles cut by the edges, sums split across blocks, on the
tensor cores and not. On a GPU the same kernels run for real in the device tests; here they check
what the kernels compute where there is no GPU."""
import platform
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.cpp_extension import load

from configs import Conv, fitting_size, make_layout
from test_conv2d import assert_scaled_close, tf32, torch_ops

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
                                reason="the emulator switches its fibers' stacks in x86-64 System V assembly")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    # A fresh build directory: torch's extension cache would not notice a changed header.
    return load(
        name="cuda_kernels_on_cpu",
        sources=[str(ROOT / "tests/emulated_cuda/kernels_on_cpu.cpp")],
        extra_include_paths=[str(ROOT / "csrc")],
        extra_cflags=["-O2"],
        build_directory=str(tmp_path_factory.mktemp("cuda_kernels_on_cpu")),
    )


@st.composite
def grouped_convs(draw, channels, max_kernel, max_stride, sizes, max_batch):
    """Layers of 1 to 3 groups of `channels` (a strategy) input and output channels each."""
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = (draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    size = fitting_size(draw, kernel, padding, dilation, draw(st.sampled_from(sizes)))
    return Conv(draw(st.integers(0, max_batch)), groups * draw(channels), groups * draw(channels), size, kernel,
                stride, padding, dilation, groups, draw(st.booleans()))


def gemm_convs():
    """Layers with channel counts that leave partial 64-wide tiles and depths that can be split."""
    return grouped_convs(st.sampled_from([1, 3, 8, 17, 67]), 4, 3, [4, 12, 30], 3)


def emulated_ops(emulated, conv, x, w, b, gy, multiprocessors=None, tensor_cores=False, algorithm="gemm"):
    """The three ops' results by the emulated kernels of an algorithm: the tiled GEMM's (on the
    tensor cores or not), the depthwise ones or the direct ones (outputs poisoned with NaN first,
    so that an element left unwritten fails), and their plans: (tiles_m, tiles_n, splits), the
    blocks sharing a channel's work, or None (direct)."""
    args = [list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups]
    prefix = "" if algorithm == "gemm" else algorithm + "_"
    forward, grad_input, grad_weight = (getattr(emulated, prefix + op) for op in ("forward", "grad_input", "grad_weight"))
    if algorithm != "direct":
        args.append(multiprocessors)
    if algorithm == "gemm":
        args.append(tensor_cores)
    y = torch.full_like(gy, float("nan"))
    gx, gw = torch.full_like(x, float("nan")), torch.full_like(w, float("nan"))
    plans = [forward(x, w, b, *args, y), grad_input(gy, w, *args, gx), grad_weight(x, gy, *args, gw)]
    return (y, gx, gw), plans


def operands(conv, dtype, seed=0):
    """(x, w, b, grad_output) with values in [-1, 1), x and grad_output in the layer's layout."""
    x, w, b = conv.tensors(dtype, "cpu", seed=seed)
    out_size = [
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(conv.size, conv.padding, conv.dilation, conv.kernel, conv.stride)
    ]
    gen = torch.Generator().manual_seed(seed + 1)
    gy = torch.rand(conv.batch, conv.out_channels, *out_size, generator=gen, dtype=torch.float64) * 2 - 1
    return x, w, b, make_layout(gy.to(dtype), conv.layout)


def assert_float64_matches_torch(emulated, conv, *how, **more):
    """The emulated kernels' three ops (emulated_ops(..., *how, **more)) in float64 within 1e-12 of
    the scale of torch's."""
    x, w, b, gy = operands(conv, torch.float64)
    ours, _ = emulated_ops(emulated, conv, x, w, b, gy, *how, **more)
    for name, a, e in zip(("output", "grad_input", "grad_weight"), ours, torch_ops(conv, x, w, b, gy)):
        assert_scaled_close(a, e, 1e-12, name)


@settings(max_examples=40)
@given(conv=gemm_convs(), multiprocessors=st.sampled_from([1, 132, 10**6]), tensor_cores=st.booleans())
def test_float64_matches_torch(emulated, conv, multiprocessors, tensor_cores):
    """float64 within 1e-12 of the scale; it has no tensor core path, and asking for one changes nothing."""
    assert_float64_matches_torch(emulated, conv, multiprocessors, tensor_cores)


def assert_rounds_a_float32_sum(ours, expected, dtype):
    """float32 within 1e-5 of max|result| (scale-aware); float16 and bfloat16 summed in float32 and
    rounded once: within half an ulp of the exact result plus the float32 sum's error."""
    for name, a, e in zip(("output", "grad_input", "grad_weight"), ours, expected):
        assert a.dtype == dtype
        if dtype == torch.float32:
            assert_scaled_close(a, e, 1e-5, name)
        else:
            half_ulp = torch.finfo(dtype).eps / 2
            torch.testing.assert_close(a.double(), e, rtol=half_ulp, atol=1e-5 * e.abs().max().item(), msg=name)


LAYERS = [  # (conv, multiprocessors): each op's depth split on the second (the input gradient's first stride phase)
    (Conv(2, 70, 67, (13, 11), (3, 3), (1, 1), (1, 1), (1, 1), 1, True), 132),
    (Conv(3, 134, 134, (24, 23), (5, 3), (2, 1), (2, 0), (1, 2), 2, True), 10**6),
]


@pytest.mark.parametrize("dtype,tensor_cores", [
    (torch.float32, False), (torch.float16, False), (torch.bfloat16, False), (torch.float16, True), (torch.bfloat16, True),
], ids=["float32", "float16", "bfloat16", "float16-tensor-cores", "bfloat16-tensor-cores"])
@pytest.mark.parametrize("conv,multiprocessors", LAYERS)
def test_reduced_precision_rounds_a_float32_sum(emulated, conv, multiprocessors, dtype, tensor_cores):
    """On the tensor cores or not, and with each op's depth split across blocks or not."""
    x, w, b, gy = operands(conv, dtype)
    ours, plans = emulated_ops(emulated, conv, x, w, b, gy, multiprocessors, tensor_cores)
    if multiprocessors > 1000:
        assert all(splits > 1 for _, _, splits in plans), plans
    assert_rounds_a_float32_sum(ours, torch_ops(conv, x, w, b, gy), dtype)


@settings(max_examples=25)
@given(conv=gemm_convs(), multiprocessors=st.sampled_from([1, 132, 10**6]))
def test_tf32_is_the_float32_sum_of_rounded_operands(emulated, conv, multiprocessors):
    """float32 on the tensor cores (TF32): each op's operands rounded to TF32, their products summed
    in float32: within 1e-5 of the scale of the float64 result on the rounded operands (and some
    1e-3 from the float32 result, which the bound would not pass)."""
    x, w, b, gy = operands(conv, torch.float32)
    ours, _ = emulated_ops(emulated, conv, x, w, b, gy, multiprocessors, tensor_cores=True)
    # Each op reads two of the three operands, so rounding all three rounds each op's own.
    for name, a, e in zip(("output", "grad_input", "grad_weight"), ours, torch_ops(conv, tf32(x), tf32(w), b, tf32(gy))):
        assert_scaled_close(a, e, 1e-5, name)


def test_no_input_channels_gives_the_bias(emulated):
    conv = Conv(2, 0, 5, (4, 3), (3, 3), (1, 1), (1, 1), (1, 1), 1, True)
    x, w, b, gy = operands(conv, torch.float32)
    (y, gx, gw), _ = emulated_ops(emulated, conv, x, w, b, gy, 132)
    assert y.shape == (2, 5, 4, 3) and torch.equal(y, b.view(1, -1, 1, 1).expand_as(y))
    assert gx.numel() == 0 and gw.numel() == 0


@st.composite
def depthwise_convs(draw):
    """Depthwise layers (groups == in_channels) with channel multipliers 1 to 3, filters of the sizes
    the kernels compile in (3 x 3, 5 x 5) and of others, NCHW or channels_last (whose blocks take
    32 channels: 1 to 4 or 30 to 40 channels leave the last tile part empty)."""
    channels = draw(st.one_of(st.integers(1, 4), st.integers(30, 40)))
    multiplier = draw(st.integers(1, 3))
    kernel = draw(st.sampled_from([(3, 3), (5, 5), (1, 1), (2, 4), (3, 1), (4, 4)]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    size = fitting_size(draw, kernel, padding, dilation, draw(st.sampled_from([4, 12, 30])))
    return Conv(draw(st.integers(0, 3)), channels, channels * multiplier, size, kernel, stride, padding, dilation,
                channels, draw(st.booleans()), draw(st.sampled_from(["contiguous", "channels_last"])))


@settings(max_examples=40)
@given(conv=depthwise_convs(), multiprocessors=st.sampled_from([1, 132, 10**6]))
def test_depthwise_float64_matches_torch(emulated, conv, multiprocessors):
    assert_float64_matches_torch(emulated, conv, multiprocessors, algorithm="depthwise")


DEPTHWISE_LAYERS = [  # each with 2 x 4096 pixels a channel: its NCHW weight gradient split in two blocks
    Conv(2, 3, 3, (64, 64), (3, 3), (1, 1), (1, 1), (1, 1), 3, True),
    Conv(2, 2, 4, (65, 128), (5, 5), (2, 1), (2, 2), (1, 1), 2, True),
    Conv(2, 2, 4, (67, 130), (3, 2), (1, 2), (1, 0), (2, 1), 2, False),
    # channels_last: 34 channels, two tiles of 32, the second with 2; its weight gradient split in 64
    Conv(2, 34, 34, (64, 64), (3, 3), (1, 1), (1, 1), (1, 1), 34, True, "channels_last"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("conv", DEPTHWISE_LAYERS, ids=["3x3", "5x5-stride-2", "3x2-dilated", "3x3-channels-last"])
def test_depthwise_reduced_precision_rounds_a_float32_sum(emulated, conv, dtype):
    """As for the tiled GEMM, with each channel's work shared by several blocks: its pixels in the
    forward and input gradient, its long sum split in the weight gradient; the results in the
    activations' layout."""
    x, w, b, gy = operands(conv, dtype)
    ours, plans = emulated_ops(emulated, conv, x, w, b, gy, 10**6, algorithm="depthwise")
    splits = 64 if conv.layout == "channels_last" else 2
    assert plans[0] > 1 and plans[1] > 1 and plans[2] == splits, plans
    layout = torch.channels_last if conv.layout == "channels_last" else torch.contiguous_format
    assert ours[0].is_contiguous(memory_format=layout) and ours[1].is_contiguous(memory_format=layout)
    assert_rounds_a_float32_sum(ours, torch_ops(conv, x, w, b, gy), dtype)


def narrow_convs():
    """Layers of few channels per group, as the direct kernels take them, with strides and
    dilations that leave some input positions fed by no tap."""
    return grouped_convs(st.integers(1, 4), 7, 4, [4, 12, 23], 2)


@settings(max_examples=60)
@given(conv=narrow_convs())
def test_direct_float64_matches_torch(emulated, conv):
    assert_float64_matches_torch(emulated, conv, algorithm="direct")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_direct_reduced_precision_rounds_a_float32_sum(emulated, dtype):
    """A stem-like layer (3 input channels, 7 x 7 at stride 2, whose input gradient is the direct
    kernel's on a GPU)."""
    conv = Conv(2, 3, 8, (23, 20), (7, 7), (2, 2), (3, 3), (1, 1), 1, True)
    x, w, b, gy = operands(conv, dtype)
    ours, _ = emulated_ops(emulated, conv, x, w, b, gy, algorithm="direct")
    assert_rounds_a_float32_sum(ours, torch_ops(conv, x, w, b, gy), dtype)


def mma_ops(emulated, conv, x, w, b, gy, multiprocessors, tf32_allowed):
    """The ops the channels-last tensor-core kernels (csrc/cuda/channels_last_mma.cuh) compute for
    this layer and dtype, on channels_last copies of the operands, their outputs poisoned with NaN
    first: {name: result} and {name: plan (tile, splits)}. The forward always; the input gradient
    (its first stride phase's plan) and the weight gradient with output channels in whole 16-byte
    chunks too; float32 as TF32 or by 3xTF32 (tf32_allowed). Tiles are
    channels_last_mma::TileChoice: 0 for 128 x 128, 1 for 128 x 64, 2 for 64 x 128, 3 for 64 x 64."""
    args = [list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups, multiprocessors]
    float32_args = args + [tf32_allowed]
    cl = torch.channels_last
    x, gy = x.contiguous(memory_format=cl), gy.contiguous(memory_format=cl)

    def poisoned(t):
        return torch.full_like(t, float("nan"), memory_format=cl)

    def whole_chunks(channels):
        return channels // conv.groups * x.element_size() % 16 == 0

    results, plans = {"output": poisoned(gy)}, {}
    plans["output"] = emulated.mma_forward(x, w, b, *float32_args, results["output"])
    if whole_chunks(conv.out_channels):
        results["grad_input"] = poisoned(x)
        plans["grad_input"] = emulated.mma_grad_input(gy, w, *float32_args, results["grad_input"])
    if whole_chunks(conv.out_channels):
        results["grad_weight"] = poisoned(w)
        plans["grad_weight"] = emulated.mma_grad_weight(x, gy, *float32_args, results["grad_weight"])
    return results, plans


def assert_mma_ops_match(emulated, conv, dtype, multiprocessors, tf32_allowed=True):
    """float16 and bfloat16 summed in float32 and rounded once; float32 as TF32: its operands rounded
    (cvt.rna), their products summed in float32 (within 1e-5 of the scale of the float64 result on
    the rounded operands); float32 by 3xTF32: within 1e-5 of the scale of the float64 result on
    the operands themselves, where TF32's 1e-3 would fail. Returns the plans."""
    x, w, b, gy = operands(conv, dtype)
    ours, plans = mma_ops(emulated, conv, x, w, b, gy, multiprocessors, tf32_allowed)
    rounded = tf32 if dtype == torch.float32 and tf32_allowed else (lambda t: t)
    expected = dict(zip(("output", "grad_input", "grad_weight"), torch_ops(conv, rounded(x), rounded(w), b, rounded(gy))))
    for name, a in ours.items():
        assert a.dtype == dtype and a.shape == expected[name].shape, name
        if dtype == torch.float32:
            assert_scaled_close(a, expected[name], 1e-5, name)
        else:
            half_ulp = torch.finfo(dtype).eps / 2
            torch.testing.assert_close(a.double(), expected[name], rtol=half_ulp,
                                       atol=1e-5 * expected[name].abs().max().item(), msg=name)
    return plans


# (conv, multiprocessors, the forward's (tile, splits), the weight gradient's (tile, splits, splits in
# float32))
MMA_LAYERS = [
    # 72 filters a group (a 128-wide tile's second half past the edge), 3 steps of 32 channels with
    # the last one a quarter full, rows past the tile's edge
    (Conv(2, 72, 72, (9, 8), (3, 3), (1, 1), (1, 1), (1, 1), 1, True), 1, (0, 1), (0, 1, 1)),
    # the same in 3 blocks
    (Conv(2, 72, 72, (9, 8), (3, 3), (1, 1), (1, 1), (1, 1), 1, True), 3, (2, 1), (0, 1, 1)),
    # two groups of 40 -> 24 channels, strided and dilated, padding wider than the filter reaches;
    # rows of odd input positions that no tap feeds (stride 2, dilation 2)
    (Conv(3, 80, 48, (14, 13), (3, 2), (2, 1), (3, 2), (2, 1), 2, False), 1, (1, 1), (2, 1, 1)),
    # stride 1, dilated, a 5 x 5 filter; 1920 output pixels in 15 blocks: the forward's 25 steps
    # split in 3 (9, 9 and 7; the input gradient's likewise), the weight gradient's 60 steps in 7
    # (of 9 steps, the last of 6; in float32 120 steps in 15)
    (Conv(4, 16, 24, (24, 22), (5, 5), (1, 1), (4, 1), (2, 1), 1, True), 10**6, (1, 3), (2, 7, 15)),
    # 36 pixels, 8 channels: too few steps (1) to split, the 64 x 64 tile
    (Conv(1, 8, 8, (6, 6), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), 10**6, (3, 1), (3, 1, 1)),
    # a first layer: 3 input channels, padded with zeros to a chunk (8, or 4 in float32)
    (Conv(2, 3, 16, (15, 14), (7, 7), (2, 2), (3, 3), (1, 1), 1, True), 1, (1, 1), (2, 1, 1)),
]


@pytest.mark.parametrize("dtype,tf32_allowed", [
    (torch.float16, True), (torch.bfloat16, True), (torch.float32, True), (torch.float32, False),
], ids=["float16", "bfloat16", "tf32", "float32-3xtf32"])
@pytest.mark.parametrize("conv,multiprocessors,forward_plan,grad_weight_plan", MMA_LAYERS,
                         ids=["128x128", "64x128", "128x64-grouped-strided", "128x64-split", "64x64", "3-channels"])
def test_channels_last_mma(emulated, conv, multiprocessors, forward_plan, grad_weight_plan, dtype, tf32_allowed):
    plans = assert_mma_ops_match(emulated, conv, dtype, multiprocessors, tf32_allowed)
    assert plans["output"] == list(forward_plan) and "grad_input" in plans, plans
    tile, splits, float32_splits = grad_weight_plan
    assert plans["grad_weight"] == [tile, float32_splits if dtype == torch.float32 else splits], plans


@st.composite
def mma_convs(draw):
    """Layers of 1 to 3 groups of 8, 16 or 40 input channels each (whole 16-byte chunks in every
    dtype; one group also 3 or 5, which the kernels pad) and 8 to 70 output channels, any filter,
    stride, padding, dilation."""
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    size = fitting_size(draw, kernel, padding, dilation, draw(st.sampled_from([5, 11])))
    channels = st.sampled_from([8, 16, 40] if groups > 1 else [3, 5, 8, 16, 40])  # one group's padded
    return Conv(draw(st.integers(1, 2)), groups * draw(channels),
                groups * draw(st.integers(8, 70)), size, kernel, stride, padding, dilation, groups, draw(st.booleans()))


@settings(max_examples=12)
@given(conv=mma_convs(), dtype=st.sampled_from([torch.bfloat16, torch.float32]),
       multiprocessors=st.sampled_from([1, 10**6]), tf32_allowed=st.booleans())
def test_channels_last_mma_random_layers(emulated, conv, dtype, multiprocessors, tf32_allowed):
    assert_mma_ops_match(emulated, conv, dtype, multiprocessors, tf32_allowed)


@pytest.mark.parametrize("tf32_allowed", [True, False], ids=["tf32", "3xtf32"])
def test_channels_last_mma_special_values(emulated, tf32_allowed):
    """NaN and infinities propagate as in torch's float32 result, whose finite elements ours match,
    by 3xTF32 too (where inf - inf would turn an infinity's small part into NaN); by 3xTF32
    float32's largest value, which rounding to TF32 carries to infinity, stays finite."""
    conv = Conv(2, 8, 8, (9, 9), (3, 3), (1, 1), (1, 1), (1, 1), 1, False)
    x, w, _, gy = operands(conv, torch.float32)
    x[0, 0, 2, 3], x[1, 1, 6, 6], x[1, 2, 0, 0] = float("nan"), float("inf"), -float("inf")
    if not tf32_allowed:
        x[0, 5, 4, 4] = torch.finfo(torch.float32).max
    w = (w.abs() + 0.1) / 100  # positive, so infinities of one sign stay; small, so the largest value's products do
    w[:, ::2] = tf32(w[:, ::2])  # TF32 values, whose small parts (3xTF32) are nothing
    y = mma_ops(emulated, conv, x, w, None, gy, 1, tf32_allowed)[0]["output"]
    theirs = torch.nn.functional.conv2d(x, w, padding=1)
    for special in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(special(y), special(theirs)), special
    finite = theirs.isfinite()
    assert finite.sum() > 0.8 * finite.numel()
    scale = theirs[finite].abs().max().item()
    torch.testing.assert_close(y[finite], theirs[finite], rtol=0, atol=(1e-3 if tf32_allowed else 1e-5) * scale)


@pytest.mark.parametrize("conv", [
    Conv(1, 512, 64, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1, False),  # the output 4608 deep
    Conv(1, 8, 8, (64, 72), (1, 1), (1, 1), (0, 0), (1, 1), 1, False),  # the weight gradient 4608 deep
], ids=["output", "grad_weight"])
def test_channels_last_mma_3xtf32_deep_sums(emulated, conv):
    """float32 by 3xTF32 on sums 4608 deep, of positive activations (as after a ReLU), within 2e-6
    of the scale of the float64 result: a float32 sum's own error at that depth (cuDNN's float32
    measured 2e-7 to 2e-6 on the GPU). The emulator adds as the tensor cores do, cutting every term
    to the largest one's 24 bits: added into the running sum, the products would lose their low
    bits at every step (1e-5 here, 2.4e-5 on the GPU at batch 32)."""
    x, w, b, gy = operands(conv, torch.float32)
    x = x.abs()
    ours = mma_ops(emulated, conv, x, w, b, gy, 1, tf32_allowed=False)[0]
    for name, expected in zip(("output", "grad_input", "grad_weight"), torch_ops(conv, x, w, b, gy)):
        assert_scaled_close(ours[name], expected, 2e-6, name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_channels_last_mma_grad_input_by_columns_in_batches(emulated, dtype):
    """A first layer's input gradient (3 channels: by columns, gy times the filters, then gathered)
    with the columns' budget one image's worth: three batches of one image, as the whole."""
    conv = Conv(3, 3, 16, (13, 12), (5, 5), (2, 2), (2, 2), (1, 1), 1, False)
    _, w, _, gy = operands(conv, dtype)
    gy = gy.contiguous(memory_format=torch.channels_last)
    args = [list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups, 1, True]
    gx = {}
    for budget in (7 * 6 * 3 * 25, 2**26):
        gx[budget] = torch.full((3, 3, 13, 12), float("nan"), dtype=dtype).contiguous(memory_format=torch.channels_last)
        emulated.mma_grad_input(gy, w, *args, gx[budget], columns_budget=budget)
    assert torch.equal(gx[7 * 6 * 3 * 25], gx[2**26])
    rounded = tf32 if dtype == torch.float32 else (lambda t: t)
    expected = torch.nn.grad.conv2d_input(gx[2**26].shape, rounded(w).double(), rounded(gy).double(), **conv.kwargs())
    assert_scaled_close(gx[2**26], expected, 1e-5 if dtype == torch.float32 else 4e-3, "grad_input")
