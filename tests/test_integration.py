"""conv_ext inside the PyTorch ecosystem: torch.export, torch.func's transforms, autocast,
fake-tensor layouts, DistributedDataParallel, pickling and torch.save."""
import io
import os
import pickle

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import conv_ext

from conftest import DEVICES


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        conv_ext.Conv2d(3, 8, 3, padding=1), nn.ReLU(), conv_ext.Conv2d(8, 4, 3, stride=2, groups=2)
    )


def test_torch_export_keeps_the_conv_ext_ops():
    model = small_model()
    x = torch.randn(2, 3, 10, 10)
    exported = torch.export.export(model, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "conv_ext.conv2d.default" in targets, targets
    torch.testing.assert_close(exported.module()(x), model(x))


def dual_tangent(f, x, w, b):
    """f's forward-mode derivative along ones, on torch.autograd.forward_ad's dual tensors."""
    with fwAD.dual_level():
        return fwAD.unpack_dual(f(*(fwAD.make_dual(t, torch.ones_like(t)) for t in (x, w, b)))).tangent


TRANSFORMS = {
    # name: (transform of f(x, w, b), its arguments from (x, w, b))
    "jvp": lambda f, x, w, b: torch.func.jvp(f, (x, w, b), tuple(torch.ones_like(t) for t in (x, w, b)))[1],
    "forward_ad": dual_tangent,
    "grad": lambda f, x, w, b: torch.func.grad(lambda *a: f(*a).square().sum(), argnums=(0, 1, 2))(x, w, b),
    "jacrev": lambda f, x, w, b: torch.func.jacrev(f, argnums=(0, 1))(x[:1], w, b),
    "jacfwd": lambda f, x, w, b: torch.func.jacfwd(f, argnums=(0, 1))(x[:1], w, b),
    "hessian": lambda f, x, w, b: torch.func.hessian(lambda x, w: f(x, w, b).sin().sum(), argnums=(0, 1))(x[:1], w),
    "per-sample grads": lambda f, x, w, b: torch.func.vmap(
        torch.func.grad(lambda w, b, x: f(x.unsqueeze(0), w, b).square().sum(), argnums=(0, 1)), in_dims=(None, None, 0)
    )(w, b, x),
    "vmap": lambda f, x, w, b: torch.func.vmap(f, in_dims=(1, None, None))(x.unsqueeze(1), w, b),
    # A weight and bias per sample, and the input's gradient through them.
    "vmap weights": lambda f, x, w, b: torch.func.vmap(f, in_dims=(None, 0, 0))(x, torch.stack([w, -w]), torch.stack([b, b])),
    "per-weight input grads": lambda f, x, w, b: torch.func.vmap(
        torch.func.grad(lambda x, w: f(x, w, b).square().sum()), in_dims=(None, 0)
    )(x, torch.stack([w, w.flip(-1), 2 * w])),
}


def test_operators_refuse_dual_tensors():
    """Called directly, each operator refuses a forward-mode tangent with a message (its C++
    autograd kernel has no jvp) rather than drop it."""
    ops = torch.ops.conv_ext
    x, w, b, gy = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), torch.randn(3), torch.randn(1, 3, 3, 3)
    conv = ([1, 1], [0, 0], [1, 1], 1)
    calls = [  # (the operand given a tangent, the call)
        (x, lambda t: ops.conv2d(t, w, b, *conv)), (b, lambda t: ops.conv2d(x, w, t, *conv)),
        (w, lambda t: ops.conv2d_grad_input(gy, t, [5, 5], *conv)), (gy, lambda t: ops.conv2d_grad_weight(x, t, [3, 3], *conv)),
    ]
    for primal, call in calls:
        with fwAD.dual_level(), pytest.raises(RuntimeError, match="jvp is not implemented"):
            call(fwAD.make_dual(primal, torch.ones_like(primal)))


