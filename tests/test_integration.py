"""conv_ext inside the PyTorch ecosystem: torch.export, autocast, fake-tensor layouts,
DistributedDataParallel, pickling and torch.save."""
import io
import os
import pickle
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
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


def _ddp_worker(rank, world_size, port, data, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        torch.set_num_threads(1)
        model = nn.parallel.DistributedDataParallel(small_model().double())
        shard = data.chunk(world_size)[rank]
        model(shard).square().mean().backward()
        if rank == 0:
            torch.save([p.grad for p in model.parameters()], os.path.join(out_dir, "grads.pt"))
        dist.barrier()  # nobody leaves while another still talks to it
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_one_process_on_the_whole_batch(tmp_path):
    """Two gloo processes each take half the batch; DDP's averaged gradients equal the gradients
    of one process on the whole batch."""
    data = torch.randn(4, 3, 10, 10, dtype=torch.float64)
    mp.spawn(_ddp_worker, args=(2, free_port(), data, str(tmp_path)), nprocs=2, join=True)
    ddp_grads = torch.load(tmp_path / "grads.pt")
    model = small_model().double()
    model(data).square().mean().backward()
    for g_ddp, p in zip(ddp_grads, model.parameters()):
        torch.testing.assert_close(g_ddp, p.grad)
