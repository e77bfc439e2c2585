"""Convolution configurations for the tests: a hypothesis strategy over every argument, and
helpers that build tensors in the requested layout."""
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

LAYOUTS = ("contiguous", "channels_last", "strided", "unbatched")


@dataclass(frozen=True)
class Conv:
    batch: int
    in_channels: int
    out_channels: int
    size: tuple  # input (H, W)
    kernel: tuple
    stride: tuple
    padding: object  # a pair, or 'same' / 'valid'
    dilation: tuple
    groups: int
    bias: bool
    layout: str = "contiguous"

    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def tensors(self, dtype, device, requires_grad=False, seed=0):
        """(input, weight, bias) with values in [-1, 1) (real and imaginary parts, if complex), the
        input in this config's layout."""
        gen = torch.Generator().manual_seed(seed)

        def rand(*shape):
            values = torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1
            if dtype.is_complex:  # an imaginary part of its own
                values = torch.complex(values, torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1)
            return values.to(dtype)

        shape = (self.batch, self.in_channels, *self.size)
        x = make_layout(rand(*shape), self.layout).to(device)
        w = rand(self.out_channels, self.in_channels // self.groups, *self.kernel).to(device)
        b = rand(self.out_channels).to(device) if self.bias else None
        if requires_grad:
            for t in (x, w, b):
                if t is not None:
                    t.requires_grad_()
        return x, w, b


def make_layout(x, layout):
    """x (N, C, H, W) as the same values in another memory layout or rank."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other element of a larger tensor: no dense layout at all
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        big[..., ::2] = x
        return big[..., ::2]
    if layout == "unbatched":
        return x[0]
    return x


def fitting_size(draw, kernel, pad, dilation, max_size):
    """The smallest input the kernel fits in (after padding), plus up to max_size."""
    return tuple(
        max(1, d * (k - 1) + 1 - 2 * p) + draw(st.integers(0, max_size))
        for d, k, p in zip(dilation, kernel, pad)
    )


@st.composite
def convs(draw, max_batch=3, max_size=9, layouts=LAYOUTS):
    # A third of the draws are the stride-1 layers Winograd computes, with channel counts that
    # cover its blocks of 64 channels and their remainders: 3x3 and 5x5, and along one dimension
    # 1 x R and R x 1 for R 3, 5 and 7.
    winograd = draw(st.integers(0, 2)) == 0
    groups = 1 if winograd else draw(st.integers(1, 3))
    square = draw(st.sampled_from([3, 5]))
    taps = draw(st.sampled_from([3, 5, 7]))
    winograd_kernel = draw(st.sampled_from([(square, square), (square, square), (1, taps), (taps, 1)]))
    kernel = winograd_kernel if winograd else (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (1, 1) if winograd else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    mode = draw(st.sampled_from(["ints", "ints", "ints", "same", "valid"]))
    unit_stride = mode == "same" or winograd
    stride = (1, 1) if unit_stride else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = mode if mode != "ints" else (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    pad = (0, 0) if isinstance(padding, str) else padding
    size = fitting_size(draw, kernel, pad, dilation, max_size)
    layout = draw(st.sampled_from(layouts))
    channels = st.sampled_from([1, 2, 5, 17, 67]) if winograd else st.integers(1, 3)
    batch = 1 if layout == "unbatched" else draw(st.integers(0, max_batch))
    return Conv(
        batch=batch,
        in_channels=groups * draw(channels),
        out_channels=groups * draw(channels),
        size=size,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
        layout=layout,
    )


@st.composite
def bf16_pairs_convs(draw, max_batch=3, max_size=12):
    """Layers the bfloat16 pair kernels compute (at least 16 channels per group), with channel
    counts that leave partial tiles (16 output channels, 32 input channels per tile)."""
    groups = draw(st.integers(1, 2))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from(["same", "valid", None] if stride == (1, 1) else ["valid", None]))
    padding = padding or (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    pad = (0, 0) if isinstance(padding, str) else padding
    size = fitting_size(draw, kernel, pad, dilation, max_size)
    channels = st.sampled_from([16, 17, 31, 32, 40, 64, 70])
    layout = draw(st.sampled_from(LAYOUTS))
    batch = 1 if layout == "unbatched" else draw(st.integers(1, max_batch))
    in_channels, out_channels = groups * draw(channels), groups * draw(channels)
    return Conv(batch, in_channels, out_channels, size, kernel, stride, padding, dilation, groups,
                draw(st.booleans()), layout)