# The operators' own vmap rules run, not PyTorch's per-sample loop (which warns).
@pytest.mark.filterwarnings("error:There is a performance drop")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("conv", [
    dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=1, kernel=(3, 2)),
    dict(stride=1, padding="same", dilation=1, groups=2, kernel=(2, 2)),  # uneven padding
], ids=["strided", "same"])
@pytest.mark.parametrize("fn", ["conv2d", "Conv2dFunction"])
def test_torch_func_transforms_match_f_conv2d(fn, conv, transform, device):
    """torch.func's transforms and forward-mode AD, which do not take the C++ autograd kernels, go
    through the autograd.Functions of the operators, and give what they give on F.conv2d
    (float64)."""
    conv = dict(conv)
    kernel = conv.pop("kernel")
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.rand(*shape, generator=gen, dtype=torch.float64).to(device) * 2 - 1
               for shape in ((3, 4, 6, 5), (6, 4 // conv["groups"], *kernel), (6,)))
    ours = {
        "conv2d": lambda x, w, b: conv_ext.conv2d(x, w, b, **conv),
        "Conv2dFunction": lambda x, w, b: conv_ext.Conv2dFunction.apply(x, w, b, *conv.values()),
    }[fn]
    result = TRANSFORMS[transform](ours, x, w, b)
    expected = TRANSFORMS[transform](lambda x, w, b: F.conv2d(x, w, b, **conv), x, w, b)
    torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("fn", [
    conv_ext.conv2d, lambda x, w, b, padding: conv_ext.Conv2dFunction.apply(x, w, b, 1, padding, 1, 1),
], ids=["conv2d", "Conv2dFunction"])
def test_autocast_runs_in_lower_precision_like_f_conv2d(fn, device, dtype):
    x = torch.randn(2, 4, 9, 9, device=device, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    results = []
    for f in (fn, F.conv2d):
        with torch.autocast(device_type=device, dtype=dtype):
            y = f(x, w, b, padding=1)
        grads = torch.autograd.grad(y.float().square().sum(), (x, w, b))
        results.append((y, grads))
    (y, grads), (y_ref, grads_ref) = results
    assert y.dtype == y_ref.dtype == dtype
    tol = dict(rtol=2e-2, atol=2e-2 * y_ref.abs().max().item())
    torch.testing.assert_close(y, y_ref, **tol)
    for g, g_ref, leaf in zip(grads, grads_ref, (x, w, b)):
        assert g.dtype == leaf.dtype == torch.float32
        torch.testing.assert_close(g, g_ref, rtol=5e-2, atol=5e-2 * g_ref.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fake_kernels_report_the_real_layout(device, layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 4, 9, 8, device=device).contiguous(memory_format=fmt)
    w = torch.randn(6, 4, 3, 3, device=device)
    conv = ([2, 1], [1, 1], [1, 1], 1)
    ops = torch.ops.conv_ext

    def calls(x, w):
        y = ops.conv2d(x, w, None, *conv)
        return y, ops.conv2d_grad_input(y, w, x.shape[2:], *conv), ops.conv2d_grad_weight(x, y, w.shape[2:], *conv)

    real = calls(x, w)
    with FakeTensorMode() as mode:
        fake = calls(mode.from_tensor(x), mode.from_tensor(w))
    for r, f in zip(real, fake):
        assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype)
    assert real[0].is_contiguous(memory_format=fmt)


def test_pickle_and_torch_save_round_trip():
    model = small_model()
    x = torch.randn(1, 3, 8, 8)
    clone = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(clone(x), model(x))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = nn.Sequential(
        conv_ext.Conv2d(3, 8, 3, padding=1), nn.ReLU(), conv_ext.Conv2d(8, 4, 3, stride=2, groups=2)
    )
    fresh.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(fresh(x), model(x))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), model(x))


def _ddp_worker(rank, world_size, data, out_dir):
    # A file store in the test's directory: a TCP port found free may be taken before it is bound.
    dist.init_process_group(
        "gloo", init_method=f"file://{os.path.join(out_dir, 'store')}", rank=rank, world_size=world_size
    )
    try:
        torch.set_num_threads(1)
        model = nn.parallel.DistributedDataParallel(small_model().double())
        shard = data.chunk(world_size)[rank]
        model(shard).square().mean().backward()
        if rank == 0:
            torch.save([p.grad for p in model.parameters()], os.path.join(out_dir, "grads.pt"))
        # DDP's reducer, which holds the group's pending work, goes before the group does (a rank
        # once aborted in teardown in a full run: "terminate called without an active exception").
        del model
        dist.barrier()  # nobody leaves while another still talks to it
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_equal_one_process_on_the_whole_batch(tmp_path):
    """Two gloo processes each take half the batch; DDP's averaged gradients equal the gradients
    of one process on the whole batch."""
    data = torch.randn(4, 3, 10, 10, dtype=torch.float64)
    mp.spawn(_ddp_worker, args=(2, data, str(tmp_path)), nprocs=2, join=True)
    ddp_grads = torch.load(tmp_path / "grads.pt")
    model = small_model().double()
    model(data).square().mean().backward()
    for g_ddp, p in zip(ddp_grads, model.parameters()):
        torch.testing.assert_close(g_ddp, p.grad)
