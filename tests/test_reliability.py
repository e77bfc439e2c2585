"""Reliability: differential fuzzing against F.conv2d (valid and invalid arguments), no memory
growth, thread safety, determinism, huge tensors, NaN/inf propagation, Ctrl-C."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

import conv_ext
from conv_ext import reference

from configs import Conv, convs
from conftest import DEVICES


# ---------------------------------------------------------------------------------------------
# Differential fuzzing


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=1500)
@given(conv=convs(max_batch=4, max_size=12), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_fuzz_forward_agrees_with_f_conv2d(conv, dtype, seed, device):
    x, w, b = conv.tensors(dtype, device, seed=seed)
    ours = conv_ext.conv2d(x, w, b, **conv.kwargs())
    exact = F.conv2d(x.double(), w.double(), None if b is None else b.double(), **conv.kwargs())
    assert ours.shape == exact.shape and ours.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    scale = exact.abs().max().item() if exact.numel() else 0.0
    torch.testing.assert_close(ours.double(), exact, rtol=0, atol=tol * scale + 1e-300)


ARGUMENT = st.one_of(st.integers(-2, 4), st.tuples(st.integers(-1, 3), st.integers(-1, 3)),
                     st.lists(st.integers(0, 3), min_size=0, max_size=3))


def _resize(args, which, dim, size):
    """args[which] with size `size` along dim (if it has that dim)."""
    t = args[which]
    if t is not None and -t.dim() <= dim < t.dim():
        shape = list(t.shape)
        shape[dim] = size
        args[which] = torch.randn(shape).to(t.dtype)


def _drop_leading_dims(draw, args):
    if args[0].dim() > 1:
        args[0] = torch.randn(args[0].shape[draw(st.integers(1, args[0].dim() - 1)) :])


def _change_dtype(draw, args):
    which = draw(st.sampled_from([0, 1]))
    args[which] = args[which].to(draw(st.sampled_from([torch.int64, torch.float64, torch.float16, torch.bool])))


# Ways to break a valid call [input, weight, bias, stride, padding, dilation, groups], one
# thing each.
MUTATIONS = {
    "input rank": _drop_leading_dims,
    "input extra dim": lambda draw, a: a.__setitem__(0, a[0].unsqueeze(0)),
    "weight rank": lambda draw, a: a.__setitem__(1, a[1].flatten(draw(st.integers(0, a[1].dim() - 1)))),
    "input channels": lambda draw, a: _resize(a, 0, -3, draw(st.integers(0, 7))),
    "input size": lambda draw, a: _resize(a, 0, -1, draw(st.integers(0, 3))),
    "weight out channels": lambda draw, a: _resize(a, 1, 0, draw(st.integers(0, 7))),
    "kernel size": lambda draw, a: _resize(a, 1, -2, draw(st.integers(0, 12))),
    "dtype": _change_dtype,
    "bias": lambda draw, a: a.__setitem__(2, torch.randn([draw(st.integers(0, 9)) for _ in range(draw(st.integers(0, 2)))])),
    "stride": lambda draw, a: a.__setitem__(3, draw(ARGUMENT)),
    "padding": lambda draw, a: a.__setitem__(4, draw(st.one_of(ARGUMENT, st.sampled_from(["same", "valid", "full"])))),
    "dilation": lambda draw, a: a.__setitem__(5, draw(ARGUMENT)),
    "groups": lambda draw, a: a.__setitem__(6, draw(st.integers(-1, 5))),
}


@st.composite
def any_call(draw):
    """A valid call with none, one or two things broken: wrong ranks, sizes, channel counts,
    dtypes, bias shapes, negative or malformed hyper-parameters, padding strings."""
    conv = draw(convs(max_batch=2, max_size=5))
    x, w, b = conv.tensors(torch.float32, "cpu", seed=draw(st.integers(0, 99)))
    args = [x, w, b, *conv.kwargs().values()]
    for name in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=2)):
        MUTATIONS[name](draw, args)
    return args


def torch_conv2d(input, *args):
    """F.conv2d on a contiguous copy of the input. torch 2.13's oneDNN float32 kernel crashes the
    process (SIGSEGV) on some channels_last inputs, e.g. shape (2, 2, 3, 1) with a 1x1 kernel,
    stride (1, 2), padding (2, 3) and dilation 2; the values are the same either way."""
    return F.conv2d(input.contiguous(), *args)


def rejected_by_torch(input, weight, bias, *rest):
    try:
        torch_conv2d(input, weight, bias, *rest)
    except Exception:  # noqa: BLE001 - any ordinary exception is torch's way of saying no
        return True
    return False


def rejected_by_torch_if_not_empty(input, *args):
    """F.conv2d skips its checks for empty input (dtype mismatch, zero dilation, ...) where we
    check anyway: would it reject the same call on an input with its zero sizes made 1?"""
    return input.numel() == 0 and rejected_by_torch(torch.ones([max(1, n) for n in input.shape]).to(input), *args)


@settings(max_examples=2000)
@given(call=any_call())
@example(call=[torch.randn(2, 3, 0, 4), torch.randn(4, 3, 3, 3), None, 1, 2, 1, 1])
@example(call=[torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3), torch.randn(2), [], 0, 1, 2])
@example(call=[torch.randn(0, 1, 1, 1).double(), torch.randn(1, 1, 1, 1).double(), torch.randn(1), 1, "same", 1, 1])
@example(call=[torch.randn(0, 3, 8, 6), torch.randn(1, 3, 3, 3).double(), torch.randn(1), 1, 0, 1, 1])
@example(call=[torch.randn(2, 2, 3, 1).contiguous(memory_format=torch.channels_last),
               torch.randn(1, 2, 1, 1), torch.randn(1), (1, 2), (2, 3), (2, 2), 1])
def test_fuzz_any_arguments_raise_or_agree(call):
    """Where F.conv2d rejects a call we raise an ordinary exception with a message; where it
    accepts, we agree (integer dtypes, which F.conv2d computes on CPU, we reject)."""
    input, weight, bias, *rest = call
    torch_rejects = rejected_by_torch(*call)
    try:
        ours = conv_ext.conv2d(*call)
    except (RuntimeError, TypeError, ValueError) as error:
        event("rejected")
        assert str(error), "an exception without a message"
        integer = not (input.is_floating_point() and weight.is_floating_point())
        # F.conv2d rejects mixed dtypes, but its 1x1 path lets a bias of another dtype through.
        mixed = len({t.dtype for t in (input, weight, bias) if t is not None}) > 1
        assert torch_rejects or integer or mixed or rejected_by_torch_if_not_empty(*call), (
            f"F.conv2d accepted the call, we raised {error!r}")
        return
    assert not torch_rejects, "F.conv2d rejected the call, we accepted it"
    event("accepted")
    if input.dim() >= 3 and input.shape[-3] == 0:  # no input channels: torch's shape is off
        expected = reference.conv2d(*call)
    else:
        expected = torch_conv2d(*call)
    torch.testing.assert_close(ours, expected.to(ours.dtype), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Resources, threads, determinism


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_no_memory_growth_over_10000_calls():
    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)

    def step():
        y = conv_ext.conv2d(x, w, b, stride=(1, 2), padding=1, groups=2)
        torch.autograd.grad(y.sum(), (x, w, b))

    for _ in range(1000):  # warm up allocator caches
        step()
    before = resident_bytes()
    for _ in range(10_000):
        step()
    growth = resident_bytes() - before
    assert growth < 8 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 10,000 calls"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_no_cuda_memory_growth_over_10000_calls():
    x = torch.randn(2, 4, 12, 12, device="cuda", requires_grad=True)
    w = torch.randn(6, 4, 3, 3, device="cuda", requires_grad=True)
    for _ in range(100):
        torch.autograd.grad(conv_ext.conv2d(x, w, padding=1).sum(), (x, w))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(10_000):
        torch.autograd.grad(conv_ext.conv2d(x, w, padding=1).sum(), (x, w))
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


CONFIGS = [
    Conv(3, 6, 8, (15, 13), (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    Conv(2, 6, 6, (40, 41), (3, 3), (2, 1), (1, 0), (1, 2), 3, False),
    Conv(4, 8, 4, (9, 9), (1, 1), (1, 1), (0, 0), (1, 1), 2, True),
]


def all_results(conv, device, seed):
    x, w, b = conv.tensors(torch.float32, device, requires_grad=True, seed=seed)
    y = conv_ext.conv2d(x, w, b, **conv.kwargs())
    return [y.detach(), *torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], torch.ones_like(y))]


@pytest.mark.parametrize("device", DEVICES)
def test_concurrent_calls_match_serial_ones(device):
    """Eight Python threads calling at once get exactly what one caller gets: the kernels keep
    no hidden global state."""
    jobs = [(conv, seed) for seed in range(4) for conv in CONFIGS]
    serial = [all_results(conv, device, seed) for conv, seed in jobs]
    concurrent = [None] * len(jobs)
    errors = []

    def worker(indices):
        try:
            for _ in range(3):
                for i in indices:
                    conv, seed = jobs[i]
                    concurrent[i] = all_results(conv, device, seed)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(range(k, len(jobs), 8),)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(concurrent, serial):
        for a, b in zip(got, want):
            assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "use_deterministic_algorithms"])
def test_repeated_calls_are_bitwise_identical(device, deterministic):
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        for conv in CONFIGS:
            first = all_results(conv, device, seed=0)
            for _ in range(3):
                for a, b in zip(all_results(conv, device, seed=0), first):
                    assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(previous)


# ---------------------------------------------------------------------------------------------
# Huge tensors


def available_bytes():
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError):
        return 0


@pytest.mark.slow
@pytest.mark.skipif(available_bytes() < 14 * 2**30, reason="needs 14 GiB of free memory")
def test_input_over_2_to_the_31_elements():
    """An input of more than 2**31 elements: 64-bit indexing everywhere. Sampled outputs, the last
    ones among them, match F.conv2d on the corresponding crop."""
    side = 46_341  # side**2 > 2**31
    # Row plus column values: distinct wherever an index goes wrong, and filled in 14 s (most of it
    # the first touch of 8.6 GB) where uniform_ took 94 s, serially.
    gen = torch.Generator().manual_seed(0)
    rows, columns = (torch.rand(side, generator=gen) - 0.5 for _ in range(2))
    x = (rows[:, None] + columns).view(1, 1, side, side)
    assert x.numel() > 2**31
    w = torch.randn(2, 1, 3, 3)
    y = conv_ext.conv2d(x, w, stride=3, padding=1)
    out = y.shape[-1]
    samples = [(0, 0), (out - 1, out - 1), (out - 1, 0), (0, out - 1)]
    samples += [tuple(int(v) for v in torch.randint(0, out, (2,), generator=gen)) for _ in range(60)]
    for i, j in samples:
        # Output (i, j) reads the 3x3 window at input (3i - 1, 3j - 1), zero outside (padding 1).
        top, left = 3 * i - 1, 3 * j - 1
        r0, c0, r1, c1 = max(top, 0), max(left, 0), min(top + 3, side), min(left + 3, side)
        crop = torch.zeros(1, 1, 3, 3)
        crop[..., r0 - top : r1 - top, c0 - left : c1 - left] = x[..., r0:r1, c0:c1]
        torch.testing.assert_close(y[0, :, i, j], F.conv2d(crop, w)[0, :, 0, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.mem_get_info()[0] < 48 * 2**30,
                    reason="needs a CUDA GPU with 48 GiB free")
def test_cuda_channels_last_mma_over_2_to_the_31_elements():
    """The channels-last tensor-core GEMMs (bfloat16, 8 channels) on an input and output of more
    than 2**31 elements each: the forward's sampled outputs, the last among them, match F.conv2d
    on their crops; the weight gradient, a sum over 2.7e8 pixels split across blocks, matches a
    float32 sum within bfloat16's rounding."""
    side = 16_400  # 8 * side**2 > 2**31
    x = torch.empty(1, 8, side, side, device="cuda", dtype=torch.bfloat16, memory_format=torch.channels_last)
    x.uniform_(-1, 1)
    assert x.numel() > 2**31
    w = torch.randn(8, 8, 3, 3, device="cuda", dtype=torch.bfloat16)
    y = conv_ext.conv2d(x, w, padding=1)
    gen = torch.Generator().manual_seed(0)
    samples = [(0, 0), (side - 1, side - 1), (side - 1, 0), (0, side - 1)]
    samples += [tuple(int(v) for v in torch.randint(0, side, (2,), generator=gen)) for _ in range(60)]
    for i, j in samples:
        # Output (i, j) reads the 3x3 window at input (i - 1, j - 1), zero outside (padding 1).
        top, left = i - 1, j - 1
        r0, c0, r1, c1 = max(top, 0), max(left, 0), min(top + 3, side), min(left + 3, side)
        crop = torch.zeros(1, 8, 3, 3, dtype=torch.float64, device="cuda")
        crop[..., r0 - top : r1 - top, c0 - left : c1 - left] = x[..., r0:r1, c0:c1].double()
        expected = F.conv2d(crop, w.double())[0, :, 0, 0]
        torch.testing.assert_close(y[0, :, i, j].double(), expected, rtol=torch.finfo(torch.bfloat16).eps / 2,
                                   atol=1e-5 * expected.abs().max().item())

    gw = torch.ops.conv_ext.conv2d_grad_weight(x, y, [3, 3], [1, 1], [1, 1], [1, 1], 1)
    padded, gy = F.pad(x[0].float(), (1, 1, 1, 1)), y[0].float().reshape(8, -1)
    expected = torch.empty(8, 8, 3, 3, device="cuda")
    for r in range(3):
        for s in range(3):
            expected[:, :, r, s] = gy @ padded[:, r : r + side, s : s + side].reshape(8, -1).T
    torch.testing.assert_close(gw.float(), expected, rtol=0, atol=8e-3 * expected.abs().max().item())


