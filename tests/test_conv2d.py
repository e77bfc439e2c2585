"""Forward and every gradient against F.conv2d and the reference, over randomized configurations
(sizes, stride, padding incl. 'same'/'valid', dilation, groups, bias, batch 0..3, unbatched,
channels_last and non-contiguous inputs)."""
import dataclasses
import itertools
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch._subclasses.fake_tensor import FakeTensorMode

import conv_ext
from conv_ext import reference

from configs import Conv, bf16_pairs_convs, convs, make_layout
from conftest import DEVICES, FORCED_CPU_PATHS, cpu_path, num_threads


def forward_and_grads(fn, conv, x, w, b, grad_output=None):
    """fn's output and the gradients of <output, grad_output> for x, w and (if any) b."""
    y = fn(x, w, b, **conv.kwargs())
    if grad_output is None:
        gen = torch.Generator().manual_seed(1)
        grad_output = (torch.rand(y.shape, generator=gen, dtype=torch.float64) * 2 - 1).to(y)
    leaves = [t for t in (x, w, b) if t is not None]
    return [y, *torch.autograd.grad(y, leaves, grad_output)], grad_output


def results_on_paths(conv, x, w, b, gy, paths):
    """{path: {name: result}}: conv_ext's output and gradients for x and w on each CPU path."""
    results = {}
    for path in paths:
        with cpu_path(path):
            y = conv_ext.conv2d(x, w, b, **conv.kwargs())
            results[path] = dict(zip(NAMES, (y, *torch.autograd.grad(y, (x, w), gy))))
    return results


def results_with_a_large_channel(conv, dtype, paths):
    """results_on_paths for conv's tensors, the input's channel 0 a million times the others:
    sums in another order then round away other small terms, so that paths differ in their
    bits."""
    x, w, b = conv.tensors(dtype, "cpu")
    x[:, 0] *= 1e6
    x.requires_grad_()
    w.requires_grad_()
    gy = torch.randn_like(F.conv2d(x, w, b, **conv.kwargs()))
    return results_on_paths(conv, x, w, b, gy, paths)


HAS_AVX512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
CPU_HAS_AVX2 = torch.backends.cpu.get_cpu_capability().startswith("AVX")


def skip_without_avx512(path):
    """Skips a test on a path of the AVX-512 build where the CPU has no AVX-512."""
    if path.endswith("avx512-isa") and not HAS_AVX512:
        pytest.skip("needs AVX-512")


# torch's matrix products, which call its BLAS (MKL on x86 CPUs).
BLAS_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::baddbmm_"}


def blas_calls_on_path(path, conv, x, w, b, gy):
    """{name: the BLAS ops it calls}: conv_ext's output and gradients for x and w on a CPU path,
    each op called alone under the profiler. Which path ran shows there where bits may not: on
    some CPUs MKL sums in the same order as our kernels."""
    ops = torch.ops.conv_ext
    args = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
    calls = dict(output=lambda: ops.conv2d(x, w, b, *args),
                 grad_input=lambda: ops.conv2d_grad_input(gy, w, list(x.shape[2:]), *args),
                 grad_weight=lambda: ops.conv2d_grad_weight(x, gy, list(w.shape[2:]), *args))
    found = {}
    with cpu_path(path), torch.no_grad():
        for name, call in calls.items():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                call()
            found[name] = {e.name for e in prof.events()} & BLAS_OPS
    return found


def assert_scaled_close(actual, expected, tol, what, scale=None):
    """|actual - expected| <= tol * scale elementwise, scale being max|expected| unless given: an
    error bound relative to the result's scale, independent of the magnitudes a configuration
    happens to give."""
    if scale is None:
        scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual.to(expected.dtype), expected, rtol=0, atol=tol * scale + 1e-300, msg=lambda m: f"{what}: {m}"
    )


def tf32(t):
    """float32 t rounded to TF32 as the CUDA kernels round it (cvt.rna.tf32.f32): to 10 bits of
    mantissa, to nearest, ties away from zero (adding half the dropped bits' range to the
    magnitude's bits carries into the kept ones)."""
    return ((t.view(torch.int32) + 0x1000) & ~0x1FFF).view(torch.float32)


def torch_ops(conv, x, w, b, gy):
    """F.conv2d's output and input and weight gradients, in float64, without autograd."""
    x, w, gy = x.double(), w.double(), gy.double()
    b = None if b is None else b.double()
    return (
        F.conv2d(x, w, b, **conv.kwargs()),
        torch.nn.grad.conv2d_input(x.shape, w, gy, **conv.kwargs()),
        torch.nn.grad.conv2d_weight(x, w.shape, gy, **conv.kwargs()),
    )


def test_tf32_rounding():
    values = torch.tensor([1 + 2**-11, 1 + 2**-11 - 2**-20, -(1 + 3 * 2**-11), 3.0], dtype=torch.float32)
    assert tf32(values).tolist() == [1 + 2**-10, 1.0, -(1 + 4 * 2**-11), 3.0]


NAMES = ("output", "grad_input", "grad_weight", "grad_bias")


@pytest.mark.parametrize("path", FORCED_CPU_PATHS)
@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=300)
@given(conv=convs())
def test_float64_matches_torch_and_reference(conv, device, path):
    x, w, b = conv.tensors(torch.float64, device, requires_grad=True)
    with cpu_path(path):
        ours, gy = forward_and_grads(conv_ext.conv2d, conv, x, w, b)
    theirs, _ = forward_and_grads(F.conv2d, conv, x, w, b, gy)
    ref, _ = forward_and_grads(reference.conv2d, conv, x, w, b, gy)
    for name, a, t, r in zip(NAMES, ours, theirs, ref):
        assert a.shape == t.shape, name
        assert_scaled_close(a, t, 1e-12, f"{name} vs F.conv2d")
        assert_scaled_close(a, r, 1e-12, f"{name} vs reference")
    # The output keeps F.conv2d's memory layout (channels_last in, channels_last out); an empty
    # result has no layout to speak of.
    y, y_torch = ours[0], theirs[0]
    for fmt in (torch.contiguous_format, torch.channels_last):
        if y.dim() == 4 and y.numel() > 0:
            assert y.is_contiguous(memory_format=fmt) == y_torch.is_contiguous(memory_format=fmt)


# Scale-aware bounds against a float64 result on the same (rounded) inputs, relative to the
# magnitude of the terms summed (see float64_results): the output and the input gradient sum
# C*kH*kW products, the weight gradient N*H*W of them.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5, 2e-5, 1e-5),
    torch.bfloat16: (8e-3, 8e-3, 8e-3, 8e-3),
    torch.float16: (1e-3, 1e-3, 1e-3, 1e-3),
}


