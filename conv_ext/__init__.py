"""conv_ext: the 2-D cross-correlation of a convolutional layer as C++/CUDA PyTorch operators.

    h[i, j, k] = sum_{a, b} sum_c V[a, b, c, k] * x[i + a, j + b, c]
"""
from . import reference
from .functional import Conv2dFunction, conv1d, conv2d
from .modules import Conv1d, Conv2d, convert

__all__ = ["Conv1d", "Conv2d", "Conv2dFunction", "conv1d", "conv2d", "convert", "reference"]
