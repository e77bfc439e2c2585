"""conv_ext.Conv2d / Conv1d in place of nn.Conv2d / nn.Conv1d, and convert(): same parameters,
errors, results, gradients and training."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import conv_ext

from conftest import DEVICES

PAIRS = {2: (conv_ext.Conv2d, nn.Conv2d), 1: (conv_ext.Conv1d, nn.Conv1d)}


def twins(dims, device, **kwargs):
    """A torch module and a conv_ext module with the same parameters."""
    ours_cls, theirs_cls = PAIRS[dims]
    torch.manual_seed(0)
    theirs = theirs_cls(**kwargs, device=device, dtype=torch.float64)
    ours = ours_cls(**kwargs, device=device, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


MODULE_ARGS = [
    dict(in_channels=3, out_channels=5, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2, bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=4, padding="same", dilation=2),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding="valid"),
    *(dict(in_channels=3, out_channels=4, kernel_size=3, padding=2, padding_mode=mode)
      for mode in ("zeros", "reflect", "replicate", "circular")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kwargs", MODULE_ARGS, ids=lambda k: "-".join(f"{v}" for v in k.values()))
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("dims", [2, 1], ids=["2d", "1d"])
def test_module_matches_torch(dims, kwargs, unbatched, device):
    ours, theirs = twins(dims, device, **kwargs)
    spatial = (9, 8)[:dims]
    shape = (kwargs["in_channels"], *spatial) if unbatched else (2, kwargs["in_channels"], *spatial)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    y, y_ref = ours(x), theirs(x)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *ours.parameters()], gy)
    grads_ref = torch.autograd.grad(y_ref, [x, *theirs.parameters()], gy)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("dims", [2, 1], ids=["2d", "1d"])
def test_module_has_the_torch_interface(dims):
    ours_cls, theirs_cls = PAIRS[dims]
    ours = ours_cls(3, 8, 3, stride=2, padding=1, bias=False, padding_mode="reflect")
    theirs = theirs_cls(3, 8, 3, stride=2, padding=1, bias=False, padding_mode="reflect")
    assert isinstance(ours, theirs_cls)
    assert repr(ours) == repr(theirs)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in theirs.named_parameters()
    ]
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())


def test_module_initialises_like_torch():
    torch.manual_seed(3)
    theirs = nn.Conv2d(16, 32, 3)
    torch.manual_seed(3)
    ours = conv_ext.Conv2d(16, 32, 3)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.bias, theirs.bias, rtol=0, atol=0)


BAD_MODULE_ARGS = [
    dict(in_channels=3, out_channels=8, kernel_size=3, groups=2),
    dict(in_channels=4, out_channels=6, kernel_size=3, groups=4),
    dict(in_channels=4, out_channels=8, kernel_size=3, groups=0),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding="same", stride=2),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding="full"),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding_mode="mirror"),
]


@pytest.mark.parametrize("dims", [2, 1], ids=["2d", "1d"])
@pytest.mark.parametrize("kwargs", BAD_MODULE_ARGS, ids=lambda k: "-".join(f"{v}" for v in k.values()))
def test_module_rejects_what_torch_rejects(dims, kwargs):
    ours_cls, theirs_cls = PAIRS[dims]
    with pytest.raises(Exception) as theirs:
        theirs_cls(**kwargs)
    with pytest.raises(type(theirs.value), match=str(theirs.value).replace("(", r"\(").replace(")", r"\)")):
        ours_cls(**kwargs)


class Block(nn.Module):
    """A ResNet basic block, with a strided 1x1 projection when the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


def resnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(), Block(8, 8, 1), Block(8, 16, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Unflatten(1, (1, 16)), nn.Conv1d(1, 2, 3),
        nn.Flatten(1),
    ).double()


def test_convert_replaces_every_conv_in_place():
    model = resnet()
    params = {name: p for name, p in model.named_parameters()}
    assert conv_ext.convert(model) is model
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert len(convs) == 7
    assert all(type(m) in (conv_ext.Conv1d, conv_ext.Conv2d) for m in convs)
    assert all(p is params[name] for name, p in model.named_parameters())


def test_converted_resnet_trains_along_the_same_path():
    reference, model = resnet(), conv_ext.convert(resnet())
    data = torch.randn(6, 3, 20, 20, dtype=torch.float64)
    target = torch.randn(6, 28, dtype=torch.float64)
    for net in (reference, model):
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        net.losses = []
        for _ in range(4):
            opt.zero_grad()
            loss = F.mse_loss(net(data), target)
            loss.backward()
            opt.step()
            net.losses.append(loss.item())
    assert model.losses == pytest.approx(reference.losses, rel=1e-10)
    for p, p_ref in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, p_ref)
    model.eval(), reference.eval()
    torch.testing.assert_close(model(data), reference(data))


def test_convert_leaves_subclasses_alone():
    class Custom(nn.Conv2d):
        pass

    model = nn.Sequential(Custom(2, 2, 1), nn.Conv2d(2, 2, 1))
    conv_ext.convert(model)
    assert type(model[0]) is Custom and type(model[1]) is conv_ext.Conv2d


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kwargs", [
    dict(), dict(stride=2, padding=1, dilation=2, groups=2), dict(padding="same", groups=2),
    dict(padding="valid", stride=(3,)), dict(padding=(2,), dilation=(3,)),
], ids=str)
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_conv1d_matches_f_conv1d(kwargs, unbatched, device):
    groups = kwargs.get("groups", 1)
    x = torch.randn(2, 4, 17, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(6, 4 // groups, 4, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    xs = x[0] if unbatched else x
    y, y_ref = conv_ext.conv1d(xs, w, b, **kwargs), F.conv1d(xs, w, b, **kwargs)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y)
    for g, g_ref in zip(torch.autograd.grad(y, (x, w, b), gy), torch.autograd.grad(y_ref, (x, w, b), gy)):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("input, weight, pattern", [
    (torch.randn(4), torch.randn(2, 4, 3), r"Expected 2D \(unbatched\) or 3D \(batched\) input to conv1d"),
    (torch.randn(1, 2, 4, 5), torch.randn(2, 4, 3), r"Expected 2D \(unbatched\) or 3D"),
    (torch.randn(2, 4, 9), torch.randn(2, 4, 3, 3), r"expected weight to be 3-D"),
    (torch.randn(2, 3, 9), torch.randn(2, 4, 3), r"to have 4 channels"),
])
def test_conv1d_rejects_like_f_conv1d(input, weight, pattern):
    with pytest.raises(RuntimeError):
        F.conv1d(input, weight)
    with pytest.raises(RuntimeError, match=pattern):
        conv_ext.conv1d(input, weight)
