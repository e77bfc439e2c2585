"""The pure-PyTorch reference: the source text's formula as tensor code.

    h[i, j, k] = sum_{a, b} sum_c V[a, b, c, k] * x[i + a, j + b, c]

One term per kernel offset (a, b): the input window shifted by (a, b) (times the dilation) and
strided, contracted with V[a, b] over the channels of each group. No convolution, unfold or
im2col is used, so it checks the kernels independently; autograd through it gives the reference
gradients on any device and dtype.
"""
import torch
import torch.nn.functional as F

from .functional import Conv2dArgs


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Same signature and result as torch.nn.functional.conv2d (for valid arguments)."""
    args = Conv2dArgs.parse(input, weight, stride, padding, dilation, groups)
    (sh, sw), (ph, pw), (dh, dw), groups = args.conv
    x = F.pad(args.prepare_input(input), (pw, pw, ph, ph))
    n, c, h, w = x.shape
    k, c_per_group, kh, kw = weight.shape
    out_h = (h - dh * (kh - 1) - 1) // sh + 1
    out_w = (w - dw * (kw - 1) - 1) // sw + 1
    x = x.reshape(n, groups, c_per_group, h, w)
    v = weight.reshape(groups, k // groups, c_per_group, kh, kw)
    out = x.new_zeros(n, groups, k // groups, out_h, out_w)
    for a in range(kh):
        for b in range(kw):
            window = x[..., a * dh : a * dh + sh * (out_h - 1) + 1 : sh,
                            b * dw : b * dw + sw * (out_w - 1) + 1 : sw]
            out = out + torch.einsum("ngcij,gkc->ngkij", window, v[..., a, b])
    out = out.reshape(n, k, out_h, out_w)
    if bias is not None:
        out = out + bias.reshape(1, k, 1, 1)
    return args.unbatched_like_input(out)
