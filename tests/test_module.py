"""conv_ext.Conv2d in place of nn.Conv2d: same parameters, results and gradients."""
import copy

import pytest
import torch
import torch.nn as nn

import conv_ext

from conftest import DEVICES


def twins(device, **kwargs):
    """An nn.Conv2d and a conv_ext.Conv2d with the same parameters."""
    torch.manual_seed(0)
    theirs = nn.Conv2d(**kwargs, device=device, dtype=torch.float64)
    ours = conv_ext.Conv2d(**kwargs, device=device, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


MODULE_ARGS = [
    dict(in_channels=3, out_channels=5, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, groups=2, bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=4, padding="same", dilation=(1, 2)),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding="valid"),
    *(dict(in_channels=3, out_channels=4, kernel_size=3, padding=2, padding_mode=mode)
      for mode in ("zeros", "reflect", "replicate", "circular")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kwargs", MODULE_ARGS, ids=lambda k: "-".join(f"{v}" for v in k.values()))
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_module_matches_nn_conv2d(kwargs, unbatched, device):
    ours, theirs = twins(device, **kwargs)
    shape = (kwargs["in_channels"], 9, 8) if unbatched else (2, kwargs["in_channels"], 9, 8)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    y, y_ref = ours(x), theirs(x)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *ours.parameters()], gy)
    grads_ref = torch.autograd.grad(y_ref, [x, *theirs.parameters()], gy)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


def test_module_is_an_nn_conv2d_with_its_interface():
    ours = conv_ext.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    theirs = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    assert isinstance(ours, nn.Conv2d)
    assert repr(ours) == repr(theirs)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in theirs.named_parameters()
    ]
    theirs.load_state_dict(ours.state_dict())  # and the other way, in twins()


def test_model_trains_like_nn_conv2d():
    """Three SGD steps of a small CNN take the same path with either convolution."""
    torch.manual_seed(0)
    reference = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, groups=2),
        nn.ReLU(), nn.Conv2d(8, 1, 1),
    ).double()
    model = copy.deepcopy(reference)
    for i in (0, 2, 4):
        conv = reference[i]
        model[i] = conv_ext.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                   conv.stride, conv.padding, groups=conv.groups).double()
        model[i].load_state_dict(conv.state_dict())
    data = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    for net in (reference, model):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        net.losses = []
        for _ in range(3):
            opt.zero_grad()
            loss = net(data).square().mean()
            loss.backward()
            opt.step()
            net.losses.append(loss.item())
    assert model.losses == pytest.approx(reference.losses, rel=1e-10)
    for p, p_ref in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, p_ref)
