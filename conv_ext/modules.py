"""conv_ext.Conv2d and Conv1d: nn.Conv2d and nn.Conv1d with the conv_ext kernels underneath, and
convert(), which puts them into an existing model."""
import torch.nn as nn
import torch.nn.functional as F

from .functional import conv1d, conv2d


class _ConvExtForward:
    """_conv_forward of nn.Conv1d/nn.Conv2d with the conv_ext function in place of F.conv*d.
    Everything else (constructor, checks, initialisation, repr, state_dict) is inherited."""

    _conv = None  # conv_ext.conv1d or conv_ext.conv2d

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return self._conv(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return self._conv(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2d(_ConvExtForward, nn.Conv2d):
    """A drop-in for torch.nn.Conv2d: same constructor, parameters, initialisation, repr and
    state_dict, and isinstance(m, nn.Conv2d); only the computation differs."""

    _conv = staticmethod(conv2d)


class Conv1d(_ConvExtForward, nn.Conv1d):
    """A drop-in for torch.nn.Conv1d, computed by the 2-D kernels."""

    _conv = staticmethod(conv1d)


_REPLACEMENTS = {nn.Conv2d: Conv2d, nn.Conv1d: Conv1d}


def convert(module):
    """Make every nn.Conv2d and nn.Conv1d in module (itself included) compute with conv_ext, in
    place, and return module.

    Only the class changes: parameters, buffers, hooks and their identities stay, so optimizers
    and state_dicts made before keep working. Subclasses of nn.Conv*d are left alone, since
    they may compute something else.
    """
    for m in module.modules():
        replacement = _REPLACEMENTS.get(type(m))
        if replacement is not None:
            m.__class__ = replacement
    return module
