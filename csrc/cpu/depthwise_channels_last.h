// Depthwise layers (one input and one output channel per group) on NHWC tensors, as a model in
// channels_last holds them: a pixel's channels are a run in memory, so the kernel vectorises
// across channels and reads the tensors in place, where the NCHW kernels need the input moved to
// NCHW and their output back (each a transpose of the whole tensor).
#pragma once

#include "../conv2d.h"

#include <ATen/core/Tensor.h>

namespace conv_ext {

// Whether depthwise_channels_last_forward takes this layer and input: depthwise, an NHWC input
// (suggested channels_last), float32 or float64 (float16 and bfloat16 widened to float32 first),
// in the vector builds.
bool depthwise_channels_last_applies(const Conv2dGeometry& g, const at::Tensor& input);

// The forward of a depthwise layer, any kernel, stride, padding and dilation: input dense NHWC
// (channels_last) of float32 or float64, weight (channels, 1, R, S) of its dtype, bias (channels)
// or undefined; the output NHWC.
at::Tensor depthwise_channels_last_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                                           const Conv2dGeometry& g);

// The input gradient of a depthwise layer, any kernel, stride, padding and dilation (where the
// stride-1 ones run as the forward of the flipped filters): grad_output dense NHWC of float32 or
// float64, weight (channels, 1, R, S) of its dtype; the result NHWC.
at::Tensor depthwise_channels_last_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                              const Conv2dGeometry& g);

// Whether depthwise_channels_last_grad_weight takes this layer: as above, 3 x 3 filters,
// undilated, at column stride 1 or 2 (other layers' weight gradients compute on NCHW copies).
bool depthwise_channels_last_grad_weight_applies(const Conv2dGeometry& g, const at::Tensor& input);

// The weight gradient (channels, 1, 3, 3) of such a layer: input and grad_output dense NHWC of
// float32 or float64. Each block of kGradWeightRows output rows of an image sums into its own
// partial gradient, added in order after: the same sums whatever the threads.
at::Tensor depthwise_channels_last_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                               const Conv2dGeometry& g);

}  // namespace conv_ext