@pytest.mark.parametrize("path", FORCED_CPU_PATHS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@settings(max_examples=100)
@given(conv=convs())
def test_low_precision_against_float64(conv, dtype, device, path):
    x, w, b = conv.tensors(dtype, device, requires_grad=True)
    with cpu_path(path):
        ours, gy = forward_and_grads(conv_ext.conv2d, conv, x, w, b)
    assert ours[0].dtype == dtype
    for name, a, e, scale, tol in zip(NAMES, ours, *float64_results(conv, x, w, b, gy), TOLERANCES[dtype]):
        assert a.dtype == dtype, name
        assert_scaled_close(a, e, tol, f"{name} ({dtype})", scale)


def float64_results(conv, x, w, b, gy):
    """The float64 output and gradients for the same (rounded) inputs, and the scale of each:
    the largest element of the same computation on absolute values, which bounds the terms of
    every sum, so a result that cancels to near zero is not held to its own tiny magnitude."""
    def run(transform):
        leaves = [None if t is None else transform(t.detach().double()).requires_grad_() for t in (x, w, b)]
        return forward_and_grads(F.conv2d, conv, *leaves, transform(gy.double()))[0]

    scales = [t.max().item() if t.numel() else 0.0 for t in run(torch.abs)]
    return run(lambda t: t), scales


COMPLEX_TOLERANCES = {torch.complex128: (1e-12,) * 4, torch.complex64: TOLERANCES[torch.float32]}


@pytest.mark.parametrize("path", ["auto", "gemm", "direct", "winograd"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(COMPLEX_TOLERANCES), ids=str)
@settings(max_examples=30)
@given(conv=convs())
def test_complex_against_complex128(conv, dtype, device, path):
    """Complex operands, as F.conv2d takes them: the output and every gradient against F.conv2d
    in complex128 on the same inputs, bounded relative to the sums of the terms' magnitudes (the
    real and imaginary parts come from three real products each, Gauss's trick)."""
    x, w, b = conv.tensors(dtype, device, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    shape = F.conv2d(x.detach(), w.detach(), None, **conv.kwargs()).shape
    gy = torch.complex(*(torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1 for _ in "ri")).to(x)
    with cpu_path(path):
        ours, _ = forward_and_grads(conv_ext.conv2d, conv, x, w, b, gy)

    def exact(transform):
        leaves = [None if t is None else transform(t.detach()).requires_grad_() for t in (x, w, b)]
        return forward_and_grads(F.conv2d, conv, *leaves, transform(gy))[0]

    scales = [t.abs().max().item() if t.numel() else 0.0 for t in exact(lambda t: t.abs().double())]
    for name, a, e, scale, tol in zip(NAMES, ours, exact(lambda t: t.to(torch.complex128)), scales, COMPLEX_TOLERANCES[dtype]):
        assert a.dtype == dtype and a.shape == e.shape, name
        assert_scaled_close(a, e, tol, f"{name} ({dtype})", scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128])
@pytest.mark.parametrize("cudnn", [True, False])
def test_result_layout_follows_f_conv2d(device, dtype, cudnn):
    """channels_last in gives F.conv2d's layout out, from the kernels and the fake kernels alike:
    on the CPU channels_last, on CUDA channels_last only where cuDNN computes it (not float64
    nor complex128, which is computed as float64 convolutions, and not with cuDNN off)."""
    conv = Conv(2, 4, 6, (9, 8), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "channels_last")
    x, w, b = conv.tensors(dtype, device)
    with torch.backends.cudnn.flags(enabled=cudnn):
        expected = F.conv2d(x, w, b, **conv.kwargs())
        y = conv_ext.conv2d(x, w, b, **conv.kwargs())
        with FakeTensorMode() as mode:
            fake = conv_ext.conv2d(*(mode.from_tensor(t) for t in (x, w, b)), **conv.kwargs())
    assert y.stride() == fake.stride() == expected.stride()
    assert expected.is_contiguous(memory_format=torch.channels_last) == (
        device == "cpu" or (cudnn and dtype == torch.float32)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("conv, paths", [
    # depthwise on the NCHW kernels: the GEMM forced, or no vector build (no NHWC kernel)
    (Conv(2, 19, 19, (17, 23), (3, 3), (1, 1), (1, 1), (1, 1), 19, True), ["gemm", "direct-generic-isa"]),
    (Conv(2, 24, 20, (17, 23), (3, 3), (2, 2), (1, 1), (1, 1), 4, True), ["auto", "auto-avx2-isa", "direct", "gemm"]),
    (Conv(2, 3, 20, (17, 23), (5, 5), (2, 2), (2, 2), (1, 1), 1, True), ["auto", "auto-avx2-isa", "direct", "gemm"]),
    # results over 2 MiB: moved by non-temporal stores
    (Conv(2, 3, 64, (96, 95), (3, 3), (1, 1), (1, 1), (1, 1), 1, True), ["auto", "auto-avx2-isa"]),
], ids=["depthwise", "grouped", "stem", "streamed"])
def test_channels_last_moves_between_layouts_by_transposes(conv, paths, dtype):
    """A model in channels_last whose layers compute on NCHW copies (the direct kernels but the
    depthwise NHWC ones, and any path of float16 and bfloat16 where they widen) gets its operands
    and results moved between the layouts by our transposes (relayout; 391 pixels an image: a
    block of 256 and the rest, odd channels): its output and input and weight gradients bit for
    bit those of the same NCHW tensors, in channels_last, on each path (the bias gradient, summed
    in another order where the depthwise layer's NCHW gradients take their one pass, close)."""
    x, w, b = conv.tensors(dtype, "cpu")
    x_last, w_last = (t.contiguous(memory_format=torch.channels_last).requires_grad_() for t in (x, w))
    x, w, b = (t.contiguous().requires_grad_() for t in (x, w, b))
    for path in paths:
        with cpu_path(path):
            expected, gy = forward_and_grads(conv_ext.conv2d, conv, x, w, b)
            gy_last = gy.contiguous(memory_format=torch.channels_last)
            results, _ = forward_and_grads(conv_ext.conv2d, conv, x_last, w_last, b, gy_last)
        for name, a, e in zip(NAMES[:3], results, expected):
            assert torch.equal(a, e), (path, name)
        scale = gy.double().abs().sum((0, 2, 3)).max().item()  # the bias gradient's terms' sum
        assert_scaled_close(results[3], expected[3], TOLERANCES.get(dtype, (1e-12,) * 4)[3], f"{path} grad_bias", scale)
        assert results[0].is_contiguous(memory_format=torch.channels_last), path
        assert results[1].is_contiguous(memory_format=torch.channels_last), path


def channels_last_results_within_bounds(conv, x, w, b, path):
    """conv_ext's output and gradients (for a channels_last grad_output) on `path`, checked
    channels_last and within float32's bounds of the exact results (float64's, bfloat16's); and
    the grad_output."""
    dtype = x.dtype
    gen = torch.Generator().manual_seed(1)
    with cpu_path(path):
        shape = conv_ext.conv2d(x, w, b, **conv.kwargs()).shape
        gy = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype)
        ours, _ = forward_and_grads(conv_ext.conv2d, conv, x, w, b, gy.contiguous(memory_format=torch.channels_last))
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    assert ours[1].is_contiguous(memory_format=torch.channels_last)
    tolerances = {torch.float32: TOLERANCES[torch.float32], torch.float64: (1e-12,) * 4, torch.bfloat16: TOLERANCES[torch.bfloat16]}
    for name, a, e, scale, tol in zip(NAMES, ours, *float64_results(conv, x, w, b, gy), tolerances[dtype]):
        assert a.dtype == dtype, name
        assert_scaled_close(a, e, tol, f"{name} ({dtype})", scale)
    return ours, gy


@pytest.mark.parametrize("path", ["auto", "auto-avx2-isa", "direct"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("conv", [
    Conv(2, 19, 19, (9, 29), (3, 3), (1, 1), (1, 1), (1, 1), 19, True),   # blocks of 8, 4, 2, 1 and edges
    Conv(2, 33, 33, (8, 23), (3, 3), (2, 2), (1, 1), (1, 1), 33, False),  # stride 2
    Conv(1, 16, 16, (7, 12), (3, 3), (1, 2), (0, 2), (1, 1), 16, True),   # strides and paddings apart
    Conv(2, 24, 24, (11, 13), (5, 5), (1, 1), (2, 2), (1, 1), 24, True),  # 5x5
    Conv(1, 20, 20, (15, 15), (7, 7), (2, 2), (3, 3), (1, 1), 20, True),  # 7x7 at stride 2
    Conv(1, 9, 9, (10, 11), (3, 3), (1, 1), (2, 2), (2, 2), 9, True),     # dilated
    Conv(2, 8, 8, (3, 4), (3, 3), (3, 3), (4, 4), (1, 1), 8, True),       # padding past the kernel
    Conv(2, 64, 64, (66, 64), (3, 3), (1, 1), (1, 1), (1, 1), 64, True),  # over 2 MiB out: streamed
], ids=["3x3", "3x3-stride-2", "stride-1x2", "5x5", "7x7-stride-2", "dilated", "padded", "streamed"])
def test_depthwise_channels_last_reads_nhwc_in_place(conv, dtype, path):
    """Depthwise layers on channels_last inputs run on the NHWC kernel (depthwise_channels_last.cpp:
    vectors of channels, 3 x 3 filters in registers over a row, other filters tap by tap, pixels
    near the edges one at a time, outputs over 2 MiB by non-temporal stores), forward and input
    and weight gradients, in the AVX-512 and AVX2 builds: within float32's bounds of the exact
    results (float64's, and bfloat16's), odd channels and widths included; results channels_last."""
    conv = dataclasses.replace(conv, layout="channels_last")
    channels_last_results_within_bounds(conv, *conv.tensors(dtype, "cpu", requires_grad=True), path)


def nhwc_group_sums(x, w, b, padding, dilation):
    """The float32 forward of a grouped layer at stride 1 (as many input as output channels a
    group) summed as grouped_channels_last.inc sums it: each output from its bias, then tap by tap
    (row-major), each tap the group's input channels in turn; filters 3 wide and undilated along
    the row filter row by filter row, each over the channels, each channel over the row's 3 taps;
    one fused multiply-add a term (emulated in float64, where the product of two float32 values
    is exact, then rounded)."""
    (n, c, h, width), k = x.shape, w.shape[1]
    (kh, kw), (ph, pw), (dh, dw) = w.shape[2:], padding, dilation
    oh, ow = h + 2 * ph - dh * (kh - 1), width + 2 * pw - dw * (kw - 1)
    groups = c // k
    xp = F.pad(x.double(), (pw, pw, ph, ph)).view(n, groups, k, h + 2 * ph, width + 2 * pw)
    wg = w.double().view(groups, k, k, kh, kw)  # [group][output][input][i][j]
    sums = torch.zeros(n, groups, k, oh, ow, dtype=torch.float64)
    if b is not None:
        sums += b.double().view(1, groups, k, 1, 1)
    window = kw == 3 and dw == 1
    terms = ((i, channel, j) for i in range(kh) for channel in range(k) for j in range(kw)) if window else \
            ((i, channel, j) for i in range(kh) for j in range(kw) for channel in range(k))
    for i, channel, j in terms:
        tap = xp[:, :, channel:channel + 1, i * dh:i * dh + oh, j * dw:j * dw + ow]
        sums = (sums + tap * wg[:, :, channel, i, j].view(1, groups, k, 1, 1)).float().double()
    return sums.view(n, c, oh, ow).float()


def nhwc_group_weight_sums(x, gy, groups, kernel, padding, dilation):
    """The float32 weight gradient of such a layer summed as grouped_channels_last.cpp sums it:
    the output rows in bands of up to 8 (all alike), the images' bands in order in at most 8
    runs of as many, each run's pixels summed in order, one fused multiply-add a term (emulated
    as nhwc_group_sums does), then the runs' sums in order."""
    (n, c, h, width), (oh, ow) = x.shape, gy.shape[2:]
    (kh, kw), (ph, pw), (dh, dw) = kernel, padding, dilation
    k = c // groups
    xp = F.pad(x.double(), (pw, pw, ph, ph))
    # taps[n, y, x][group, tap, channel] and grads[n, y, x][group, output channel]
    taps = torch.stack([xp[..., i * dh:i * dh + oh, j * dw:j * dw + ow] for i in range(kh) for j in range(kw)], 2)
    taps = taps.view(n, groups, k, kh * kw, oh, ow).permute(0, 4, 5, 1, 3, 2)
    grads = gy.double().view(n, groups, k, oh, ow).permute(0, 3, 4, 1, 2)
    bands = -(-oh // 8)
    rows = -(-oh // bands)
    items = n * bands
    tasks = min(items, 8)
    total = None
    for task in range(tasks):
        sums = torch.zeros(groups, kh * kw, k, k, dtype=torch.float64)
        for item in range(task * items // tasks, (task + 1) * items // tasks):
            image, y0 = item // bands, item % bands * rows
            for y, x_ in itertools.product(range(y0, min(y0 + rows, oh)), range(ow)):
                sums = (sums + taps[image, y, x_][..., None] * grads[image, y, x_][:, None, None, :]).float().double()
        total = sums if total is None else (total + sums).float().double()
    return total.permute(0, 3, 2, 1).reshape(c, k, kh, kw).float()


@pytest.mark.parametrize("path", ["auto", "auto-avx2-isa", "direct"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("conv", [
    Conv(2, 64, 64, (9, 29), (3, 3), (1, 1), (1, 1), (1, 1), 8, True),    # 8 a group, blocks moved back
    Conv(1, 64, 64, (7, 12), (3, 3), (1, 1), (1, 1), (1, 1), 4, True),    # 16 a group
    Conv(2, 32, 32, (11, 13), (5, 5), (1, 1), (2, 2), (1, 1), 4, False),  # 5x5
    Conv(1, 48, 48, (10, 11), (3, 3), (1, 1), (2, 2), (2, 2), 3, True),   # dilated, 16 a group
    Conv(2, 16, 16, (3, 4), (3, 3), (1, 1), (4, 3), (1, 1), 2, True),     # padding past the kernel
    Conv(3, 32, 32, (6, 40), (1, 3), (1, 1), (0, 1), (1, 1), 4, True),    # 1x3, 40 columns
    Conv(2, 32, 32, (9, 17), (3, 3), (1, 1), (1, 1), (1, 1), 8, True),    # 4 a group: pairs of groups
    Conv(1, 12, 12, (7, 5), (3, 3), (1, 1), (2, 1), (2, 1), 3, False),    # 4 a group, odd groups
    Conv(3, 16, 16, (50, 6), (3, 3), (1, 1), (1, 1), (1, 1), 2, True),    # 21 bands: runs of 2 or 3
], ids=["3x3", "16-a-group", "5x5", "dilated", "padded", "1x3", "4-a-group", "4-a-group-odd", "tall"])
@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
def test_grouped_channels_last_reads_nhwc_in_place(conv, dtype, path, weight_layout):
    """Grouped layers of 4, 8 or 16 channels a group at stride 1 on channels_last inputs run on the
    NHWC group kernels (grouped_channels_last.cpp: a group's output channels in vectors, its input
    channels broadcast from a zero-padded band), forward, input gradient (through the flipped
    filters) and weight gradient, where the direct kernels are chosen, reading NCHW and NHWC
    weights as they lie: float32 bit for bit the kernels' order of sums (nhwc_group_sums,
    nhwc_group_weight_sums, whatever the threads), all three results within
    float32's bounds of the exact ones (float64's, bfloat16's), channels_last. The AVX2 build
    takes 16 channels a group to the channels-last GEMM (grouped_channels_last_pays_off) unless
    the direct kernels are forced; 4 float32 channels a group run two groups a vector, and so an
    even number of groups (an odd one computes on NCHW copies)."""
    conv = dataclasses.replace(conv, layout="channels_last")
    x, w, b = conv.tensors(dtype, "cpu")
    w = make_layout(w, weight_layout)
    for t in (x, w, b):
        if t is not None:
            t.requires_grad_()
    ours, gy = channels_last_results_within_bounds(conv, x, w, b, path)
    k = conv.in_channels // conv.groups
    paired = k == 4 and dtype != torch.float64  # 4 float32 channels a group: groups in pairs
    on_kernel = CPU_HAS_AVX2 and (k <= 8 or path == "direct" or (path == "auto" and HAS_AVX512))
    on_kernel = on_kernel and not (paired and conv.groups % 2)
    if dtype == torch.float32 and on_kernel:
        kh, kw = conv.kernel
        flipped = w.detach().view(conv.groups, k, k, kh, kw).transpose(1, 2).flip(3, 4).reshape(w.shape)
        back = [d * (size - 1) - p for d, size, p in zip(conv.dilation, conv.kernel, conv.padding)]
        assert torch.equal(ours[0], nhwc_group_sums(x.detach(), w.detach(), b, conv.padding, conv.dilation))
        if min(back) >= 0:  # padding past the kernel: the input gradient is no forward
            assert torch.equal(ours[1], nhwc_group_sums(gy, flipped, None, back, conv.dilation))
        assert torch.equal(ours[2], nhwc_group_weight_sums(x.detach(), gy, conv.groups, conv.kernel, conv.padding, conv.dilation))
        with num_threads(1), cpu_path(path):
            serial, _ = forward_and_grads(conv_ext.conv2d, conv, x, w, b, gy.contiguous(memory_format=torch.channels_last))
        for name, a, e in zip(NAMES[:3], serial, ours):
            assert torch.equal(a, e), f"{name} on one thread"


@pytest.mark.parametrize("device", DEVICES)
def test_complex_without_autograd(device):
    """Under inference_mode the backends get the complex operands themselves, each op on its
    own: the forward matches F.conv2d in its layout, and the grad ops are its plain adjoints (no
    conjugation), <F(x, w), gy> = <x, GI(gy, w)> = <w, GW(x, gy)> with <a, b> = sum a * b."""
    conv = Conv(2, 4, 6, (7, 6), (3, 2), (2, 1), (1, 1), (1, 2), 2, True, "channels_last")
    x, w, b = conv.tensors(torch.complex128, device)
    ops = torch.ops.conv_ext
    args = ((2, 1), (1, 1), (1, 2), 2)
    with torch.inference_mode():
        y = ops.conv2d(x, w, b, *args)
        y_without_bias = ops.conv2d(x, w, None, *args)
        gy = torch.randn_like(y)
        gx = ops.conv2d_grad_input(gy, w, x.shape[2:], *args)
        gw = ops.conv2d_grad_weight(x, gy, w.shape[2:], *args)
    expected = F.conv2d(x, w, b, *args)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    assert y.stride() == expected.stride()
    inner = (y_without_bias * gy).sum()
    torch.testing.assert_close((x * gx).sum(), inner, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((w * gw).sum(), inner, rtol=1e-12, atol=1e-12)


LARGE_LAYERS = [
    Conv(8, 64, 64, (28, 28), (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    Conv(3, 130, 70, (13, 11), (3, 3), (1, 1), (2, 0), (1, 1), 1, True, "channels_last"),
    Conv(8, 48, 64, (28, 27), (5, 5), (1, 1), (2, 2), (1, 1), 1, True),
    # Many channels, few tiles: Winograd's forward runs by panels of 16 output channels, the
    # last one partial (350 = 21 x 16 + 14).
    Conv(2, 360, 350, (9, 10), (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
]


@pytest.mark.parametrize("path", FORCED_CPU_PATHS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("conv", LARGE_LAYERS, ids=["64ch", "130-70ch", "5x5-48-64ch", "360-350ch"])
def test_large_reduction_float32(conv, device, path):
    """ResNet-sized layers: long sums (576 to 3240 terms per output, 8*28*28 per weight) stay in
    bound on every path."""
    x, w, b = conv.tensors(torch.float32, device, requires_grad=True)
    with cpu_path(path):
        ours, gy = forward_and_grads(conv_ext.conv2d, conv, x, w, b)
    for name, a, e, scale, tol in zip(NAMES, ours, *float64_results(conv, x, w, b, gy), TOLERANCES[torch.float32]):
        assert_scaled_close(a, e, tol, name, scale)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_float32_follows_the_tf32_switch():
    """float32 on a GPU is TF32 exactly where F.conv2d's may be (torch.backends.cudnn.allow_tf32):
    on, each op is the float32 sum of its operands rounded to TF32 (2e-5: the tensor cores' float32
    sums are not IEEE's); off, within 1e-5 of the exact result, which TF32's 1e-3 would miss."""
    conv = Conv(2, 70, 67, (13, 11), (3, 3), (1, 1), (1, 1), (1, 1), 1, True)
    x, w, b = conv.tensors(torch.float32, "cuda")
    gy = torch.rand(2, 67, 13, 11, device="cuda", generator=torch.Generator("cuda").manual_seed(0)) * 2 - 1
    args = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
    for allowed, rounded, tol in ((False, lambda t: t, 1e-5), (True, tf32, 2e-5)):
        torch.backends.cudnn.allow_tf32 = allowed
        ours = (
            torch.ops.conv_ext.conv2d(x, w, b, *args),
            torch.ops.conv_ext.conv2d_grad_input(gy, w, list(x.shape[2:]), *args),
            torch.ops.conv_ext.conv2d_grad_weight(x, gy, list(w.shape[2:]), *args),
        )
        for name, a, e in zip(NAMES, ours, torch_ops(conv, rounded(x), rounded(w), b, rounded(gy))):
            assert_scaled_close(a, e, tol, f"{name}, TF32 allowed: {allowed}")


def cuda_kernels_launched(run):
    """The names of the CUDA kernels run() launches."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


CHANNELS_LAST_MMA_LAYERS = [
    Conv(2, 72, 80, (13, 11), (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    Conv(2, 72, 80, (13, 11), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "channels_last"),
    # stride 2 and dilation 2: rows of the input gradient that no tap feeds
    Conv(3, 80, 48, (14, 13), (3, 2), (2, 1), (3, 2), (2, 1), 2, False, "channels_last"),
    # a first layer: 3 channels padded to a chunk, its input gradient by columns
    Conv(2, 3, 64, (31, 29), (7, 7), (2, 2), (3, 3), (1, 1), 1, True, "channels_last"),
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,tf32_allowed", [
    (torch.float16, True), (torch.bfloat16, True), (torch.float32, True), (torch.float32, False),
], ids=["float16", "bfloat16", "tf32", "float32-3xtf32"])
@pytest.mark.parametrize("conv", CHANNELS_LAST_MMA_LAYERS, ids=["nchw", "channels-last", "grouped-strided", "3-channels"])
def test_cuda_channels_last_mma(conv, dtype, tf32_allowed):
    """The three ops on the channels-last tensor-core GEMMs, from NCHW and channels_last inputs
    alike: float16 and bfloat16 summed in float32 and rounded once; float32 as TF32 where allowed,
    the float32 sum of operands rounded to TF32, else by 3xTF32, within float32's bounds of the
    exact result (1e-5; the weight gradient's 2e-5)."""
    torch.backends.cudnn.allow_tf32 = tf32_allowed
    x, w, b = conv.tensors(dtype, "cuda")
    args = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
    layout = torch.channels_last if conv.layout == "channels_last" else torch.contiguous_format
    ops = [lambda: torch.ops.conv_ext.conv2d(x, w, b, *args)]
    gy = torch.rand(ops[0]().shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1)) * 2 - 1
    gy = gy.to(dtype).contiguous(memory_format=layout)
    names = ["output", "grad_input", "grad_weight"]
    ops.append(lambda: torch.ops.conv_ext.conv2d_grad_input(gy, w, list(x.shape[2:]), *args))
    ops.append(lambda: torch.ops.conv_ext.conv2d_grad_weight(x, gy, list(w.shape[2:]), *args))
    for op in ops:
        assert any("channels_last_mma" in name for name in cuda_kernels_launched(op))
    rounded = tf32 if dtype == torch.float32 and tf32_allowed else (lambda t: t)
    expected = dict(zip(NAMES, torch_ops(conv, rounded(x), rounded(w), b, rounded(gy))))
    for name, run in zip(names, ops):
        a, e = run(), expected[name]
        assert a.dtype == dtype and a.is_contiguous(memory_format=layout)
        if dtype == torch.float32:
            assert_scaled_close(a, e, 2e-5 if tf32_allowed or name == "grad_weight" else 1e-5, name)
        else:
            torch.testing.assert_close(a.double(), e, rtol=torch.finfo(dtype).eps / 2, atol=1e-5 * e.abs().max().item(),
                                       msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_depthwise_channels_last_without_conversions():
    """A depthwise layer on channels_last tensors runs on the depthwise kernels laid out for it (32
    channels a block), which read and write through strides: no copy kernel before or after the
    forward and the input gradient, results in F.conv2d's layout, within float32's bounds."""
    conv = Conv(4, 40, 40, (17, 15), (3, 3), (1, 1), (1, 1), (1, 1), 40, True, "channels_last")
    x, w, b = conv.tensors(torch.float32, "cuda")
    gy = torch.rand(4, 40, 17, 15, device="cuda", generator=torch.Generator("cuda").manual_seed(1)) * 2 - 1
    gy = gy.contiguous(memory_format=torch.channels_last)
    args = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
    ops = {
        "output": (lambda: torch.ops.conv_ext.conv2d(x, w, b, *args), "depthwise_forward_kernel<float, 3, 32>"),
        "grad_input": (lambda: torch.ops.conv_ext.conv2d_grad_input(gy, w, list(x.shape[2:]), *args),
                       "depthwise_grad_input_kernel<float, 3, 32>"),
        "grad_weight": (lambda: torch.ops.conv_ext.conv2d_grad_weight(x, gy, list(w.shape[2:]), *args),
                        "depthwise_grad_weight_kernel<float, 3, 32>"),
    }
    expected = dict(zip(NAMES, torch_ops(conv, x, w, b, gy)))
    for name, (op, kernel) in ops.items():
        results = []
        launched = cuda_kernels_launched(lambda: results.append(op()))
        assert any(kernel in k for k in launched), launched
        if name != "grad_weight":  # its (K, 1, R, S) result may be copied into F.conv2d's layout
            assert all("depthwise" in k for k in launched), launched
            assert results[0].is_contiguous(memory_format=torch.channels_last)
        assert_scaled_close(results[0], expected[name], 1e-5, name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("conv", [
    Conv(8, 512, 512, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "channels_last"),  # 4608 deep
    Conv(32, 64, 64, (28, 28), (1, 1), (1, 1), (0, 0), (1, 1), 1, False, "channels_last"),  # 25088 pixels
], ids=["3x3-512", "1x1-64"])
def test_cuda_3xtf32_deep_sums(conv):
    """float32 by 3xTF32 on deep sums of positive activations (as after a ReLU) within 2e-6 of the
    result's scale, a float32 sum's own error: each step's products summed apart from the running
    sum, which the tensor cores' truncating additions would make drift (2.4e-5 on an H200)."""
    torch.backends.cudnn.allow_tf32 = False
    x, w, b = conv.tensors(torch.float32, "cuda")
    x = x.abs().contiguous(memory_format=torch.channels_last)
    args = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
    y = torch.ops.conv_ext.conv2d(x, w, b, *args)
    gy = (torch.rand(y.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1)) * 2 - 1)
    gy = gy.contiguous(memory_format=torch.channels_last)
    ours = (y, torch.ops.conv_ext.conv2d_grad_input(gy, w, list(x.shape[2:]), *args),
            torch.ops.conv_ext.conv2d_grad_weight(x, gy, list(w.shape[2:]), *args))
    assert any("channels_last_mma" in name for name in cuda_kernels_launched(
        lambda: torch.ops.conv_ext.conv2d(x, w, b, *args)))
    for name, a, e in zip(NAMES, ours, torch_ops(conv, x, w, b, gy)):
        assert_scaled_close(a, e, 2e-6, name)


@pytest.mark.parametrize("path", ["winograd", "winograd-generic-isa"])
def test_winograd_output_channel_slices(path):
    """36 x 360 x 350 transformed filters exceed Winograd's bound and 147 tiles are too many to
    run by panels: the forward, the input gradient and the weight gradient run in slices of
    output channels (176 + 174, 192 + 168 for the input gradient), the last not whole panels."""
    conv = Conv(3, 360, 350, (27, 28), (3, 3), (1, 1), (1, 1), (1, 1), 1, True)
    x, w, b = conv.tensors(torch.float32, "cpu", requires_grad=True)
    with cpu_path(path):
        ours, gy = forward_and_grads(conv_ext.conv2d, conv, x, w, b)
    for name, a, e, scale, tol in zip(NAMES, ours, *float64_results(conv, x, w, b, gy), TOLERANCES[torch.float32]):
        assert_scaled_close(a, e, tol, name, scale)


@pytest.mark.parametrize("path", ["winograd", "winograd-avx2-isa", "winograd-slow-blas"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_winograd_by_panels_in_channel_blocks(dtype, path):
    """4 tiles run by panels of output channels; 500 input channels' transformed filters (and
    470 for the input gradient) are multiplied in blocks, no whole number of the transpose's 16:
    on the AVX2 build's GEMMs, whose filters outgrow filter_block_bytes (with an L2 of 512 KiB
    or of 2 MiB two blocks, of 250 or 235 channels; of 1 MiB three, of 167 or 157); on AVX-512,
    with the filters' rows made in registers, blocks of 32 (the last 20, or 22). The weight
    gradient's sums, where the micro-kernel makes them (slow-blas, and wherever MKL does not keep
    up), come in blocks of input channels too: of 176, 176 and 148 float32, 168, 168 and 164
    float64."""
    conv = Conv(1, 500, 470, (7, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1, True)
    check_layer_on_path(conv, dtype, path)


# Up to 8 tiles with AVX-512's registers, 3 with AVX2's, Winograd's forward and input gradient
# make each row of the transformed filters in registers as the products use it
# (multiply_by_filter_rows): whole rows of 6 elements for up to 4 tiles (1 with AVX2), half rows
# of 3 for 5 to 8 (2 and 3). 70 input channels in blocks of 32 (the last 6; the transposes'
# blocks of 16 not whole either), 40 output channels (the last panel half full).
FILTER_ROW_LAYERS = {
    "1-tile": Conv(1, 70, 40, (4, 4), (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    "2-tiles": Conv(2, 70, 40, (3, 4), (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    "3-tiles": Conv(1, 70, 40, (4, 9), (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "channels_last"),
    "4-tiles": Conv(1, 70, 40, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "channels_last"),
    "5-tiles": Conv(1, 70, 40, (4, 20), (3, 3), (1, 1), (1, 1), (1, 1), 1, False),
    "8-tiles": Conv(2, 70, 40, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    "5x5-4-tiles": Conv(1, 70, 40, (4, 4), (5, 5), (1, 1), (2, 2), (1, 1), 1, True),
    "5x5-6-tiles": Conv(1, 70, 40, (6, 4), (5, 5), (1, 1), (2, 2), (1, 1), 1, False),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("conv", FILTER_ROW_LAYERS.values(), ids=FILTER_ROW_LAYERS.keys())
def test_winograd_few_tiles_make_filter_rows_in_registers(conv, dtype):
    check_layer_on_path(conv, dtype, "winograd")


@pytest.mark.parametrize("paths", [("auto-avx2-isa", "winograd-avx2-isa", "gemm-avx2-isa"),
                                   ("slow-blas", "winograd-slow-blas", "gemm-slow-blas")], ids=["mkl", "slow-blas"])
def test_few_tiles_take_winograd(paths):
    """3x3 layers of a few tiles (4 here, a 7x7 image) run on Winograd by panels whether or not
    MKL keeps up, as it repaid its filter transform against either GEMM: the chosen forward is
    Winograd's bit for bit, not the GEMM's."""
    conv = Conv(1, 64, 48, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, True)
    x, w, b = conv.tensors(torch.float32, "cpu")
    x[:, 0] *= 1e6  # sums in another order round away other small terms
    chosen, winograd, gemm = paths
    results = {}
    for path in paths:
        with cpu_path(path):
            results[path] = conv_ext.conv2d(x, w, b, **conv.kwargs())
    assert torch.equal(results[chosen], results[winograd]) and not torch.equal(results[chosen], results[gemm])


@pytest.mark.parametrize("paths", [("fast-blas", "winograd-fast-blas", "gemm-fast-blas"),
                                   ("slow-blas", "winograd-slow-blas", "gemm-slow-blas")], ids=["mkl", "slow-blas"])
def test_weight_gradient_takes_winograd_from_eight_tiles(paths):
    """The weight gradient of 3x3 layers runs on Winograd from 8 tiles in the batch (two 7x7
    images) on, and with fewer (4: one image), whose 36 sums of 4 products per filter cost more
    to transform than they save, on im2col's GEMM where MKL keeps up (else still on Winograd):
    bit for bit the one path's, not the other's."""
    chosen, winograd, gemm = paths
    few_tiles = gemm if chosen == "fast-blas" else winograd
    for batch, expected in ((1, few_tiles), (2, winograd)):
        other = gemm if expected == winograd else winograd
        conv = Conv(batch, 64, 48, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, False)
        x, w, _ = conv.tensors(torch.float32, "cpu")
        x[:, 0] *= 1e6  # sums in another order round away other small terms
        gy = torch.randn(batch, 48, 7, 7, generator=torch.Generator().manual_seed(2))
        results = {}
        for path in paths:
            with cpu_path(path):
                results[path] = torch.ops.conv_ext.conv2d_grad_weight(x, gy, [3, 3], [1, 1], [1, 1], [1, 1], 1)
        assert torch.equal(results[chosen], results[expected]), f"batch {batch}"
        assert not torch.equal(results[chosen], results[other]), f"batch {batch}"


# Dilated stride-1 layers of 64 channels or more run as Winograd over their dilation phases
# (dilation_phases.h), the zero-padded input's phases one batch of undilated images, forward and
# both gradients: dilation 4 on 14 x 14 (a 4 x 4 tile per phase, the outputs past 14 thrown
# away); dilations (2, 3) with paddings (3, 1), no multiples of them, on an odd-sized NHWC input;
# a dilation along one dimension only; a 5x5 kernel; padding (4, 3), more than the kernel's
# half reach (outputs larger than the input); float16 in NHWC, widened as Winograd reads it; and
# 5 images whose phases exceed the 32 MiB one pass copies (8.6 MB each: passes of 3 and 2).
DILATION_PHASE_LAYERS = {
    "by-4-float32": (Conv(2, 64, 72, (14, 14), (3, 3), (1, 1), (4, 4), (4, 4), 1, True), torch.float32),
    "by-2-3-nhwc-float64": (Conv(1, 64, 64, (17, 23), (3, 3), (1, 1), (3, 1), (2, 3), 1, True, "channels_last"), torch.float64),
    "by-1-2-float64": (Conv(2, 72, 64, (9, 20), (3, 3), (1, 1), (1, 2), (1, 2), 1, False), torch.float64),
    "5x5-by-2-float32": (Conv(1, 64, 64, (16, 16), (5, 5), (1, 1), (4, 3), (2, 2), 1, True), torch.float32),
    "wide-padding-float64": (Conv(2, 64, 64, (12, 11), (3, 3), (1, 1), (4, 3), (2, 2), 1, True), torch.float64),
    "nhwc-float16": (Conv(2, 64, 64, (16, 16), (3, 3), (1, 1), (2, 2), (2, 2), 1, True, "channels_last"), torch.float16),
    "passes-float32": (Conv(5, 64, 64, (128, 128), (3, 3), (1, 1), (2, 2), (2, 2), 1, True), torch.float32),
}


@pytest.mark.parametrize("conv,dtype", DILATION_PHASE_LAYERS.values(), ids=DILATION_PHASE_LAYERS.keys())
def test_dilated_layers_run_on_winograd_by_phases(conv, dtype):
    """Right (float64 as F.conv2d's, the others within their bounds of the float64 result), in
    the input's layout, and on Winograd: in float32 and float64 bit for bit the forced Winograd
    path's results (which takes the phases too), not the GEMM path's."""
    output = check_layer_on_path(conv, dtype, "auto")[0]
    assert output.is_contiguous(memory_format=torch.channels_last) == (conv.layout == "channels_last")
    if dtype == torch.float16:
        return
    results = results_with_a_large_channel(conv, dtype, ("auto", "winograd", "gemm"))
    for name in NAMES[:3]:
        assert torch.equal(results["auto"][name], results["winograd"][name]), name
        assert not torch.equal(results["auto"][name], results["gemm"][name]), name


# The 1 x R and R x 1 layers Winograd computes along one dimension (winograd_1d_conv2d.h), R 3,
# 5 and 7: by bands of the input where the batch has many tiles (1x7 on 17 rows, 1x5 whose
# padding rows give outputs of the bias alone, a 7x1 output of 2.2 MB stored by non-temporal
# stores; 2048 x 272 filters, whose transforms exceed 16 MiB: two slices of output channels, 144
# and 128), by panels of output channels where it has few (1x3 on an 8 x 8 image, 70 output
# channels, the last block of panels one, the last panel part full; 300 input channels, two blocks
# of the products' depth; a float64 3x1 of 512 channels, whose transformed rows, 4 KiB long,
# are padded); NHWC inputs; float16 widened as read.
WINOGRAD_1D_LAYERS = {
    "1x7-bands": (Conv(2, 40, 36, (17, 13), (1, 7), (1, 1), (0, 3), (1, 1), 1, True), torch.float32),
    "1x5-padding-rows-nhwc": (Conv(3, 48, 48, (13, 10), (1, 5), (1, 1), (2, 2), (1, 1), 1, False, "channels_last"),
                              torch.float32),
    "7x1-streamed": (Conv(2, 32, 72, (60, 64), (7, 1), (1, 1), (3, 0), (1, 1), 1, True), torch.float32),
    "7x1-slices": (Conv(1, 2048, 272, (4, 66), (7, 1), (1, 1), (3, 0), (1, 1), 1, True), torch.float32),
    "3x1-128-bands": (Conv(2, 128, 144, (9, 11), (3, 1), (1, 1), (1, 0), (1, 1), 1, True), torch.float32),
    "1x3-panels": (Conv(1, 96, 70, (8, 8), (1, 3), (1, 1), (0, 1), (1, 1), 1, True), torch.float32),
    "1x3-deep-nhwc": (Conv(2, 300, 40, (6, 9), (1, 3), (1, 1), (0, 1), (1, 1), 1, True, "channels_last"), torch.float64),
    "3x1-512-float64": (Conv(1, 512, 32, (8, 4), (3, 1), (1, 1), (1, 0), (1, 1), 1, False), torch.float64),
    "7x1-uneven-bands": (Conv(1, 64, 48, (17, 15), (7, 1), (1, 1), (3, 0), (1, 1), 1, True), torch.float32),
    "7x1-valid": (Conv(3, 36, 40, (13, 7), (7, 1), (1, 1), (0, 0), (1, 1), 1, True), torch.float64),
    "5x1-float16-nhwc": (Conv(2, 32, 40, (20, 6), (5, 1), (1, 1), (1, 0), (1, 1), 1, True, "channels_last"), torch.float16),
}


@pytest.mark.parametrize("conv,dtype", WINOGRAD_1D_LAYERS.values(), ids=WINOGRAD_1D_LAYERS.keys())
def test_factorised_layers_run_on_winograd_along_one_dimension(conv, dtype):
    """Right (float64 as F.conv2d's, the others within their bounds of the float64 result), in
    the input's layout, and on Winograd along one dimension: the forward and the input gradient
    (a forward of the rotated filters, where the padding is at most the kernel's reach) in
    float32 and float64 bit for bit the forced Winograd path's, not the GEMM path's; so the weight
    gradient with at least 128 channels in and out where MKL does not keep up (slow-blas), and
    where it does (fast-blas) for 3 taps from 64 tiles (3x1 128 at batch 2: 66), not 7."""
    if not CPU_HAS_AVX2:
        pytest.skip("the vector builds only")
    output = check_layer_on_path(conv, dtype, "auto")[0]
    assert output.is_contiguous(memory_format=torch.channels_last) == (conv.layout == "channels_last")
    if dtype == torch.float16:
        return
    results = results_with_a_large_channel(conv, dtype, ("auto", "winograd", "gemm"))
    grad_input_is_forward = all(p <= k - 1 for p, k in zip(conv.padding, conv.kernel))
    for name in NAMES[:2] if grad_input_is_forward else NAMES[:1]:
        assert torch.equal(results["auto"][name], results["winograd"][name]), name
        assert not torch.equal(results["auto"][name], results["gemm"][name]), name
    if min(conv.in_channels, conv.out_channels) >= 128 and HAS_AVX512:
        results = results_with_a_large_channel(conv, dtype, ("slow-blas", "winograd-slow-blas", "gemm-slow-blas"))
        assert torch.equal(results["slow-blas"]["grad_weight"], results["winograd-slow-blas"]["grad_weight"])
        assert not torch.equal(results["slow-blas"]["grad_weight"], results["gemm-slow-blas"]["grad_weight"])
        results = results_with_a_large_channel(conv, dtype, ("fast-blas", "winograd-fast-blas"))
        on_winograd = torch.equal(results["fast-blas"]["grad_weight"], results["winograd-fast-blas"]["grad_weight"])
        assert on_winograd == (max(conv.kernel) == 3)


@pytest.mark.parametrize("conv", [
    Conv(2, 32, 64, (28, 28), (3, 3), (1, 1), (2, 2), (2, 2), 1, True),
    Conv(2, 64, 64, (14, 14), (3, 3), (1, 1), (6, 6), (6, 6), 1, True),
], ids=["32-channels", "by-6-on-14"])
def test_dilated_layers_off_the_phases(conv):
    """Dilated layers stay on the GEMM path (bit for bit its results) with fewer than 64 input
    channels, whose copies of the phases cost what Winograd saves, and where the phases' tiles
    would not save half the products of the layer's own outputs (dilation 6 on 14 pixels: 36
    phases of 3 x 3 outputs, a 4 x 4 tile each)."""
    results = results_with_a_large_channel(conv, torch.float32, ("auto", "gemm"))
    for name in NAMES[:3]:
        assert torch.equal(results["auto"][name], results["gemm"][name]), name


@pytest.mark.parametrize("device", DEVICES)
def test_workspace_tiles_cover_large_images(device):
    """An image whose im2col matrix exceeds one tile is computed in several row tiles."""
    conv = Conv(1, 16, 4, (300, 301), (5, 5), (1, 2), (2, 2), (1, 1), 1, True)
    x, w, b = conv.tensors(torch.float64, device, requires_grad=True)
    with cpu_path("gemm"):
        ours, gy = forward_and_grads(conv_ext.conv2d, conv, x, w, b)
    theirs, _ = forward_and_grads(F.conv2d, conv, x, w, b, gy)
    for name, a, t in zip(NAMES, ours, theirs):
        assert_scaled_close(a, t, 1e-12, name)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_input_channels_gives_bias(device):
    """C = 0: every output is the bias (the empty sum). F.conv2d returns a tensor with 0 output
    channels here, which we do not copy."""
    x = torch.randn(2, 0, 5, 5, device=device)
    w = torch.randn(4, 0, 3, 3, device=device)
    b = torch.randn(4, device=device)
    y = conv_ext.conv2d(x, w, b)
    torch.testing.assert_close(y, reference.conv2d(x, w, b))
    torch.testing.assert_close(y, b.view(1, 4, 1, 1).expand(2, 4, 3, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_results_do_not_depend_on_thread_count(device):
    """Serial, on the default threads, and on more threads than the layer's two groups (whose
    weight gradient sums then split a group between threads)."""
    conv = Conv(4, 12, 10, (17, 15), (3, 3), (2, 1), (1, 1), (1, 2), 2, True)
    x, w, b = conv.tensors(torch.float32, device, requires_grad=True)
    results = []
    for n in sorted({1, torch.get_num_threads(), 3}):
        with num_threads(n):
            results.append(forward_and_grads(conv_ext.conv2d, conv, x, w, b)[0])
    for name, serial, *parallel in zip(NAMES, *results):
        for p in parallel:
            torch.testing.assert_close(p, serial, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("kernel", [3, 5])
def test_forced_cpu_paths_take_effect(kernel):
    """Each forced algorithm really runs: on a layer all of them compute, their float32 roundings
    of the forward differ from one another, and Winograd's weight gradient from the others (the
    GEMM and direct weight gradients both sum each tap over the pixels in order, so they may
    agree bit for bit). The accuracy tests above then cover each path."""
    # 128 input channels (a patch longer than the GEMM's blocks of 1024), the first of them 1e6
    # times larger than the rest: every change in the order of summation then changes which
    # small terms are rounded away, whatever the compiler makes of each kernel.
    conv = Conv(2, 128, 8, (12, 12), (kernel, kernel), (1, 1), (1, 1), (1, 1), 1, True)
    x, w, b = conv.tensors(torch.float32, "cpu")
    x[:, 0] *= 1e6
    x.requires_grad_(), w.requires_grad_()
    results = {}
    for path in ("gemm", "direct", "winograd"):
        with cpu_path(path):
            y = conv_ext.conv2d(x, w, b, **conv.kwargs())
            (grad_w,) = torch.autograd.grad(y, w, torch.ones_like(y))
        results[path] = (y, grad_w)
    for one, other in (("gemm", "direct"), ("gemm", "winograd"), ("direct", "winograd")):
        assert not torch.equal(results[one][0], results[other][0]), ("forward", one, other)
    for other in ("gemm", "direct"):
        assert not torch.equal(results["winograd"][1], results[other][1]), ("weight gradient", other)


@pytest.mark.skipif(not HAS_AVX512, reason="an AVX-512 rule")
def test_wide_groups_take_the_direct_forward():
    """In the AVX-512 build, stride-1 layers of 9 to 16 channels per group run on the direct group
    kernel (forward, and the input gradient as the forward of the flipped filters), bit for bit
    its forced results, not the GEMM's (see test_forced_cpu_paths_take_effect). The build is
    forced, so that the rule is checked whatever CONV_EXT_CPU_ISA the run was given."""
    conv = Conv(2, 32, 32, (12, 12), (5, 5), (1, 1), (2, 2), (1, 1), 2, True)  # 16 per group; 400 taps: two GEMM depth blocks
    x, w, b = conv.tensors(torch.float32, "cpu")
    x[:, 0] *= 1e6
    x.requires_grad_()
    results = {}
    for path in ("auto", "direct", "gemm"):
        with cpu_path(f"{path}-avx512-isa"):
            y = conv_ext.conv2d(x, w * torch.linspace(1, 1e6, 16).repeat(2).view(-1, 1, 1, 1), b, **conv.kwargs())
            (grad_x,) = torch.autograd.grad(y, x, torch.ones_like(y))
        results[path] = (y, grad_x)
    for i, what in enumerate(("forward", "input gradient")):
        assert torch.equal(results["auto"][i], results["direct"][i]), what
        assert not torch.equal(results["auto"][i], results["gemm"][i]), what


def assert_pointwise_bounds(conv, x, w, b, gy, results):
    """The results (output and gradients) of a pointwise layer whose products sum in float64 or
    float32 within float64's or float32's bounds of the exact result (float16: half an ulp plus
    float32's)."""
    exact, _ = forward_and_grads(F.conv2d, conv, *(t.detach().double().requires_grad_() for t in (x, w, b)), gy.double())
    for name, a, e in zip(NAMES, results, exact):
        if a.dtype == torch.float16:
            torch.testing.assert_close(a.double(), e, rtol=torch.finfo(a.dtype).eps / 2, atol=1e-5 * e.abs().max().item(), msg=name)
        else:
            assert_scaled_close(a, e, 1e-12 if a.dtype == torch.float64 else 1e-5, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_pointwise_channels_last_is_one_matrix_product(dtype):
    """A 1x1 stride-1 layer on channels_last tensors runs each op as one matrix product of its
    pixels' channels, in place (pointwise_on_pixel_rows; float16 widened to float32 and rounded
    once; the weight gradient where MKL keeps up, as in the AVX2 build): bit for bit those
    products, results channels_last, within float64's bounds of the exact result (float16: half
    an ulp plus float32's)."""
    conv = Conv(3, 37, 21, (9, 7), (1, 1), (1, 1), (0, 0), (1, 1), 1, True, "channels_last")
    x, w, b = conv.tensors(dtype, "cpu", requires_grad=True)
    gy = (torch.rand(3, 21, 9, 7, dtype=torch.float64) * 2 - 1).to(dtype).contiguous(memory_format=torch.channels_last)
    with cpu_path("auto-avx2-isa"):
        (y, gx, gw, gb), _ = forward_and_grads(conv_ext.conv2d, conv, x, w, b, gy)

    product_type = torch.float32 if dtype == torch.float16 else dtype

    def rows(t):  # (N, C, H, W) -> (N H W, C), in the products' type
        return t.detach().permute(0, 2, 3, 1).reshape(-1, t.shape[1]).to(product_type)

    w2 = w.detach().reshape(21, 37).to(product_type)
    assert torch.equal(rows(y), torch.addmm(b.detach().to(product_type), rows(x), w2.t()).to(dtype).to(product_type))
    assert torch.equal(rows(gx), (rows(gy) @ w2).to(dtype).to(product_type))
    assert torch.equal(gw.reshape(21, 37).to(product_type), (rows(gy).t() @ rows(x)).to(dtype).to(product_type))
    assert y.dtype == gx.dtype == gw.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last) and gx.is_contiguous(memory_format=torch.channels_last)
    assert_pointwise_bounds(conv, x, w, b, gy, (y, gx, gw, gb))


def lane_sums_of_fmas(w, x, lanes):
    """w @ x in float32 as AVX2's matrix_times_vector sums each row: `lanes` sums, lane l's of
    the columns l, l + lanes, ... by fused multiply-adds in order (each rounded once: the
    product is exact in float64), then lane l + 4 added to lane l, and the four sums pairwise."""
    w = F.pad(w.double(), (0, -w.shape[1] % lanes)).view(w.shape[0], -1, lanes)
    x = F.pad(x.double(), (0, -x.shape[0] % lanes)).view(-1, lanes)
    sums = torch.zeros(w.shape[0], lanes, dtype=torch.float32)
    for step in range(x.shape[0]):
        sums = (sums.double() + w[:, step] * x[step]).float()
    s = sums[:, :4] + sums[:, 4:]
    return (s[:, 0] + s[:, 1]) + (s[:, 2] + s[:, 3])


def column_sums_of_fmas(w, y):
    """w^T @ y in float32 as matrix_transposed_times_vector sums each column: fused multiply-adds
    over the rows in order."""
    sums = torch.zeros(w.shape[1], dtype=torch.float32)
    for r in range(w.shape[0]):
        sums = (sums.double() + w[r].double() * y[r].double()).float()
    return sums


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the vector builds")
@pytest.mark.parametrize("path", ["auto", "auto-avx2-isa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("channels", [(960, 40), (1001, 9), (7, 1003), (1, 1)], ids=lambda c: f"{c[0]}->{c[1]}")
def test_single_pixel_pointwise_layers_as_matrix_vector_products(dtype, path, channels):
    """A 1x1 layer over one image's single pixel (a squeeze-excitation's on pooled features, a
    classifier head) runs in the vector builds (the best the CPU has, and AVX2) as matrix-vector
    products (single_pixel_product, matrix_vector.cpp), mutation-checked: in float32 its forward
    and input gradient bit for bit those kernels' sums (lane_sums_of_fmas, column_sums_of_fmas),
    the forward with a bias that plus the bias; its weight gradient torch.outer's; any number of
    channels (masked columns, blocks of rows and strips of columns cut short), within the bounds
    of the exact results. With two pixels, or two images, the products go their former ways."""
    c, k = channels
    conv = Conv(1, c, k, (1, 1), (1, 1), (1, 1), (0, 0), (1, 1), 1, True)
    x, w, b = conv.tensors(dtype, "cpu")
    x[:, ::7] *= 1000  # sums in another order differ in their bits
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    gy = torch.rand(1, k, 1, 1, dtype=torch.float64).to(dtype)
    with cpu_path(path):
        (y, gx, gw, gb), _ = forward_and_grads(conv_ext.conv2d, conv, x, w, b, gy)
        unbiased = torch.ops.conv_ext.conv2d(x.detach(), w.detach(), None, [1, 1], [0, 0], [1, 1], 1)
        two = [torch.ops.conv_ext.conv2d(t, w.detach(), None, [1, 1], [0, 0], [1, 1], 1)
               for t in (x.detach().expand(2, -1, -1, -1).contiguous(), x.detach().expand(-1, -1, 1, 2).contiguous())]
    w2, x1 = w.detach().reshape(k, c), x.detach().reshape(c)
    assert torch.equal(gw.reshape(k, c), torch.outer(gy.reshape(k), x1))
    if dtype == torch.float32:
        assert torch.equal(unbiased.reshape(k), lane_sums_of_fmas(w2, x1, 8))
        assert torch.equal(y.reshape(k), b.detach() + lane_sums_of_fmas(w2, x1, 8))
        assert torch.equal(gx.reshape(c), column_sums_of_fmas(w2, gy.reshape(k)))
        if c > 7:
            assert all(not torch.equal(t[0, :, 0, 0], unbiased.reshape(k)) for t in two)
    assert_pointwise_bounds(conv, x, w, b, gy, (y, gx, gw, gb))


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the micro-kernel needs AVX2")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("channels", [
    (256, 256, (3, 5), 2),     # rows read in place
    (1024, 1024, (2, 3), 1),   # float32 rows 4 KiB apart (float64 8 KiB): packed per block of the depth
    (256, 256, (40, 37), 2),   # outputs over 2 MiB, streamed
], ids=["in-place", "packed", "streamed"])
def test_pointwise_channels_last_on_the_micro_kernel(dtype, channels):
    """Where MKL does not keep up (CONV_EXT_CPU_BLAS=slow), a 1x1 stride-1 layer on channels_last
    tensors whose product's columns fill the micro-kernel's panels runs its forward and input
    gradient on that kernel over the pixels' rows in place (channels_last_pointwise_*): bit for
    bit the forced GEMM's results, whose implicit GEMM sums each output in the same order (from
    the bias) on NCHW copies, calling no BLAS where the AVX2 build calls MKL; results
    channels_last, within the bounds of the exact result."""
    in_channels, out_channels, size, batch = channels
    conv = Conv(batch, in_channels, out_channels, size, (1, 1), (1, 1), (0, 0), (1, 1), 1, True, "channels_last")
    x, w, b = conv.tensors(dtype, "cpu")
    x[:, 0] *= 1000  # sums in another order differ in their bits
    x.requires_grad_()
    w.requires_grad_()
    gy = torch.rand(batch, out_channels, *size, dtype=torch.float64).to(dtype).contiguous(memory_format=torch.channels_last)
    gy[:, 0] *= 1000
    results = results_on_paths(conv, x, w, b, gy, ("slow-blas", "gemm-slow-blas"))
    ours_blas, mkl_blas = (blas_calls_on_path(path, conv, x, w, b, gy) for path in ("slow-blas", "auto-avx2-isa"))
    for what in NAMES[:2]:
        ours = results["slow-blas"][what]
        assert ours.is_contiguous(memory_format=torch.channels_last), what
        assert torch.equal(ours, results["gemm-slow-blas"][what]), what
        assert not ours_blas[what] and mkl_blas[what], (what, ours_blas, mkl_blas)
    x, w, b = conv.tensors(dtype, "cpu", requires_grad=True)  # unscaled: float16's gradients stay finite
    gy = torch.rand_like(gy, dtype=torch.float64).to(dtype)
    with cpu_path("slow-blas"):
        (y, gx, gw, gb), _ = forward_and_grads(conv_ext.conv2d, conv, x, w, b, gy)
    assert_pointwise_bounds(conv, x, w, b, gy, (y, gx, gw, gb))


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the channels-last GEMM needs AVX2")
@pytest.mark.parametrize("conv", [
    Conv(2, 64, 64, (24, 24), (3, 3), (2, 2), (1, 1), (1, 1), 8, True),  # 8 channels per group, stride 2
    Conv(2, 128, 128, (12, 12), (3, 3), (1, 1), (1, 1), (1, 1), 4, True),  # 32 per group at stride 1
    Conv(1, 256, 256, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 8, True),  # 49 output pixels
], ids=["strided", "wide", "few-pixels"])
def test_grouped_layers_take_the_channels_last_gemm(conv):
    """Grouped layers of 4 or more channels per group run on the channels-last GEMM where their
    direct kernels lose (grouped_channels_last_pays_off): at stride 2, and at stride 1 beyond the
    channels per group the direct kernels take; their weight gradients of any number of output pixels, with MKL or not
    (calling no BLAS). Bit for bit the forced GEMM's results there (whose grouped layers take the
    channels-last GEMM by the same rules), not the direct kernels', forward and both gradients."""
    x, w, b = conv.tensors(torch.float32, "cpu")
    x[:, 0] *= 1e6  # sums in another order differ in their bits
    x.requires_grad_()
    w.requires_grad_()
    gy = torch.randn_like(F.conv2d(x, w, b, **conv.kwargs()))
    results = results_on_paths(conv, x, w, b, gy, ("auto", "direct", "gemm"))
    for what in NAMES[:3]:
        assert torch.equal(results["auto"][what], results["gemm"][what]), what
        assert not torch.equal(results["auto"][what], results["direct"][what]), what
    assert not blas_calls_on_path("auto", conv, x.detach(), w.detach(), b, gy)["grad_weight"]


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the AVX2 build needs AVX2")
@pytest.mark.parametrize("conv,on_winograd", [
    (Conv(3, 48, 40, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1, True), True),
    (Conv(8, 48, 40, (2, 2), (3, 3), (1, 1), (1, 1), (1, 1), 1, True), False),
], ids=["5x5-image", "2x2-image"])
@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_small_images_on_winograd(conv, on_winograd, isa):
    """The AVX2 build takes Winograd for 3x3 layers wherever its tiles take fewer multiplications
    than a direct convolution (winograd_may_pay_off): 5x5 images, 4 tiles of 36 products for 25
    outputs of 9, all three results; not 2x2 images, one tile for 4 outputs, as many. So does the
    AVX-512 build on Zen 4, whose AVX-512 runs at AVX2's rate (HALVES_AVX512); on other CPUs it
    takes Winograd from half the multiplications, not on 5x5 images."""
    auto, winograd = f"auto-{isa}-isa", f"winograd-{isa}-isa"
    skip_without_avx512(auto)
    if isa == "avx512":
        on_winograd = on_winograd and HALVES_AVX512
    results = results_with_a_large_channel(conv, torch.float32, (auto, winograd))
    for what in NAMES[:3]:
        same = torch.equal(results[auto][what], results[winograd][what])
        assert same == on_winograd, what
    check_layer_on_path(conv, torch.float64, auto)


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the channels-last GEMM needs AVX2")
@pytest.mark.parametrize("conv,on_channels_last_gemm", [
    (Conv(2, 128, 128, (14, 14), (3, 3), (1, 1), (1, 1), (1, 1), 8, True), NAMES[:3]),  # 16 per group
    (Conv(2, 64, 64, (20, 18), (5, 5), (1, 1), (2, 2), (1, 1), 8, True), ["grad_weight"]),  # 8 per group
    (Conv(2, 32, 32, (15, 17), (7, 7), (1, 1), (3, 3), (1, 1), 8, False), ["grad_weight"]),  # 4 per group
    (Conv(2, 64, 64, (20, 18), (3, 3), (1, 1), (1, 1), (1, 1), 8, True), []),  # 8 per group, 3x3 rows
], ids=["16-per-group", "5x5-8-per-group", "7x7-4-per-group", "3x3-8-per-group"])
def test_grouped_layers_beyond_the_avx2_direct_kernels(conv, on_channels_last_gemm):
    """In the AVX2 build, grouped layers at stride 1 run on the channels-last GEMM beyond the 8
    channels per group its direct kernels take (grouped_channels_last_pays_off), and so do their
    weight gradients of kernels other than 3x3, whose direct kernel sums over padded planes
    rather than reading rows in place: bit for bit the forced GEMM's results there (not the
    direct kernels'), the forced direct kernels' elsewhere."""
    paths = ("auto-avx2-isa", "gemm-avx2-isa", "direct-avx2-isa")
    results = results_with_a_large_channel(conv, torch.float32, paths)
    auto = results["auto-avx2-isa"]
    for what in NAMES[:3]:
        if what in on_channels_last_gemm:
            assert torch.equal(auto[what], results["gemm-avx2-isa"][what]), what
            assert not torch.equal(auto[what], results["direct-avx2-isa"][what]), what
        else:
            assert torch.equal(auto[what], results["direct-avx2-isa"][what]), what


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the channels-last GEMM needs AVX2")
@pytest.mark.parametrize("conv,on_channels_last_gemm,on_mkl", [
    (Conv(2, 33, 40, (26, 25), (3, 3), (1, 1), (2, 3), (2, 3), 1, True), NAMES[:3], []),
    (Conv(2, 16, 16, (40, 40), (3, 3), (1, 1), (2, 2), (2, 2), 1, False), ["grad_weight"], []),
    (Conv(2, 40, 36, (28, 30), (7, 7), (1, 1), (3, 3), (1, 1), 1, True), NAMES[:3], []),
    (Conv(4, 96, 96, (17, 17), (1, 7), (1, 1), (0, 3), (1, 1), 1, True), NAMES[:2], []),
    (Conv(2, 168, 168, (25, 25), (2, 2), (1, 1), (0, 0), (1, 1), 1, False), NAMES[:2], []),
    (Conv(1, 40, 36, (20, 22), (7, 7), (1, 1), (3, 3), (1, 1), 1, True), NAMES[:3], []),
    (Conv(1, 256, 160, (8, 8), (1, 4), (1, 1), (0, 2), (1, 1), 1, True), [], ["output"]),
    (Conv(1, 48, 160, (13, 13), (3, 3), (1, 1), (2, 2), (2, 2), 1, False), ["output"], ["grad_weight"]),
    (Conv(1, 64, 40, (28, 26), (3, 3), (2, 2), (1, 1), (1, 1), 1, True), NAMES[:3], []),
    (Conv(1, 120, 64, (24, 24), (3, 3), (2, 2), (1, 1), (1, 1), 1, True), [], ["output"]),
    (Conv(4, 192, 192, (17, 17), (7, 1), (1, 1), (3, 0), (1, 1), 1, True), NAMES[:3], []),
    (Conv(2, 192, 192, (17, 17), (7, 1), (1, 1), (3, 0), (1, 1), 1, True), NAMES[:2], ["grad_weight"]),
    (Conv(8, 320, 320, (14, 14), (3, 3), (1, 1), (6, 6), (6, 6), 1, True), NAMES[:2], ["grad_weight"]),
], ids=["dilated-33-channels", "dilated-16-channels", "7x7", "1x7", "2x2", "7x7-batch-1", "1x4-few-pixels",
        "dilated-many-channels", "strided-batch-1", "strided-long-patch", "7x1-192-channels", "7x1-few-pixels",
        "dilated-320-channels"])
def test_channels_last_gemm_takes_layers_by_shape(conv, on_channels_last_gemm, on_mkl):
    """Where MKL keeps up (Intel's CPUs with AVX-512; fast-blas on any CPU), stride-1 layers which
    Winograd does not take (kernels other than 3x3 and 5x5, and dilated ones off its dilation phases:
    fewer than 64 channels, or dilation 6 on 14 pixels) run on the channels-last GEMM
    (stride_one_channels_last_gemm_may_pay_off) from 32 input channels, with more than 1024 output
    pixels in the batch or at least as many as output channels (pixels_repay_packed_filters; at batch 1:
    440 pixels for 36 channels and 169 for 160, but not 72 for 160); and their weight gradients from 16
    channels, with 32 pixels in the batch per input channel or at most 128 output channels (not 160
    output channels with 169 pixels for 48 input channels), or up to 256 input channels with 4 pixels
    per channel (192 channels with 1156 pixels, not 578; not 320 channels with 1568). Strided layers of
    few pixels too where those repay the filters and the patch is shorter than 1024 (182 pixels for 40
    channels with 576-long patches, but not 1080-long ones). No BLAS call there, where im2col+MKL had
    been (mutation-checked: without the rules each of them calls baddbmm_ or bmm). The forwards and
    input gradients of the 1x7 and 7x1 layers run on Winograd along one dimension since, which
    calls no BLAS either."""
    if not HAS_AVX512:  # fast-blas runs the AVX2 build, which gives MKL no forward of a kernel larger than 1x1
        on_channels_last_gemm, on_mkl = [*on_channels_last_gemm] + ["output"] * ("output" in on_mkl), [n for n in on_mkl if n != "output"]
    x, w, b = conv.tensors(torch.float32, "cpu")
    gy = torch.randn_like(F.conv2d(x, w, b, **conv.kwargs()))
    calls = blas_calls_on_path("fast-blas", conv, x, w, b, gy)
    for name in on_channels_last_gemm:
        assert not calls[name], (name, calls)
    for name in on_mkl:
        assert calls[name], (name, calls)


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the channels-last GEMM needs AVX2")
@pytest.mark.parametrize("conv,on_channels_last_gemm", [
    (Conv(1, 120, 64, (24, 24), (3, 3), (2, 2), (1, 1), (1, 1), 1, True), NAMES[:3]),
    (Conv(1, 64, 160, (20, 20), (3, 3), (2, 2), (1, 1), (1, 1), 1, False), NAMES[:2]),
    (Conv(2, 64, 420, (14, 14), (3, 3), (2, 2), (1, 1), (1, 1), 1, True), []),
], ids=["long-patch", "half-as-many-pixels", "fewer-pixels"])
def test_strided_layers_take_the_channels_last_gemm_in_the_avx2_build(conv, on_channels_last_gemm):
    """The AVX2 build (the only one where the CPU lacks AVX-512) runs strided layers of few pixels
    on the channels-last GEMM where its implicit GEMM and col2im+MKL lose: whatever the patch's
    length with at least as many pixels in the batch as output channels, all three results (144
    pixels of 64 channels, 1080-long patches, which the AVX-512 build gives MKL's one GEMM where it
    keeps up); forward and input gradient from half as many (100 pixels for 160 channels: the
    weight gradient stays on MKL); fewer stay off it (98 pixels for 420 channels). Checked by the
    input gradient's BLAS calls (col2im's bmm off the GEMM; its forward's alternative, the
    implicit GEMM, calls none either) and the weight gradient's (mutation-checked: each of the
    rules removed, a row fails); results right on that path."""
    calls = checked_avx2_blas_calls(conv)
    assert not calls["output"], calls
    for name in NAMES[1:3]:
        assert bool(calls[name]) != (name in on_channels_last_gemm), (name, calls)


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the channels-last GEMM needs AVX2")
@pytest.mark.parametrize("conv,on_channels_last_gemm", [
    (Conv(1, 48, 160, (5, 6), (1, 3), (1, 1), (0, 1), (1, 1), 1, True), True),
    (Conv(1, 160, 144, (5, 6), (3, 1), (1, 1), (1, 0), (1, 1), 1, False), False),
], ids=["pixel-per-4-channels", "fewer-pixels"])
def test_channels_last_gemm_weight_gradients_where_blas_is_slow(conv, on_channels_last_gemm):
    """Where MKL does not keep up, the channels-last GEMM takes the weight gradient of stride-1
    layers Winograd does not take with a pixel per 4 input channels or more (30 pixels for 48
    input channels, which MKL takes where it keeps up), and leaves it to MKL with fewer (30 for
    160); right on either path."""
    x, w, b = conv.tensors(torch.float32, "cpu")
    gy = torch.randn_like(F.conv2d(x, w, b, **conv.kwargs()))
    assert bool(blas_calls_on_path("fast-blas", conv, x, w, b, gy)["grad_weight"])
    assert bool(blas_calls_on_path("slow-blas", conv, x, w, b, gy)["grad_weight"]) != on_channels_last_gemm
    check_layer_on_path(conv, torch.float32, "slow-blas")


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the channels-last GEMM needs AVX2")
@pytest.mark.parametrize("path", ["auto", "auto-avx2-isa"])
@pytest.mark.parametrize("conv,dtype", [
    (Conv(2, 64, 64, (30, 31), (3, 3), (2, 2), (1, 1), (1, 1), 4, True), torch.float32),  # 16 channels per group
    (Conv(2, 32, 32, (27, 29), (3, 3), (2, 2), (1, 1), (1, 1), 4, True), torch.float64),  # 8: one panel of float64
], ids=["float32", "float64"])
def test_one_panel_products_in_wide_tiles(conv, dtype, path):
    """Grouped strided layers whose groups fill one panel of output channels: with AVX-512 the
    channels-last GEMM's forward and input-gradient phases multiply 13 to 16 pixels at a time
    (rows of 16 and 15 output pixels, phases of 16 and 15 input pixels), beyond the two-panel
    kernel's 12 rows; right against float64 there and with AVX2's 6-row tiles."""
    check_layer_on_path(conv, dtype, path)


CPU_INFO = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
CPU_FLAGS = set(CPU_INFO.split())
HAS_BF16_VECTORS = {"avx512bw", "avx512_bf16", "avx512_vbmi2"} <= CPU_FLAGS
HAS_AMX = HAS_BF16_VECTORS and "amx_bf16" in CPU_FLAGS
# AMD's Zen 4 (family 25 with AVX-512), which issues 512-bit instructions in halves (cpu_halves_avx512).
HALVES_AVX512 = ("AuthenticAMD" in CPU_INFO and re.search(r"^cpu family\s*:\s*25$", CPU_INFO, re.M) is not None and
                 "avx512f" in CPU_FLAGS)
# The bfloat16 pair kernels' two units (bf16_pairs_conv2d.h), each where the CPU has it.
BF16_UNITS = [
    pytest.param("bf16-tiles", marks=pytest.mark.skipif(not HAS_AMX, reason="needs a CPU with AMX-BF16")),
    pytest.param("bf16-vectors", marks=pytest.mark.skipif(not HAS_BF16_VECTORS, reason="needs a CPU with AVX512_BF16")),
]


def avx512_strips_take_3x3(size):
    """Whether the AVX-512 build runs a stride-1 depthwise 3x3 layer of planes of `size` output
    pixels on its strips' kernels rather than its channel blocks (depthwise_3x3_planes_faster):
    on Zen 4 over 8 x 8 pixels, where AVX-512 runs at full width over 16 x 16."""
    return size[0] * size[1] > (64 if HALVES_AVX512 else 256)


HALF_ULP = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def assert_rounded_once(actual, expected, scale, what):
    """actual (bfloat16 or float16) is expected rounded once to its dtype (within half a unit in
    its last place), after a float32 sum (within 1e-4 of the scale): what a missing or doubled
    term would break."""
    torch.testing.assert_close(actual.double(), expected, rtol=HALF_ULP[actual.dtype], atol=1e-4 * scale + 1e-300,
                               msg=lambda m: f"{what}: {m}")


def check_rounded_once(conv, dtype, path):
    """conv_ext's forward and gradients on `path` in dtype, each the float64 result rounded once."""
    x, w, b = conv.tensors(dtype, "cpu", requires_grad=True)
    with cpu_path(path):
        ours, gy = forward_and_grads(conv_ext.conv2d, conv, x, w, b)
    for name, a, e, scale in zip(NAMES, ours, *float64_results(conv, x, w, b, gy)):
        assert a.dtype == dtype, name
        assert_rounded_once(a, e, scale, f"{name} ({dtype}, {path})")


@pytest.mark.parametrize("units", BF16_UNITS)
@settings(max_examples=60)
@given(conv=bf16_pairs_convs())
def test_bf16_pairs_round_float64_result_once(units, conv):
    """bfloat16 layers the pair kernels take, any stride: the forward, the input gradient (at
    stride 1 a forward on the flipped filters, otherwise per stride phase) and the weight
    gradient sum in float32 and round once."""
    check_rounded_once(conv, torch.bfloat16, units)


@pytest.mark.parametrize("units", BF16_UNITS)
@pytest.mark.parametrize("conv", [
    Conv(8, 64, 64, (28, 28), (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    # 33 strips of 32 pixels on 17-wide padded rows; 3 images in a chunk of the weight gradient.
    Conv(3, 96, 48, (31, 15), (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "channels_last"),
    # Output channels in three chunks of filter tiles that fill a core's L2 (512 x 4608 bytes).
    Conv(2, 512, 160, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    # Four stride phases, 15 columns each.
    Conv(4, 128, 64, (28, 28), (3, 3), (2, 2), (1, 1), (1, 1), 1, True),
    # 1x1: 98 strips per image, copied two images (1.6 MB each) at a time.
    Conv(6, 256, 64, (56, 56), (1, 1), (1, 1), (0, 0), (1, 1), 1, False),
    # Filters (1.2 MB) smaller than the input's copy (1.9 MB): the threads split the strips, each
    # running both groups' 8 pairs of filter tiles in chunks of 7 and 1.
    Conv(4, 256, 512, (28, 28), (3, 3), (1, 1), (1, 1), (1, 1), 2, True),
], ids=["64ch", "96-48ch-channels-last", "512-160ch", "stride-2", "1x1", "groups-by-strips"])
def test_bf16_pairs_large_layers(units, conv):
    """Long sums (256 to 4608 terms per output, 8 * 28 * 28 per weight) and the pair kernels'
    blocking: chunks of output channels, of pixels, of images, and the threads' shares of them."""
    check_rounded_once(conv, torch.bfloat16, units)


@pytest.mark.skipif(not HAS_BF16_VECTORS or HAS_AMX, reason="needs a CPU with AVX512_BF16 and without AMX")
def test_bf16_vectors_take_large_3x3_weight_gradients_from_winograd():
    """On AVX512_BF16's vectors, a 3x3 stride-1 bfloat16 layer runs on Winograd (widened), but for
    its weight gradient with at least 1024 output pixels in the batch, except on Zen 4 (which
    halves AVX-512's instructions): bit for bit those paths' results."""
    conv = Conv(2, 64, 48, (28, 28), (3, 3), (1, 1), (1, 1), (1, 1), 1, True)  # 1568 pixels
    x, w, b = conv.tensors(torch.bfloat16, "cpu", requires_grad=True)
    gy = torch.randn_like(F.conv2d(x, w, b, **conv.kwargs()))
    results = results_on_paths(conv, x, w, b, gy, ("auto-avx512-isa", "bf16-vectors", "winograd-avx512-isa"))
    chosen, vectors, winograd = (results[p] for p in ("auto-avx512-isa", "bf16-vectors", "winograd-avx512-isa"))
    for what in ("output", "grad_input"):
        assert torch.equal(chosen[what], winograd[what]), what
    expected, other = (winograd, vectors) if HALVES_AVX512 else (vectors, winograd)
    assert torch.equal(chosen["grad_weight"], expected["grad_weight"])
    assert not torch.equal(chosen["grad_weight"], other["grad_weight"])


@pytest.mark.parametrize("units", BF16_UNITS)
@pytest.mark.parametrize("conv", [
    Conv(3, 48, 80, (15, 13), (3, 3), (2, 1), (1, 1), (1, 1), 1, True),
    # The weight gradient's sums in two partitions of the batch's pixels (its 4 images one chunk).
    Conv(4, 64, 64, (20, 20), (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
], ids=["strided", "partitioned-pixels"])
def test_bf16_pairs_results_do_not_depend_on_thread_count(units, conv):
    """Each sum of the pair kernels runs in one order whatever the threads split (strips, filter
    chunks, blocks and partitions of pixels of the weight gradient): one thread and all of them
    agree bit for bit."""
    x, w, b = conv.tensors(torch.bfloat16, "cpu", requires_grad=True)
    results = []
    for n in (1, max(torch.get_num_threads(), 2)):
        with num_threads(n), cpu_path(units):
            results.append(forward_and_grads(conv_ext.conv2d, conv, x, w, b)[0])
    for name, serial, parallel in zip(NAMES, *results):
        assert torch.equal(parallel, serial), name


DIRECT_PATHS = ["auto"] + [p for p in FORCED_CPU_PATHS if p.startswith("direct")]


# Stride-1 3x3 planes with one output channel per group are summed in blocks of eight rows at
# a vector of columns: blocks inside the plane run unmasked and unchecked, the others at its
# edges (padding, a partial vector, the last rows). Depthwise planes padded by one row run down
# strips of one or two vectors instead, three output rows in flight: masked strips at the
# edges, unmasked inside, and the rows that remain after steps of three (none, one or two).
# 53-wide and 37-high planes have edges and insides; a dilated row with padding (0, 2); two
# input channels per group, padded 2 rows deep; depthwise planes 48 and 16 wide unpadded
# (unmasked strips: a pair, and a single one after it), 6 and 2 rows high.
PLANE_ROWS_LAYERS = [
    (Conv(2, 6, 6, (37, 53), (3, 3), (1, 1), (1, 1), (1, 1), 6, True), torch.float32),
    (Conv(1, 4, 4, (40, 70), (3, 3), (1, 1), (0, 2), (1, 2), 4, False, "channels_last"), torch.float64),
    (Conv(2, 8, 4, (30, 41), (3, 3), (1, 1), (2, 1), (1, 1), 4, True), torch.float32),
    (Conv(2, 3, 3, (6, 50), (3, 3), (1, 1), (1, 0), (1, 1), 3, True), torch.float32),
    (Conv(1, 5, 5, (2, 18), (3, 3), (1, 1), (1, 0), (1, 1), 5, False), torch.float64),
]


@pytest.mark.parametrize("path", DIRECT_PATHS)
@pytest.mark.parametrize("conv,dtype", PLANE_ROWS_LAYERS, ids=["depthwise-float32", "dilated-float64", "two-channels-float32",
                                                               "depthwise-unmasked-float32", "depthwise-two-rows-float64"])
def test_direct_plane_rows_inside_and_edges(conv, dtype, path):
    check_layer_on_path(conv, dtype, path)


# The AVX2 build's depthwise 3x3 planes padded by 1 column and wider than a vector shift the
# padding into their first and last vectors of columns (depthwise_3x3_shifts_edges), the last
# overlapping the one before it: rows a lane wider than a vector (the two overlap but for a
# column), two vectors wide (none between), a lane wider (one between, overlapped but for a
# column), and wider, in float32 (8 lanes) and float64 (4); planes of 8 KiB or more (46 x 45,
# 35 x 31) prefetch their rows as they go. Rows of half a vector or less past their whole
# vectors end in a half strip two rows at a time (depthwise_half_strip_3x3): past 1 to 5 whole
# vectors, planes of odd and even heights, of 1 and 2 rows (mutation-checked: the bottom
# padding row added). Each of these outputs, under 2 MiB, is summed plane by
# plane in a scratch plane and copied out (depthwise_3x3_plane_copy, mutation-checked).
# 6 channels: not the channel blocks. The weight
# gradient's 3x3 kernel (grad_weight_rows_3x3) shifts the padding into whole first and last
# vectors likewise (mutation-checked), and loads those inside the rows unmasked.
@pytest.mark.parametrize("path", DIRECT_PATHS)
@pytest.mark.parametrize("dtype,size", [
    (torch.float32, (7, 9)), (torch.float32, (4, 16)), (torch.float32, (5, 17)), (torch.float32, (46, 45)),
    (torch.float32, (2, 28)), (torch.float32, (1, 12)), (torch.float32, (48, 44)),
    (torch.float64, (6, 5)), (torch.float64, (3, 8)), (torch.float64, (7, 9)), (torch.float64, (35, 31)),
    (torch.float64, (1, 14)), (torch.float64, (8, 18)),
], ids=["float32-9", "float32-16", "float32-17", "float32-rows-prefetched", "float32-28-two-rows", "float32-12-one-row",
        "float32-44-rows-prefetched", "float64-5", "float64-8", "float64-9", "float64-rows-prefetched", "float64-14-one-row",
        "float64-18"])
def test_depthwise_3x3_edges_shifted_in(dtype, size, path):
    check_layer_on_path(Conv(2, 6, 6, size, (3, 3), (1, 1), (1, 1), (1, 1), 6, True), dtype, path)


@pytest.mark.parametrize("path", DIRECT_PATHS)
@pytest.mark.parametrize("dtype,channels,size", [(torch.float32, 650, (20, 21)), (torch.float64, 330, (21, 20))],
                         ids=["float32", "float64"])
def test_depthwise_3x3_planes_streamed(dtype, channels, size, path):
    """Those planes (up to 56 x 56) of an output larger than 2 MiB are summed in a scratch plane
    and copied out by non-temporal stores (depthwise_3x3_plane_copy), and so are the input
    gradient's planes in the one-pass backward (mutation-checked): float32 planes of 1680
    bytes, every other one off the stores' 32-byte alignment (copied element by element up to it
    and past the last whole vector); float64 ones of 3360 bytes."""
    check_layer_on_path(Conv(2, channels, channels, size, (3, 3), (1, 1), (1, 1), (1, 1), channels, True), dtype, path)


SPREAD_LAYERS = [
    Conv(2, 16, 16, (13, 17), (3, 3), (2, 2), (1, 1), (1, 1), 16, True),
    Conv(3, 8, 8, (20, 9), (5, 5), (2, 2), (2, 2), (1, 1), 8, False),
    Conv(1, 12, 12, (14, 15), (7, 3), (2, 2), (3, 1), (1, 1), 12, True),
    Conv(2, 8, 8, (12, 12), (3, 3), (2, 2), (0, 0), (1, 1), 8, True),
]
SPREAD_IDS = ["3x3-odd-sizes", "5x5", "7x3", "3x3-unpadded"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("conv", SPREAD_LAYERS, ids=SPREAD_IDS)
def test_depthwise_stride_2_backward_spread(conv, dtype):
    """The gradients of a depthwise layer at stride 2 padded by half its odd kernel are the
    stride-1 layer's, of grad_output spread out to the input's size (its pixels at even rows and
    columns, ceil(in / 2) of them, zeros between): odd and even sizes, a rectangular kernel, and
    an unpadded layer that keeps the strided kernels."""
    check_layer_on_path(conv, dtype, "auto")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("conv", SPREAD_LAYERS, ids=SPREAD_IDS)
def test_depthwise_stride_2_gradient_ops_spread(conv, dtype):
    """The gradient ops alone (as a double backward or a direct caller runs them) spread
    grad_output as conv2d_backward does."""
    x, w, _ = conv.tensors(dtype, "cpu")
    gen = torch.Generator().manual_seed(1)
    gy = (torch.rand(F.conv2d(x, w, None, **conv.kwargs()).shape, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype)
    args = [list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups]
    grad_input = torch.ops.conv_ext.conv2d_grad_input(gy, w, list(x.shape[2:]), *args)
    grad_weight = torch.ops.conv_ext.conv2d_grad_weight(x, gy, list(conv.kernel), *args)
    expected = torch.ops.aten.convolution_backward(gy.double(), x.double(), w.double(), None, *args[:3], False, [0, 0],
                                                   conv.groups, [True, True, False])
    tolerances = (1e-12, 1e-12) if dtype == torch.float64 else TOLERANCES[dtype][1:3]
    for name, actual, exact, tol in zip(NAMES[1:3], (grad_input, grad_weight), expected[:2], tolerances):
        assert_scaled_close(actual.double(), exact, tol, name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("path", DIRECT_PATHS)
@pytest.mark.parametrize("conv", [
    Conv(2, 32, 32, (13, 17), (3, 3), (1, 1), (1, 1), (1, 1), 32, True),
    Conv(3, 12, 12, (9, 20), (5, 3), (1, 1), (4, 1), (2, 1), 12, False, "channels_last"),
    Conv(2, 8, 16, (11, 11), (3, 3), (1, 1), (1, 1), (1, 1), 4, True),
    Conv(2, 3, 3, (7, 50), (3, 3), (1, 1), (1, 0), (1, 1), 3, True),
    Conv(1, 4, 4, (5, 37), (3, 3), (1, 1), (1, 2), (1, 2), 4, False, "channels_last"),
], ids=["depthwise-3x3", "depthwise-5x3-dilated", "grouped-2-to-4", "depthwise-3x3-unmasked", "depthwise-3x3-dilated-columns"])
def test_direct_reduced_precision_rounds_once(conv, path, dtype):
    """The direct kernels read float16 and bfloat16 themselves where they copy planes anyway (the
    stride-1 depthwise forward, hence its input gradient, and the stride-1 weight gradient), and,
    in the AVX-512 build, in registers on 3x3 planes (the depthwise forward's strips masked at
    the edges, unmasked inside, or dilated; the weight gradient's rows of one or two output
    channels): each result is still the float32 sum rounded once."""
    check_rounded_once(conv, dtype, path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("path", DIRECT_PATHS)
@pytest.mark.parametrize("kernel", ["1x2", "3x3"])
def test_direct_reduced_precision_rounds_as_torch_converts(path, dtype, kernel):
    """A depthwise kernel whose only non-zero taps are two neighbouring ones (a 1x2 kernel, or
    the middle row of a padded 3x3 one) adds neighbouring values in float32, exactly as torch's
    float32 convolution does; the float16 or bfloat16 output must then be torch's conversion of
    that sum bit for bit: ties to even, NaN and infinities kept, overflow to infinity. 37- and
    38-wide rows leave a tail after whole vectors of 8 and 16."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 38) * 2.0 ** torch.randint(-9, 2, (2, 3, 5, 38))
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 65504.0, 65504.0, -0.0])
    x.view(-1)[torch.randperm(x.numel())[:60]] = specials.repeat(10)
    x[0, 0, 0, :4] = torch.tensor([1.0, 2.0**-8, 1.0 + 2.0**-7, 2.0**-8])  # bfloat16 ties
    x[0, 0, 1, :4] = torch.tensor([1.0, 2.0**-11, 1.0 + 2.0**-10, 2.0**-11])  # float16 ties
    x = x.to(dtype)
    w = torch.ones(3, 1, 1, 2, dtype=dtype)
    padding = 0
    if kernel == "3x3":
        w = F.pad(w, (0, 1, 1, 1))  # taps (1, 1) and (1, 2)
        padding = 1
    with cpu_path(path):
        ours = conv_ext.conv2d(x, w, padding=padding, groups=3)
    expected = F.conv2d(x.float(), w.float(), padding=padding, groups=3).to(dtype)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0, equal_nan=True)


# Winograd and the channels-last GEMM read the input and grad_output through bands that widen
# float16 and bfloat16 as they read them, and round their outputs as they store them: by
# register transposes from and into NCHW (37-, 13- and 15-wide rows, 17 and 33 channels:
# partial squares; 24-wide output tiles, a band as wide as the image as one run), by rows of
# channels from and into NHWC. Winograd runs few tiles by panels of output channels, more in
# chunks of tiles; the channels-last GEMM takes grouped and strided layers, all three ops, and
# 1x1 weight gradients where MKL does not keep up (15 channels: no bfloat16 pair kernel).
BAND_LAYERS = [
    (Conv(2, 17, 40, (13, 37), (3, 3), (1, 1), (1, 1), (1, 1), 1, True), "winograd"),
    (Conv(3, 40, 17, (29, 27), (3, 3), (1, 1), (1, 2), (1, 1), 1, True, "channels_last"), "winograd"),
    (Conv(4, 20, 33, (24, 24), (3, 3), (1, 1), (1, 1), (1, 1), 1, False), "winograd"),
    (Conv(2, 24, 36, (31, 21), (5, 5), (1, 1), (2, 2), (1, 1), 1, True), "winograd"),
    (Conv(2, 32, 48, (19, 17), (3, 3), (2, 2), (1, 1), (1, 1), 2, True), "gemm"),
    (Conv(2, 20, 24, (66, 65), (3, 3), (2, 2), (1, 1), (1, 1), 1, False, "channels_last"), "gemm"),
    (Conv(2, 15, 17, (9, 11), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), "slow-blas"),
]


BAND_CASES = [
    pytest.param(conv, path, id=f"{name}-{path}")
    for (conv, algorithm), name in zip(BAND_LAYERS, ["panels-nchw", "chunks-nhwc", "whole-band", "5x5", "grouped-strided",
                                                     "strided-nhwc", "1x1-weight-gradient"])
    for path in ([algorithm] if algorithm == "slow-blas" else [p for p in FORCED_CPU_PATHS if p.startswith(algorithm)])
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("conv,path", BAND_CASES)
def test_band_kernels_reduced_precision_is_float32_rounded(conv, path, dtype):
    """Each result is, bit for bit, the same path's float32 result on the widened operands,
    rounded once."""
    x, w, b = conv.tensors(dtype, "cpu", requires_grad=True)
    with cpu_path(path):
        ours, gy = forward_and_grads(conv_ext.conv2d, conv, x, w, b)
        widened = [None if t is None else t.detach().float().requires_grad_() for t in (x, w, b)]
        in_float32, _ = forward_and_grads(conv_ext.conv2d, conv, *widened, gy.float())
    for name, a, f in zip(NAMES, ours, in_float32):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a, f.to(dtype), rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


def check_layer_on_path(conv, dtype, path):
    """conv_ext's forward and gradients on `path`: float64 as F.conv2d's (1e-12 of the scale),
    float32 within its bounds of the float64 result. Returns conv_ext's results."""
    x, w, b = conv.tensors(dtype, "cpu", requires_grad=True)
    with cpu_path(path):
        ours, gy = forward_and_grads(conv_ext.conv2d, conv, x, w, b)
    if dtype == torch.float64:
        theirs, _ = forward_and_grads(F.conv2d, conv, x, w, b, gy)
        for name, a, t in zip(NAMES, ours, theirs):
            assert_scaled_close(a, t, 1e-12, name)
    else:
        for name, a, e, scale, tol in zip(NAMES, ours, *float64_results(conv, x, w, b, gy), TOLERANCES[dtype]):
            assert_scaled_close(a, e, tol, name, scale)
    return ours


def checked_avx2_blas_calls(conv):
    """blas_calls_on_path of the AVX2 build's choice by shape for conv's float32 tensors, after
    checking its float64 results there (check_layer_on_path)."""
    check_layer_on_path(conv, torch.float64, "auto-avx2-isa")
    x, w, b = conv.tensors(torch.float32, "cpu")
    gy = torch.randn_like(F.conv2d(x, w, b, **conv.kwargs()))
    return blas_calls_on_path("auto-avx2-isa", conv, x, w, b, gy)


# The implicit GEMM reads panels of whole output-row runs in place from the input's stride
# phases, and streams outputs larger than a core's L2 to memory: a 7x7/2 stem with 112-wide
# output rows (runs of 16 float32), its output of 2.4 MB streamed; grouped, dilated and strided
# layers whose output rows are 64 and 32 wide (runs of 8 float64 too); a 1x1 expansion and a
# 3x1 kernel, whose runs go on from row to row (rows of 9 and 11 pixels, images of 63 and 143).
IMPLICIT_GEMM_LAYERS = [
    (Conv(2, 3, 24, (224, 224), (7, 7), (2, 2), (3, 3), (1, 1), 1, True), torch.float32),
    (Conv(3, 6, 20, (21, 64), (3, 3), (1, 1), (1, 1), (1, 1), 2, True), torch.float64),
    (Conv(2, 4, 13, (30, 67), (5, 3), (2, 2), (2, 1), (2, 3), 1, False), torch.float64),
    (Conv(2, 8, 20, (7, 9), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), torch.float64),
    (Conv(3, 10, 12, (15, 11), (3, 1), (1, 1), (1, 0), (1, 1), 1, True), torch.float32),
]


@pytest.mark.parametrize("path", [p for p in FORCED_CPU_PATHS if p.startswith("gemm")])
@pytest.mark.parametrize("conv,dtype", IMPLICIT_GEMM_LAYERS,
                         ids=["stem-float32", "groups-float64", "strided-dilated-float64", "pointwise-rows-join-float64",
                              "one-column-kernel-float32"])
def test_implicit_gemm_whole_runs_and_streamed_output(conv, dtype, path):
    check_layer_on_path(conv, dtype, path)


# A pointwise layer of one group runs as each image's product over all its pixels, the images in
# one batched MKL call written in place, bias added or none (pointwise_in_one_call): 192->40 at
# batch 3 (1440 pixels, beyond one GEMM over the batch), a thin reduction 96->24 (which the
# AVX-512 build takes there too, not to the implicit GEMM), 176->176 and an expansion at batch 1.
POINTWISE_LAYERS = [
    (Conv(3, 192, 40, (24, 20), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), torch.float32),
    (Conv(3, 96, 24, (20, 21), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), torch.float32),
    (Conv(1, 176, 176, (9, 13), (1, 1), (1, 1), (0, 0), (1, 1), 1, False), torch.float64),
    (Conv(1, 24, 48, (7, 30), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), torch.float64),
]


@pytest.mark.parametrize("path", ["gemm", "gemm-generic-isa", "auto-avx2-isa"])
@pytest.mark.parametrize("conv,dtype", POINTWISE_LAYERS, ids=["bias-float32", "thin-float32", "float64", "expansion-float64"])
def test_pointwise_in_one_call(conv, dtype, path):
    with num_threads(2):
        check_layer_on_path(conv, dtype, path)


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the implicit GEMM needs AVX2")
@pytest.mark.parametrize("conv,on_mkl", [
    (Conv(2, 128, 256, (24, 24), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), True),
    (Conv(2, 64, 256, (24, 24), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), False),
    (Conv(1, 128, 256, (36, 36), (1, 1), (1, 1), (0, 0), (1, 1), 1, False), False),
    (Conv(1, 2048, 1024, (5, 3), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), True),
    (Conv(2, 64, 96, (20, 19), (1, 1), (2, 2), (0, 0), (1, 1), 1, True), True),
    (Conv(1, 64, 96, (20, 19), (1, 1), (2, 2), (0, 0), (1, 1), 1, True), False),
    (Conv(8, 96, 320, (7, 7), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), True),
    (Conv(8, 96, 48, (7, 7), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), False),
    (Conv(8, 300, 400, (1, 1), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), False),
], ids=["from-128-channels", "from-64-channels", "one-image", "one-image-8-mib-filters", "strided-200-pixels",
        "strided-100-pixels", "one-gemm-320-channels", "one-gemm-48-channels", "one-gemm-8-pixels"])
def test_pointwise_layers_on_mkl_in_the_avx2_build(conv, on_mkl):
    """The AVX2 build gives a batch's pointwise expansions beyond one GEMM (1152 pixels) from 128
    channels to MKL's one call per batch, and keeps those from fewer channels, and single images,
    on the implicit GEMM (implicit_gemm_pays_off); but for single images whose filters fill a
    core's L2 (8 MiB, beyond every core's). Batches within one GEMM go to MKL's with more than
    256 pixels and 256 output channels (392 pixels of 320 channels), not with fewer of either (48
    channels; 8 pixels, squeeze-and-excitation's pooled images). Strided 1x1 kernels go to MKL
    from 128 output pixels in the batch (200), not with fewer (100). The forward's BLAS calls say
    which; right there."""
    assert bool(checked_avx2_blas_calls(conv)["output"]) == on_mkl


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the channels-last GEMM needs AVX2")
@pytest.mark.parametrize("conv,on_mkl", [
    (Conv(8, 96, 48, (7, 7), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), False),
    (Conv(8, 96, 320, (7, 7), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), True),
    (Conv(8, 300, 200, (1, 1), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), True),
], ids=["392-pixels-48-channels", "392-pixels-320-channels", "8-pixels-200-channels"])
def test_pointwise_weight_gradient_within_one_gemm_in_the_avx2_build(conv, on_mkl):
    """The AVX2 build's pointwise weight gradient of a batch within one GEMM runs on the
    channels-last GEMM with more than 256 pixels and at most 256 output channels, on MKL with
    more channels or fewer pixels (channels_last_gemm_grad_weight_pays_off); right there."""
    assert bool(checked_avx2_blas_calls(conv)["grad_weight"]) == on_mkl


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the implicit GEMM needs AVX2")
def test_pointwise_input_gradient_of_few_pixels_flips_the_filters_in_the_avx2_build():
    """The AVX2 build's input gradient of a pointwise layer with fewer pixels in the batch than
    output channels (8 pooled images, 400 channels) runs as the forward of its transposed filters
    (flipping_pays_off) on the implicit GEMM, where col2im's product had called MKL; right there."""
    conv = Conv(8, 300, 400, (1, 1), (1, 1), (1, 1), (0, 0), (1, 1), 1, True)
    assert not checked_avx2_blas_calls(conv)["grad_input"]


# A single image of long patches (1024 elements or more) and 64 pixels or more runs its forward
# as one GEMM over its im2col, written in place, on the paths that take MKL (image_in_one_gemm):
# a 3x3/2 130->70 (patch 1170, 117 pixels) with a bias, a 3x3 dilated by 2, 120->140 (patch
# 1080, 130 pixels: too few for the channels-last GEMM's packed filters) without, and a 7x7 24->8
# (patch 1176, 64 pixels); and, for contrast,
# a batch of two images of few pixels (one GEMM over the batch, permuted into the output).
IN_ONE_GEMM_LAYERS = [
    (Conv(1, 130, 70, (18, 26), (3, 3), (2, 2), (1, 1), (1, 1), 1, True), torch.float32),
    (Conv(1, 120, 140, (10, 13), (3, 3), (1, 1), (2, 2), (2, 2), 1, False), torch.float64),
    (Conv(1, 24, 8, (8, 8), (7, 7), (1, 1), (3, 3), (1, 1), 1, True), torch.float32),
    (Conv(2, 130, 70, (9, 11), (3, 3), (2, 2), (1, 1), (1, 1), 1, True), torch.float64),
]


@pytest.mark.parametrize("path", ["auto", "gemm", "gemm-generic-isa"])
@pytest.mark.parametrize("conv,dtype", IN_ONE_GEMM_LAYERS, ids=["strided-float32", "dilated-float64", "7x7-float32",
                                                                "batch-float64"])
def test_forward_in_one_gemm(conv, dtype, path):
    with num_threads(2):
        check_layer_on_path(conv, dtype, path)


# With fewer than 128 output pixels per thread the implicit GEMM's threads split the output
# channels. Filters whose rows lie a multiple of 4 KiB apart (1024 float32 or 512 float64 patch
# elements) they pack from 128 pixels in the batch on, and read in place below: 1x1 layers with 20
# output channels (a partial tile of the kernel's rows) at 156 pixels read in place from the
# input, 182 from a stride-2 layer's phases, and 120 pixels (filters in place).
SPLIT_CHANNELS_LAYERS = [
    (Conv(1, 1024, 20, (12, 13), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), torch.float32),
    (Conv(1, 512, 20, (25, 27), (1, 1), (2, 2), (0, 0), (1, 1), 1, False), torch.float64),
    (Conv(1, 1024, 20, (10, 12), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), torch.float32),
]


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the implicit GEMM needs AVX2")
@pytest.mark.parametrize("path", ["gemm", "gemm-slow-blas"])
@pytest.mark.parametrize("conv,dtype", SPLIT_CHANNELS_LAYERS, ids=["packed-float32", "packed-strided-float64", "in-place-float32"])
def test_implicit_gemm_split_by_output_channels(conv, dtype, path):
    with num_threads(2):
        check_layer_on_path(conv, dtype, path)


# Layers the GEMM path runs over channels-last bands, forward and both gradients (strided,
# kernels larger than 1x1, one group, at least 16 input channels, more than 1024 output pixels
# in the batch): output channels that fill no whole panel (20 of float32, 13 of float64), NCHW
# and NHWC inputs, a 3x5 kernel with strides (2, 3), padding (2, 1) and dilation (2, 1), and a
# 2x2 kernel at stride 4, whose input gradient has stride phases that no tap reaches (zero),
# and filters whose packing (over 1 MiB) is streamed, with partial panels both ways (403 output
# and 41 input channels).
# Grouped layers (grouped_channels_last_pays_off; at least 128 output pixels, so that the weight
# gradient runs there too), each group on bands of its own channels: 10 output channels per group
# at stride 2 (less than a panel); 48 channels per group at stride 1 in NHWC; 8 input and 4 output
# channels per group with the strided, dilated 3x5 kernel; and the weight gradient alone of 16
# channels per group at stride 1. Stride-1 layers Winograd does not take
# (stride_one_channels_last_gemm_may_pay_off): dilations (2, 3) with 33 -> 40 channels in NHWC,
# and (4, 2) with 40 -> 35 in float64; a 1x7 kernel (padding 0 and 3) and an even 2x2 one.
# Kernel rows in the padding are skipped (kernel_row_inside): padding 5 with dilation 2 leaves
# the first and last output rows no kernel row inside the image (their outputs the bias alone),
# the next ones one; at stride 2, padding 3 leaves the first output row none. Single images whose
# pixels repay the packed filters (pixels_repay_packed_filters): a 3x3/2 and a 7x7 in NHWC.
# Rows cut where the kernel columns inside the image change (column_tiles), tiles skipping the
# columns in the padding: dilation 4 on 14 columns (with kernel rows skipped too), dilation 6 on
# 30 in float64, and a 1x5 kernel with dilation 6 on 40 columns, whose five runs of columns each
# take a different range of kernel columns.
CHANNELS_LAST_GEMM_LAYERS = [
    (Conv(2, 16, 20, (70, 66), (3, 3), (2, 2), (1, 1), (1, 1), 1, True), torch.float32),
    (Conv(2, 24, 40, (64, 64), (3, 3), (2, 2), (1, 1), (1, 1), 1, True, "channels_last"), torch.float32),
    (Conv(1, 17, 13, (75, 81), (3, 5), (2, 3), (2, 1), (2, 1), 1, False), torch.float64),
    (Conv(1, 17, 13, (75, 81), (3, 5), (2, 3), (2, 1), (2, 1), 1, True, "channels_last"), torch.float64),
    (Conv(9, 20, 16, (50, 41), (2, 2), (4, 4), (0, 0), (1, 1), 1, True), torch.float64),
    (Conv(1, 41, 403, (66, 64), (3, 3), (2, 2), (1, 1), (1, 1), 1, True), torch.float64),
    (Conv(2, 64, 40, (24, 22), (3, 3), (2, 2), (1, 1), (1, 1), 4, True), torch.float32),
    (Conv(1, 96, 96, (17, 18), (3, 3), (1, 1), (1, 1), (1, 1), 2, True, "channels_last"), torch.float64),
    (Conv(2, 24, 12, (33, 35), (3, 5), (2, 3), (2, 1), (2, 1), 3, False), torch.float32),
    (Conv(2, 64, 64, (16, 16), (3, 3), (1, 1), (1, 1), (1, 1), 4, False), torch.float32),
    (Conv(2, 33, 40, (26, 25), (3, 3), (1, 1), (2, 3), (2, 3), 1, True, "channels_last"), torch.float32),
    (Conv(1, 40, 35, (40, 38), (3, 3), (1, 1), (4, 2), (4, 2), 1, False), torch.float64),
    (Conv(4, 48, 40, (17, 17), (1, 7), (1, 1), (0, 3), (1, 1), 1, True), torch.float32),
    (Conv(2, 32, 24, (33, 35), (2, 2), (1, 1), (0, 0), (1, 1), 1, False, "channels_last"), torch.float64),
    (Conv(2, 32, 40, (20, 34), (3, 3), (1, 1), (5, 1), (2, 1), 1, True), torch.float64),
    (Conv(5, 40, 36, (29, 27), (3, 3), (2, 2), (3, 1), (1, 1), 1, True), torch.float32),
    (Conv(1, 64, 40, (28, 26), (3, 3), (2, 2), (1, 1), (1, 1), 1, True), torch.float64),
    (Conv(1, 40, 36, (20, 22), (7, 7), (1, 1), (3, 3), (1, 1), 1, True, "channels_last"), torch.float32),
    (Conv(2, 40, 32, (14, 14), (3, 3), (1, 1), (4, 4), (4, 4), 1, True), torch.float32),
    (Conv(1, 33, 40, (9, 30), (3, 3), (1, 1), (1, 6), (1, 6), 1, False, "channels_last"), torch.float64),
    (Conv(2, 32, 40, (5, 40), (1, 5), (1, 1), (0, 12), (1, 6), 1, True, "channels_last"), torch.float32),
]


@pytest.mark.parametrize("path", [p for p in FORCED_CPU_PATHS if p.startswith("gemm")])
@pytest.mark.parametrize("conv,dtype", CHANNELS_LAST_GEMM_LAYERS,
                         ids=["partial-panel-float32", "nhwc-float32", "dilated-float64", "nhwc-float64",
                              "tapless-phases-float64", "streamed-pack-float64", "groups-partial-panel-float32", "groups-nhwc-float64",
                              "groups-dilated-float32", "groups-grad-weight-float32", "dilated-stride-1-nhwc-float32",
                              "dilated-stride-1-float64", "1x7-float32", "2x2-nhwc-float64",
                              "rows-in-padding-float64", "strided-rows-in-padding-float32", "strided-batch-1-float64",
                              "7x7-batch-1-nhwc-float32", "columns-in-padding-float32",
                              "columns-in-padding-nhwc-float64", "1x5-columns-in-padding-nhwc-float32"])
def test_channels_last_gemm_layers(conv, dtype, path):
    output = check_layer_on_path(conv, dtype, path)[0]
    assert output.is_contiguous(memory_format=torch.channels_last) == (conv.layout == "channels_last")


# At batch 1 the channels-last GEMM cuts each image into as many bands of rows as give every
# thread the same share, their rows as even as they come (Bands): on 2 threads, 23 output rows
# whose bands hold at most 10 (a dilated 3x3, 96 -> 64 channels, rows 120 wide) are 4 bands of 5
# and 6 rows (3 bands of 8, 8 and 7 had left one thread 16 rows, the other 7), forward and both
# gradients.
@pytest.mark.parametrize("path", [p for p in FORCED_CPU_PATHS if p.startswith("gemm")])
def test_channels_last_gemm_bands_share_rows_evenly(path):
    with num_threads(2):
        check_layer_on_path(Conv(1, 96, 64, (23, 120), (3, 3), (1, 1), (2, 2), (2, 2), 1, True), torch.float32, path)


# The weight gradient of few input channels (1 to 15, with at least 16 output channels) runs on
# the channels-last GEMM at any stride, its products' rows a kernel row's taps times the
# channels: a 5x5 kernel with dilation (1, 2) (one tap per run), output channels in three panels
# of float32 (33: the last partial), one input channel at strides (2, 1), NCHW and NHWC.
FEW_CHANNELS_GRAD_WEIGHT_LAYERS = [
    (Conv(2, 3, 16, (40, 44), (5, 5), (1, 1), (2, 4), (1, 2), 1, False, "channels_last"), torch.float64),
    (Conv(2, 5, 33, (30, 37), (3, 3), (1, 1), (1, 1), (1, 1), 1, True), torch.float32),
    (Conv(3, 1, 16, (50, 41), (3, 5), (2, 1), (1, 2), (1, 1), 1, True, "channels_last"), torch.float64),
]


@pytest.mark.parametrize("path", [p for p in FORCED_CPU_PATHS if p.startswith("gemm")])
@pytest.mark.parametrize("conv,dtype", FEW_CHANNELS_GRAD_WEIGHT_LAYERS,
                         ids=["dilated-nhwc-float64", "partial-panel-float32", "one-channel-float64"])
def test_channels_last_gemm_few_channels_grad_weight(conv, dtype, path):
    check_layer_on_path(conv, dtype, path)


# Where torch's BLAS runs narrower kernels than ours (blas_keeps_up): the forward of 1x1 layers
# runs on the implicit GEMM and their weight gradient on the channels-last GEMM, which also takes
# strided layers and grouped weight gradients of any number of pixels; Winograd takes 3x3 layers
# of any number of tiles and sums its weight gradient's products on the micro-kernel; the input
# gradient of 1x1 layers with fewer pixels than channels transposes their filters for the
# forward route; col2im's products run as 1x1 convolutions on the implicit GEMM. The layers: 1x1
# with a partial panel of output channels (NCHW float32, NHWC float64), a 3x3/2 of 49 output
# pixels, a grouped 3x3 of 16, a grouped 1x1 of 15 pixels, a 5x5/2 of 3 input channels and a
# grouped 1x1/2 (col2im), 3x3 of 4 tiles (by panels, partial panels of input and output
# channels) and of 162 (in chunks, on two threads); with each, the results that those paths sum
# in another order than im2col+MKL (where both sum one image's pixels, or a few channels, in
# order, their bits agree).
SLOW_BLAS_LAYERS = [
    (Conv(2, 40, 36, (9, 11), (1, 1), (1, 1), (0, 0), (1, 1), 1, True), torch.float32, ["output"]),
    (Conv(1, 24, 48, (7, 7), (1, 1), (1, 1), (0, 0), (1, 1), 1, False, "channels_last"), torch.float64,
     ["output", "grad_weight"]),
    (Conv(1, 32, 40, (14, 14), (3, 3), (2, 2), (1, 1), (1, 1), 1, True), torch.float32,
     ["output", "grad_input", "grad_weight"]),
    (Conv(1, 64, 64, (4, 4), (3, 3), (1, 1), (1, 1), (1, 1), 4, True), torch.float32, []),
    (Conv(1, 48, 100, (3, 5), (1, 1), (1, 1), (0, 0), (1, 1), 2, True), torch.float64, ["output", "grad_input"]),
    (Conv(2, 3, 20, (15, 13), (5, 5), (2, 2), (2, 2), (1, 1), 1, True), torch.float64, NAMES[:3]),
    (Conv(1, 12, 18, (9, 9), (1, 1), (2, 2), (0, 0), (1, 1), 3, False), torch.float32, ["output"]),
    (Conv(1, 20, 37, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, True), torch.float64, NAMES[:3]),
    (Conv(2, 33, 50, (36, 36), (3, 3), (1, 1), (1, 1), (1, 1), 1, False), torch.float32, NAMES[:3]),
]


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the implicit and channels-last GEMMs need AVX2")
@pytest.mark.parametrize("conv,dtype,reordered", SLOW_BLAS_LAYERS,
                         ids=["pointwise-float32", "pointwise-nhwc-float64", "strided-49-pixels", "groups-16-pixels",
                              "pointwise-groups-15-pixels-float64", "strided-3-channels-float64", "pointwise-strided-groups-float32",
                              "winograd-4-tiles-float64", "winograd-chunks-float32"])
def test_slow_blas_paths(conv, dtype, reordered):
    """Right on those paths, and (in the results named) on others than im2col+MKL's: calling no
    BLAS, where that calls MKL or sums in another order (its bits differ)."""
    check_layer_on_path(conv, dtype, "slow-blas")
    x, w, b = conv.tensors(dtype, "cpu")
    x *= torch.randn_like(x).mul(4).exp()  # terms of many magnitudes: two orders of summing differ
    x.requires_grad_()
    w.requires_grad_()
    gy = torch.randn_like(F.conv2d(x, w, b, **conv.kwargs()))
    gy *= torch.randn_like(gy).mul(4).exp()
    paths = ("slow-blas", "gemm-generic-isa")
    results = results_on_paths(conv, x, w, b, gy, paths)
    ours, mkl = (blas_calls_on_path(path, conv, x.detach(), w.detach(), b, gy) for path in paths)
    for what in reordered:
        assert not ours[what], (what, ours)
        assert mkl[what] or not torch.equal(results["slow-blas"][what], results["gemm-generic-isa"][what]), what


# Winograd and the channels-last GEMM move their output from channels-innermost bands into
# NCHW by register transposes, streaming outputs larger than a core's L2 from the first cache
# line boundary of each run on: a band as wide as the image as one run (float32 and float64),
# 58-wide rows each a run that starts mid-line, 72 output channels (a partial square).
STREAMED_BAND_LAYERS = [
    (Conv(4, 32, 40, (64, 58), (3, 3), (1, 1), (1, 1), (1, 1), 1, True), torch.float32, "winograd"),
    (Conv(4, 32, 40, (48, 48), (3, 3), (1, 1), (1, 1), (1, 1), 1, False), torch.float64, "winograd"),
    (Conv(2, 16, 72, (128, 128), (3, 3), (2, 2), (1, 1), (1, 1), 1, True), torch.float32, "gemm"),
]


@pytest.mark.parametrize("conv,dtype,algorithm", STREAMED_BAND_LAYERS,
                         ids=["winograd-rows-float32", "winograd-band-float64", "gemm-band-float32"])
@pytest.mark.parametrize("isa", ["", "-avx2-isa", "-avx512-isa"])
def test_streamed_band_outputs(conv, dtype, algorithm, isa):
    if f"{algorithm}{isa}" not in FORCED_CPU_PATHS:
        pytest.skip("the CPU lacks this instruction set")
    output = check_layer_on_path(conv, dtype, f"{algorithm}{isa}")[0]
    assert output.numel() * output.element_size() > 2 << 20  # beyond kStreamBytes: streamed


# The direct kernels of stride-1 planes sum float32 and float64 rows straight from the input
# under masks: the forward with one output channel per group (3x3 kernels four rows at a time,
# others row by row) and the 3x3 weight gradient (four rows at a time, output channels in pairs):
# output rows 1, 4n and 4n + 3 tall, padding wider than the kernel's reach, dilated rows or
# columns, 5x5 kernels, two input channels per group, three output channels per group (a pair
# and one), output rows of one vector, several and a partial one; a 1x17 kernel, wider than the
# forward's row kernels take, on the padded copy.
DIRECT_ROWS_LAYERS = [
    Conv(2, 5, 5, (1, 33), (3, 3), (1, 1), (1, 3), (1, 1), 5, True),
    Conv(1, 3, 3, (8, 16), (3, 3), (1, 1), (2, 2), (1, 1), 3, False),
    Conv(2, 4, 4, (11, 35), (3, 3), (1, 1), (1, 1), (1, 2), 4, True),
    Conv(1, 6, 3, (9, 20), (5, 5), (1, 1), (2, 4), (2, 1), 3, True, "channels_last"),
    Conv(2, 6, 9, (10, 37), (3, 3), (1, 1), (1, 1), (1, 3), 3, True),
    Conv(1, 2, 2, (5, 40), (1, 17), (1, 1), (0, 8), (1, 1), 2, True),
]


@pytest.mark.parametrize("path", DIRECT_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("conv", DIRECT_ROWS_LAYERS,
                         ids=["row-of-1", "wide-padding", "dilated-columns", "5x5-two-channels", "pairs", "1x17"])
def test_direct_rows_layers(conv, dtype, path):
    check_layer_on_path(conv, dtype, path)


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the one-pass kernel needs AVX2")
@pytest.mark.parametrize("path", ["auto-avx2-isa", "auto-avx512-isa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("conv", [
    Conv(3, 15, 15, (13, 11), (3, 3), (1, 1), (1, 1), (1, 1), 15, True),  # odd sizes, channels no multiple of 8
    Conv(2, 24, 24, (9, 20), (3, 3), (1, 1), (1, 0), (1, 1), 24, True),  # columns unpadded
    Conv(2, 16, 16, (6, 23), (3, 3), (1, 1), (1, 3), (1, 2), 16, True),  # columns dilated
    Conv(2, 16, 16, (11, 12), (5, 5), (1, 1), (2, 2), (1, 1), 16, True),  # 5x5, on padded copies
    Conv(2, 16, 16, (9, 10), (3, 3), (1, 1), (0, 2), (2, 1), 16, False),  # rows unpadded, dilated
    Conv(2, 12, 12, (13, 17), (3, 3), (2, 2), (1, 1), (1, 1), 12, True),  # stride 2, odd sizes
    Conv(1, 10, 10, (14, 15), (5, 3), (2, 2), (2, 1), (1, 1), 10, True),  # stride 2, 5x3
], ids=["odd", "unpadded-columns", "dilated-columns", "5x5", "dilated-rows", "stride-2", "stride-2-5x3"])
def test_depthwise_backward_in_one_pass(conv, dtype, path):
    """conv2d's backward of a depthwise stride-1 layer runs on the CPU as one pass over
    grad_output (conv2d_backward, direct_conv2d_backward), calling neither gradient op: for every
    output_mask, the input and weight gradients bit for bit the two ops' (the same plane kernels,
    summing in the same order), the bias gradient grad_output's sum; and conv_ext.conv2d's
    gradients within float64's bound of F.conv2d's. float16 and bfloat16 read in place (widened
    in registers) with AVX-512, 3x3 kernels with rows padded by 1 and undilated; elsewhere the
    three ops' calls, and so does float32 where its input gradient runs by channel blocks
    (undilated, a multiple of 8 channels: depthwise_by_channel_blocks; with AVX-512 not 3x3
    kernels at stride 1, but for planes up to 16 x 16 where AVX-512 runs at full width, 8 x 8 on
    Zen 4). A stride-2 layer padded by half its odd kernel, float32 or float64, runs as its
    stride-1 layer on each
    plane of grad_output spread out (the two ops spread all of it at once), but for 3x3
    gradients in the vector builds, which read the strided planes in place in both, and the weight
    gradients of other kernels (and of 3x3 ones in the baseline build), which sum over the
    input's four stride phases in both."""
    skip_without_avx512(path)
    avx512 = path.endswith("avx512-isa")
    rows_3x3 = conv.kernel == (3, 3) and conv.padding[0] == 1 and conv.dilation[0] == 1
    strided = conv.stride != (1, 1)
    planes_3x3 = conv.kernel == (3, 3) and not strided and avx512_strips_take_3x3(conv.size)
    by_channel_blocks = (dtype == torch.float32 and conv.dilation == (1, 1) and conv.in_channels % 8 == 0 and
                         not (avx512 and planes_3x3))
    one_pass = (not by_channel_blocks if dtype in (torch.float32, torch.float64) else avx512 and rows_3x3 and not strided)
    ops = torch.ops.conv_ext
    x, w, b = conv.tensors(dtype, "cpu")
    args = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
    gy = torch.rand_like(ops.conv2d(x, w, b, *args)) * 2 - 1
    with num_threads(2), cpu_path(path):
        separate = (ops.conv2d_grad_input(gy, w, list(x.shape[2:]), *args),
                    ops.conv2d_grad_weight(x, gy, list(w.shape[2:]), *args), gy.sum((0, 2, 3)))
        for mask in itertools.product((False, True), repeat=3):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                results = ops.conv2d_backward(gy, x, w, *args, list(mask))
            grad_ops = {e.name for e in prof.events()} & {"conv_ext::conv2d_grad_input", "conv_ext::conv2d_grad_weight"}
            assert not grad_ops if one_pass else len(grad_ops) == sum(mask[:2])
            for name, wanted, result, expected in zip(NAMES[1:], mask, results, separate):
                if not wanted:
                    assert result is None, name
                elif name == "grad_bias":
                    torch.testing.assert_close(result, expected, msg=name)
                    assert result.dtype == dtype
                else:
                    assert torch.equal(result, expected), name
        if dtype == torch.float64:
            x, w, b = (None if t is None else t.requires_grad_() for t in (x, w, b))
            ours, _ = forward_and_grads(conv_ext.conv2d, conv, x, w, b, gy)
            theirs, _ = forward_and_grads(F.conv2d, conv, x, w, b, gy)
            for name, a, t in zip(NAMES, ours, theirs):
                assert_scaled_close(a, t, 1e-12, f"{name} vs F.conv2d")


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the AVX2 build")
@pytest.mark.parametrize("path", ["auto-avx2-isa", "auto-avx512-isa"])
@pytest.mark.parametrize("kernel,padding,size,on_blocks,stride,grad_weight_on_blocks", [
    (3, (1, 1), (19, 21), True, 1, True), (5, (2, 1), (13, 21), True, 1, True), (7, (3, 0), (9, 17), True, 1, True),
    (7, (0, 3), (20, 9), True, 1, True), (3, (1, 1), (183, 181), True, 1, False), (3, (1, 1), (20, 20), False, 1, False),
    (3, (1, 1), (370, 370), False, 1, False), (3, (1, 1), (260, 256), True, 1, True), (3, (1, 1), (28, 30), True, 2, False),
    (5, (2, 1), (13, 21), True, 2, True), (7, (3, 3), (20, 17), True, 2, True), (3, (1, 1), (16, 15), True, 1, True),
    (3, (1, 1), (7, 9), True, 1, True),
], ids=["3x3", "5x5", "7x7", "7x7-unpadded-rows", "3x3-over-128-kib", "3x3-planes-faster", "3x3-band-over-4-mib",
        "3x3-input-over-8-mib", "3x3-stride-2", "5x5-stride-2", "7x7-stride-2", "3x3-up-to-16x16", "3x3-up-to-8x8"])
def test_depthwise_by_channel_blocks(kernel, padding, size, on_blocks, stride, grad_weight_on_blocks, path):
    """Depthwise 3x3, 5x5 and 7x7 float32 layers at stride 1 or 2 with a multiple of 8 channels
    run a vector's channels at a time (8 in the AVX2 build, 16 in the AVX-512 one where the
    channels come in sixteens: depthwise_by_channel_blocks), forward and, at
    stride 1, input gradient: right within float32's bounds of the float64 result, on rows of
    every width against its blocks of 8 pixels, whatever the padding (float64 there as
    F.conv2d). A 3x3 layer runs on the blocks (told apart from the planes' kernel, 17 channels, no
    multiple of 8, by the NaN their products with the padding make of an infinite tap) but on
    the planes that kernel takes from the blocks: of 400 pixels up to 128 KiB, padded by 1 (20 x
    20; 19 x 21 and 183 x 181, 129 KiB, stay on the blocks), and where a task's band of 8 padded
    planes would outgrow 4 MiB (370 x 370). At stride 2 the blocks' results are checked
    alone (mutation-checked: the row kernel's pixels read as at stride 1). Their weight gradients
    (channel_blocks_take_grad_weight): 5x5 and 7x7 ones, and 3x3 ones of stride-1 planes under
    400 output pixels or of inputs over 8 MiB (260 x 256), differ in their bits from the planes'
    kernels' (mutation-checked); the others' are those kernels'. With AVX-512, 3x3 layers at
    stride 1, forward and weight gradient, keep to the AVX-512 build's planes' kernels but for
    planes up to 16 x 16 pixels where AVX-512 runs at full width, up to 8 x 8 on Zen 4. 24 channels, no
    multiple of 16, run in blocks of 8 in either build."""
    skip_without_avx512(path)
    if path == "auto-avx512-isa" and kernel == 3 and stride == 1:
        on_blocks = grad_weight_on_blocks = not avx512_strips_take_3x3(size)
    conv = Conv(2 if size[0] < 370 else 1, 16, 16, size, (kernel, kernel), (stride, stride), padding, (1, 1), 16, True)
    for dtype in (torch.float32, torch.float64):
        check_layer_on_path(conv, dtype, path)
    if kernel > 3:
        check_layer_on_path(Conv(1, 24, 24, size, (kernel, kernel), (stride, stride), padding, (1, 1), 24, False),
                            torch.float32, path)
    if kernel == 3 and stride == 1:
        # Both kernels sum the taps in one order, but the blocks multiply the zero rows that pad
        # the plane and the planes' kernel skips them: with an infinite tap in kernel row 0, the
        # blocks' first output row is NaN (inf x 0), the planes' (as F.conv2d's) finite.
        x, w, b = torch.randn(conv.batch, 17, *size), torch.randn(17, 1, 3, 3), torch.randn(17)
        args = ([stride, stride], list(padding), [1, 1])
        with cpu_path(path):
            blocks = torch.ops.conv_ext.conv2d(x[:, :16], w[:16], b[:16], *args, 16)
            planes = torch.ops.conv_ext.conv2d(x, w, b, *args, 17)[:, :16]
            w[:, 0, 0, 1] = float("inf")
            first_row = torch.ops.conv_ext.conv2d(x[:, :16], w[:16], b[:16], *args, 16)[:, :, 0]
        assert_scaled_close(blocks, planes, 1e-6, "output")
        assert bool(torch.isnan(first_row).all()) == on_blocks and bool(torch.isnan(first_row).any()) == on_blocks
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(conv.batch, 17, *size, generator=generator)
    x[:, :, 0] *= 1000
    gy = torch.randn(conv.batch, 17, *[(n + 2 * p - kernel) // stride + 1 for n, p in zip(size, padding)],
                     generator=generator)
    args = ([kernel, kernel], [stride, stride], list(padding), [1, 1])
    with cpu_path(path):
        blocks = torch.ops.conv_ext.conv2d_grad_weight(x[:, :16], gy[:, :16], *args, 16)
        planes = torch.ops.conv_ext.conv2d_grad_weight(x, gy, *args, 17)[:16]
    assert_scaled_close(blocks, planes, 1e-5, "weight gradient")  # two float32 sums, each up to ~2e-6 off here
    assert torch.equal(blocks, planes) != grad_weight_on_blocks


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the AVX2 build")
@pytest.mark.parametrize("path", ["auto-avx2-isa", "auto-avx512-isa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("conv", [
    Conv(2, 16, 16, (41, 48), (3, 3), (2, 2), (1, 1), (1, 1), 16, True),  # 504 output pixels: off the channel blocks
    Conv(1, 8, 8, (57, 43), (3, 3), (2, 2), (1, 1), (1, 1), 8, False),  # odd sizes, rows prefetched
    Conv(2, 5, 5, (9, 7), (3, 3), (2, 2), (1, 1), (1, 1), 5, True),  # rows narrower than a vector
    Conv(2, 16, 16, (30, 41), (3, 3), (2, 2), (1, 1), (1, 1), 16, False),  # even height; 41 = 2 x 16 + 9 columns
    Conv(1, 6, 12, (20, 36), (3, 3), (2, 2), (1, 1), (1, 1), 6, True),  # two output channels per group
], ids=["even", "odd", "narrow", "even-height", "multiplier"])
def test_depthwise_3x3_stride_2_planes(conv, dtype, path):
    """Depthwise 3x3 layers at stride 2 padded by 1 run in the AVX2 build on a planes' kernel that
    splits each input row into its even and odd columns (forward_plane_depthwise_stride_2_3x3):
    float32 where the channel blocks are not faster (depthwise_3x3_stride_2_planes_faster) or
    do not apply, float64 wherever; their weight gradient splits the rows alike
    (grad_weight_depthwise_stride_2_3x3), and with one output channel per group their input
    gradient makes each pair of input rows' even and odd columns from grad_output's rows in place
    (grad_input_depthwise_stride_2_3x3; in the one-pass backward where the layer has channels for
    every thread, else the op). Right against F.conv2d, forward and gradients, on rows that are
    whole vectors, end past the row on odd sizes, are narrower than a vector, or end a column
    into the next vector, on odd and even heights (mutation-checked). AVX-512 CPUs run the same
    kernels."""
    skip_without_avx512(path)
    check_layer_on_path(conv, dtype, path)


@pytest.mark.parametrize("path", ["auto", "direct-generic-isa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("conv", [
    Conv(2, 16, 16, (23, 30), (5, 5), (2, 2), (2, 2), (1, 1), 16, True),  # MobileNet's and EfficientNet's
    Conv(1, 8, 8, (28, 27), (7, 7), (2, 2), (3, 3), (1, 1), 8, False),
    Conv(2, 6, 6, (15, 16), (3, 3), (2, 2), (1, 1), (1, 1), 6, True),  # by phases in the baseline build
    Conv(1, 4, 8, (17, 18), (5, 3), (2, 2), (1, 2), (1, 1), 4, True),  # two output channels per group
], ids=["5x5", "7x7", "3x3", "5x3-multiplier"])
def test_stride_2_weight_gradients_by_phases(conv, dtype, path):
    """The direct weight gradient of layers at stride 2 (undilated) sums over the input's four
    stride phases, each tap one long dot product over grad_output's rows and a phase
    (grad_weight_planes_stride_2), wherever no kernel of the build reads 3x3 rows: depthwise 5x5
    and 7x7 layers padded by half their kernel (which had spread grad_output out), a 3x3 layer
    in the baseline build, and a layer of two output channels per group with other padding
    (which had taken the strided planes' loops); forward and gradients right against F.conv2d on
    even and odd sizes (mutation-checked)."""
    check_layer_on_path(conv, dtype, path)


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="the row kernels need AVX2")
@pytest.mark.parametrize("path", ["auto-avx2-isa", "auto-avx512-isa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("conv", [
    Conv(2, 15, 15, (37, 40), (5, 5), (1, 1), (2, 2), (1, 1), 15, True),  # blocks inside and on every edge
    Conv(2, 6, 2, (21, 35), (5, 5), (1, 1), (1, 3), (1, 2), 2, True),  # 3 channels per group, columns dilated
    Conv(2, 15, 15, (37, 40), (7, 7), (1, 1), (3, 3), (1, 1), 15, True),  # ConvNeXt's 7x7
], ids=["depthwise", "grouped-dilated-columns", "depthwise-7x7"])
def test_square_kernels_by_blocks_of_rows(conv, dtype, path):
    """5x5 and 7x7 kernels with undilated rows and one output channel per group run their
    forward, and at stride 1 their input gradient, by blocks of output rows (8 rows of a vector
    with AVX-512, 4 of two vectors with AVX2: forward_plane_rows_square), the blocks inside the
    plane unmasked, the last ones partial or past the rows' end: right against float64 in both
    vector builds. 15 channels: the AVX2 build takes float32 depthwise layers of a multiple of 8
    to its channel blocks instead (depthwise_by_channel_blocks)."""
    skip_without_avx512(path)
    check_layer_on_path(conv, dtype, path)