def test_impossible_size_raises_a_clear_error():
    """A 2**40-element input (a stride-0 view, no memory behind it) must be materialised: the
    allocation fails with an ordinary error rather than overflowing."""
    x = torch.zeros(1).expand(1, 1, 2**20, 2**20)
    w = torch.ones(1, 1, 1, 1)
    with pytest.raises(RuntimeError, match="allocate"):
        conv_ext.conv2d(x, w)


# ---------------------------------------------------------------------------------------------
# Special values, interruption


@pytest.mark.parametrize("device", DEVICES)
def test_nan_and_inf_propagate_like_f_conv2d(device):
    x = torch.randn(2, 3, 9, 9, device=device)
    x[0, 0, 2, 3] = float("nan")
    x[1, 1, 6, 6] = float("inf")
    x[1, 2, 0, 0] = -float("inf")
    w = torch.rand(4, 3, 3, 3, device=device) + 0.1  # positive, so infinities of one sign stay
    for kwargs in (dict(padding=1), dict(stride=2), dict(padding=2, dilation=2)):
        ours, theirs = conv_ext.conv2d(x, w, **kwargs), F.conv2d(x, w, **kwargs)
        assert torch.equal(ours.isnan(), theirs.isnan()), kwargs
        assert torch.equal(ours.isposinf(), theirs.isposinf()), kwargs
        assert torch.equal(ours.isneginf(), theirs.isneginf()), kwargs
        finite = theirs.isfinite()
        torch.testing.assert_close(ours[finite], theirs[finite])


def test_ctrl_c_leaves_the_process_usable():
    """SIGINT during a stream of long calls raises KeyboardInterrupt between calls; afterwards
    the op still works."""
    script = textwrap.dedent("""
        import signal, sys, torch, conv_ext
        # Python leaves SIGINT ignored when it starts so (under a parent run as a background job).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        x, w = torch.randn(8, 64, 64, 64), torch.randn(64, 64, 3, 3)
        print("ready", flush=True)
        try:
            while True:
                conv_ext.conv2d(x, w, padding=1)
        except KeyboardInterrupt:
            pass
        y = conv_ext.conv2d(x[:1, :, :8, :8], w, padding=1)
        expected = torch.nn.functional.conv2d(x[:1, :, :8, :8], w, padding=1)
        ok = bool((y - expected).abs().max() <= 1e-5 * expected.abs().max())  # float32's bound, any algorithm
        print("usable" if ok else "wrong", flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0
    assert out.strip() == "usable"
