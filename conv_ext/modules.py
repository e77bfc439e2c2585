"""conv_ext.Conv2d: nn.Conv2d with the conv_ext kernels underneath."""
import torch.nn as nn
import torch.nn.functional as F

from .functional import conv2d


class Conv2d(nn.Conv2d):
    """A drop-in for torch.nn.Conv2d: same constructor, parameters, initialisation, repr and
    state_dict; only the computation differs."""

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
